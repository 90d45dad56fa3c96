//! Subnets and where instance types are offered: the target of a migration, found by id or as the
//! one subnet of the source's VPC in the target AZ, and checked against the source.

use aws_sdk_ec2::types::{Filter, LocationType, Subnet};

use crate::capture::Capture;
use crate::error::{aws, Error, Result};
use crate::input::MigrateInput;

/// The subnet facts the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetInfo {
    pub subnet_id: String,
    pub vpc_id: String,
    pub availability_zone: String,
}

impl From<&Subnet> for SubnetInfo {
    fn from(s: &Subnet) -> Self {
        SubnetInfo {
            subnet_id: s.subnet_id().unwrap_or_default().to_string(),
            vpc_id: s.vpc_id().unwrap_or_default().to_string(),
            availability_zone: s.availability_zone().unwrap_or_default().to_string(),
        }
    }
}

/// Picks the one subnet of the source's VPC in the target AZ.
pub fn choose_subnet(candidates: &[SubnetInfo], vpc_id: &str, az: &str) -> Result<SubnetInfo> {
    let matching: Vec<&SubnetInfo> = candidates
        .iter()
        .filter(|s| s.vpc_id == vpc_id && s.availability_zone == az)
        .collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::SubnetNotFound(
            format!("no subnet of {vpc_id} in {az}; create one or give targetSubnetId").into(),
        )),
        many => Err(Error::SubnetAmbiguous(
            format!(
                "{} subnets of {vpc_id} are in {az} ({}); give targetSubnetId",
                many.len(),
                many.iter()
                    .map(|s| s.subnet_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
            .into(),
        )),
    }
}

/// The target must be in the source's VPC, in the AZ asked for, and not where the source is.
pub fn check_target(capture: &Capture, subnet: &SubnetInfo, wanted_az: Option<&str>) -> Result<()> {
    if subnet.vpc_id != capture.vpc_id {
        return Err(Error::TargetMismatch(
            format!(
                "targetSubnetId: {} is in {}, but {} is in {}",
                subnet.subnet_id, subnet.vpc_id, capture.instance_id, capture.vpc_id
            )
            .into(),
        ));
    }
    if let Some(az) = wanted_az {
        if subnet.availability_zone != az {
            return Err(Error::TargetMismatch(
                format!(
                    "targetSubnetId: {} is in {}, not in targetAvailabilityZone {az}",
                    subnet.subnet_id, subnet.availability_zone
                )
                .into(),
            ));
        }
    }
    if subnet.availability_zone == capture.availability_zone {
        return Err(Error::TargetMismatch(
            format!(
                "targetAvailabilityZone: {} is already in {}",
                capture.instance_id, capture.availability_zone
            )
            .into(),
        ));
    }
    Ok(())
}

/// Finds the target subnet, by id or as the one subnet of the source's VPC in the target AZ.
pub async fn resolve_subnet(
    ec2: &aws_sdk_ec2::Client,
    input: &MigrateInput,
    capture: &Capture,
) -> Result<SubnetInfo> {
    if let Some(subnet_id) = &input.target_subnet_id {
        let found = ec2
            .describe_subnets()
            .subnet_ids(subnet_id)
            .send()
            .await
            .map_err(aws("DescribeSubnets"))
            .map_err(|e| match e {
                Error::SubnetNotFound(m) => Error::SubnetNotFound(
                    format!("targetSubnetId: {subnet_id} does not exist ({m})").into(),
                ),
                other => other,
            })?;
        return found
            .subnets()
            .first()
            .map(SubnetInfo::from)
            .ok_or_else(|| {
                Error::SubnetNotFound(format!("targetSubnetId: {subnet_id} does not exist").into())
            });
    }
    let az = input
        .target_availability_zone
        .as_deref()
        .unwrap_or_default();
    let found = ec2
        .describe_subnets()
        .filters(
            Filter::builder()
                .name("vpc-id")
                .values(&capture.vpc_id)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("availability-zone")
                .values(az)
                .build(),
        )
        .send()
        .await
        .map_err(aws("DescribeSubnets"))?;
    let candidates: Vec<SubnetInfo> = found.subnets().iter().map(SubnetInfo::from).collect();
    choose_subnet(&candidates, &capture.vpc_id, az)
}

pub async fn check_offered(ec2: &aws_sdk_ec2::Client, instance_type: &str, az: &str) -> Result<()> {
    let offers = ec2
        .describe_instance_type_offerings()
        .location_type(LocationType::AvailabilityZone)
        .filters(Filter::builder().name("location").values(az).build())
        .filters(
            Filter::builder()
                .name("instance-type")
                .values(instance_type)
                .build(),
        )
        .send()
        .await
        .map_err(aws("DescribeInstanceTypeOfferings"))?;
    let offered = offers.instance_type_offerings().iter().any(|o| {
        o.instance_type()
            .is_some_and(|t| t.as_str() == instance_type)
    });
    if offered {
        Ok(())
    } else {
        Err(Error::InstanceTypeNotOffered(
            format!("instanceType: {instance_type} is not offered in {az}").into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::tests::sample_capture;

    fn subnet(id: &str, vpc: &str, az: &str) -> SubnetInfo {
        SubnetInfo {
            subnet_id: id.into(),
            vpc_id: vpc.into(),
            availability_zone: az.into(),
        }
    }

    #[test]
    fn chooses_the_single_subnet_and_names_the_ambiguity() {
        let all = [
            subnet("subnet-1", "vpc-01234567", "us-east-1b"),
            subnet("subnet-2", "vpc-other", "us-east-1b"),
            subnet("subnet-3", "vpc-01234567", "us-east-1c"),
        ];
        assert_eq!(
            choose_subnet(&all, "vpc-01234567", "us-east-1b")
                .unwrap()
                .subnet_id,
            "subnet-1"
        );
        assert_eq!(
            choose_subnet(&all, "vpc-01234567", "us-east-1d")
                .unwrap_err()
                .name(),
            "SubnetNotFound"
        );
        let twice = [subnet("subnet-1", "v", "z"), subnet("subnet-9", "v", "z")];
        let e = choose_subnet(&twice, "v", "z").unwrap_err();
        assert_eq!(e.name(), "SubnetAmbiguous");
        assert!(e.to_string().contains("subnet-1, subnet-9"), "{e}");
    }

    #[test]
    fn target_checks() {
        let c = sample_capture();
        assert!(check_target(
            &c,
            &subnet("subnet-1", "vpc-01234567", "us-east-1b"),
            Some("us-east-1b")
        )
        .is_ok());
        let other_vpc =
            check_target(&c, &subnet("subnet-1", "vpc-other", "us-east-1b"), None).unwrap_err();
        assert!(
            other_vpc.to_string().starts_with("targetSubnetId"),
            "{other_vpc}"
        );
        let wrong_az = check_target(
            &c,
            &subnet("subnet-1", "vpc-01234567", "us-east-1c"),
            Some("us-east-1b"),
        )
        .unwrap_err();
        assert_eq!(wrong_az.name(), "TargetMismatch");
        let same_az =
            check_target(&c, &subnet("subnet-1", "vpc-01234567", "us-east-1a"), None).unwrap_err();
        assert!(
            same_az.to_string().contains("already in us-east-1a"),
            "{same_az}"
        );
    }
}
