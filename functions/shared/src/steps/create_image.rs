//! create-image: validates the run, captures the source's settings and makes the AMI, once per
//! execution.

use aws_sdk_ec2::types::ResourceType;
use serde::Deserialize;
use serde_json::Value;

use crate::carry::checked_first;
use crate::error::{aws, Error, Result};
use crate::handoff::{CreateImageOutput, Target};
use crate::input::{Capacity, MigrateInput};
use crate::resources::capacity;
use crate::resources::groups::refuse_member;
use crate::resources::images::{find_own_image, image_name};
use crate::resources::instances::read_source;
use crate::resources::lock::{Claimant, RunLock};
use crate::resources::subnets::{check_offered, check_target, resolve_subnet};
use crate::resources::zones::name_of;
use crate::settings::Settings;
use crate::tags::{self, Tag};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateImageRequest {
    pub execution: String,
    /// The execution's ARN: the holder recorded in the run lock.
    pub execution_arn: String,
    /// The workflow input as the operator gave it; parsed and checked here.
    pub input: Value,
}

pub async fn run(
    ec2: &aws_sdk_ec2::Client,
    autoscaling: &aws_sdk_autoscaling::Client,
    lock: &RunLock<'_>,
    settings: &Settings,
    region: &str,
    request: CreateImageRequest,
) -> Result<CreateImageOutput> {
    let execution = request.execution.trim();
    if execution.is_empty() {
        return Err(Error::invalid("execution", "the execution name is empty"));
    }
    let mut input = MigrateInput::parse(&request.input, region)?;
    if let Some(az) = &input.target_availability_zone {
        input.target_availability_zone =
            Some(name_of(ec2, "targetAvailabilityZone", az, region).await?);
    }
    let capture = read_source(ec2, &input.instance_id).await?;
    refuse_member(autoscaling, &input.instance_id).await?;
    checked_first(&capture, input.source_action)?;
    let subnet = resolve_subnet(ec2, &input, &capture).await?;
    check_target(&capture, &subnet, input.target_availability_zone.as_deref())?;
    let instance_type = input
        .instance_type
        .clone()
        .unwrap_or_else(|| capture.instance_type.clone());
    check_offered(ec2, &instance_type, &subnet.availability_zone).await?;

    let target = Target {
        subnet_id: subnet.subnet_id,
        availability_zone: subnet.availability_zone,
        vpc_id: subnet.vpc_id,
        instance_type,
    };
    let image_name = image_name(&input.instance_id, execution);

    // The first side effect: no other run may work on this instance while this one does.
    let claimant = Claimant {
        execution,
        execution_arn: &request.execution_arn,
    };
    lock.acquire(&input.instance_id, &claimant).await?;

    // Capacity before the image: without it the run fails here, having made nothing (the
    // rollback gives the lock back).
    let capacity_reservation_id = match input.capacity {
        Capacity::Reserve => Some(
            capacity::reserve(
                ec2,
                execution,
                &target.instance_type,
                &capture.platform,
                &target.availability_zone,
            )
            .await?,
        ),
        Capacity::None => None,
    };
    let output = |image_id: String, created: bool| CreateImageOutput {
        image_id,
        image_name: image_name.clone(),
        created,
        capture: capture.clone(),
        target: target.clone(),
        event_wait_seconds: settings.event_wait_seconds,
        cutover: input.cutover,
        approval_timeout_seconds: input.approval_timeout(),
        capacity_reservation_id: capacity_reservation_id.clone(),
    };

    if let Some(existing) = find_own_image(ec2, execution, &image_name, &input.instance_id).await? {
        tracing::info!(image_id = %existing, execution, "image of this execution exists already");
        return Ok(output(existing, false));
    }

    let own_tags = [
        Tag::new(tags::EXECUTION, execution),
        Tag::new(tags::SOURCE_INSTANCE, &input.instance_id),
    ];
    let created = ec2
        .create_image()
        .instance_id(&input.instance_id)
        .name(&image_name)
        .description(format!(
            "amiflow: {} to {}, execution {execution}",
            input.instance_id, target.availability_zone
        ))
        .no_reboot(input.no_reboot)
        .tag_specifications(tags::spec(ResourceType::Image, &own_tags))
        .tag_specifications(tags::spec(ResourceType::Snapshot, &own_tags))
        .send()
        .await;
    let created = match created.map_err(aws("CreateImage")) {
        Ok(created) => created,
        // The name comes from the execution, and AMI names are unique: an attempt running at
        // the same moment made the image first. Answer that one.
        Err(e) if e.is_code("InvalidAMIName.Duplicate") => {
            if let Some(existing) =
                find_own_image(ec2, execution, &image_name, &input.instance_id).await?
            {
                tracing::info!(image_id = %existing, execution, "a concurrent attempt made the image");
                return Ok(output(existing, false));
            }
            return Err(Error::ImageNameRace(
                format!("CreateImage: {image_name} exists but is not visible yet; retried").into(),
            ));
        }
        Err(e) => return Err(e),
    };
    let image_id = created
        .image_id()
        .ok_or_else(|| Error::UnexpectedAnswer("CreateImage: the answer has no ImageId".into()))?
        .to_string();
    tracing::info!(image_id = %image_id, instance_id = %input.instance_id, execution, "image requested");
    Ok(output(image_id, true))
}

#[cfg(test)]
mod mocked {
    use super::*;
    use crate::capture::tests::{source_instance, source_volumes};
    use crate::settings::Settings;
    use crate::test_support::{images, meta, no_groups, no_instances, reservation};
    use aws_sdk_ec2::operation::create_image::CreateImageOutput as SdkCreateImage;
    use aws_sdk_ec2::operation::describe_addresses::DescribeAddressesOutput;
    use aws_sdk_ec2::operation::describe_instance_attribute::DescribeInstanceAttributeOutput;
    use aws_sdk_ec2::operation::describe_instance_credit_specifications::DescribeInstanceCreditSpecificationsOutput;
    use aws_sdk_ec2::operation::describe_instance_type_offerings::DescribeInstanceTypeOfferingsOutput;
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
    use aws_sdk_ec2::operation::describe_subnets::DescribeSubnetsOutput;
    use aws_sdk_ec2::operation::describe_volumes::DescribeVolumesOutput;
    use aws_sdk_ec2::types::{
        Address, AttributeBooleanValue, AttributeValue, Image, InstanceCreditSpecification,
        InstanceStateName, InstanceTypeOffering,
    };
    use aws_sdk_ec2::Client;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
    use serde_json::json;

    fn settings() -> Settings {
        Settings::from_vars(|_| None).unwrap()
    }

    fn request(input: serde_json::Value) -> CreateImageRequest {
        CreateImageRequest {
            execution: "run-1".into(),
            execution_arn: "arn:aws:states:us-east-1:123456789012:execution:MigrateInstance:run-1"
                .into(),
            input,
        }
    }

    /// Runs the step with a run lock that is free; answers the step's result and how many times
    /// the lock was written.
    async fn locked_run(
        ec2: &Client,
        req: CreateImageRequest,
    ) -> (Result<CreateImageOutput>, usize) {
        locked_run_with(ec2, &no_groups(), req).await
    }

    async fn locked_run_with(
        ec2: &Client,
        groups: &aws_sdk_autoscaling::Client,
        req: CreateImageRequest,
    ) -> (Result<CreateImageOutput>, usize) {
        let put = mock!(aws_sdk_dynamodb::Client::put_item)
            .match_requests(|r| {
                r.item().and_then(|i| i.get("resourceId"))
                    == Some(&aws_sdk_dynamodb::types::AttributeValue::S(
                        "i-0123456789abcdef0".into(),
                    ))
            })
            .then_output(|| {
                aws_sdk_dynamodb::operation::put_item::PutItemOutput::builder().build()
            });
        let unused = mock!(aws_sdk_sfn::Client::describe_execution).then_error(|| {
            aws_sdk_sfn::operation::describe_execution::DescribeExecutionError::generic(meta(
                "NotExpected",
            ))
        });
        let ddb = mock_client!(aws_sdk_dynamodb, [&put]);
        let sfn = mock_client!(aws_sdk_sfn, [&unused]);
        let lock = RunLock {
            ddb: &ddb,
            sfn: &sfn,
            table: "locks",
        };
        let out = run(ec2, groups, &lock, &settings(), "us-east-1", req).await;
        (out, put.num_calls())
    }

    fn default_input() -> serde_json::Value {
        json!({"instanceId": "i-0123456789abcdef0", "targetAvailabilityZone": "us-east-1b"})
    }

    /// Every read the step makes, by name, answering for the sample source in us-east-1a.
    struct Reads {
        instances: Rule,
        volumes: Rule,
        attributes: Rule,
        addresses: Rule,
        credits: Rule,
        subnets: Rule,
        offerings: Rule,
        images: Rule,
    }

    impl Reads {
        fn rules(self) -> Vec<Rule> {
            vec![
                self.instances,
                self.volumes,
                self.attributes,
                self.addresses,
                self.credits,
                self.subnets,
                self.offerings,
                self.images,
            ]
        }
    }

    fn reads(offered: bool, existing: Option<&'static str>) -> Reads {
        Reads {
            instances: mock!(Client::describe_instances)
                .then_output(|| reservation(vec![source_instance(InstanceStateName::Running)])),
            volumes: mock!(Client::describe_volumes).then_output(|| {
                DescribeVolumesOutput::builder()
                    .set_volumes(Some(source_volumes()))
                    .build()
            }),
            attributes: mock!(Client::describe_instance_attribute).then_compute_output(|req| {
                let out = DescribeInstanceAttributeOutput::builder();
                match req.attribute().map(|a| a.as_str()) {
                    Some("userData") => {
                        out.user_data(AttributeValue::builder().value("IyEvYmluL3NoCg==").build())
                    }
                    Some("disableApiTermination") => out.disable_api_termination(
                        AttributeBooleanValue::builder().value(false).build(),
                    ),
                    Some("disableApiStop") => {
                        out.disable_api_stop(AttributeBooleanValue::builder().value(false).build())
                    }
                    _ => out.instance_initiated_shutdown_behavior(
                        AttributeValue::builder().value("stop").build(),
                    ),
                }
                .build()
            }),
            addresses: mock!(Client::describe_addresses).then_output(|| {
                DescribeAddressesOutput::builder()
                    .addresses(
                        Address::builder()
                            .allocation_id("eipalloc-01234567")
                            .public_ip("198.51.100.7")
                            .build(),
                    )
                    .build()
            }),
            credits: mock!(Client::describe_instance_credit_specifications).then_output(|| {
                DescribeInstanceCreditSpecificationsOutput::builder()
                    .instance_credit_specifications(
                        InstanceCreditSpecification::builder()
                            .cpu_credits("unlimited")
                            .build(),
                    )
                    .build()
            }),
            subnets: mock!(Client::describe_subnets).then_output(|| {
                DescribeSubnetsOutput::builder()
                    .subnets(
                        aws_sdk_ec2::types::Subnet::builder()
                            .subnet_id("subnet-0bbbbbbb")
                            .vpc_id("vpc-01234567")
                            .availability_zone("us-east-1b")
                            .build(),
                    )
                    .build()
            }),
            offerings: mock!(Client::describe_instance_type_offerings).then_output(move || {
                let out = DescribeInstanceTypeOfferingsOutput::builder();
                if offered {
                    out.instance_type_offerings(
                        InstanceTypeOffering::builder()
                            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                            .location("us-east-1b")
                            .build(),
                    )
                    .build()
                } else {
                    out.build()
                }
            }),
            images: mock!(Client::describe_images).then_output(move || {
                images(
                    existing
                        .map(|id| {
                            vec![
                                // Someone gave an image of theirs this execution's tag: not the run's.
                                Image::builder()
                                    .image_id("ami-0victim")
                                    .name("golden")
                                    .build(),
                                Image::builder()
                                    .image_id(id)
                                    .name(image_name("i-0123456789abcdef0", "run-1"))
                                    .source_instance_id("i-0123456789abcdef0")
                                    .build(),
                            ]
                        })
                        .unwrap_or_default(),
                )
            }),
        }
    }

    fn create() -> Rule {
        mock!(Client::create_image)
            .match_requests(|req| {
                let specs = req.tag_specifications();
                req.instance_id() == Some("i-0123456789abcdef0")
                    && req.no_reboot() == Some(false)
                    && specs.len() == 2
                    && specs.iter().all(|s| {
                        s.tags()
                            .iter()
                            .any(|t| t.key() == Some(tags::EXECUTION) && t.value() == Some("run-1"))
                    })
            })
            .then_output(|| SdkCreateImage::builder().image_id("ami-0new").build())
    }

    fn client(rules: &[Rule]) -> Client {
        let refs: Vec<&Rule> = rules.iter().collect();
        mock_client!(aws_sdk_ec2, RuleMode::MatchAny, refs)
    }

    #[tokio::test]
    async fn captures_checks_and_creates_the_tagged_image() {
        let mut rules = reads(true, None).rules();
        rules.push(create());
        let ec2 = client(&rules);
        let (out, locks) = locked_run(&ec2, request(default_input())).await;
        let out = out.unwrap();
        assert_eq!(locks, 1, "the run lock is taken before the image is made");
        assert_eq!(out.image_id, "ami-0new");
        assert!(out.created);
        assert_eq!(out.target.subnet_id, "subnet-0bbbbbbb");
        assert_eq!(out.target.instance_type, "t3.micro");
        assert_eq!(
            out.capture.elastic_ip.as_ref().unwrap().public_ip,
            "198.51.100.7"
        );
        assert_eq!(out.event_wait_seconds, 1800);
        assert_eq!(rules.last().unwrap().num_calls(), 1);
    }

    #[tokio::test]
    async fn an_auto_scaling_member_is_refused_with_its_group_before_the_lock() {
        use aws_sdk_autoscaling::operation::describe_auto_scaling_instances::DescribeAutoScalingInstancesOutput;
        use aws_sdk_autoscaling::types::AutoScalingInstanceDetails;
        let member = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_instances)
            .then_output(|| {
                DescribeAutoScalingInstancesOutput::builder()
                    .auto_scaling_instances(
                        AutoScalingInstanceDetails::builder()
                            .instance_id("i-0123456789abcdef0")
                            .auto_scaling_group_name("web-asg")
                            .build(),
                    )
                    .build()
            });
        let groups = mock_client!(aws_sdk_autoscaling, [&member]);
        let mut rules = reads(true, None).rules();
        rules.push(create());
        let ec2 = client(&rules);
        let (out, locks) = locked_run_with(&ec2, &groups, request(default_input())).await;
        let err = out.unwrap_err();
        assert_eq!(err.name(), "InAutoScalingGroup");
        assert!(err.to_string().contains("web-asg"), "{err}");
        assert_eq!(locks, 0, "refused before the run lock");
        assert_eq!(rules.last().unwrap().num_calls(), 0, "no image made");
    }

    #[tokio::test]
    async fn a_second_attempt_finds_the_image_instead_of_making_another() {
        let mut rules = reads(true, Some("ami-0earlier")).rules();
        rules.push(create());
        let ec2 = client(&rules);
        let out = locked_run(&ec2, request(default_input())).await.0.unwrap();
        assert_eq!(
            (out.image_id.as_str(), out.created),
            ("ami-0earlier", false)
        );
        assert_eq!(rules.last().unwrap().num_calls(), 0);
    }

    #[tokio::test]
    async fn an_unoffered_type_is_refused_before_the_image() {
        let mut rules = reads(false, None).rules();
        rules.push(create());
        let ec2 = client(&rules);
        let (err, locks) = locked_run(&ec2, request(default_input())).await;
        let err = err.unwrap_err();
        assert_eq!(locks, 0, "a refused run takes no lock");
        assert_eq!(
            err,
            Error::InstanceTypeNotOffered(
                "instanceType: t3.micro is not offered in us-east-1b".into()
            )
        );
        assert_eq!(rules.last().unwrap().num_calls(), 0);
    }

    #[tokio::test]
    async fn termination_protection_refuses_terminate_before_the_image() {
        let protected = Reads {
            attributes: mock!(Client::describe_instance_attribute).then_output(|| {
                DescribeInstanceAttributeOutput::builder()
                    .disable_api_termination(AttributeBooleanValue::builder().value(true).build())
                    .build()
            }),
            ..reads(true, None)
        };
        let mut rules = protected.rules();
        rules.push(create());
        let ec2 = client(&rules);
        let input = json!({"instanceId": "i-0123456789abcdef0", "targetAvailabilityZone": "us-east-1b", "sourceAction": "terminate"});
        let err = locked_run(&ec2, request(input)).await.0.unwrap_err();
        assert_eq!(err.name(), "SourceProtected");
        assert_eq!(rules.last().unwrap().num_calls(), 0);
    }

    #[tokio::test]
    async fn a_run_holding_the_instance_stops_this_one_before_the_image() {
        use aws_sdk_sfn::types::ExecutionStatus;
        let mut rules = reads(true, None).rules();
        rules.push(create());
        let ec2 = client(&rules);
        let put = mock!(aws_sdk_dynamodb::Client::put_item).then_error(|| {
            aws_sdk_dynamodb::operation::put_item::PutItemError::generic(meta(
                "ConditionalCheckFailedException",
            ))
        });
        let get = mock!(aws_sdk_dynamodb::Client::get_item).then_output(|| {
            aws_sdk_dynamodb::operation::get_item::GetItemOutput::builder()
                .item(
                    "executionArn",
                    aws_sdk_dynamodb::types::AttributeValue::S("arn:x:execution:M:run-0".into()),
                )
                .build()
        });
        let running = mock!(aws_sdk_sfn::Client::describe_execution).then_output(|| {
            aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput::builder()
                .execution_arn("arn:x:execution:M:run-0")
                .state_machine_arn("arn:x:stateMachine:M")
                .status(ExecutionStatus::Running)
                .start_date(aws_smithy_types::DateTime::from_secs(0))
                .build()
                .unwrap()
        });
        let ddb = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&put, &get]);
        let sfn = mock_client!(aws_sdk_sfn, [&running]);
        let lock = RunLock {
            ddb: &ddb,
            sfn: &sfn,
            table: "locks",
        };
        let err = run(
            &ec2,
            &no_groups(),
            &lock,
            &settings(),
            "us-east-1",
            request(default_input()),
        )
        .await
        .unwrap_err();
        assert_eq!(err.name(), "InstanceBusy");
        assert!(err.to_string().contains("run-0"), "{err}");
        assert_eq!(
            rules.last().unwrap().num_calls(),
            0,
            "no image while another run holds the instance"
        );
    }

    #[tokio::test]
    async fn a_missing_instance_names_the_field() {
        let rules = [mock!(Client::describe_instances).then_output(no_instances)];
        let err = locked_run(&client(&rules), request(default_input()))
            .await
            .0
            .unwrap_err();
        assert_eq!(
            err,
            Error::InstanceNotFound("instanceId: i-0123456789abcdef0 does not exist".into())
        );
    }

    #[tokio::test]
    async fn throttling_is_reported_as_throttled_with_the_code() {
        let rules = [mock!(Client::describe_instances)
            .then_error(|| DescribeInstancesError::generic(meta("RequestLimitExceeded")))];
        let err = locked_run(&client(&rules), request(default_input()))
            .await
            .0
            .unwrap_err();
        assert_eq!(err.name(), "Throttled");
        assert!(
            err.to_string()
                .contains("DescribeInstances: RequestLimitExceeded"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_input_makes_no_call_at_all() {
        let rules = [mock!(Client::describe_instances).then_output(no_instances)];
        let err = locked_run(
            &client(&rules),
            request(json!({"instanceId": "i-0123456789abcdef0"})),
        )
        .await
        .0
        .unwrap_err();
        assert_eq!(err.name(), "InvalidInput");
        assert_eq!(rules[0].num_calls(), 0);
    }

    #[tokio::test]
    async fn a_missing_subnet_id_names_the_field() {
        let no_subnet = Reads {
            subnets: mock!(Client::describe_subnets)
                .then_output(|| DescribeSubnetsOutput::builder().build()),
            ..reads(true, None)
        };
        let rules = no_subnet.rules();
        let input =
            json!({"instanceId": "i-0123456789abcdef0", "targetSubnetId": "subnet-0ccccccc"});
        let err = locked_run(&client(&rules), request(input))
            .await
            .0
            .unwrap_err();
        assert_eq!(
            err,
            Error::SubnetNotFound("targetSubnetId: subnet-0ccccccc does not exist".into())
        );
    }
}
