//! cleanup: the end of a run, either way.
//!
//! `complete` runs after verification: it applies the settings deferred until success
//! (delete-on-termination, termination and stop protection), removes the AMI and its snapshots
//! unless `keepImage`, and applies `sourceAction` last.
//!
//! `rollback` runs after any failure: it removes what this execution made — found by its
//! `amiflow:execution` tag, not only by the ids the state holds — moves the Elastic IP back, and
//! never stops or terminates the source. What it finds by tag it removes only if it proves the
//! run made it (`ownership`): anyone who may tag can put the tag on something else.

use aws_sdk_ec2::types::{
    AttributeBooleanValue, EbsInstanceBlockDeviceSpecification,
    InstanceBlockDeviceMappingSpecification,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::capture::Capture;
use crate::carry;
use crate::compare;
use crate::error::{aws, Error, Result};
use crate::handoff::CreateImageOutput;
use crate::handoff::MigrateOutput;
use crate::handoff::{InstanceProgress, TargetsProgress};
use crate::input::{Cutover, MigrateInput, SourceAction};
use crate::ownership;
use crate::resources::images::{self, delete_snapshot, image_name, remove_image, retire_image};
use crate::resources::lock::RunLock;
use crate::resources::{capacity, client_token, instances, targets};
use crate::tags;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteRequest {
    pub execution: String,
    pub input: MigrateInput,
    pub image: CreateImageOutput,
    pub instance: InstanceProgress,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRequest {
    pub execution: String,
    /// When the execution started (`$$.Execution.StartTime`): nothing launched before is the run's.
    #[serde(default)]
    pub started_at: Option<String>,
    /// The run's whole state at the failure: whatever steps got as far as recording.
    pub state: RunState,
}

impl RollbackRequest {
    /// The source instance, from the capture or, before there is one, from the input.
    pub fn source_id(&self) -> Option<String> {
        self.state
            .image
            .as_ref()
            .map(|i| i.capture.instance_id.clone())
            .or_else(|| {
                self.state
                    .input
                    .get("instanceId")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
    }
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
    /// The copy's place in the source's target groups (`"targetGroups": "follow"`).
    #[serde(default)]
    pub targets: Option<TargetsProgress>,
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

pub async fn run(
    ec2: &aws_sdk_ec2::Client,
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    lock: &RunLock<'_>,
    request: CleanupRequest,
) -> Result<CleanupOutput> {
    match request {
        CleanupRequest::Complete(r) => {
            let (source, execution) = (r.input.instance_id.clone(), r.execution.clone());
            let out = complete(ec2, *r).await?;
            give_back(lock, Some(&source), &execution).await;
            Ok(CleanupOutput::Complete(Box::new(out)))
        }
        CleanupRequest::Rollback(r) => {
            let (source, execution) = (r.source_id(), r.execution.clone());
            // The source back in its target groups first, and the copy out, before the copy goes.
            let left_groups = match &r.state.targets {
                Some(progress) => targets::undo(elb, progress).await?,
                None => Vec::new(),
            };
            let mut out = rollback(ec2, *r).await?;
            out.left_target_group_arns = left_groups;
            give_back(lock, source.as_deref(), &execution).await;
            Ok(CleanupOutput::Rollback(out))
        }
    }
}

/// Gives the run lock back. A failure here fails nothing: the next run for the instance sees
/// that this execution has ended and takes the lock over, and DynamoDB's TTL removes it.
async fn give_back(lock: &RunLock<'_>, source: Option<&str>, execution: &str) {
    let Some(source) = source else { return };
    match lock.release(source, execution).await {
        Ok(released) => tracing::info!(source, execution, released, "run lock given back"),
        Err(e) => tracing::warn!(source, execution, error = %e, "run lock not given back"),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackOutput {
    pub terminated_instance_ids: Vec<String>,
    pub deregistered_image_ids: Vec<String>,
    pub deleted_snapshot_ids: Vec<String>,
    pub elastic_ip_restored_to: Option<String>,
    /// Images kept because the source was terminated during the run (by someone else): they
    /// may be the only copy of its data. Each carries the `amiflow:kept` tag saying why.
    #[serde(default)]
    pub kept_image_ids: Vec<String>,
    /// Resources that carry this execution's tag but that the run did not make: left unchanged.
    #[serde(default)]
    pub left_alone_ids: Vec<String>,
    /// The run's Capacity Reservation, cancelled (`"capacity": "reserve"`).
    #[serde(default)]
    pub released_capacity_reservation_ids: Vec<String>,
    /// The target groups the copy was taken out of (the source is back in them).
    #[serde(default)]
    pub left_target_group_arns: Vec<String>,
}

impl RollbackOutput {
    /// A resource that carries the execution's tag but that the run did not make: reported, and
    /// left unchanged.
    fn leave_alone(&mut self, id: &str, execution: &str, why: &str) {
        tracing::warn!(
            resource = id,
            execution,
            why,
            "carries this execution's tag; left alone"
        );
        self.left_alone_ids.push(id.to_string());
    }
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

/// Terminates an instance the execution made, volumes and all. One that is already going (another
/// attempt of the rollback terminated it meanwhile, and EC2 refuses changes to it) counts as
/// removed by that attempt: false.
async fn remove_instance(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
    devices: &[String],
) -> Result<bool> {
    let removal = async {
        set_delete_on_termination(ec2, instance_id, devices, true).await?;
        ec2.modify_instance_attribute()
            .instance_id(instance_id)
            .disable_api_termination(AttributeBooleanValue::builder().value(false).build())
            .send()
            .await
            .map_err(aws("ModifyInstanceAttribute"))?;
        ec2.terminate_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(aws("TerminateInstances"))?;
        Ok::<(), Error>(())
    }
    .await;
    match removal {
        Ok(()) => Ok(true),
        Err(e) => {
            if source_gone(&source_state_now(ec2, instance_id).await?) {
                tracing::info!(instance_id, error = %e, "already being terminated by another attempt");
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// What `sourceAction` still has to do to the source, given the state it is in now. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStep {
    Leave,
    Stop,
    Terminate,
}

/// States in which the source is gone or going: nothing may be done to it, and a rollback must
/// not throw away the image, which may be the only copy of its data.
pub fn source_gone(state: &str) -> bool {
    matches!(state, "shutting-down" | "terminated")
}

pub fn source_step(action: SourceAction, current: &str) -> SourceStep {
    match action {
        SourceAction::Keep => SourceStep::Leave,
        _ if source_gone(current) => SourceStep::Leave,
        SourceAction::Stop if matches!(current, "stopping" | "stopped") => SourceStep::Leave,
        SourceAction::Stop => SourceStep::Stop,
        SourceAction::Terminate => SourceStep::Terminate,
    }
}

/// An instance's state now (the source's, or one the run made); one EC2 no longer knows is
/// reported as terminated.
pub async fn source_state_now(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<String> {
    Ok(instances::find(ec2, instance_id)
        .await?
        .and_then(|i| i.state()?.name().map(|n| n.as_str().to_string()))
        .unwrap_or_else(|| "terminated".into()))
}

pub async fn complete(
    ec2: &aws_sdk_ec2::Client,
    request: CompleteRequest,
) -> Result<MigrateOutput> {
    let capture = &request.image.capture;
    let new_id = request.instance.instance_id.as_str();
    let source_id = capture.instance_id.as_str();
    if new_id == source_id {
        return Err(Error::AwsApi(
            format!("refusing to treat the source {source_id} as the new instance").into(),
        ));
    }

    // An approved run: the Elastic IP moves now, the first step of the cutover.
    let mut elastic_ip = request.instance.elastic_ip.clone();
    if request.input.cutover == Cutover::Approve {
        if let Some(eip) = &capture.elastic_ip {
            instances::move_address(ec2, eip, new_id).await?;
            elastic_ip = Some(eip.public_ip.clone());
        }
    }

    let success = carry::on_success(capture);
    set_delete_on_termination(ec2, new_id, &success.kept_on_termination, false).await?;
    if success.termination_protection {
        ec2.modify_instance_attribute()
            .instance_id(new_id)
            .disable_api_termination(AttributeBooleanValue::builder().value(true).build())
            .send()
            .await
            .map_err(aws("ModifyInstanceAttribute"))?;
    }
    if success.stop_protection {
        ec2.modify_instance_attribute()
            .instance_id(new_id)
            .disable_api_stop(AttributeBooleanValue::builder().value(true).build())
            .send()
            .await
            .map_err(aws("ModifyInstanceAttribute"))?;
    }

    // The copy runs: the reservation it launched into is no longer needed.
    let released_capacity = if request.image.capacity_reservation_id.is_some() {
        capacity::release(ec2, &request.execution).await?
    } else {
        Vec::new()
    };

    let (deleted_snapshot_ids, leftovers) = if request.input.keep_image {
        (Vec::new(), Vec::new())
    } else {
        retire_image(ec2, &request.image.image_id).await?
    };

    // Last, so that nothing after it can fail and roll back the only copy left running. The
    // source is first stamped with where it went: an operator sees it, and IAM allows stopping
    // and terminating only instances so stamped.
    // Someone else may have stopped or terminated the source during the run: what it is now
    // decides what is left to do.
    let current = source_state_now(ec2, source_id).await?;
    let source_state = match source_step(request.input.source_action, &current) {
        SourceStep::Leave => current,
        SourceStep::Stop => {
            stamp_source(ec2, source_id, new_id).await?;
            let stopped = ec2
                .stop_instances()
                .instance_ids(source_id)
                .send()
                .await
                .map_err(aws("StopInstances"))?;
            changed_state(stopped.stopping_instances(), "stopping")
        }
        SourceStep::Terminate => {
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
        elastic_ip,
        source_instance_id: source_id.to_string(),
        source_action: request.input.source_action,
        source_state,
        not_carried: capture.not_carried.clone(),
        comparison: compare::after_cutover(&request.instance.comparison),
        released_capacity_reservation_ids: released_capacity,
        leftovers,
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
    tags::put(ec2, source_id, tags::MIGRATED_TO, new_id).await
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
    instances::move_address(ec2, eip, &capture.instance_id).await?;
    Ok(Some(capture.instance_id.clone()))
}

pub async fn rollback(
    ec2: &aws_sdk_ec2::Client,
    request: RollbackRequest,
) -> Result<RollbackOutput> {
    let execution = request.execution.as_str();
    let state = &request.state;
    let source_id = request.source_id();
    let mut out = RollbackOutput::default();
    let started_at = ownership::parse_start(request.started_at.as_deref());
    let token = client_token(execution, "launch");
    let run_image_id = state.image.as_ref().map(|i| i.image_id.as_str());
    // The image's name is the run's even before create-image could record the image.
    let run_image_name = state
        .image
        .as_ref()
        .map(|i| i.image_name.clone())
        .or_else(|| source_id.as_deref().map(|s| image_name(s, execution)));
    // Only a source that existed when the run captured it can have been lost since.
    let source_lost = match (&state.image, &source_id) {
        (Some(_), Some(id)) => source_gone(&source_state_now(ec2, id).await?),
        _ => false,
    };

    for instance in &instances::live_of_execution(ec2, execution).await? {
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
        let launched_by_run = run_image_id.is_some_and(|image_id| {
            ownership::is_runs_instance(instance, &token, image_id, started_at.as_ref())
        });
        if !launched_by_run {
            out.leave_alone(id, execution, "the run did not launch it");
            continue;
        }
        if let (Some(image), false) = (&state.image, source_lost) {
            if let Some(restored) = restore_address(ec2, &image.capture, id).await? {
                out.elastic_ip_restored_to = Some(restored);
            }
        }
        let devices: Vec<String> = instance
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.device_name().map(str::to_string))
            .collect();
        if remove_instance(ec2, id, &devices).await? {
            tracing::info!(instance_id = id, execution, "new instance terminated");
            out.terminated_instance_ids.push(id.to_string());
        }
    }

    if state.input["capacity"] == "reserve" {
        out.released_capacity_reservation_ids = capacity::release(ec2, execution).await?;
    }

    let mut image_ids: Vec<String> = Vec::new();
    for image in &images::of_execution(ec2, execution).await? {
        let Some(id) = image.image_id() else {
            continue;
        };
        let made_by_run = Some(id) == run_image_id
            || run_image_name
                .as_deref()
                .is_some_and(|name| ownership::is_runs_image(image, name, source_id.as_deref()));
        if made_by_run {
            image_ids.push(id.to_string());
        } else {
            out.leave_alone(id, execution, "the run did not make it");
        }
    }
    if let Some(image) = &state.image {
        if !image_ids.contains(&image.image_id) {
            image_ids.push(image.image_id.clone());
        }
    }
    if source_lost {
        let source = source_id.as_deref().unwrap_or_default();
        for image_id in &image_ids {
            let reason = format!(
                "source {source} was terminated during the run; this image may be the only copy of its data"
            );
            tags::put(ec2, image_id, tags::KEPT, &reason).await?;
            tracing::warn!(image_id, source, execution, "source gone: image kept");
        }
        out.kept_image_ids = image_ids;
        tracing::info!(execution, removed = ?out, "rollback done");
        return Ok(out);
    }
    for image_id in image_ids {
        let snapshots = remove_image(ec2, &image_id).await?;
        out.deleted_snapshot_ids.extend(snapshots);
        out.deregistered_image_ids.push(image_id);
    }

    let snapshots = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(tags::execution_filter(execution))
        .send()
        .await
        .map_err(aws("DescribeSnapshots"))?;
    for snapshot in snapshots.snapshots() {
        let Some(id) = snapshot.snapshot_id() else {
            continue;
        };
        if out.deleted_snapshot_ids.iter().any(|s| s == id) {
            continue;
        }
        if !ownership::is_snapshot_of(snapshot, &out.deregistered_image_ids) {
            out.leave_alone(id, execution, "it is no snapshot of the run's image");
            continue;
        }
        delete_snapshot(ec2, id).await?;
        out.deleted_snapshot_ids.push(id.to_string());
    }
    tracing::info!(execution, removed = ?out, "rollback done");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_action_left_depends_on_what_the_source_is_now() {
        use SourceStep::*;
        let cases = [
            (SourceAction::Keep, "running", Leave),
            (SourceAction::Stop, "running", Stop),
            (SourceAction::Stop, "stopped", Leave),
            (SourceAction::Stop, "stopping", Leave),
            (SourceAction::Stop, "terminated", Leave),
            (SourceAction::Terminate, "running", Terminate),
            (SourceAction::Terminate, "stopped", Terminate),
            (SourceAction::Terminate, "shutting-down", Leave),
            (SourceAction::Terminate, "terminated", Leave),
        ];
        for (action, now, step) in cases {
            assert_eq!(source_step(action, now), step, "{action:?} on {now}");
        }
        assert!(source_gone("terminated") && !source_gone("stopped"));
    }
}

#[cfg(test)]
mod mocked {
    use super::*;
    use crate::handoff::tests::sample_image;
    use crate::test_support::{image, images, instance_in, reservation};
    use aws_sdk_ec2::operation::associate_address::AssociateAddressOutput;
    use aws_sdk_ec2::operation::create_tags::CreateTagsOutput;
    use aws_sdk_ec2::operation::delete_snapshot::DeleteSnapshotOutput;
    use aws_sdk_ec2::operation::deregister_image::DeregisterImageOutput;
    use aws_sdk_ec2::operation::describe_addresses::DescribeAddressesOutput;
    use aws_sdk_ec2::operation::describe_snapshots::DescribeSnapshotsOutput;
    use aws_sdk_ec2::operation::modify_instance_attribute::ModifyInstanceAttributeOutput;
    use aws_sdk_ec2::operation::stop_instances::StopInstancesOutput;
    use aws_sdk_ec2::operation::terminate_instances::TerminateInstancesOutput;
    use aws_sdk_ec2::types::{
        Address, ImageState, InstanceState, InstanceStateChange, InstanceStateName, Snapshot,
    };
    use aws_sdk_ec2::types::{DeleteSnapshotReturnCode, SnapshotReturnCodes};
    use aws_sdk_ec2::Client;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
    use serde_json::json;

    fn complete_request(action: SourceAction, keep_image: bool) -> CompleteRequest {
        CompleteRequest {
            execution: "run-1".into(),
            input: MigrateInput {
                instance_id: "i-0123456789abcdef0".into(),
                target_availability_zone: Some("us-east-1b".into()),
                target_subnet_id: None,
                instance_type: None,
                no_reboot: false,
                source_action: action,
                keep_image,
                preflight: false,
                cutover: Default::default(),
                approval_timeout_seconds: None,
                capacity: Default::default(),
                target_groups: Default::default(),
            },
            image: sample_image(),
            instance: InstanceProgress {
                instance_id: "i-0new".into(),
                state: "running".into(),
                ready: true,
                attempt: 1,
                wait_seconds: 0,
                elastic_ip: Some("198.51.100.7".into()),
                comparison: Vec::new(),
            },
        }
    }

    fn change(state: InstanceStateName) -> InstanceStateChange {
        InstanceStateChange::builder()
            .instance_id("i-0123456789abcdef0")
            .current_state(InstanceState::builder().name(state).build())
            .build()
    }

    struct Calls {
        no_described_snapshots: Rule,
        modify: Rule,
        describe_images: Rule,
        deregister: Rule,
        delete_snapshot: Rule,
        describe_instances: Rule,
        stamp: Rule,
        stop: Rule,
        terminate: Rule,
    }

    fn calls() -> Calls {
        Calls {
            no_described_snapshots: mock!(Client::describe_snapshots)
                .then_output(|| DescribeSnapshotsOutput::builder().build()),
            modify: mock!(Client::modify_instance_attribute)
                .match_requests(|req| req.instance_id() == Some("i-0new"))
                .then_output(|| ModifyInstanceAttributeOutput::builder().build()),
            describe_images: mock!(Client::describe_images).then_output(|| {
                images(vec![image(
                    "ami-0123456789abcdef0",
                    ImageState::Available,
                    &[("/dev/xvda", "snap-root"), ("/dev/sdf", "snap-data")],
                )])
            }),
            deregister: mock!(Client::deregister_image)
                .then_output(|| DeregisterImageOutput::builder().build()),
            delete_snapshot: mock!(Client::delete_snapshot)
                .then_output(|| DeleteSnapshotOutput::builder().build()),
            describe_instances: mock!(Client::describe_instances).then_output(|| {
                reservation(vec![instance_in(
                    "i-0123456789abcdef0",
                    InstanceStateName::Running,
                )])
            }),
            stamp: mock!(Client::create_tags)
                .match_requests(|req| {
                    req.resources() == ["i-0123456789abcdef0"]
                        && req.tags()[0].key() == Some(tags::MIGRATED_TO)
                        && req.tags()[0].value() == Some("i-0new")
                })
                .then_output(|| CreateTagsOutput::builder().build()),
            stop: mock!(Client::stop_instances).then_output(|| {
                StopInstancesOutput::builder()
                    .stopping_instances(change(InstanceStateName::Stopping))
                    .build()
            }),
            terminate: mock!(Client::terminate_instances).then_output(|| {
                TerminateInstancesOutput::builder()
                    .terminating_instances(change(InstanceStateName::ShuttingDown))
                    .build()
            }),
        }
    }

    fn client(c: &Calls) -> Client {
        mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [
                &c.no_described_snapshots,
                &c.modify,
                &c.describe_images,
                &c.deregister,
                &c.delete_snapshot,
                &c.describe_instances,
                &c.stamp,
                &c.stop,
                &c.terminate
            ]
        )
    }

    #[tokio::test]
    async fn a_snapshot_ec2_would_not_delete_is_a_leftover_not_a_rollback() {
        let mut c = calls();
        c.deregister = mock!(Client::deregister_image)
            .match_requests(|req| req.delete_associated_snapshots() == Some(true))
            .then_output(|| {
                DeregisterImageOutput::builder()
                    .delete_snapshot_results(
                        DeleteSnapshotReturnCode::builder()
                            .snapshot_id("snap-root")
                            .return_code(SnapshotReturnCodes::Success)
                            .build(),
                    )
                    .delete_snapshot_results(
                        DeleteSnapshotReturnCode::builder()
                            .snapshot_id("snap-data")
                            .return_code(SnapshotReturnCodes::ErrorMissingPermissions)
                            .build(),
                    )
                    .build()
            });
        let out = complete(&client(&c), complete_request(SourceAction::Stop, false))
            .await
            .unwrap();
        assert_eq!(out.deleted_snapshot_ids, ["snap-root"]);
        assert_eq!(out.leftovers.len(), 1);
        assert_eq!(out.leftovers[0].resource_id, "snap-data");
        assert!(out.leftovers[0].reason.contains("missing-permissions"));
        // One call removed the image and its snapshots; the source action still happened.
        assert_eq!(c.delete_snapshot.num_calls(), 0);
        assert_eq!([c.stamp.num_calls(), c.stop.num_calls()], [1, 1]);
    }

    #[tokio::test]
    async fn complete_keeps_the_source_and_removes_the_image() {
        let c = calls();
        let out = complete(&client(&c), complete_request(SourceAction::Keep, false))
            .await
            .unwrap();
        assert_eq!(out.source_state, "running");
        assert_eq!(out.deleted_snapshot_ids, ["snap-root", "snap-data"]);
        assert!(!out.image_kept);
        assert_eq!(out.elastic_ip.as_deref(), Some("198.51.100.7"));
        // delete-on-termination restored for /dev/sdf, and termination protection (the sample has it).
        assert_eq!(c.modify.num_calls(), 2);
        assert_eq!(
            [c.deregister.num_calls(), c.delete_snapshot.num_calls()],
            [1, 2]
        );
        assert_eq!(
            [
                c.stamp.num_calls(),
                c.stop.num_calls(),
                c.terminate.num_calls()
            ],
            [0, 0, 0]
        );
    }

    #[tokio::test]
    async fn complete_stamps_then_stops_or_terminates_the_source_and_can_keep_the_image() {
        let c = calls();
        let out = complete(&client(&c), complete_request(SourceAction::Stop, true))
            .await
            .unwrap();
        assert_eq!(
            (out.source_state.as_str(), out.image_kept),
            ("stopping", true)
        );
        assert_eq!(
            [
                c.stamp.num_calls(),
                c.stop.num_calls(),
                c.deregister.num_calls()
            ],
            [1, 1, 0]
        );

        let c = calls();
        let out = complete(
            &client(&c),
            complete_request(SourceAction::Terminate, false),
        )
        .await
        .unwrap();
        assert_eq!(out.source_state, "shutting-down");
        assert_eq!([c.stamp.num_calls(), c.terminate.num_calls()], [1, 1]);
    }

    #[tokio::test]
    async fn complete_never_treats_the_source_as_the_new_instance() {
        let c = calls();
        let mut request = complete_request(SourceAction::Terminate, false);
        request.instance.instance_id = "i-0123456789abcdef0".into();
        assert!(complete(&client(&c), request).await.is_err());
        assert_eq!(c.terminate.num_calls(), 0);
    }

    /// The instance run-1 launched: from its image, with its ClientToken.
    fn launched_by_run(id: &str, state: InstanceStateName) -> aws_sdk_ec2::types::Instance {
        let mut instance = instance_in(id, state);
        instance.client_token = Some(client_token("run-1", "launch"));
        instance.image_id = Some("ami-0123456789abcdef0".into());
        instance
    }

    fn rollback_request(with_image: bool) -> RollbackRequest {
        RollbackRequest {
            execution: "run-1".into(),
            started_at: None,
            state: RunState {
                input: json!({"instanceId": "i-0123456789abcdef0"}),
                image: with_image.then(sample_image),
                targets: None,
            },
        }
    }

    #[tokio::test]
    async fn rollback_removes_the_runs_resources_and_never_the_source() {
        let describe = mock!(Client::describe_instances).then_output(|| {
            let mut new = launched_by_run("i-0new", InstanceStateName::Running);
            new.block_device_mappings = Some(vec![
                aws_sdk_ec2::types::InstanceBlockDeviceMapping::builder()
                    .device_name("/dev/sdf")
                    .build(),
            ]);
            // Someone tagged an instance of theirs with the run's execution: not the run's.
            let mut victim = instance_in("i-0victim", InstanceStateName::Running);
            victim.image_id = Some("ami-0123456789abcdef0".into());
            reservation(vec![
                new,
                victim,
                instance_in("i-0123456789abcdef0", InstanceStateName::Running),
            ])
        });
        let addresses = mock!(Client::describe_addresses).then_output(|| {
            DescribeAddressesOutput::builder()
                .addresses(
                    Address::builder()
                        .allocation_id("eipalloc-01234567")
                        .instance_id("i-0new")
                        .build(),
                )
                .build()
        });
        let associate = mock!(Client::associate_address)
            .match_requests(|req| req.instance_id() == Some("i-0123456789abcdef0"))
            .then_output(|| AssociateAddressOutput::builder().build());
        let modify = mock!(Client::modify_instance_attribute)
            .match_requests(|req| req.instance_id() == Some("i-0new"))
            .then_output(|| ModifyInstanceAttributeOutput::builder().build());
        let terminate = mock!(Client::terminate_instances)
            .match_requests(|req| req.instance_ids() == ["i-0new"])
            .then_output(|| TerminateInstancesOutput::builder().build());
        let c = calls();
        let snapshots = mock!(Client::describe_snapshots).then_compute_output(|req| {
            let by_description = req
                .filters()
                .iter()
                .any(|f| f.name() == Some("description"));
            if by_description {
                // EC2 answers the image's own snapshots for "*ami-…*".
                return DescribeSnapshotsOutput::builder().build();
            }
            DescribeSnapshotsOutput::builder()
                .snapshots(Snapshot::builder().snapshot_id("snap-root").build())
                .snapshots(
                    Snapshot::builder()
                        .snapshot_id("snap-orphan")
                        .description(
                            "Created by CreateImage(i-0123456789abcdef0) for ami-0123456789abcdef0",
                        )
                        .build(),
                )
                .snapshots(
                    Snapshot::builder()
                        .snapshot_id("snap-victim")
                        .description("nightly backup")
                        .build(),
                )
                .build()
        });
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [
                &describe,
                &addresses,
                &associate,
                &modify,
                &terminate,
                &c.describe_images,
                &c.deregister,
                &c.delete_snapshot,
                &snapshots
            ]
        );
        let out = rollback(&ec2, rollback_request(true)).await.unwrap();
        assert_eq!(out.terminated_instance_ids, ["i-0new"]);
        assert_eq!(
            out.elastic_ip_restored_to.as_deref(),
            Some("i-0123456789abcdef0")
        );
        assert_eq!(out.deregistered_image_ids, ["ami-0123456789abcdef0"]);
        assert_eq!(
            out.deleted_snapshot_ids,
            ["snap-root", "snap-data", "snap-orphan"]
        );
        assert_eq!(terminate.num_calls(), 1);
        // delete-on-termination for every volume, then termination protection off: on the
        // run's instance only (the rule matches i-0new alone).
        assert_eq!(modify.num_calls(), 2);
        assert_eq!(out.left_alone_ids, ["i-0victim", "snap-victim"]);
    }

    #[tokio::test]
    async fn a_source_terminated_by_someone_else_keeps_the_image_and_says_why() {
        let describe = mock!(Client::describe_instances).then_output(|| {
            reservation(vec![
                launched_by_run("i-0new", InstanceStateName::Running),
                instance_in("i-0123456789abcdef0", InstanceStateName::Terminated),
            ])
        });
        let modify = mock!(Client::modify_instance_attribute)
            .then_output(|| ModifyInstanceAttributeOutput::builder().build());
        let terminate = mock!(Client::terminate_instances)
            .match_requests(|req| req.instance_ids() == ["i-0new"])
            .then_output(|| TerminateInstancesOutput::builder().build());
        let kept = mock!(Client::create_tags)
            .match_requests(|req| {
                req.resources() == ["ami-0123456789abcdef0"]
                    && req.tags()[0].key() == Some(tags::KEPT)
                    && req.tags()[0]
                        .value()
                        .is_some_and(|v| v.starts_with("source i-0123456789abcdef0 was terminated"))
            })
            .then_output(|| CreateTagsOutput::builder().build());
        let c = calls();
        let associate = mock!(Client::associate_address)
            .then_output(|| AssociateAddressOutput::builder().build());
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [
                &describe,
                &modify,
                &terminate,
                &kept,
                &associate,
                &c.describe_images,
                &c.deregister,
                &c.delete_snapshot
            ]
        );
        let out = rollback(&ec2, rollback_request(true)).await.unwrap();
        assert_eq!(out.terminated_instance_ids, ["i-0new"]);
        assert_eq!(out.kept_image_ids, ["ami-0123456789abcdef0"]);
        assert!(out.deregistered_image_ids.is_empty() && out.deleted_snapshot_ids.is_empty());
        assert_eq!(out.elastic_ip_restored_to, None);
        assert_eq!(
            [
                kept.num_calls(),
                c.deregister.num_calls(),
                c.delete_snapshot.num_calls(),
                associate.num_calls()
            ],
            [1, 0, 0, 0]
        );
    }

    /// A rollback whose ModifyInstanceAttribute is refused for the new instance, which is in
    /// state `now` when the rollback looks again. Answers the result and TerminateInstances calls.
    async fn rollback_refused_while(now: InstanceStateName) -> (Result<RollbackOutput>, usize) {
        let listed = mock!(Client::describe_instances)
            .match_requests(|r| !r.filters().is_empty())
            .then_output(|| {
                reservation(vec![launched_by_run("i-0new", InstanceStateName::Running)])
            });
        let again = mock!(Client::describe_instances)
            .match_requests(|r| r.instance_ids() == ["i-0new"])
            .then_output(move || reservation(vec![instance_in("i-0new", now.clone())]));
        let source = mock!(Client::describe_instances).then_output(|| {
            reservation(vec![instance_in(
                "i-0123456789abcdef0",
                InstanceStateName::Running,
            )])
        });
        let refused = mock!(Client::modify_instance_attribute).then_error(|| {
            aws_sdk_ec2::operation::modify_instance_attribute::ModifyInstanceAttributeError::generic(
                crate::test_support::meta("IncorrectInstanceState"),
            )
        });
        let terminate = mock!(Client::terminate_instances)
            .then_output(|| TerminateInstancesOutput::builder().build());
        let addresses = mock!(Client::describe_addresses)
            .then_output(|| DescribeAddressesOutput::builder().build());
        let no_images = mock!(Client::describe_images).then_output(|| images(vec![]));
        let no_snapshots = mock!(Client::describe_snapshots)
            .then_output(|| DescribeSnapshotsOutput::builder().build());
        let deregister = mock!(Client::deregister_image)
            .then_output(|| DeregisterImageOutput::builder().build());
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [
                &listed,
                &again,
                &source,
                &refused,
                &terminate,
                &addresses,
                &no_images,
                &no_snapshots,
                &deregister
            ]
        );
        let out = rollback(&ec2, rollback_request(true)).await;
        (out, terminate.num_calls())
    }

    #[tokio::test]
    async fn a_rollback_racing_another_counts_the_instance_it_terminated_as_removed() {
        let (out, terminations) = rollback_refused_while(InstanceStateName::ShuttingDown).await;
        let out = out.unwrap();
        assert!(out.terminated_instance_ids.is_empty(), "{out:?}");
        assert_eq!(terminations, 0);
        // An instance still running when a change is refused is an error, not a success.
        let (out, _) = rollback_refused_while(InstanceStateName::Running).await;
        assert_eq!(out.unwrap_err().name(), "AwsApi");
    }

    #[tokio::test]
    async fn complete_does_nothing_to_a_source_someone_else_stopped_or_terminated() {
        for (now, action) in [
            (InstanceStateName::Stopped, SourceAction::Stop),
            (InstanceStateName::Terminated, SourceAction::Stop),
            (InstanceStateName::Terminated, SourceAction::Terminate),
        ] {
            let mut c = calls();
            let state = now.clone();
            c.describe_instances = mock!(Client::describe_instances).then_output(move || {
                reservation(vec![instance_in("i-0123456789abcdef0", state.clone())])
            });
            let out = complete(&client(&c), complete_request(action, false))
                .await
                .unwrap();
            assert_eq!(out.source_state, now.as_str());
            assert_eq!(
                [
                    c.stamp.num_calls(),
                    c.stop.num_calls(),
                    c.terminate.num_calls()
                ],
                [0, 0, 0],
                "{action:?} on {now:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_removal_retried_after_deregistration_still_deletes_the_snapshots() {
        let gone = mock!(Client::describe_images).then_output(|| images(vec![]));
        let described = mock!(Client::describe_snapshots)
            .match_requests(|r| {
                r.filters()
                    .iter()
                    .any(|f| f.name() == Some("description") && f.values() == ["*ami-0abc*"])
            })
            .then_output(|| {
                DescribeSnapshotsOutput::builder()
                    .snapshots(Snapshot::builder().snapshot_id("snap-left").build())
                    .build()
            });
        let deregister = mock!(Client::deregister_image).then_error(|| {
            aws_sdk_ec2::operation::deregister_image::DeregisterImageError::generic(
                crate::test_support::meta("InvalidAMIID.Unavailable"),
            )
        });
        let delete = mock!(Client::delete_snapshot)
            .match_requests(|r| r.snapshot_id() == Some("snap-left"))
            .then_output(|| DeleteSnapshotOutput::builder().build());
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [&gone, &described, &deregister, &delete]
        );
        assert_eq!(remove_image(&ec2, "ami-0abc").await.unwrap(), ["snap-left"]);
        assert_eq!(delete.num_calls(), 1);
    }

    #[tokio::test]
    async fn rollback_of_a_run_that_made_nothing_changes_nothing() {
        let describe = mock!(Client::describe_instances).then_output(|| reservation(vec![]));
        let no_images = mock!(Client::describe_images).then_output(|| images(vec![]));
        let no_snapshots = mock!(Client::describe_snapshots)
            .then_output(|| DescribeSnapshotsOutput::builder().build());
        let terminate = mock!(Client::terminate_instances)
            .then_output(|| TerminateInstancesOutput::builder().build());
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [&describe, &no_images, &no_snapshots, &terminate]
        );
        let out = rollback(&ec2, rollback_request(false)).await.unwrap();
        assert_eq!(out, RollbackOutput::default());
        assert_eq!(terminate.num_calls(), 0);
    }
}
