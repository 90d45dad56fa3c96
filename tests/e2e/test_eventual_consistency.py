"""Every workflow with EC2, KMS and DynamoDB eventually consistent (the layer's
eventualConsistencySeconds): new instances and images not found at first, permissions and grants
not yet in force, a just-deregistered image's snapshots still in use, eventually consistent reads
that miss a write. Each run must succeed and leave what a run leaves."""

from __future__ import annotations

import uuid

import pytest
from amiflow_local.seed import seed

from accounts import B, copy_input, encrypted_image
from audits import NOTHING_SHARED, access_left, audit, audit_copy
from workflow import run

SECONDS = 2


@pytest.fixture
def settle(stack):
    """settle(): from now on, every change takes SECONDS to be seen (the test's own set-up is done
    before, at once)."""
    yield lambda: stack.control("config", {"eventualConsistencySeconds": SECONDS})
    stack.control("config", {"eventualConsistencySeconds": 0})


def test_a_migration_succeeds_while_ec2_settles(stack, ec2, sfn, settle):
    world = seed(ec2, "us-east-1", name=f"ec-{uuid.uuid4().hex[:6]}")
    settle()
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b",
                                          "sourceAction": "stop"}, timeout=240)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    # The AMI event found the run's task token although it was written a moment before (a
    # strongly consistent read), so the run did not fall back to polling.
    assert "StartPolling" not in result.states, result.states
    assert result.output["leftovers"] == []
    audit(ec2, result, world, source_state="stopped")


def test_a_failed_migration_is_rolled_back_while_ec2_settles(stack, ec2, sfn, settle):
    world = seed(ec2, "us-east-1", name=f"ec-{uuid.uuid4().hex[:6]}")
    settle()
    stack.control("faults", {"kind": "impaired"})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"}, timeout=240)
    assert result.error == "StatusCheckFailed", (result.error, result.cause)
    audit(ec2, result, world)


def test_sharing_and_unsharing_succeed_while_grants_settle(stack, ec2, sfn, cmk, settle):
    image_id = encrypted_image(stack, ec2, cmk)
    settle()
    shared = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B]})
    assert shared.status == "SUCCEEDED", (shared.error, shared.cause)
    unshared = run(sfn, "UnshareImage", {"imageId": image_id, "accountIds": [B]})
    assert unshared.status == "SUCCEEDED", (unshared.error, unshared.cause)
    assert access_left(stack, ec2, image_id, cmk) == NOTHING_SHARED


def test_a_copy_succeeds_while_grants_and_permissions_settle(stack, ec2, sfn, cmk, settle):
    b_key = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})["targetKmsKeyArn"]
    image_id = encrypted_image(stack, ec2, cmk)
    settle()
    result = run(sfn, "CopyImage", copy_input(image_id, b_key), timeout=240)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    audit_copy(stack, ec2, result, image_id, cmk)
