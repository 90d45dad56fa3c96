//! cleanup: the end of a run, either way.
//!
//! `complete` runs after verification: it applies the settings deferred until success
//! (delete-on-termination, termination and stop protection), removes the AMI and its snapshots
//! unless `keepImage`, and applies `sourceAction` last.
//!
//! `rollback` runs after any failure: it removes what this execution made — found by its
//! `amiflow:execution` tag, not only by the ids the state holds — moves the Elastic IP back, and
//! never stops or terminates the source.

use aws_sdk_ec2::types::{
    AttributeBooleanValue, EbsInstanceBlockDeviceSpecification, Filter,
    InstanceBlockDeviceMappingSpecification,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::capture::Capture;
use crate::error::{aws, Error, Result};
use crate::input::{MigrateInput, SourceAction};
use crate::steps::create_image::CreateImageOutput;
use crate::steps::launch::InstanceProgress;
use crate::tags;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteRequest {
    pub execution: String,
    pub input: MigrateInput,
    pub image: CreateImageOutput,
    pub instance: InstanceProgress,
}

/// The output of a successful MigrateInstance run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrateOutput {
    pub image_id: String,
    /// True when `keepImage` kept the AMI and its snapshots.
    pub image_kept: bool,
    pub deleted_snapshot_ids: Vec<String>,
    pub new_instance_id: String,
    pub availability_zone: String,
    pub subnet_id: String,
    pub instance_type: String,
    pub elastic_ip: Option<String>,
    pub source_instance_id: String,
    pub source_action: SourceAction,
    pub source_state: String,
    pub not_carried: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRequest {
    pub execution: String,
    /// The run's whole state at the failure: whatever steps got as far as recording.
    pub state: RunState,
}

/// The parts of a run's state that a rollback uses; any of them may be missing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    /// The input as given: a run refused for bad input rolls back too (and finds nothing).
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub image: Option<CreateImageOutput>,
}

/// cleanup's two actions.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum CleanupRequest {
    Complete(Box<CompleteRequest>),
    Rollback(Box<RollbackRequest>),
}

/// What cleanup answers, by action.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum CleanupOutput {
    Complete(Box<MigrateOutput>),
    Rollback(RollbackOutput),
}

pub async fn run(ec2: &aws_sdk_ec2::Client, request: CleanupRequest) -> Result<CleanupOutput> {
    match request {
        CleanupRequest::Complete(r) => {
            Ok(CleanupOutput::Complete(Box::new(complete(ec2, *r).await?)))
        }
        CleanupRequest::Rollback(r) => Ok(CleanupOutput::Rollback(rollback(ec2, *r).await?)),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackOutput {
    pub terminated_instance_ids: Vec<String>,
    pub deregistered_image_ids: Vec<String>,
    pub deleted_snapshot_ids: Vec<String>,
    pub elastic_ip_restored_to: Option<String>,
}

/// The delete-on-termination changes that restore the source's settings. Pure.
pub fn deferred_delete_on_termination(capture: &Capture) -> Vec<String> {
    capture
        .volumes
        .iter()
        .filter(|v| !v.delete_on_termination)
        .map(|v| v.device_name.clone())
        .collect()
}

fn execution_filter(execution: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{}", tags::EXECUTION))
        .values(execution)
        .build()
}

async fn set_delete_on_termination(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
    devices: &[String],
    delete: bool,
) -> Result<()> {
    if devices.is_empty() {
        return Ok(());
    }
    let mappings = devices
        .iter()
        .map(|d| {
            InstanceBlockDeviceMappingSpecification::builder()
                .device_name(d)
                .ebs(
                    EbsInstanceBlockDeviceSpecification::builder()
                        .delete_on_termination(delete)
                        .build(),
                )
                .build()
        })
        .collect();
    ec2.modify_instance_attribute()
        .instance_id(instance_id)
        .set_block_device_mappings(Some(mappings))
        .send()
        .await
        .map_err(aws("ModifyInstanceAttribute"))?;
    Ok(())
}

/// Deregisters an image and deletes its snapshots; returns the snapshot ids deleted.
pub async fn remove_image(ec2: &aws_sdk_ec2::Client, image_id: &str) -> Result<Vec<String>> {
    let images = ec2
        .describe_images()
        .image_ids(image_id)
        .send()
        .await
        .map_err(aws("DescribeImages"));
    let snapshots: Vec<String> = match images {
        Ok(found) => found
            .images()
            .iter()
            .flat_map(|i| i.block_device_mappings())
            .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_string))
            .collect(),
        Err(Error::ImageNotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    match ec2
        .deregister_image()
        .image_id(image_id)
        .send()
        .await
        .map_err(aws("DeregisterImage"))
    {
        Ok(_) | Err(Error::ImageNotFound(_)) => {}
        Err(e) => return Err(e),
    }
    for snapshot in &snapshots {
        delete_snapshot(ec2, snapshot).await?;
    }
    tracing::info!(image_id, snapshots = ?snapshots, "image and snapshots removed");
    Ok(snapshots)
}

async fn delete_snapshot(ec2: &aws_sdk_ec2::Client, snapshot_id: &str) -> Result<()> {
    match ec2
        .delete_snapshot()
        .snapshot_id(snapshot_id)
        .send()
        .await
        .map_err(aws("DeleteSnapshot"))
    {
        Ok(_) => Ok(()),
        Err(Error::AwsApi(m)) if m.contains("InvalidSnapshot.NotFound") => Ok(()),
        Err(e) => Err(e),
    }
}

async fn instance_state(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<String> {
    let found = ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(aws("DescribeInstances"))?;
    Ok(found
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .and_then(|i| i.state()?.name().map(|n| n.as_str().to_string()))
        .unwrap_or_else(|| "unknown".into()))
}

pub async fn complete(
    ec2: &aws_sdk_ec2::Client,
    request: CompleteRequest,
) -> Result<MigrateOutput> {
    let capture = &request.image.capture;
    let new_id = request.instance.instance_id.as_str();
    let source_id = capture.instance_id.as_str();
    if new_id == source_id {
        return Err(Error::AwsApi(format!(
            "refusing to treat the source {source_id} as the new instance"
        )));
    }

    set_delete_on_termination(ec2, new_id, &deferred_delete_on_termination(capture), false).await?;
    if capture.disable_api_termination {
        ec2.modify_instance_attribute()
            .instance_id(new_id)
            .disable_api_termination(AttributeBooleanValue::builder().value(true).build())
            .send()
            .await
            .map_err(aws("ModifyInstanceAttribute"))?;
    }
    if capture.disable_api_stop {
        ec2.modify_instance_attribute()
            .instance_id(new_id)
            .disable_api_stop(AttributeBooleanValue::builder().value(true).build())
            .send()
            .await
            .map_err(aws("ModifyInstanceAttribute"))?;
    }

    let deleted_snapshot_ids = if request.input.keep_image {
        Vec::new()
    } else {
        remove_image(ec2, &request.image.image_id).await?
    };

    // Last, so that nothing after it can fail and roll back the only copy left running. The
    // source is first stamped with where it went: an operator sees it, and IAM allows stopping
    // and terminating only instances so stamped.
    let source_state = match request.input.source_action {
        SourceAction::Keep => match instance_state(ec2, source_id).await {
            Ok(state) => state,
            Err(_) => capture.state.clone(),
        },
        SourceAction::Stop => {
            stamp_source(ec2, source_id, new_id).await?;
            let stopped = ec2
                .stop_instances()
                .instance_ids(source_id)
                .send()
                .await
                .map_err(aws("StopInstances"))?;
            changed_state(stopped.stopping_instances(), "stopping")
        }
        SourceAction::Terminate => {
            stamp_source(ec2, source_id, new_id).await?;
            let terminated = ec2
                .terminate_instances()
                .instance_ids(source_id)
                .send()
                .await
                .map_err(aws("TerminateInstances"))?;
            changed_state(terminated.terminating_instances(), "shutting-down")
        }
    };
    tracing::info!(new_instance_id = new_id, source_instance_id = source_id, source_state = %source_state, "migration complete");

    Ok(MigrateOutput {
        image_id: request.image.image_id.clone(),
        image_kept: request.input.keep_image,
        deleted_snapshot_ids,
        new_instance_id: new_id.to_string(),
        availability_zone: request.image.target.availability_zone.clone(),
        subnet_id: request.image.target.subnet_id.clone(),
        instance_type: request.image.target.instance_type.clone(),
        elastic_ip: request.instance.elastic_ip.clone(),
        source_instance_id: source_id.to_string(),
        source_action: request.input.source_action,
        source_state,
        not_carried: capture.not_carried.clone(),
    })
}

/// The state a Stop/TerminateInstances answer reports.
fn changed_state(changes: &[aws_sdk_ec2::types::InstanceStateChange], fallback: &str) -> String {
    changes
        .first()
        .and_then(|c| c.current_state()?.name().map(|n| n.as_str().to_string()))
        .unwrap_or_else(|| fallback.to_string())
}

async fn stamp_source(ec2: &aws_sdk_ec2::Client, source_id: &str, new_id: &str) -> Result<()> {
    ec2.create_tags()
        .resources(source_id)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(tags::MIGRATED_TO)
                .value(new_id)
                .build(),
        )
        .send()
        .await
        .map_err(aws("CreateTags"))?;
    Ok(())
}

/// Puts the Elastic IP back on the source if this run moved it to `new_id`.
async fn restore_address(
    ec2: &aws_sdk_ec2::Client,
    capture: &Capture,
    new_id: &str,
) -> Result<Option<String>> {
    let Some(eip) = &capture.elastic_ip else {
        return Ok(None);
    };
    let addresses = ec2
        .describe_addresses()
        .allocation_ids(&eip.allocation_id)
        .send()
        .await
        .map_err(aws("DescribeAddresses"))?;
    let on_new = addresses
        .addresses()
        .iter()
        .any(|a| a.instance_id() == Some(new_id));
    if !on_new {
        return Ok(None);
    }
    ec2.associate_address()
        .allocation_id(&eip.allocation_id)
        .instance_id(&capture.instance_id)
        .allow_reassociation(true)
        .send()
        .await
        .map_err(aws("AssociateAddress"))?;
    tracing::info!(public_ip = %eip.public_ip, source = %capture.instance_id, "elastic IP restored to the source");
    Ok(Some(capture.instance_id.clone()))
}

pub async fn rollback(
    ec2: &aws_sdk_ec2::Client,
    request: RollbackRequest,
) -> Result<RollbackOutput> {
    let execution = request.execution.as_str();
    let state = &request.state;
    let source_id = state
        .image
        .as_ref()
        .map(|i| i.capture.instance_id.clone())
        .or_else(|| {
            state
                .input
                .get("instanceId")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let mut out = RollbackOutput::default();

    let described = ec2
        .describe_instances()
        .filters(execution_filter(execution))
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "stopping", "stopped"]
                        .map(String::from)
                        .to_vec(),
                ))
                .build(),
        )
        .send()
        .await
        .map_err(aws("DescribeInstances"))?;
    for instance in described.reservations().iter().flat_map(|r| r.instances()) {
        let Some(id) = instance.instance_id() else {
            continue;
        };
        if Some(id) == source_id.as_deref() {
            tracing::warn!(
                instance_id = id,
                "the source carries this execution's tag; it is left alone"
            );
            continue;
        }
        if let Some(image) = &state.image {
            if let Some(restored) = restore_address(ec2, &image.capture, id).await? {
                out.elastic_ip_restored_to = Some(restored);
            }
        }
        let devices: Vec<String> = instance
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.device_name().map(str::to_string))
            .collect();
        set_delete_on_termination(ec2, id, &devices, true).await?;
        ec2.modify_instance_attribute()
            .instance_id(id)
            .disable_api_termination(AttributeBooleanValue::builder().value(false).build())
            .send()
            .await
            .map_err(aws("ModifyInstanceAttribute"))?;
        ec2.terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(aws("TerminateInstances"))?;
        tracing::info!(instance_id = id, execution, "new instance terminated");
        out.terminated_instance_ids.push(id.to_string());
    }

    let images = ec2
        .describe_images()
        .owners("self")
        .filters(execution_filter(execution))
        .send()
        .await
        .map_err(aws("DescribeImages"))?;
    let mut image_ids: Vec<String> = images
        .images()
        .iter()
        .filter_map(|i| i.image_id().map(str::to_string))
        .collect();
    if let Some(image) = &state.image {
        if !image_ids.contains(&image.image_id) {
            image_ids.push(image.image_id.clone());
        }
    }
    for image_id in image_ids {
        let snapshots = remove_image(ec2, &image_id).await?;
        out.deleted_snapshot_ids.extend(snapshots);
        out.deregistered_image_ids.push(image_id);
    }

    let snapshots = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(execution_filter(execution))
        .send()
        .await
        .map_err(aws("DescribeSnapshots"))?;
    for snapshot in snapshots.snapshots() {
        let Some(id) = snapshot.snapshot_id() else {
            continue;
        };
        if !out.deleted_snapshot_ids.iter().any(|s| s == id) {
            delete_snapshot(ec2, id).await?;
            out.deleted_snapshot_ids.push(id.to_string());
        }
    }
    tracing::info!(execution, removed = ?out, "rollback done");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::tests::sample_capture;

    #[test]
    fn only_volumes_kept_on_the_source_are_kept_on_the_copy() {
        assert_eq!(
            deferred_delete_on_termination(&sample_capture()),
            ["/dev/sdf"]
        );
    }
}
