//! What each Lambda function runs once its process starts: the step it serves and how its
//! dependencies reach it. Each binary under `functions/` is a `main` that runs one of these; the
//! multi-call binary that `make bench` measures (functions/multicall) runs the one it is named.

use crate::lambda::{serve, serve_parsed};
use crate::steps::reap::{self, ReapSettings};
use crate::steps::wait_image::{self, WaitImageRequest};
use crate::steps::{
    approval as approval_step, cleanup as cleanup_step, copy_image as copy_step,
    create_image as create_step, fleet as fleet_step, grant_kms as grant_step,
    launch as launch_step, share_image as share_step, targets as targets_step,
    verify_instance as verify_step,
};
use crate::trigger::{self as trigger_step, TriggerSettings};

pub type Outcome = Result<(), lambda_runtime::Error>;

/// Every function, by the name of its binary.
pub const NAMES: [&str; 14] = [
    "approval",
    "cleanup",
    "copy-image",
    "create-image",
    "fleet",
    "grant-kms",
    "launch",
    "preflight",
    "reaper",
    "share-image",
    "targets",
    "trigger",
    "verify-instance",
    "wait-image",
];

/// Runs the function of that name; an unknown name is refused before anything starts.
pub async fn by_name(name: &str) -> Outcome {
    match name {
        "approval" => approval().await,
        "cleanup" => cleanup().await,
        "copy-image" => copy_image().await,
        "create-image" => create_image().await,
        "fleet" => fleet().await,
        "grant-kms" => grant_kms().await,
        "launch" => launch().await,
        "preflight" => preflight().await,
        "reaper" => reaper().await,
        "share-image" => share_image().await,
        "targets" => targets().await,
        "trigger" => trigger().await,
        "verify-instance" => verify_instance().await,
        "wait-image" => wait_image().await,
        other => Err(format!("no function named {other:?}; one of {}", NAMES.join(", ")).into()),
    }
}

pub async fn approval() -> Outcome {
    serve(approval_step::run).await
}

pub async fn cleanup() -> Outcome {
    serve(|deps, request| async move {
        cleanup_step::run(&deps.ec2, &deps.elb, &deps.run_lock()?, request).await
    })
    .await
}

pub async fn copy_image() -> Outcome {
    serve(copy_step::run).await
}

pub async fn create_image() -> Outcome {
    serve(|deps, request| async move {
        let lock = deps.run_lock()?;
        create_step::run(
            &deps.ec2,
            &deps.autoscaling,
            &lock,
            &deps.settings,
            &deps.region,
            request,
        )
        .await
    })
    .await
}

pub async fn fleet() -> Outcome {
    serve(fleet_step::run).await
}

pub async fn grant_kms() -> Outcome {
    serve(|deps, request| async move {
        grant_step::run(&deps.kms, &deps.policy_edits()?, request).await
    })
    .await
}

pub async fn launch() -> Outcome {
    serve(|deps, request| launch_step::run(&deps.ec2, &deps.settings, request)).await
}

pub async fn preflight() -> Outcome {
    serve(crate::preflight::run).await
}

pub async fn reaper() -> Outcome {
    let settings = ReapSettings::from_vars(|k| std::env::var(k).ok())?;
    let settings: &'static ReapSettings = Box::leak(Box::new(settings));
    serve_parsed(Ok, |deps, event| reap::run(&deps.sfn, settings, event)).await
}

pub async fn share_image() -> Outcome {
    serve(share_step::run).await
}

pub async fn targets() -> Outcome {
    serve(|deps, request| targets_step::run(&deps.elb, &deps.settings, request)).await
}

pub async fn trigger() -> Outcome {
    let settings = TriggerSettings::from_vars(|k| std::env::var(k).ok())?;
    let settings: &'static TriggerSettings = Box::leak(Box::new(settings));
    serve_parsed(Ok, |deps, event| {
        trigger_step::handle(deps, settings, event)
    })
    .await
}

pub async fn verify_instance() -> Outcome {
    serve(|deps, request| verify_step::run(&deps.ec2, &deps.settings, request)).await
}

pub async fn wait_image() -> Outcome {
    serve_parsed(WaitImageRequest::from_value, wait_image::handle).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unknown_name_is_refused_with_the_names_there_are() {
        let error = by_name("lunch").await.unwrap_err().to_string();
        assert!(
            error.contains("\"lunch\"") && error.contains("launch"),
            "{error}"
        );
    }
}
