//! launch: RunInstances from the AMI in the target subnet with the captured settings, once per
//! execution.

use aws_sdk_ec2::types::{
    BlockDeviceMapping, CreditSpecificationRequest, EbsBlockDevice, HttpTokensState,
    IamInstanceProfileSpecification, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceMetadataProtocolState, InstanceMetadataTagsState, InstanceType, Placement,
    ResourceType, ShutdownBehavior, Tenancy, VolumeType,
};
use serde::Deserialize;

use crate::capture::{Capture, MetadataSpec};
use crate::carry::{at_launch, ImageDevice};
use crate::error::{answered_id, aws, Error, Result};
use crate::handoff::CreateImageOutput;
use crate::handoff::InstanceProgress;
use crate::ownership;
use crate::resources::{client_token, images, instances};
use crate::settings::Settings;
use crate::tags::{self};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchRequest {
    pub execution: String,
    pub image: CreateImageOutput,
}

fn metadata_request(m: &MetadataSpec) -> InstanceMetadataOptionsRequest {
    InstanceMetadataOptionsRequest::builder()
        .set_http_tokens(m.http_tokens.as_deref().map(HttpTokensState::from))
        .set_http_put_response_hop_limit(m.http_put_response_hop_limit)
        .set_http_endpoint(
            m.http_endpoint
                .as_deref()
                .map(InstanceMetadataEndpointState::from),
        )
        .set_instance_metadata_tags(
            m.instance_metadata_tags
                .as_deref()
                .map(InstanceMetadataTagsState::from),
        )
        .set_http_protocol_ipv6(
            m.http_protocol_ipv6
                .as_deref()
                .map(InstanceMetadataProtocolState::from),
        )
        .build()
}

/// The instance an earlier attempt of this execution launched, if any is still alive: tagged
/// with the execution, and proved the run's by its ClientToken and image (a tag alone proves
/// nothing).
pub async fn find_own_instance(
    ec2: &aws_sdk_ec2::Client,
    execution: &str,
    image_id: &str,
) -> Result<Option<(String, String)>> {
    let token = client_token(execution, "launch");
    Ok(instances::live_of_execution(ec2, execution)
        .await?
        .iter()
        .filter(|i| ownership::is_runs_instance(i, &token, image_id, None))
        .find_map(|i| {
            Some((
                i.instance_id()?.to_string(),
                i.state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default(),
            ))
        }))
}

async fn image_devices(ec2: &aws_sdk_ec2::Client, image_id: &str) -> Result<Vec<ImageDevice>> {
    let image = images::describe(ec2, image_id).await?;
    Ok(image
        .block_device_mappings()
        .iter()
        .filter_map(|m| {
            let ebs = m.ebs()?;
            Some(ImageDevice {
                device_name: m.device_name()?.to_string(),
                snapshot_id: ebs.snapshot_id().map(str::to_string),
                size_gib: ebs.volume_size(),
            })
        })
        .collect())
}

/// The source's user data, read now (the state holds only a reference to it) and checked
/// against what was captured with the image.
async fn source_user_data(ec2: &aws_sdk_ec2::Client, capture: &Capture) -> Result<Option<String>> {
    let Some(captured) = &capture.user_data else {
        return Ok(None);
    };
    let now = ec2
        .describe_instance_attribute()
        .instance_id(&capture.instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .map_err(aws("DescribeInstanceAttribute"))?
        .user_data()
        .and_then(|v| v.value())
        .map(str::to_string);
    crate::capture::checked_user_data(&capture.instance_id, Some(captured), now)
}

pub async fn run(
    ec2: &aws_sdk_ec2::Client,
    settings: &Settings,
    request: LaunchRequest,
) -> Result<InstanceProgress> {
    let execution = request.execution.as_str();
    let progress = |instance_id: String, state: String| InstanceProgress {
        instance_id,
        state,
        ready: false,
        attempt: 0,
        wait_seconds: settings.instance_poll.interval(0),
        elastic_ip: None,
        comparison: Vec::new(),
    };
    // The three reads do not depend on each other: one round trip's time, not three. An instance
    // this execution launched already decides first, whatever the other two answered.
    let (existing, devices, user_data) = tokio::join!(
        find_own_instance(ec2, execution, &request.image.image_id),
        image_devices(ec2, &request.image.image_id),
        source_user_data(ec2, &request.image.capture),
    );
    if let Some((instance_id, state)) = existing? {
        tracing::info!(instance_id = %instance_id, execution, "instance of this execution exists already");
        return Ok(progress(instance_id, state));
    }
    let (devices, user_data) = (devices?, user_data?);
    let plan = at_launch(&request.image, &devices, user_data, execution);

    let mappings: Vec<BlockDeviceMapping> = plan
        .block_devices
        .iter()
        .map(|d| {
            BlockDeviceMapping::builder()
                .device_name(&d.device_name)
                .ebs(
                    EbsBlockDevice::builder()
                        .set_snapshot_id(d.snapshot_id.clone())
                        .volume_size(d.size_gib)
                        .set_volume_type(d.volume_type.as_deref().map(VolumeType::from))
                        .set_iops(d.iops)
                        .set_throughput(d.throughput)
                        .delete_on_termination(true)
                        .build(),
                )
                .build()
        })
        .collect();
    let mut call = ec2
        .run_instances()
        .image_id(&plan.image_id)
        .instance_type(InstanceType::from(plan.instance_type.as_str()))
        .subnet_id(&plan.subnet_id)
        .min_count(1)
        .max_count(1)
        .client_token(&plan.client_token)
        .set_security_group_ids(Some(plan.security_group_ids.clone()))
        .set_key_name(plan.key_name.clone())
        .set_user_data(plan.user_data.clone())
        .set_block_device_mappings(Some(mappings))
        .monitoring(
            aws_sdk_ec2::types::RunInstancesMonitoringEnabled::builder()
                .enabled(plan.detailed_monitoring)
                .build(),
        )
        .ebs_optimized(plan.ebs_optimized)
        .set_instance_initiated_shutdown_behavior(
            plan.shutdown_behavior
                .as_deref()
                .map(ShutdownBehavior::from),
        )
        .tag_specifications(tags::spec(ResourceType::Instance, &plan.instance_tags))
        .tag_specifications(tags::spec(ResourceType::Volume, &plan.volume_tags));
    if let Some(arn) = &plan.iam_instance_profile_arn {
        call =
            call.iam_instance_profile(IamInstanceProfileSpecification::builder().arn(arn).build());
    }
    if let Some(m) = &plan.metadata {
        call = call.metadata_options(metadata_request(m));
    }
    if let Some(credits) = &plan.cpu_credits {
        call = call.credit_specification(
            CreditSpecificationRequest::builder()
                .cpu_credits(credits)
                .build(),
        );
    }
    if let Some(tenancy) = &plan.tenancy {
        call = call.placement(
            Placement::builder()
                .tenancy(Tenancy::from(tenancy.as_str()))
                .build(),
        );
    }
    if let Some(reservation) = &plan.capacity_reservation_id {
        call = call.capacity_reservation_specification(
            aws_sdk_ec2::types::CapacityReservationSpecification::builder()
                .capacity_reservation_target(
                    aws_sdk_ec2::types::CapacityReservationTarget::builder()
                        .capacity_reservation_id(reservation)
                        .build(),
                )
                .build(),
        );
    }
    let launched = call.send().await.map_err(aws("RunInstances"))?;
    let instance = launched.instances().first().ok_or_else(|| {
        Error::UnexpectedAnswer("RunInstances: the answer has no instance".into())
    })?;
    let instance_id = answered_id("RunInstances", "InstanceId", instance.instance_id())?;
    let state = instance
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_else(|| "pending".into());
    tracing::info!(instance_id = %instance_id, image_id = %plan.image_id, subnet_id = %plan.subnet_id, execution, "instance launched");
    Ok(progress(instance_id, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn client_token_is_stable_per_execution_and_fits_the_limit() {
        let a = client_token("run-1", "launch");
        assert_eq!(a, client_token("run-1", "launch"));
        assert_ne!(a, client_token("run-2", "launch"));
        assert!(a.len() <= 64 && a.is_ascii());
    }
}

#[cfg(test)]
mod mocked {
    use super::*;
    use crate::handoff::tests::sample_image;
    use crate::test_support::{image, images, instance_in, meta, no_instances, reservation};
    use aws_sdk_ec2::operation::run_instances::{RunInstancesError, RunInstancesOutput};
    use aws_sdk_ec2::types::{ImageState, InstanceStateName};
    use aws_sdk_ec2::Client;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};

    fn request() -> LaunchRequest {
        LaunchRequest {
            execution: "run-1".into(),
            image: sample_image(),
        }
    }

    fn settings() -> Settings {
        Settings::from_vars(|_| None).unwrap()
    }

    fn the_image() -> Rule {
        mock!(Client::describe_images).then_output(|| {
            images(vec![image(
                "ami-0123456789abcdef0",
                ImageState::Available,
                &[("/dev/xvda", "snap-root"), ("/dev/sdf", "snap-data")],
            )])
        })
    }

    /// The source's user data as it was captured (sample_image's reference).
    fn source_user_data() -> Rule {
        use aws_sdk_ec2::operation::describe_instance_attribute::DescribeInstanceAttributeOutput;
        use aws_sdk_ec2::types::AttributeValue;
        mock!(Client::describe_instance_attribute)
            .match_requests(|r| {
                r.instance_id() == Some(sample_image().capture.instance_id.as_str())
            })
            .then_output(|| {
                DescribeInstanceAttributeOutput::builder()
                    .user_data(AttributeValue::builder().value("IyEvYmluL3NoCg==").build())
                    .build()
            })
    }

    fn run_instances() -> Rule {
        mock!(Client::run_instances)
            .match_requests(|req| {
                let devices = req.block_device_mappings();
                req.user_data() == Some("IyEvYmluL3NoCg==")
                    && req.client_token() == Some(client_token("run-1", "launch").as_str())
                    && req.subnet_id() == Some("subnet-0bbbbbbb")
                    && req.image_id() == Some("ami-0123456789abcdef0")
                    && devices.len() == 2
                    && devices
                        .iter()
                        .all(|d| d.ebs().and_then(|e| e.delete_on_termination()) == Some(true))
                    && req.tag_specifications().len() == 2
            })
            .then_output(|| {
                RunInstancesOutput::builder()
                    .instances(instance_in("i-0new", InstanceStateName::Pending))
                    .build()
            })
    }

    #[tokio::test]
    async fn launches_once_with_the_token_and_every_volume_deleted_on_termination() {
        let rules = [
            mock!(Client::describe_instances).then_output(no_instances),
            the_image(),
            run_instances(),
            source_user_data(),
        ];
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &rules);
        let out = run(&ec2, &settings(), request()).await.unwrap();
        assert_eq!(
            (
                out.instance_id.as_str(),
                out.state.as_str(),
                out.ready,
                out.wait_seconds
            ),
            ("i-0new", "pending", false, 10)
        );
        assert_eq!(rules[2].num_calls(), 1);
    }

    #[tokio::test]
    async fn a_retry_after_a_crash_finds_the_instance_it_launched() {
        let rules = [
            mock!(Client::describe_instances).then_output(|| {
                // The run's earlier launch, and an instance someone gave the run's tag.
                let mut earlier = instance_in("i-0earlier", InstanceStateName::Running);
                earlier.client_token = Some(client_token("run-1", "launch"));
                earlier.image_id = Some(sample_image().image_id);
                let victim = instance_in("i-0victim", InstanceStateName::Running);
                reservation(vec![victim, earlier])
            }),
            the_image(),
            run_instances(),
            // Read at the same time as the two others.
            source_user_data(),
        ];
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &rules);
        let out = run(&ec2, &settings(), request()).await.unwrap();
        assert_eq!(out.instance_id, "i-0earlier");
        assert_eq!(rules[2].num_calls(), 0);
    }

    #[tokio::test]
    async fn an_image_not_yet_visible_is_retryable() {
        let rules = [
            mock!(Client::describe_instances).then_output(no_instances),
            mock!(Client::describe_images).then_output(|| images(vec![])),
            source_user_data(),
        ];
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &rules);
        assert_eq!(
            run(&ec2, &settings(), request()).await.unwrap_err().name(),
            "ImageNotFound"
        );
    }

    #[tokio::test]
    async fn no_capacity_in_the_target_az_has_its_own_name() {
        let rules = [
            mock!(Client::describe_instances).then_output(no_instances),
            the_image(),
            mock!(Client::run_instances)
                .then_error(|| RunInstancesError::generic(meta("InsufficientInstanceCapacity"))),
            source_user_data(),
        ];
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &rules);
        let err = run(&ec2, &settings(), request()).await.unwrap_err();
        assert_eq!(err.name(), "InsufficientCapacity");
        assert!(
            err.to_string()
                .starts_with("RunInstances: InsufficientInstanceCapacity"),
            "{err}"
        );
    }
}
