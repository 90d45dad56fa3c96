//! ELBv2 target groups around a migration (`"targetGroups": "follow"`): the groups that hold the
//! source, the copy registered in each on the source's port, its health there, and the source
//! deregistered once the copy has taken over.

use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthStateEnum};
use serde::{Deserialize, Serialize};

use crate::error::{aws, Result};
use crate::handoff::TargetsProgress;

/// One group that holds the source, and the port the source is registered on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    pub target_group_arn: String,
    pub port: i32,
}

/// A target's health in one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub target_group_arn: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every instance target group that holds `instance_id` (registered, not draining), with its port.
pub async fn holding(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    instance_id: &str,
) -> Result<Vec<Membership>> {
    let mut found = Vec::new();
    let mut pages = elb.describe_target_groups().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(aws("DescribeTargetGroups"))?;
        for group in page.target_groups() {
            let instance_targets = group.target_type().is_none_or(|t| t.as_str() == "instance");
            let Some(arn) = group.target_group_arn().filter(|_| instance_targets) else {
                continue;
            };
            let health = elb
                .describe_target_health()
                .target_group_arn(arn)
                .send()
                .await
                .map_err(aws("DescribeTargetHealth"))?;
            for described in health.target_health_descriptions() {
                let Some(target) = described.target() else {
                    continue;
                };
                let leaving = described
                    .target_health()
                    .and_then(|h| h.state())
                    .is_some_and(|s| {
                        matches!(
                            s,
                            TargetHealthStateEnum::Draining | TargetHealthStateEnum::Unused
                        )
                    });
                if target.id() == Some(instance_id) && !leaving {
                    found.push(Membership {
                        target_group_arn: arn.to_string(),
                        port: target.port().unwrap_or_default(),
                    });
                }
            }
        }
    }
    Ok(found)
}

fn target(instance_id: &str, port: i32) -> TargetDescription {
    TargetDescription::builder()
        .id(instance_id)
        .port(port)
        .build()
}

/// Registers `instance_id` in each group, on that group's port.
pub async fn register(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    instance_id: &str,
    groups: &[Membership],
) -> Result<()> {
    for group in groups {
        elb.register_targets()
            .target_group_arn(&group.target_group_arn)
            .targets(target(instance_id, group.port))
            .send()
            .await
            .map_err(aws("RegisterTargets"))?;
    }
    Ok(())
}

/// Deregisters `instance_id` from each group; one that no longer holds it is no failure.
pub async fn deregister(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    instance_id: &str,
    groups: &[Membership],
) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for group in groups {
        match elb
            .deregister_targets()
            .target_group_arn(&group.target_group_arn)
            .targets(target(instance_id, group.port))
            .send()
            .await
            .map_err(aws("DeregisterTargets"))
        {
            Ok(_) => done.push(group.target_group_arn.clone()),
            Err(e) if e.is_code("InvalidTarget") || e.is_code("TargetGroupNotFound") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `instance_id`'s health in each group.
pub async fn health(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    instance_id: &str,
    groups: &[Membership],
) -> Result<Vec<Health>> {
    let mut out = Vec::new();
    for group in groups {
        let described = elb
            .describe_target_health()
            .target_group_arn(&group.target_group_arn)
            .targets(target(instance_id, group.port))
            .send()
            .await
            .map_err(aws("DescribeTargetHealth"))?;
        let health = described
            .target_health_descriptions()
            .first()
            .and_then(|d| d.target_health());
        out.push(Health {
            target_group_arn: group.target_group_arn.clone(),
            state: health
                .and_then(|h| h.state())
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| "unavailable".into()),
            reason: health
                .and_then(|h| h.reason())
                .map(|r| r.as_str().to_string()),
        });
    }
    Ok(out)
}

/// What a rollback does to the groups: the source back in if it had left, the copy out.
pub async fn undo(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    progress: &TargetsProgress,
) -> Result<Vec<String>> {
    if progress.source_left {
        register(elb, &progress.source_instance_id, &progress.groups).await?;
    }
    deregister(elb, &progress.instance_id, &progress.groups).await
}
