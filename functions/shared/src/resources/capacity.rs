//! The Capacity Reservation of a run with `"capacity": "reserve"`: one targeted On-Demand
//! reservation for the copy's type in the target AZ, made before the AMI (no capacity fails the
//! run before any change), launched into, and cancelled when the run ends either way
//! (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/capacity-reservations-using.html).

use aws_sdk_ec2::types::{
    CapacityReservationInstancePlatform, CapacityReservationState, EndDateType, Filter,
    InstanceMatchCriteria, ResourceType,
};

use crate::error::{answered_id, aws, Error, Result};
use crate::resources::client_token;
use crate::tags::{self, Tag};

/// Reserves one instance of `instance_type` on `platform` in `availability_zone` for the run,
/// tagged with the execution; a retried call (same execution) answers the same reservation.
pub async fn reserve(
    ec2: &aws_sdk_ec2::Client,
    execution: &str,
    instance_type: &str,
    platform: &str,
    availability_zone: &str,
) -> Result<String> {
    let created = ec2
        .create_capacity_reservation()
        .instance_type(instance_type)
        .instance_platform(CapacityReservationInstancePlatform::from(platform))
        .availability_zone(availability_zone)
        .instance_count(1)
        .instance_match_criteria(InstanceMatchCriteria::Targeted)
        .end_date_type(EndDateType::Unlimited)
        .client_token(client_token(execution, "capacity"))
        .tag_specifications(tags::spec(
            ResourceType::CapacityReservation,
            &[Tag::new(tags::EXECUTION, execution)],
        ))
        .send()
        .await
        .map_err(aws("CreateCapacityReservation"))
        .map_err(|e| match e {
            Error::InsufficientCapacity(detail) => Error::InsufficientCapacity(
                format!("capacity: no {instance_type} can be reserved in {availability_zone}, so nothing was made ({detail})").into(),
            ),
            other => other,
        })?;
    let id = answered_id(
        "CreateCapacityReservation",
        "CapacityReservationId",
        created
            .capacity_reservation()
            .and_then(|r| r.capacity_reservation_id()),
    )?;
    tracing::info!(execution, capacity_reservation = %id, instance_type, availability_zone, "capacity reserved");
    Ok(id)
}

/// Cancels the run's active reservations (found by its tag); answers their ids.
pub async fn release(ec2: &aws_sdk_ec2::Client, execution: &str) -> Result<Vec<String>> {
    let found = ec2
        .describe_capacity_reservations()
        .filters(tags::execution_filter(execution))
        .filters(Filter::builder().name("state").values("active").build())
        .send()
        .await
        .map_err(aws("DescribeCapacityReservations"))?;
    let mut released = Vec::new();
    for reservation in found.capacity_reservations() {
        if reservation.state() != Some(&CapacityReservationState::Active) {
            continue;
        }
        let Some(id) = reservation.capacity_reservation_id() else {
            continue;
        };
        ec2.cancel_capacity_reservation()
            .capacity_reservation_id(id)
            .send()
            .await
            .map_err(aws("CancelCapacityReservation"))?;
        tracing::info!(execution, capacity_reservation = %id, "capacity reservation released");
        released.push(id.to_string());
    }
    Ok(released)
}
