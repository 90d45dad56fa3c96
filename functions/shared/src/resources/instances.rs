//! Instances: reading a source and everything a relaunch needs, and what its protection allows.

use aws_sdk_ec2::types::{Filter, Instance, InstanceAttributeName};

use crate::capture::{self, Attributes, Capture};
use crate::error::{aws, Error, Result};
use crate::tags;

async fn attribute(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
    name: InstanceAttributeName,
) -> Result<aws_sdk_ec2::operation::describe_instance_attribute::DescribeInstanceAttributeOutput> {
    ec2.describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(name)
        .send()
        .await
        .map_err(aws("DescribeInstanceAttribute"))
}

/// The instance, or `None` when EC2 does not (or not yet) know it: a missing id is
/// `InvalidInstanceID.NotFound`, and an instance just launched may not be found for a while.
pub async fn find(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<Option<Instance>> {
    let described = match ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(aws("DescribeInstances"))
    {
        Ok(described) => described,
        Err(Error::InstanceNotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(described
        .reservations
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.instances.unwrap_or_default())
        .find(|i| i.instance_id() == Some(instance_id)))
}

/// The instances tagged with the execution that are not terminated: what the run may have
/// launched (a tag alone proves nothing; `ownership` proves the rest).
pub async fn live_of_execution(
    ec2: &aws_sdk_ec2::Client,
    execution: &str,
) -> Result<Vec<Instance>> {
    Ok(ec2
        .describe_instances()
        .filters(tags::execution_filter(execution))
        .filters(tags::live_instances_filter())
        .send()
        .await
        .map_err(aws("DescribeInstances"))?
        .reservations
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.instances.unwrap_or_default())
        .collect())
}

/// Reads the source and everything a relaunch needs.
pub async fn read_source(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<Capture> {
    let instance = find(ec2, instance_id).await?.ok_or_else(|| {
        Error::InstanceNotFound(format!("instanceId: {instance_id} does not exist").into())
    })?;
    let instance = &instance;

    let volume_ids: Vec<String> = instance
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs()?.volume_id().map(str::to_string))
        .collect();
    let volumes = if volume_ids.is_empty() {
        Vec::new()
    } else {
        ec2.describe_volumes()
            .set_volume_ids(Some(volume_ids))
            .send()
            .await
            .map_err(aws("DescribeVolumes"))?
            .volumes()
            .to_vec()
    };

    let user_data = attribute(ec2, instance_id, InstanceAttributeName::UserData).await?;
    let termination = attribute(
        ec2,
        instance_id,
        InstanceAttributeName::DisableApiTermination,
    )
    .await?;
    let stop = attribute(ec2, instance_id, InstanceAttributeName::DisableApiStop).await?;
    let shutdown = attribute(
        ec2,
        instance_id,
        InstanceAttributeName::InstanceInitiatedShutdownBehavior,
    )
    .await?;
    let attributes = Attributes {
        user_data: user_data
            .user_data()
            .and_then(|v| v.value())
            .map(str::to_string),
        disable_api_termination: termination
            .disable_api_termination()
            .and_then(|v| v.value())
            .unwrap_or(false),
        disable_api_stop: stop
            .disable_api_stop()
            .and_then(|v| v.value())
            .unwrap_or(false),
        shutdown_behavior: shutdown
            .instance_initiated_shutdown_behavior()
            .and_then(|v| v.value())
            .map(str::to_string),
    };

    let addresses = ec2
        .describe_addresses()
        .filters(
            Filter::builder()
                .name("instance-id")
                .values(instance_id)
                .build(),
        )
        .send()
        .await
        .map_err(aws("DescribeAddresses"))?;

    let instance_type = instance
        .instance_type()
        .map(|t| t.as_str())
        .unwrap_or_default();
    let cpu_credits = if capture::is_burstable(instance_type) {
        ec2.describe_instance_credit_specifications()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(aws("DescribeInstanceCreditSpecifications"))?
            .instance_credit_specifications()
            .first()
            .and_then(|c| c.cpu_credits())
            .map(str::to_string)
    } else {
        None
    };

    capture::capture(
        instance,
        &volumes,
        attributes,
        addresses.addresses().first(),
        cpu_credits,
    )
}

/// Puts an Elastic IP on `instance_id`, taking it from wherever it is: to the new instance at the
/// cutover, back to the source on rollback.
pub async fn move_address(
    ec2: &aws_sdk_ec2::Client,
    eip: &crate::capture::ElasticIp,
    instance_id: &str,
) -> Result<()> {
    ec2.associate_address()
        .allocation_id(&eip.allocation_id)
        .instance_id(instance_id)
        .allow_reassociation(true)
        .send()
        .await
        .map_err(aws("AssociateAddress"))?;
    tracing::info!(instance_id, public_ip = %eip.public_ip, "elastic IP moved");
    Ok(())
}
