//! targets: with `"targetGroups": "follow"`, the copy joins every ELBv2 target group that holds
//! the source, on the source's port (follow); the run looks once per call until the copy is
//! healthy in each (check), never sleeping in the function; then the source leaves those groups
//! (handover), before Complete applies `sourceAction`. A rollback puts the source back and takes
//! the copy out (cleanup, with `resources::targets::undo`).

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::handoff::{CreateImageOutput, InstanceProgress, TargetsProgress};
use crate::resources::targets::{self, Health};
use crate::settings::Settings;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum TargetsRequest {
    Follow {
        execution: String,
        image: Box<CreateImageOutput>,
        instance: InstanceProgress,
    },
    Check {
        targets: TargetsProgress,
    },
    Handover {
        targets: TargetsProgress,
    },
}

/// Healthy in every group. Pure.
pub fn all_healthy(health: &[Health]) -> bool {
    health.iter().all(|h| h.state == "healthy")
}

/// The next look, or `TargetsUnhealthy` once the wait limit is spent. Pure.
pub fn next_look(
    progress: TargetsProgress,
    health: Vec<Health>,
    settings: &Settings,
) -> Result<TargetsProgress> {
    if all_healthy(&health) {
        return Ok(TargetsProgress {
            health,
            ready: true,
            wait_seconds: 0,
            ..progress
        });
    }
    let attempt = progress.attempt + 1;
    let Some(wait) = settings.instance_poll.next_wait(attempt) else {
        let states: Vec<String> = health
            .iter()
            .map(|h| {
                format!(
                    "{}: {}{}",
                    h.target_group_arn,
                    h.state,
                    h.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                )
            })
            .collect();
        return Err(Error::TargetsUnhealthy(
            format!(
                "{} was not healthy in every target group after {} s: {}",
                progress.instance_id,
                settings.instance_poll.waited_before(attempt),
                states.join("; ")
            )
            .into(),
        ));
    };
    Ok(TargetsProgress {
        health,
        attempt,
        wait_seconds: wait,
        ..progress
    })
}

pub async fn run(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    settings: &Settings,
    request: TargetsRequest,
) -> Result<TargetsProgress> {
    match request {
        TargetsRequest::Follow {
            execution,
            image,
            instance,
        } => {
            let source = image.capture.instance_id.clone();
            let groups = targets::holding(elb, &source).await?;
            targets::register(elb, &instance.instance_id, &groups).await?;
            tracing::info!(execution, copy = %instance.instance_id, groups = groups.len(), "copy registered in the source's target groups");
            Ok(TargetsProgress {
                instance_id: instance.instance_id,
                source_instance_id: source,
                ready: groups.is_empty(),
                groups,
                wait_seconds: settings.instance_poll.interval(0),
                ..Default::default()
            })
        }
        TargetsRequest::Check { targets: progress } => {
            let health = targets::health(elb, &progress.instance_id, &progress.groups).await?;
            next_look(progress, health, settings)
        }
        TargetsRequest::Handover { targets: progress } => {
            targets::deregister(elb, &progress.source_instance_id, &progress.groups).await?;
            tracing::info!(source = %progress.source_instance_id, groups = progress.groups.len(), "source left its target groups");
            Ok(TargetsProgress {
                source_left: true,
                ..progress
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::targets::Membership;

    fn health(states: &[&str]) -> Vec<Health> {
        states
            .iter()
            .enumerate()
            .map(|(n, s)| Health {
                target_group_arn: format!("arn:tg/{n}"),
                state: s.to_string(),
                reason: None,
            })
            .collect()
    }

    fn progress() -> TargetsProgress {
        TargetsProgress {
            instance_id: "i-0copy".into(),
            source_instance_id: "i-0source".into(),
            groups: vec![Membership {
                target_group_arn: "arn:tg/0".into(),
                port: 8080,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn ready_only_when_healthy_in_every_group() {
        let settings = Settings::defaults();
        let waiting = next_look(progress(), health(&["healthy", "initial"]), &settings).unwrap();
        assert!(!waiting.ready && waiting.attempt == 1 && waiting.wait_seconds > 0);
        let ready = next_look(progress(), health(&["healthy", "healthy"]), &settings).unwrap();
        assert!(ready.ready);
    }

    #[test]
    fn an_unhealthy_copy_fails_once_the_wait_is_spent() {
        let settings = Settings::defaults();
        let late = TargetsProgress {
            attempt: 10_000,
            ..progress()
        };
        let err = next_look(late, health(&["unhealthy"]), &settings).unwrap_err();
        assert_eq!(err.name(), "TargetsUnhealthy");
        assert!(err.to_string().contains("arn:tg/0: unhealthy"), "{err}");
    }
}
