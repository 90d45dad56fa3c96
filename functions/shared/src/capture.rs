//! What a relaunch needs from the source instance, read once before the AMI is made, and the
//! pure function that reads it out of the EC2 descriptions.

use aws_sdk_ec2::types::{Address, Instance, Volume};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tags::{self, Tag};

/// One EBS volume of the source, with the settings its copy must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    pub device_name: String,
    pub volume_id: String,
    pub size_gib: i32,
    pub volume_type: Option<String>,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub delete_on_termination: bool,
    pub tags: Vec<Tag>,
}

/// Instance metadata service options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataSpec {
    pub http_tokens: Option<String>,
    pub http_put_response_hop_limit: Option<i32>,
    pub http_endpoint: Option<String>,
    pub instance_metadata_tags: Option<String>,
    pub http_protocol_ipv6: Option<String>,
}

/// The Elastic IP on the source, which follows the instance to its new place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ElasticIp {
    pub allocation_id: String,
    pub public_ip: String,
}

/// Instance attributes that DescribeInstances does not return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Base64, as EC2 returns it and as RunInstances takes it.
    pub user_data: Option<String>,
    pub disable_api_termination: bool,
    pub disable_api_stop: bool,
    pub shutdown_behavior: Option<String>,
}

/// What the state carries of the source's user data: its SHA-256 and length, never the data.
/// User data often holds secrets, and a run's state is kept in its execution history; launch
/// reads the data from the source and checks it against this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDataRef {
    /// Hex SHA-256 of the base64 text EC2 returns.
    pub sha256: String,
    /// Length of that base64 text.
    pub length: usize,
}

impl UserDataRef {
    pub fn of(base64: &str) -> Self {
        use sha2::{Digest, Sha256};
        UserDataRef {
            sha256: Sha256::digest(base64.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            length: base64.len(),
        }
    }
}

/// The user data to launch with: what the source holds now, if it is what was captured. Pure.
pub fn checked_user_data(
    instance_id: &str,
    captured: Option<&UserDataRef>,
    now: Option<String>,
) -> Result<Option<String>> {
    let now = now.filter(|u| !u.is_empty());
    if now.as_deref().map(UserDataRef::of).as_ref() == captured {
        return Ok(now);
    }
    Err(Error::invalid(
        "instanceId",
        format!("{instance_id}'s user data changed during the run (it is not what was captured with its image); start the run again"),
    ))
}

/// Everything about the source that a relaunch from its AMI must carry over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capture {
    pub instance_id: String,
    pub state: String,
    pub instance_type: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub availability_zone: String,
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    pub iam_instance_profile_arn: Option<String>,
    /// A reference, not the data: launch reads it from the source.
    pub user_data: Option<UserDataRef>,
    pub tags: Vec<Tag>,
    pub root_device_name: Option<String>,
    pub volumes: Vec<VolumeSpec>,
    pub metadata: Option<MetadataSpec>,
    pub detailed_monitoring: bool,
    pub ebs_optimized: bool,
    pub cpu_credits: Option<String>,
    pub tenancy: Option<String>,
    pub source_dest_check: bool,
    pub disable_api_termination: bool,
    pub disable_api_stop: bool,
    pub shutdown_behavior: Option<String>,
    pub elastic_ip: Option<ElasticIp>,
    /// What an AMI cannot carry to another AZ, said plainly for the operator.
    pub not_carried: Vec<String>,
    /// The platform EC2 bills it as (`Linux/UNIX`, `Windows` …): a Capacity Reservation's.
    #[serde(default = "linux")]
    pub platform: String,
}

fn linux() -> String {
    "Linux/UNIX".into()
}

/// Burstable families take a credit specification; others refuse one.
pub fn is_burstable(instance_type: &str) -> bool {
    instance_type
        .split_once('.')
        .is_some_and(|(family, _)| matches!(family, "t2" | "t3" | "t3a" | "t4g"))
}

/// Reads the capture out of the descriptions. Pure: every branch is tested without a client.
pub fn capture(
    instance: &Instance,
    volumes: &[Volume],
    attributes: Attributes,
    address: Option<&Address>,
    cpu_credits: Option<String>,
) -> Result<Capture> {
    let instance_id = instance.instance_id().unwrap_or_default().to_string();
    let state = instance
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_else(|| "unknown".into());
    if !matches!(state.as_str(), "running" | "stopped") {
        return Err(Error::UnsupportedSource(format!(
            "instance {instance_id} is {state}; an AMI can be made only of a running or stopped instance"
        ).into()));
    }
    let root_type = instance
        .root_device_type()
        .map(|t| t.as_str())
        .unwrap_or("ebs");
    if root_type != "ebs" {
        return Err(Error::UnsupportedSource(format!(
            "instance {instance_id} has an {root_type} root device; only EBS-backed instances can be moved by an AMI"
        ).into()));
    }
    let placement = instance.placement();
    let availability_zone = placement
        .and_then(|p| p.availability_zone())
        .unwrap_or_default()
        .to_string();
    let vpc_id = instance.vpc_id().ok_or_else(|| {
        Error::UnsupportedSource(format!("instance {instance_id} is not in a VPC").into())
    })?;

    let mut specs = Vec::new();
    for mapping in instance.block_device_mappings() {
        let (Some(device), Some(ebs)) = (mapping.device_name(), mapping.ebs()) else {
            continue;
        };
        let volume_id = ebs.volume_id().unwrap_or_default();
        let volume = volumes
            .iter()
            .find(|v| v.volume_id() == Some(volume_id))
            .ok_or_else(|| {
                Error::AwsApi(
                    format!("DescribeVolumes: volume {volume_id} of {device} was not returned")
                        .into(),
                )
            })?;
        specs.push(VolumeSpec {
            device_name: device.to_string(),
            volume_id: volume_id.to_string(),
            size_gib: volume.size().unwrap_or_default(),
            volume_type: volume.volume_type().map(|t| t.as_str().to_string()),
            iops: volume.iops(),
            throughput: volume.throughput(),
            encrypted: volume.encrypted().unwrap_or(false),
            kms_key_id: volume.kms_key_id().map(str::to_string),
            delete_on_termination: ebs.delete_on_termination().unwrap_or(false),
            tags: tags::from_sdk(volume.tags()),
        });
    }

    let not_carried = crate::carry::not_carried(instance, address.is_some());

    let metadata = instance.metadata_options().map(|m| MetadataSpec {
        http_tokens: m.http_tokens().map(|v| v.as_str().to_string()),
        http_put_response_hop_limit: m.http_put_response_hop_limit(),
        http_endpoint: m.http_endpoint().map(|v| v.as_str().to_string()),
        instance_metadata_tags: m.instance_metadata_tags().map(|v| v.as_str().to_string()),
        http_protocol_ipv6: m.http_protocol_ipv6().map(|v| v.as_str().to_string()),
    });
    let instance_type = instance
        .instance_type()
        .map(|t| t.as_str().to_string())
        .unwrap_or_default();

    Ok(Capture {
        instance_id,
        state,
        cpu_credits: cpu_credits.filter(|_| is_burstable(&instance_type)),
        instance_type,
        vpc_id: vpc_id.to_string(),
        subnet_id: instance.subnet_id().unwrap_or_default().to_string(),
        availability_zone,
        security_group_ids: instance
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect(),
        key_name: instance.key_name().map(str::to_string),
        iam_instance_profile_arn: instance
            .iam_instance_profile()
            .and_then(|p| p.arn())
            .map(str::to_string),
        user_data: attributes
            .user_data
            .filter(|u| !u.is_empty())
            .map(|u| UserDataRef::of(&u)),
        tags: tags::from_sdk(instance.tags()),
        root_device_name: instance.root_device_name().map(str::to_string),
        volumes: specs,
        metadata,
        detailed_monitoring: instance
            .monitoring()
            .and_then(|m| m.state())
            .is_some_and(|s| matches!(s.as_str(), "enabled" | "pending")),
        ebs_optimized: instance.ebs_optimized().unwrap_or(false),
        tenancy: placement
            .and_then(|p| p.tenancy())
            .map(|t| t.as_str().to_string()),
        source_dest_check: instance.source_dest_check().unwrap_or(true),
        disable_api_termination: attributes.disable_api_termination,
        disable_api_stop: attributes.disable_api_stop,
        shutdown_behavior: attributes.shutdown_behavior,
        elastic_ip: address.and_then(|a| {
            Some(ElasticIp {
                allocation_id: a.allocation_id()?.to_string(),
                public_ip: a.public_ip().unwrap_or_default().to_string(),
            })
        }),
        not_carried,
        platform: instance
            .platform_details()
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .unwrap_or_else(linux),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aws_sdk_ec2::types::{
        EbsInstanceBlockDevice, GroupIdentifier, IamInstanceProfile, InstanceBlockDeviceMapping,
        InstanceMetadataOptionsResponse, InstanceState, InstanceStateName, InstanceType,
        Monitoring, MonitoringState, Placement, Tenancy, VolumeType,
    };

    pub fn source_instance(state: InstanceStateName) -> Instance {
        Instance::builder()
            .instance_id("i-0123456789abcdef0")
            .state(InstanceState::builder().name(state).build())
            .instance_type(InstanceType::T3Micro)
            .vpc_id("vpc-01234567")
            .subnet_id("subnet-0aaaaaaa")
            .private_ip_address("10.0.1.10")
            .placement(
                Placement::builder()
                    .availability_zone("us-east-1a")
                    .tenancy(Tenancy::Default)
                    .build(),
            )
            .security_groups(
                GroupIdentifier::builder()
                    .group_id("sg-01234567")
                    .group_name("web")
                    .build(),
            )
            .key_name("ops-key")
            .iam_instance_profile(
                IamInstanceProfile::builder()
                    .arn("arn:aws:iam::123456789012:instance-profile/web")
                    .build(),
            )
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("Name")
                    .value("web")
                    .build(),
            )
            .root_device_name("/dev/xvda")
            .root_device_type(aws_sdk_ec2::types::DeviceType::Ebs)
            .block_device_mappings(
                InstanceBlockDeviceMapping::builder()
                    .device_name("/dev/xvda")
                    .ebs(
                        EbsInstanceBlockDevice::builder()
                            .volume_id("vol-0root000")
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .block_device_mappings(
                InstanceBlockDeviceMapping::builder()
                    .device_name("/dev/sdf")
                    .ebs(
                        EbsInstanceBlockDevice::builder()
                            .volume_id("vol-0data000")
                            .delete_on_termination(false)
                            .build(),
                    )
                    .build(),
            )
            .metadata_options(
                InstanceMetadataOptionsResponse::builder()
                    .http_tokens(aws_sdk_ec2::types::HttpTokensState::Required)
                    .http_put_response_hop_limit(2)
                    .build(),
            )
            .monitoring(
                Monitoring::builder()
                    .state(MonitoringState::Enabled)
                    .build(),
            )
            .ebs_optimized(true)
            .source_dest_check(false)
            .build()
    }

    pub fn source_volumes() -> Vec<Volume> {
        vec![
            Volume::builder()
                .volume_id("vol-0root000")
                .size(8)
                .volume_type(VolumeType::Gp3)
                .iops(3000)
                .throughput(125)
                .encrypted(false)
                .build(),
            Volume::builder()
                .volume_id("vol-0data000")
                .size(20)
                .volume_type(VolumeType::Io2)
                .iops(4000)
                .encrypted(true)
                .kms_key_id("arn:aws:kms:us-east-1:123456789012:key/k1")
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("role")
                        .value("data")
                        .build(),
                )
                .build(),
        ]
    }

    pub fn sample_capture() -> Capture {
        let address = Address::builder()
            .allocation_id("eipalloc-01234567")
            .public_ip("198.51.100.7")
            .build();
        capture(
            &source_instance(InstanceStateName::Running),
            &source_volumes(),
            Attributes {
                user_data: Some("IyEvYmluL3NoCg==".into()),
                disable_api_termination: true,
                disable_api_stop: false,
                shutdown_behavior: Some("stop".into()),
            },
            Some(&address),
            Some("unlimited".into()),
        )
        .unwrap()
    }

    #[test]
    fn captures_every_setting_a_relaunch_needs() {
        let c = sample_capture();
        assert_eq!(c.instance_type, "t3.micro");
        assert_eq!(c.security_group_ids, ["sg-01234567"]);
        assert_eq!(c.key_name.as_deref(), Some("ops-key"));
        assert_eq!(
            c.iam_instance_profile_arn.as_deref(),
            Some("arn:aws:iam::123456789012:instance-profile/web")
        );
        assert_eq!(c.user_data, Some(UserDataRef::of("IyEvYmluL3NoCg==")));
        assert_eq!(c.user_data.as_ref().map(|r| r.length), Some(16));
        let state = serde_json::to_string(&c).unwrap();
        assert!(
            !state.contains("IyEvYmluL3NoCg=="),
            "the state never holds user data: {state}"
        );
        assert_eq!(c.tags, [Tag::new("Name", "web")]);
        assert_eq!(c.volumes.len(), 2);
        let data = &c.volumes[1];
        assert_eq!(
            (
                data.device_name.as_str(),
                data.size_gib,
                data.volume_type.as_deref(),
                data.iops
            ),
            ("/dev/sdf", 20, Some("io2"), Some(4000))
        );
        assert!(data.encrypted && !data.delete_on_termination);
        assert_eq!(
            data.kms_key_id.as_deref(),
            Some("arn:aws:kms:us-east-1:123456789012:key/k1")
        );
        assert_eq!(data.tags, [Tag::new("role", "data")]);
        assert_eq!(c.volumes[0].throughput, Some(125));
        assert_eq!(
            c.metadata.as_ref().unwrap().http_tokens.as_deref(),
            Some("required")
        );
        assert!(c.detailed_monitoring && c.ebs_optimized && !c.source_dest_check);
        assert_eq!(c.cpu_credits.as_deref(), Some("unlimited"));
        assert_eq!(c.tenancy.as_deref(), Some("default"));
        assert!(c.disable_api_termination && !c.disable_api_stop);
        assert_eq!(c.shutdown_behavior.as_deref(), Some("stop"));
        assert_eq!(
            c.elastic_ip.as_ref().unwrap().allocation_id,
            "eipalloc-01234567"
        );
        assert!(
            c.not_carried[0].contains("10.0.1.10"),
            "{:?}",
            c.not_carried
        );
    }

    #[test]
    fn refuses_instance_store_roots_and_transitional_states() {
        let mut i = source_instance(InstanceStateName::Running);
        i.root_device_type = Some(aws_sdk_ec2::types::DeviceType::InstanceStore);
        assert_eq!(
            capture(&i, &source_volumes(), Attributes::default(), None, None)
                .unwrap_err()
                .name(),
            "UnsupportedSource"
        );
        let i = source_instance(InstanceStateName::Stopping);
        let e = capture(&i, &source_volumes(), Attributes::default(), None, None).unwrap_err();
        assert!(e.to_string().contains("stopping"), "{e}");
    }

    #[test]
    fn a_volume_missing_from_describe_volumes_is_an_error_not_a_silent_loss() {
        let e = capture(
            &source_instance(InstanceStateName::Running),
            &source_volumes()[..1],
            Attributes::default(),
            None,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("vol-0data000"), "{e}");
    }

    #[test]
    fn credits_only_for_burstable_types() {
        assert!(is_burstable("t3.large") && is_burstable("t4g.nano"));
        assert!(!is_burstable("m5.large") && !is_burstable("t3"));
        let mut i = source_instance(InstanceStateName::Stopped);
        i.instance_type = Some(InstanceType::M5Large);
        let c = capture(
            &i,
            &source_volumes(),
            Attributes::default(),
            None,
            Some("standard".into()),
        )
        .unwrap();
        assert_eq!(c.cpu_credits, None);
    }
}
