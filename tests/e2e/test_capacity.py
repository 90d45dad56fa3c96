"""\"capacity\": \"reserve\": a targeted On-Demand Capacity Reservation in the target AZ is made
before the AMI, the copy launches into it, and it is released when the run ends, either way. No
capacity fails the run before anything is made."""

from __future__ import annotations

from workflow import instance, message, run, tagged


def reservations_of(ec2, execution: str) -> list[dict]:
    return ec2.describe_capacity_reservations(Filters=[{"Name": "tag:amiflow:execution", "Values": [execution]}])["CapacityReservations"]


def test_a_reservation_is_made_used_and_released(ec2, sfn, world):
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b",
                                          "capacity": "reserve"})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    [reservation] = reservations_of(ec2, result.name)
    assert (reservation["InstanceType"], reservation["AvailabilityZone"], reservation["InstanceMatchCriteria"]) == ("t3.micro", "us-east-1b", "targeted")
    assert instance(ec2, result.output["newInstanceId"])["CapacityReservationId"] == reservation["CapacityReservationId"]
    assert reservation["State"] == "cancelled"
    assert result.output["releasedCapacityReservationIds"] == [reservation["CapacityReservationId"]]


def test_no_capacity_to_reserve_fails_the_run_before_anything_is_made(stack, ec2, sfn, world):
    stack.control("faults", {"kind": "insufficient-capacity", "availabilityZone": "us-east-1b", "count": 1})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b",
                                          "capacity": "reserve", "sourceAction": "terminate"})
    assert (result.status, result.error) == ("FAILED", "InsufficientCapacity")
    assert message(result).startswith("capacity: no t3.micro can be reserved in us-east-1b"), result.cause
    assert "WaitForImage" not in result.states
    assert tagged(ec2, result.name) == {"instances": [], "images": [], "snapshots": []}
    assert reservations_of(ec2, result.name) == []
    assert instance(ec2, world.instance_id)["State"]["Name"] == "running"
