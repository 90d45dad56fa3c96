"""The fault matrix (part of it): each row runs a workflow on the local stack under an injected
fault, asserts its terminal state and error name, and audits what is left."""

from __future__ import annotations

import uuid

import pytest
from amiflow_local.seed import seed

from workflow import instance, run, tagged


@pytest.fixture
def world(ec2):
    return seed(ec2, "us-east-1", name=f"fault-{uuid.uuid4().hex[:6]}")


def audit(ec2, result, world, *, source_state: str = "running") -> None:
    """Everything tagged with the execution is a declared output of a successful run, or gone; the
    source is in the state the run was allowed to leave it in."""
    left = tagged(ec2, result.name)
    if result.status == "SUCCEEDED":
        assert left == {"instances": [result.output["newInstanceId"]], "images": [], "snapshots": []}, left
    else:
        assert left == {"instances": [], "images": [], "snapshots": []}, left
    assert instance(ec2, world.instance_id)["State"]["Name"] == source_state


MUTATING = ["CreateImage", "RunInstances", "CreateTags", "ModifyInstanceAttribute", "AssociateAddress", "DeregisterImage", "DeleteSnapshot", "StopInstances"]


@pytest.mark.parametrize("action", MUTATING)
def test_throttling_of_a_mutating_call_is_ridden_out_by_retries(stack, ec2, sfn, world, action):
    # Six refusals: more than the SDK's own four attempts, so the state machine's Retry on
    # Throttled has to carry the run through as well.
    stack.control("faults", {"kind": "throttle", "action": action, "count": 6})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", "sourceAction": "stop"}, timeout=300)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert any(f["action"] == action for f in stack.control("faults")["fired"]), "the fault never fired"
    audit(ec2, result, world, source_state=instance(ec2, world.instance_id)["State"]["Name"])
    assert instance(ec2, world.instance_id)["State"]["Name"] in ("stopping", "stopped")


@pytest.mark.parametrize("action", ["CreateImage", "RunInstances"])
def test_a_5xx_is_retried(stack, ec2, sfn, world, action):
    stack.control("faults", {"kind": "server-error", "action": action, "status": 503, "count": 5})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"}, timeout=300)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    audit(ec2, result, world)


def test_no_capacity_in_the_target_az_fails_cleanly(stack, ec2, sfn, world):
    stack.control("faults", {"kind": "insufficient-capacity", "availabilityZone": "us-east-1b", "share": 1.0})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", "sourceAction": "terminate"})
    assert result.status == "FAILED"
    assert result.error == "InsufficientCapacity"
    audit(ec2, result, world)


def test_impaired_status_checks_fail_the_run_and_remove_the_new_instance(stack, ec2, sfn, world):
    stack.control("faults", {"kind": "impaired"})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", "sourceAction": "terminate"})
    assert result.status == "FAILED"
    assert result.error == "StatusCheckFailed"
    audit(ec2, result, world)
    address = ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]
    assert address["InstanceId"] == world.instance_id


def test_a_new_instance_killed_by_its_kms_key_fails_with_the_state_reason(stack, ec2, sfn, world):
    kms = stack.client("kms")
    key = kms.create_key(Description="soon disabled")["KeyMetadata"]["Arn"]
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=4, Encrypted=True, KmsKeyId=key)["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=world.instance_id, Device="/dev/sdj")
    kms.disable_key(KeyId=key.split("/")[-1])  # moto 5.2.5 takes only the key id here
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", "sourceAction": "terminate"})
    assert result.status == "FAILED"
    assert result.error == "LaunchFailed"
    assert "Client.InvalidKMSKey.InvalidState" in result.cause
    audit(ec2, result, world)
