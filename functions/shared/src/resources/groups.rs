//! Auto Scaling membership. An instance in an Auto Scaling group is not moved: the group replaces
//! its instances itself (a copy launched elsewhere is not the group's, and the group may replace
//! the source as soon as it stops), so moving one by AMI fights the group. The group's subnets
//! are what moves it.

use std::collections::BTreeMap;

use crate::error::{aws, Error, Result};

/// DescribeAutoScalingInstances takes at most 50 instance ids a call
/// (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_DescribeAutoScalingInstances.html).
const IDS_PER_CALL: usize = 50;

/// The Auto Scaling group of each of these instances that is in one.
pub async fn groups_of(
    autoscaling: &aws_sdk_autoscaling::Client,
    instance_ids: &[String],
) -> Result<BTreeMap<String, String>> {
    let mut groups = BTreeMap::new();
    for chunk in instance_ids.chunks(IDS_PER_CALL) {
        let mut pages = autoscaling
            .describe_auto_scaling_instances()
            .set_instance_ids(Some(chunk.to_vec()))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(aws("DescribeAutoScalingInstances"))?;
            for member in page.auto_scaling_instances() {
                if let (Some(id), Some(group)) =
                    (member.instance_id(), member.auto_scaling_group_name())
                {
                    groups.insert(id.to_string(), group.to_string());
                }
            }
        }
    }
    Ok(groups)
}

/// The refusal of a group's member, naming the group. Pure.
pub fn in_group(instance_id: &str, group: &str) -> Error {
    Error::InAutoScalingGroup(
        format!(
            "instanceId: {instance_id} is in Auto Scaling group {group}, which replaces its instances itself; \
             move the group instead (its subnets, or an instance refresh)"
        )
        .into(),
    )
}

/// Refuses an instance that is in a group.
pub async fn refuse_member(
    autoscaling: &aws_sdk_autoscaling::Client,
    instance_id: &str,
) -> Result<()> {
    match groups_of(autoscaling, &[instance_id.to_string()])
        .await?
        .get(instance_id)
    {
        Some(group) => Err(in_group(instance_id, group)),
        None => Ok(()),
    }
}
