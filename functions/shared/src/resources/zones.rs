//! Availability Zones by name or by AZ ID. An AZ ID (`use1-az2`) names the same physical zone in
//! every account; a name (`us-east-1b`) is mapped to a zone per account
//! (https://docs.aws.amazon.com/ram/latest/userguide/working-with-az-ids.html). amiflow takes
//! either, and works with the name of this account.

use crate::error::{aws, Error, Result};
use crate::input::{zone, Zone};

/// The zone's name for a name or an ID, from DescribeAvailabilityZones.
pub async fn zone_name(ec2: &aws_sdk_ec2::Client, field: &str, zone: &Zone) -> Result<String> {
    let request = ec2.describe_availability_zones();
    let request = match zone {
        Zone::Name(name) => request.zone_names(name),
        Zone::Id(id) => request.zone_ids(id),
    };
    let answer = match request
        .send()
        .await
        .map_err(aws("DescribeAvailabilityZones"))
    {
        Ok(answer) => answer,
        // EC2 refuses an unknown name or ID with InvalidParameterValue.
        Err(e) if e.is_code("InvalidParameterValue") => {
            return Err(Error::invalid(field, format!("no such zone here: {e}")))
        }
        Err(e) => return Err(e),
    };
    answer
        .availability_zones()
        .first()
        .and_then(|z| z.zone_name())
        .map(str::to_string)
        .ok_or_else(|| {
            let given = match zone {
                Zone::Name(v) | Zone::Id(v) => v,
            };
            Error::invalid(field, format!("{given} is not a zone of this region"))
        })
}

/// `value` (a name or an AZ ID) as this account's zone name, both asked of
/// DescribeAvailabilityZones, so that a name that is no zone here is refused too.
pub async fn checked_name(
    ec2: &aws_sdk_ec2::Client,
    field: &str,
    value: &str,
    region: &str,
) -> Result<String> {
    zone_name(ec2, field, &zone(field, value, region)?).await
}

/// `value` (a name or an AZ ID) as this account's zone name: a name is used as it is, an ID is
/// asked of DescribeAvailabilityZones.
pub async fn name_of(
    ec2: &aws_sdk_ec2::Client,
    field: &str,
    value: &str,
    region: &str,
) -> Result<String> {
    match zone(field, value, region)? {
        Zone::Name(name) => Ok(name),
        id => zone_name(ec2, field, &id).await,
    }
}
