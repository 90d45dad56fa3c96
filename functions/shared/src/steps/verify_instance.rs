//! verify-instance: one check of the new instance per call (the state machine waits between
//! calls). Once the instance runs and passes both status checks, it applies what RunInstances
//! cannot take — per-volume tags, the source/destination check — and moves the Elastic IP.

use aws_sdk_ec2::types::{AttributeBooleanValue, Filter};
use serde::Deserialize;

use crate::carry;
use crate::compare::{compare, Compared};
use crate::error::{aws, Error, Result};
use crate::handoff::CreateImageOutput;
use crate::handoff::InstanceProgress;
use crate::input::Cutover;
use crate::resources::instances;
use crate::settings::{PollPolicy, Settings};
use crate::tags::Tag;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRequest {
    pub execution: String,
    pub image: CreateImageOutput,
    pub instance: InstanceProgress,
}

/// What one look at the instance says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assessment {
    Ready,
    Waiting,
    Failed(Error),
}

/// The instance's state and status checks, read as a verdict. Pure.
pub fn assess(
    instance_id: &str,
    state: &str,
    reason_code: Option<&str>,
    reason_message: Option<&str>,
    system_status: Option<&str>,
    instance_status: Option<&str>,
) -> Assessment {
    match state {
        "pending" => Assessment::Waiting,
        "running" => match (system_status, instance_status) {
            (Some("ok"), Some("ok")) => Assessment::Ready,
            (Some("impaired"), _) | (_, Some("impaired")) => Assessment::Failed(Error::StatusCheckFailed(format!(
                "{instance_id} is running but its status checks are impaired (system: {}, instance: {})",
                system_status.unwrap_or("unknown"),
                instance_status.unwrap_or("unknown")
            ).into())),
            _ => Assessment::Waiting,
        },
        other => Assessment::Failed(Error::LaunchFailed(format!(
            "{instance_id} went {other} during launch: {}: {}",
            reason_code.unwrap_or("no state reason"),
            reason_message.unwrap_or("")
        ).into())),
    }
}

/// The next check's progress, or a time-out once the policy's limit is spent.
pub fn next_check(
    progress: &InstanceProgress,
    state: &str,
    policy: &PollPolicy,
) -> Result<InstanceProgress> {
    let attempt = progress.attempt + 1;
    let wait = policy.next_wait(attempt).ok_or_else(|| {
        Error::InstanceWaitTimedOut(
            format!(
                "{} was not running with both status checks passed after {} s (last state {state})",
                progress.instance_id,
                policy.waited_before(attempt)
            )
            .into(),
        )
    })?;
    Ok(InstanceProgress {
        state: state.to_string(),
        attempt,
        wait_seconds: wait,
        ..progress.clone()
    })
}

async fn finalize(
    ec2: &aws_sdk_ec2::Client,
    request: &VerifyRequest,
    instance: &aws_sdk_ec2::types::Instance,
) -> Result<Option<String>> {
    let instance_id = request.instance.instance_id.as_str();
    let capture = &request.image.capture;
    let new_volumes: Vec<(String, String)> = instance
        .block_device_mappings()
        .iter()
        .filter_map(|m| {
            Some((
                m.device_name()?.to_string(),
                m.ebs()?.volume_id()?.to_string(),
            ))
        })
        .collect();
    for (volume_id, tags) in carry::volume_tags(&request.image, &new_volumes, &request.execution) {
        ec2.create_tags()
            .resources(&volume_id)
            .set_tags(Some(tags.iter().map(Tag::to_sdk).collect()))
            .send()
            .await
            .map_err(aws("CreateTags"))?;
    }
    let healthy = carry::when_healthy(capture);
    if healthy.source_dest_check_off {
        ec2.modify_instance_attribute()
            .instance_id(instance_id)
            .source_dest_check(AttributeBooleanValue::builder().value(false).build())
            .send()
            .await
            .map_err(aws("ModifyInstanceAttribute"))?;
    }
    let Some(eip) = &healthy.elastic_ip else {
        return Ok(None);
    };
    if request.image.cutover == Cutover::Approve {
        // The source keeps its address until the run is approved.
        return Ok(None);
    }
    instances::move_address(ec2, eip, instance_id).await?;
    Ok(Some(eip.public_ip.clone()))
}

/// The source beside the verified copy. A copy that cannot be read leaves it empty: it informs
/// the operator, and is no reason to undo a verified migration.
async fn comparison(ec2: &aws_sdk_ec2::Client, request: &VerifyRequest) -> Vec<Compared> {
    match instances::read_source(ec2, &request.instance.instance_id).await {
        Ok(copy) => compare(
            &request.image.capture,
            &copy,
            request.image.cutover == Cutover::Auto,
        ),
        Err(e) => {
            tracing::warn!(instance_id = %request.instance.instance_id, error = %e, "could not read the copy to compare it");
            Vec::new()
        }
    }
}

pub async fn run(
    ec2: &aws_sdk_ec2::Client,
    settings: &Settings,
    request: VerifyRequest,
) -> Result<InstanceProgress> {
    let instance_id = request.instance.instance_id.as_str();
    // EC2 is eventually consistent: an instance just launched may not be found yet. It is still
    // pending; the wait ends at InstanceWaitLimitSeconds if it never shows.
    let Some(instance) = instances::find(ec2, instance_id).await? else {
        tracing::info!(instance_id, "not visible yet");
        return next_check(&request.instance, "pending", &settings.instance_poll);
    };
    let state = instance
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str())
        .unwrap_or("pending");
    let (system, checks) = if state == "running" {
        let status = ec2
            .describe_instance_status()
            .instance_ids(instance_id)
            .include_all_instances(true)
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("running")
                    .build(),
            )
            .send()
            .await
            .map_err(aws("DescribeInstanceStatus"))?;
        let s = status.instance_statuses().first();
        (
            s.and_then(|s| s.system_status())
                .and_then(|x| x.status())
                .map(|x| x.as_str().to_string()),
            s.and_then(|s| s.instance_status())
                .and_then(|x| x.status())
                .map(|x| x.as_str().to_string()),
        )
    } else {
        (None, None)
    };
    let reason = instance.state_reason();
    match assess(
        instance_id,
        state,
        reason.and_then(|r| r.code()),
        reason.and_then(|r| r.message()),
        system.as_deref(),
        checks.as_deref(),
    ) {
        Assessment::Failed(e) => Err(e),
        Assessment::Waiting => {
            tracing::info!(instance_id, state, system = ?system, instance = ?checks, "not ready yet");
            next_check(&request.instance, state, &settings.instance_poll)
        }
        Assessment::Ready => {
            let elastic_ip = finalize(ec2, &request, &instance).await?;
            tracing::info!(instance_id, "instance verified");
            Ok(InstanceProgress {
                state: state.to_string(),
                ready: true,
                wait_seconds: 0,
                elastic_ip,
                comparison: comparison(ec2, &request).await,
                ..request.instance.clone()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::settings::DEFAULT_INSTANCE_POLL;

    #[test]
    fn verdicts() {
        assert_eq!(
            assess("i-1", "pending", None, None, None, None),
            Assessment::Waiting
        );
        assert_eq!(
            assess(
                "i-1",
                "running",
                None,
                None,
                Some("initializing"),
                Some("ok")
            ),
            Assessment::Waiting
        );
        assert_eq!(
            assess("i-1", "running", None, None, Some("ok"), Some("ok")),
            Assessment::Ready
        );
        let Assessment::Failed(e) =
            assess("i-1", "running", None, None, Some("ok"), Some("impaired"))
        else {
            panic!()
        };
        assert_eq!(e.name(), "StatusCheckFailed");
        let Assessment::Failed(e) = assess(
            "i-1",
            "terminated",
            Some("Client.InvalidKMSKey.InvalidState"),
            Some("The KMS key provided is in an incorrect state"),
            None,
            None,
        ) else {
            panic!()
        };
        assert_eq!(e.name(), "LaunchFailed");
        assert!(
            e.to_string().contains("Client.InvalidKMSKey.InvalidState"),
            "{e}"
        );
    }

    #[test]
    fn checks_back_off_and_time_out() {
        let p = InstanceProgress {
            instance_id: "i-1".into(),
            state: "pending".into(),
            ready: false,
            attempt: 0,
            wait_seconds: 10,
            elastic_ip: None,
            comparison: Vec::new(),
        };
        let next = next_check(&p, "pending", &DEFAULT_INSTANCE_POLL).unwrap();
        assert_eq!((next.attempt, next.wait_seconds), (1, 20));
        let late = InstanceProgress { attempt: 200, ..p };
        assert_eq!(
            next_check(&late, "running", &DEFAULT_INSTANCE_POLL)
                .unwrap_err()
                .name(),
            "InstanceWaitTimedOut"
        );
    }
}

#[cfg(test)]
mod mocked {
    use super::*;
    use crate::handoff::tests::sample_image;
    use crate::test_support::{instance_in, reservation};
    use aws_sdk_ec2::operation::associate_address::AssociateAddressOutput;
    use aws_sdk_ec2::operation::create_tags::CreateTagsOutput;
    use aws_sdk_ec2::operation::describe_instance_status::DescribeInstanceStatusOutput;
    use aws_sdk_ec2::operation::modify_instance_attribute::ModifyInstanceAttributeOutput;
    use aws_sdk_ec2::types::{
        EbsInstanceBlockDevice, InstanceBlockDeviceMapping, InstanceStateName, InstanceStatus,
        InstanceStatusSummary, StateReason, SummaryStatus,
    };
    use aws_sdk_ec2::Client;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};

    fn request() -> VerifyRequest {
        VerifyRequest {
            execution: "run-1".into(),
            image: sample_image(),
            instance: InstanceProgress {
                instance_id: "i-0new".into(),
                state: "pending".into(),
                ready: false,
                attempt: 0,
                wait_seconds: 10,
                elastic_ip: None,
                comparison: Vec::new(),
            },
        }
    }

    fn settings() -> Settings {
        Settings::from_vars(|_| None).unwrap()
    }

    fn running_with_volumes() -> aws_sdk_ec2::types::Instance {
        let mut i = instance_in("i-0new", InstanceStateName::Running);
        i.block_device_mappings = Some(
            [("/dev/xvda", "vol-new-root"), ("/dev/sdf", "vol-new-data")]
                .iter()
                .map(|(d, v)| {
                    InstanceBlockDeviceMapping::builder()
                        .device_name(*d)
                        .ebs(EbsInstanceBlockDevice::builder().volume_id(*v).build())
                        .build()
                })
                .collect(),
        );
        i.vpc_id = Some("vpc-01234567".into());
        i.subnet_id = Some("subnet-0bbbbbbb".into());
        i.placement = Some(
            aws_sdk_ec2::types::Placement::builder()
                .availability_zone("us-east-1b")
                .build(),
        );
        i
    }

    /// The reads that take the verified copy's capture, for the comparison.
    fn copy_reads() -> Vec<Rule> {
        use aws_sdk_ec2::operation::describe_addresses::DescribeAddressesOutput;
        use aws_sdk_ec2::operation::describe_instance_attribute::DescribeInstanceAttributeOutput;
        use aws_sdk_ec2::operation::describe_instance_credit_specifications::DescribeInstanceCreditSpecificationsOutput;
        use aws_sdk_ec2::operation::describe_volumes::DescribeVolumesOutput;
        vec![
            mock!(Client::describe_volumes).then_output(|| {
                DescribeVolumesOutput::builder()
                    .volumes(
                        aws_sdk_ec2::types::Volume::builder()
                            .volume_id("vol-new-root")
                            .size(8)
                            .build(),
                    )
                    .volumes(
                        aws_sdk_ec2::types::Volume::builder()
                            .volume_id("vol-new-data")
                            .size(20)
                            .build(),
                    )
                    .build()
            }),
            mock!(Client::describe_instance_attribute)
                .then_output(|| DescribeInstanceAttributeOutput::builder().build()),
            mock!(Client::describe_addresses)
                .then_output(|| DescribeAddressesOutput::builder().build()),
            mock!(Client::describe_instance_credit_specifications)
                .then_output(|| DescribeInstanceCreditSpecificationsOutput::builder().build()),
        ]
    }

    fn status(system: SummaryStatus, instance: SummaryStatus) -> Rule {
        mock!(Client::describe_instance_status).then_output(move || {
            DescribeInstanceStatusOutput::builder()
                .instance_statuses(
                    InstanceStatus::builder()
                        .system_status(
                            InstanceStatusSummary::builder()
                                .status(system.clone())
                                .build(),
                        )
                        .instance_status(
                            InstanceStatusSummary::builder()
                                .status(instance.clone())
                                .build(),
                        )
                        .build(),
                )
                .build()
        })
    }

    #[tokio::test]
    async fn pending_waits_longer_next_time() {
        let rules = [mock!(Client::describe_instances)
            .then_output(|| reservation(vec![instance_in("i-0new", InstanceStateName::Pending)]))];
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &rules);
        let out = run(&ec2, &settings(), request()).await.unwrap();
        assert_eq!((out.ready, out.attempt, out.wait_seconds), (false, 1, 20));
    }

    #[tokio::test]
    async fn an_instance_not_visible_yet_is_still_pending() {
        let rules = [mock!(Client::describe_instances).then_error(|| {
            aws_sdk_ec2::operation::describe_instances::DescribeInstancesError::generic(
                crate::test_support::meta("InvalidInstanceID.NotFound"),
            )
        })];
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &rules);
        let out = run(&ec2, &settings(), request()).await.unwrap();
        assert_eq!(
            (out.ready, out.state.as_str(), out.attempt),
            (false, "pending", 1)
        );
    }

    #[tokio::test]
    async fn initializing_checks_keep_waiting() {
        let rules = [
            mock!(Client::describe_instances)
                .then_output(|| reservation(vec![running_with_volumes()])),
            status(SummaryStatus::Initializing, SummaryStatus::Ok),
        ];
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &rules);
        assert!(!run(&ec2, &settings(), request()).await.unwrap().ready);
    }

    #[tokio::test]
    async fn healthy_instance_gets_volume_tags_source_dest_check_and_the_elastic_ip() {
        let tags = mock!(Client::create_tags)
            .match_requests(|req| {
                req.resources() == ["vol-new-data"]
                    && req.tags().iter().any(|t| t.key() == Some("role"))
            })
            .then_output(|| CreateTagsOutput::builder().build());
        let modify = mock!(Client::modify_instance_attribute)
            .match_requests(|req| req.source_dest_check().and_then(|v| v.value()) == Some(false))
            .then_output(|| ModifyInstanceAttributeOutput::builder().build());
        let associate = mock!(Client::associate_address)
            .match_requests(|req| {
                req.allocation_id() == Some("eipalloc-01234567")
                    && req.instance_id() == Some("i-0new")
                    && req.allow_reassociation() == Some(true)
            })
            .then_output(|| {
                AssociateAddressOutput::builder()
                    .association_id("eipassoc-1")
                    .build()
            });
        let mut rules = vec![
            mock!(Client::describe_instances)
                .then_output(|| reservation(vec![running_with_volumes()])),
            status(SummaryStatus::Ok, SummaryStatus::Ok),
            tags,
            modify,
            associate,
        ];
        rules.extend(copy_reads());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &rules);
        let out = run(&ec2, &settings(), request()).await.unwrap();
        assert!(out.ready);
        assert_eq!(out.elastic_ip.as_deref(), Some("198.51.100.7"));
        assert_eq!(
            [
                rules[2].num_calls(),
                rules[3].num_calls(),
                rules[4].num_calls()
            ],
            [1, 1, 1]
        );
        // The copy read back beside the source (the sample source is in us-east-1a).
        let az = out
            .comparison
            .iter()
            .find(|r| r.setting == "Availability Zone")
            .expect("the comparison has the AZ");
        assert_eq!(az.source, "us-east-1a");
    }

    #[tokio::test]
    async fn an_approve_run_keeps_the_elastic_ip_on_the_source_until_approved() {
        let associate = mock!(Client::associate_address)
            .then_output(|| AssociateAddressOutput::builder().build());
        let mut rules = vec![
            mock!(Client::describe_instances)
                .then_output(|| reservation(vec![running_with_volumes()])),
            status(SummaryStatus::Ok, SummaryStatus::Ok),
            mock!(Client::create_tags).then_output(|| CreateTagsOutput::builder().build()),
            mock!(Client::modify_instance_attribute)
                .then_output(|| ModifyInstanceAttributeOutput::builder().build()),
            associate,
        ];
        rules.extend(copy_reads());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &rules);
        let mut req = request();
        req.image.cutover = Cutover::Approve;
        let out = run(&ec2, &settings(), req).await.unwrap();
        assert!(out.ready);
        assert_eq!(out.elastic_ip, None);
        assert_eq!(
            rules[4].num_calls(),
            0,
            "no AssociateAddress before the approval"
        );
        let eip = out
            .comparison
            .iter()
            .find(|r| r.setting == "Elastic IP")
            .expect("the source has an Elastic IP");
        assert_eq!(eip.status, crate::compare::Status::AtCutover);
    }

    #[tokio::test]
    async fn a_terminated_launch_reports_its_state_reason() {
        let rules = [mock!(Client::describe_instances).then_output(|| {
            let mut i = instance_in("i-0new", InstanceStateName::Terminated);
            i.state_reason = Some(
                StateReason::builder()
                    .code("Client.InvalidKMSKey.InvalidState")
                    .message("The KMS key provided is in an incorrect state")
                    .build(),
            );
            reservation(vec![i])
        })];
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &rules);
        let err = run(&ec2, &settings(), request()).await.unwrap_err();
        assert_eq!(err.name(), "LaunchFailed");
        assert!(
            err.to_string().contains(
                "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn impaired_checks_fail_the_run() {
        let rules = [
            mock!(Client::describe_instances)
                .then_output(|| reservation(vec![running_with_volumes()])),
            status(SummaryStatus::Ok, SummaryStatus::Impaired),
        ];
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &rules);
        assert_eq!(
            run(&ec2, &settings(), request()).await.unwrap_err().name(),
            "StatusCheckFailed"
        );
    }
}
