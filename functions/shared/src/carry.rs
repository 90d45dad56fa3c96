//! The carry-over plan: for each setting of the source, what happens to it on the new instance,
//! and when. The steps ask it (create-image: [`checked_first`]; launch: [`at_launch`];
//! verify-instance: [`volume_tags`], [`when_healthy`]; cleanup: [`on_success`]), `notCarried`
//! comes from [`not_carried`], and [`SETTINGS`] is the README's table of carried settings, which
//! a contract test holds it to.

use aws_sdk_ec2::types::Instance;

use crate::capture::{is_burstable, Capture, ElasticIp, MetadataSpec};
use crate::error::{Error, Result};
use crate::handoff::CreateImageOutput;
use crate::input::SourceAction;
use crate::resources::client_token;
use crate::tags::{self, Tag};

/// When a setting of the source reaches the new instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Checked before the AMI is made, so that the run fails before it makes anything.
    CheckedFirst,
    /// Given to RunInstances.
    AtLaunch,
    /// Applied once the new instance runs with both status checks ok.
    WhenHealthy,
    /// Applied when the run succeeds: before then it would stand in the rollback's way.
    OnSuccess,
    /// An AMI cannot take it to another AZ; reported in `notCarried`.
    NotCarried,
}

impl When {
    pub fn label(self) -> &'static str {
        match self {
            When::CheckedFirst => "checked first (create-image)",
            When::AtLaunch => "at launch (launch)",
            When::WhenHealthy => "when healthy (verify-instance)",
            When::OnSuccess => "on success (cleanup)",
            When::NotCarried => "not carried (`notCarried`)",
        }
    }
}

/// One setting of the source, when it is carried, and how.
pub struct Setting {
    pub name: &'static str,
    pub when: When,
    pub how: &'static str,
}

/// Every setting of the source amiflow knows, in the order a run meets them.
pub const SETTINGS: &[Setting] = &[
    Setting { name: "termination and stop protection", when: When::CheckedFirst, how: "a `sourceAction` the source's own protection forbids fails the run (`SourceProtected`) before the AMI is made" },
    Setting { name: "instance type", when: When::AtLaunch, how: "the source's, or `instanceType`; offered in the target AZ (checked first)" },
    Setting { name: "subnet", when: When::AtLaunch, how: "`targetSubnetId`, or the one subnet of the source's VPC in `targetAvailabilityZone`" },
    Setting { name: "security groups, key pair, instance profile", when: When::AtLaunch, how: "the source's (the profile's role must fit `InstanceRoleNamePattern`)" },
    Setting { name: "user data", when: When::AtLaunch, how: "read from the source at launch and checked against the SHA-256 captured with the image; never in the state" },
    Setting { name: "EBS volumes", when: When::AtLaunch, how: "from the AMI's snapshots, each at least its source's size, with its type, IOPS (io1, io2, gp3) and throughput (gp3); encrypted with the snapshot's key" },
    Setting { name: "instance metadata options", when: When::AtLaunch, how: "IMDS tokens, hop limit, endpoint, instance tags in IMDS, IPv6 endpoint" },
    Setting { name: "detailed monitoring, EBS optimisation, tenancy, shutdown behaviour", when: When::AtLaunch, how: "the source's (tenancy when not default)" },
    Setting { name: "credit specification", when: When::AtLaunch, how: "the source's, when the new type is burstable (t2, t3, t3a, t4g)" },
    Setting { name: "instance tags", when: When::AtLaunch, how: "the source's, with `amiflow:execution` and `amiflow:source-instance`" },
    Setting { name: "volume tags", when: When::WhenHealthy, how: "each new volume gets its source volume's tags, matched by device" },
    Setting { name: "source/dest check", when: When::WhenHealthy, how: "turned off when it is off on the source" },
    Setting { name: "Elastic IP", when: When::WhenHealthy, how: "moved to the new instance (back to the source on rollback)" },
    Setting { name: "delete on termination", when: When::OnSuccess, how: "volumes the source keeps when it terminates are kept on the new instance too; until then they are deletable, so that a rollback leaves nothing" },
    Setting { name: "termination and stop protection", when: When::OnSuccess, how: "turned on as on the source; before then it would stop the rollback" },
    Setting { name: "private IP address", when: When::NotCarried, how: "the new instance gets one from the target subnet" },
    Setting { name: "secondary network interfaces", when: When::NotCarried, how: "ENIs are bound to their AZ" },
    Setting { name: "placement group", when: When::NotCarried, how: "the new instance is placed without one" },
    Setting { name: "public IP address", when: When::NotCarried, how: "not an Elastic IP; the new one differs" },
    Setting { name: "spot lifecycle", when: When::NotCarried, how: "the new instance is on-demand" },
];

/// A source action that the source's own protection would refuse is refused now, before the
/// run makes anything, rather than after the new instance exists.
pub fn checked_first(capture: &Capture, action: SourceAction) -> Result<()> {
    match action {
        SourceAction::Terminate if capture.disable_api_termination => Err(Error::SourceProtected(format!(
            "sourceAction: {} has termination protection (disableApiTermination); turn it off or choose keep or stop",
            capture.instance_id
        ).into())),
        SourceAction::Stop | SourceAction::Terminate if capture.disable_api_stop => Err(Error::SourceProtected(format!(
            "sourceAction: {} has stop protection (disableApiStop); turn it off or choose keep",
            capture.instance_id
        ).into())),
        _ => Ok(()),
    }
}

/// One block device mapping of the AMI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDevice {
    pub device_name: String,
    pub snapshot_id: Option<String>,
    pub size_gib: Option<i32>,
}

/// A block device of the new instance. Every volume is deleted on termination until the run
/// succeeds, so that a rollback leaves no volume behind; the captured setting is applied at the
/// end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub device_name: String,
    pub snapshot_id: Option<String>,
    pub size_gib: i32,
    pub volume_type: Option<String>,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
}

/// Everything RunInstances is called with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    pub image_id: String,
    pub instance_type: String,
    pub subnet_id: String,
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    pub iam_instance_profile_arn: Option<String>,
    pub user_data: Option<String>,
    pub block_devices: Vec<BlockDevice>,
    pub metadata: Option<MetadataSpec>,
    pub detailed_monitoring: bool,
    pub ebs_optimized: bool,
    pub cpu_credits: Option<String>,
    pub tenancy: Option<String>,
    pub shutdown_behavior: Option<String>,
    pub instance_tags: Vec<Tag>,
    pub volume_tags: Vec<Tag>,
    pub client_token: String,
    pub capacity_reservation_id: Option<String>,
}

/// Provisioned IOPS apply to io1, io2 and gp3 only; throughput to gp3 only. gp2 reports a
/// baseline IOPS figure that RunInstances would refuse.
fn iops_for(volume_type: Option<&str>, iops: Option<i32>) -> Option<i32> {
    matches!(volume_type, Some("io1" | "io2" | "gp3"))
        .then_some(iops)
        .flatten()
}

fn throughput_for(volume_type: Option<&str>, throughput: Option<i32>) -> Option<i32> {
    matches!(volume_type, Some("gp3"))
        .then_some(throughput)
        .flatten()
}

/// At launch: the RunInstances call that carries the source's settings into the target. Pure.
pub fn at_launch(
    image: &CreateImageOutput,
    image_devices: &[ImageDevice],
    user_data: Option<String>,
    execution: &str,
) -> LaunchPlan {
    let capture = &image.capture;
    let block_devices = image_devices
        .iter()
        .map(|device| {
            let captured = capture
                .volumes
                .iter()
                .find(|v| v.device_name == device.device_name);
            let volume_type = captured.and_then(|v| v.volume_type.clone());
            BlockDevice {
                device_name: device.device_name.clone(),
                snapshot_id: device.snapshot_id.clone(),
                size_gib: captured
                    .map(|v| v.size_gib)
                    .unwrap_or_default()
                    .max(device.size_gib.unwrap_or_default()),
                iops: iops_for(volume_type.as_deref(), captured.and_then(|v| v.iops)),
                throughput: throughput_for(
                    volume_type.as_deref(),
                    captured.and_then(|v| v.throughput),
                ),
                volume_type,
            }
        })
        .collect();
    let own = [
        Tag::new(tags::EXECUTION, execution),
        Tag::new(tags::SOURCE_INSTANCE, &capture.instance_id),
    ];
    LaunchPlan {
        image_id: image.image_id.clone(),
        instance_type: image.target.instance_type.clone(),
        subnet_id: image.target.subnet_id.clone(),
        security_group_ids: capture.security_group_ids.clone(),
        key_name: capture.key_name.clone(),
        iam_instance_profile_arn: capture.iam_instance_profile_arn.clone(),
        user_data,
        block_devices,
        metadata: capture.metadata.clone(),
        detailed_monitoring: capture.detailed_monitoring,
        ebs_optimized: capture.ebs_optimized,
        cpu_credits: capture
            .cpu_credits
            .clone()
            .filter(|_| is_burstable(&image.target.instance_type)),
        tenancy: capture.tenancy.clone().filter(|t| t != "default"),
        shutdown_behavior: capture.shutdown_behavior.clone(),
        instance_tags: tags::carried_with(&capture.tags, &own),
        volume_tags: vec![Tag::new(tags::EXECUTION, execution)],
        client_token: client_token(execution, "launch"),
        capacity_reservation_id: image.capacity_reservation_id.clone(),
    }
}

/// When healthy: each new volume tagged as its source volume was, matched by device name. Pure.
pub fn volume_tags(
    image: &CreateImageOutput,
    new_volumes: &[(String, String)],
    execution: &str,
) -> Vec<(String, Vec<Tag>)> {
    let own = [Tag::new(tags::EXECUTION, execution)];
    new_volumes
        .iter()
        .filter_map(|(device, volume_id)| {
            let source = image
                .capture
                .volumes
                .iter()
                .find(|v| &v.device_name == device)?;
            (!source.tags.is_empty())
                .then(|| (volume_id.clone(), tags::carried_with(&source.tags, &own)))
        })
        .collect()
}

/// When healthy: what verify-instance changes on the new instance besides volume tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhenHealthy {
    /// Turn the source/dest check off, as it is on the source.
    pub source_dest_check_off: bool,
    pub elastic_ip: Option<ElasticIp>,
}

/// When healthy: the source/dest check and the Elastic IP. Pure.
pub fn when_healthy(capture: &Capture) -> WhenHealthy {
    WhenHealthy {
        source_dest_check_off: !capture.source_dest_check,
        elastic_ip: capture.elastic_ip.clone(),
    }
}

/// On success: what cleanup's complete changes on the new instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnSuccess {
    pub kept_on_termination: Vec<String>,
    pub termination_protection: bool,
    pub stop_protection: bool,
}

/// On success: delete-on-termination and protection, as on the source. Pure.
pub fn on_success(capture: &Capture) -> OnSuccess {
    OnSuccess {
        kept_on_termination: kept_on_termination(capture),
        termination_protection: capture.disable_api_termination,
        stop_protection: capture.disable_api_stop,
    }
}

/// On success: the devices whose volumes the source keeps when it terminates, and so must the new
/// instance's (kept deletable until then, so that a rollback leaves nothing). Pure.
pub fn kept_on_termination(capture: &Capture) -> Vec<String> {
    capture
        .volumes
        .iter()
        .filter(|v| !v.delete_on_termination)
        .map(|v| v.device_name.clone())
        .collect()
}

/// Not carried: what an AMI cannot take to another AZ, said plainly for the operator. Pure.
pub fn not_carried(instance: &Instance, has_elastic_ip: bool) -> Vec<String> {
    let mut not_carried = Vec::new();
    let mut say = |name: &str, detail: String| {
        let setting = SETTINGS
            .iter()
            .find(|s| s.when == When::NotCarried && s.name == name)
            .expect("every setting not carried is in SETTINGS");
        not_carried.push(format!("{detail} ({})", setting.how));
    };
    if let Some(ip) = instance.private_ip_address() {
        say(PRIVATE_IP, format!("{PRIVATE_IP} {ip}"));
    }
    let interfaces = instance.network_interfaces().len();
    if interfaces > 1 {
        say(
            SECONDARY_ENIS,
            format!("{} {SECONDARY_ENIS}", interfaces - 1),
        );
    }
    if let Some(group) = instance
        .placement()
        .and_then(|p| p.group_name())
        .filter(|g| !g.is_empty())
    {
        say(PLACEMENT_GROUP, format!("{PLACEMENT_GROUP} {group}"));
    }
    if !has_elastic_ip {
        if let Some(public) = instance.public_ip_address() {
            say(PUBLIC_IP, format!("{PUBLIC_IP} {public}"));
        }
    }
    if instance
        .instance_lifecycle()
        .is_some_and(|l| l.as_str() == "spot")
    {
        say(SPOT, SPOT.to_string());
    }
    not_carried
}

const PRIVATE_IP: &str = "private IP address";
const SECONDARY_ENIS: &str = "secondary network interfaces";
const PLACEMENT_GROUP: &str = "placement group";
const PUBLIC_IP: &str = "public IP address";
const SPOT: &str = "spot lifecycle";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::tests::sample_capture;
    use crate::handoff::tests::sample_image;

    fn devices() -> Vec<ImageDevice> {
        vec![
            ImageDevice {
                device_name: "/dev/xvda".into(),
                snapshot_id: Some("snap-root".into()),
                size_gib: Some(8),
            },
            ImageDevice {
                device_name: "/dev/sdf".into(),
                snapshot_id: Some("snap-data".into()),
                size_gib: Some(20),
            },
        ]
    }
    #[test]
    fn plan_carries_the_captured_settings_into_the_target() {
        let p = at_launch(
            &sample_image(),
            &devices(),
            Some("IyEvYmluL3NoCg==".into()),
            "run-1",
        );
        assert_eq!(p.subnet_id, "subnet-0bbbbbbb");
        assert_eq!(p.instance_type, "t3.micro");
        assert_eq!(p.security_group_ids, ["sg-01234567"]);
        assert_eq!(p.key_name.as_deref(), Some("ops-key"));
        assert_eq!(p.user_data.as_deref(), Some("IyEvYmluL3NoCg=="));
        assert_eq!(p.cpu_credits.as_deref(), Some("unlimited"));
        assert_eq!(p.tenancy, None, "default tenancy is not passed");
        assert!(p.detailed_monitoring && p.ebs_optimized);
        assert_eq!(
            p.instance_tags,
            [
                Tag::new("Name", "web"),
                Tag::new(tags::EXECUTION, "run-1"),
                Tag::new(tags::SOURCE_INSTANCE, "i-0123456789abcdef0")
            ]
        );
        let root = &p.block_devices[0];
        assert_eq!(
            (
                root.snapshot_id.as_deref(),
                root.size_gib,
                root.volume_type.as_deref(),
                root.iops,
                root.throughput
            ),
            (Some("snap-root"), 8, Some("gp3"), Some(3000), Some(125))
        );
        let data = &p.block_devices[1];
        assert_eq!(
            (data.volume_type.as_deref(), data.iops, data.throughput),
            (Some("io2"), Some(4000), None)
        );
    }

    #[test]
    fn gp2_iops_and_credits_for_non_burstable_overrides_are_dropped() {
        let mut image = sample_image();
        image.capture.volumes[0].volume_type = Some("gp2".into());
        image.capture.volumes[0].iops = Some(100);
        image.target.instance_type = "m5.large".into();
        let p = at_launch(&image, &devices(), None, "run-1");
        assert_eq!(p.block_devices[0].iops, None);
        assert_eq!(p.block_devices[0].throughput, None);
        assert_eq!(p.cpu_credits, None);
    }

    #[test]
    fn volume_tags_follow_the_device() {
        let image = sample_image();
        let plan = volume_tags(
            &image,
            &[
                ("/dev/xvda".into(), "vol-new-root".into()),
                ("/dev/sdf".into(), "vol-new-data".into()),
            ],
            "run-1",
        );
        assert_eq!(
            plan,
            [(
                "vol-new-data".to_string(),
                vec![Tag::new("role", "data"), Tag::new(tags::EXECUTION, "run-1")]
            )]
        );
    }

    #[test]
    fn protection_refuses_the_source_action_up_front() {
        let c = sample_capture(); // termination protection on, stop protection off
        assert!(checked_first(&c, SourceAction::Keep).is_ok());
        assert!(checked_first(&c, SourceAction::Stop).is_ok());
        assert_eq!(
            checked_first(&c, SourceAction::Terminate)
                .unwrap_err()
                .name(),
            "SourceProtected"
        );
        let mut stop_protected = c.clone();
        stop_protected.disable_api_termination = false;
        stop_protected.disable_api_stop = true;
        assert!(checked_first(&stop_protected, SourceAction::Stop).is_err());
    }

    #[test]
    fn only_volumes_kept_on_the_source_are_kept_on_the_copy() {
        assert_eq!(kept_on_termination(&sample_capture()), ["/dev/sdf"]);
    }

    #[test]
    fn what_is_not_carried_is_said_in_the_tables_words() {
        use aws_sdk_ec2::types::{InstanceLifecycleType, InstanceNetworkInterface, Placement};
        let eni = InstanceNetworkInterface::builder().build();
        let instance = Instance::builder()
            .private_ip_address("10.0.1.10")
            .network_interfaces(eni.clone())
            .network_interfaces(eni)
            .placement(Placement::builder().group_name("cluster-a").build())
            .public_ip_address("203.0.113.9")
            .instance_lifecycle(InstanceLifecycleType::Spot)
            .build();
        let said = not_carried(&instance, false);
        let names: Vec<&str> = SETTINGS
            .iter()
            .filter(|s| s.when == When::NotCarried)
            .map(|s| s.name)
            .collect();
        assert_eq!(said.len(), names.len(), "{said:?}");
        for (line, name) in said.iter().zip(&names) {
            assert!(line.contains(name), "{line:?} does not name {name:?}");
        }
        assert_eq!(
            said[0],
            "private IP address 10.0.1.10 (the new instance gets one from the target subnet)"
        );
        // An Elastic IP is carried, so the public address it gives is not reported.
        assert_eq!(not_carried(&instance, true).len(), names.len() - 1);
    }

    #[test]
    fn every_when_has_a_setting_and_the_steps_apply_what_the_table_says() {
        for when in [
            When::CheckedFirst,
            When::AtLaunch,
            When::WhenHealthy,
            When::OnSuccess,
            When::NotCarried,
        ] {
            assert!(SETTINGS.iter().any(|s| s.when == when), "{when:?}");
        }
        let mut capture = sample_capture();
        capture.source_dest_check = false;
        capture.disable_api_termination = true;
        let healthy = when_healthy(&capture);
        assert!(healthy.source_dest_check_off);
        assert_eq!(healthy.elastic_ip, capture.elastic_ip);
        let done = on_success(&capture);
        assert!(done.termination_protection && !done.stop_protection);
        assert_eq!(done.kept_on_termination, kept_on_termination(&capture));
    }
}
