"""\"targetGroups\": \"follow\": the copy joins every ELBv2 target group that holds the source, on
the same port; the run waits until it is healthy there before the cutover; the source leaves the
groups after it. A rollback takes the copy out and puts the source back."""

from __future__ import annotations

import uuid

import pytest

from workflow import message, run


@pytest.fixture
def group(stack, world):
    """An instance target group of the world's VPC that holds the source on port 8080."""
    elb = stack.client("elbv2")
    arn = elb.create_target_group(Name=f"web-{uuid.uuid4().hex[:8]}", Protocol="HTTP", Port=80, VpcId=world.vpc_id,
                                  TargetType="instance")["TargetGroups"][0]["TargetGroupArn"]
    elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": world.instance_id, "Port": 8080}])
    return arn


def members(stack, group: str) -> dict[str, tuple[int, str]]:
    described = stack.client("elbv2").describe_target_health(TargetGroupArn=group)["TargetHealthDescriptions"]
    return {d["Target"]["Id"]: (d["Target"]["Port"], d["TargetHealth"]["State"]) for d in described}


def health_of(stack, group: str, instance_id: str) -> str:
    described = stack.client("elbv2").describe_target_health(TargetGroupArn=group, Targets=[{"Id": instance_id, "Port": 8080}])
    return described["TargetHealthDescriptions"][0]["TargetHealth"]["State"]


def test_the_copy_takes_the_sources_place_in_its_target_group(stack, sfn, world, group):
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b",
                                          "targetGroups": "follow", "sourceAction": "stop"})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    copy = result.output["newInstanceId"]
    # The run waited for the copy's health checks (initial, then healthy) before the handover.
    assert result.states.index("CheckTargets") < result.states.index("Handover") < result.states.index("Complete")
    assert members(stack, group) == {copy: (8080, "healthy")}
    assert health_of(stack, group, world.instance_id) in ("draining", "unused")


def test_a_rollback_puts_the_source_back_and_takes_the_copy_out(stack, sfn, world, group):
    # Complete's first call refused: the run rolls back after the handover.
    stack.control("faults", {"kind": "api-error", "action": "ModifyInstanceAttribute", "code": "UnauthorizedOperation", "count": 1})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b",
                                          "targetGroups": "follow", "sourceAction": "stop"})
    assert (result.status, result.error) == ("FAILED", "AwsApi"), result.cause
    assert "Handover" in result.states and "UnauthorizedOperation" in message(result)
    current = members(stack, group)
    assert current.get(world.instance_id, (None, None))[0] == 8080, current
    assert all(state != "healthy" for instance_id, (_, state) in current.items() if instance_id != world.instance_id)
