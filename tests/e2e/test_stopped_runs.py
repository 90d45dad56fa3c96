"""Runs that end without their Catch: an operator's StopExecution (ABORTED), or a time-out. Step
Functions sends the status change to EventBridge; amiflow's rule hands it to the reaper, which
starts the Reap state machine with the rollback the run's own state machine would have run from
its last recorded state (README, Safety)."""

from __future__ import annotations

import json
import time

import pytest

from accounts import B, SHAREABLE, encrypted_image
from audits import NOTHING_SHARED, access_left
from workflow import entered_states, instance, start, state_machine_arn, tagged, wait_for


def stop_in(stack, sfn, machine: str, payload: dict, state: str) -> tuple[str, float]:
    """Starts a run, stops it once it has entered `state`; answers its name and when it stopped."""
    name, arn = start(sfn, machine, payload, prefix="stop")
    wait_for(lambda: state in entered_states(sfn, arn), timeout=60, what=f"{name} in {state}")
    sfn.stop_execution(executionArn=arn, error="OperatorStopped", cause="stopped by the test")
    stopped = time.monotonic()
    assert sfn.describe_execution(executionArn=arn)["status"] == "ABORTED"
    return name, stopped


def reap_of(sfn, name: str) -> dict:
    """The Reap execution of a run, once it has ended."""
    reap_arn = state_machine_arn(sfn, "Reap").replace(":stateMachine:", ":execution:") + f":reap-{name}"

    def ended():
        try:
            return sfn.describe_execution(executionArn=reap_arn)["status"] != "RUNNING"
        except sfn.exceptions.ExecutionDoesNotExist:
            return False

    wait_for(ended, timeout=60, what=f"the reap of {name}")
    return sfn.describe_execution(executionArn=reap_arn)


@pytest.mark.parametrize("state", ["WaitForImage", "WaitBeforePoll", "WaitForInstance"])
def test_a_migration_stopped_while_it_waits_leaves_nothing(stack, ec2, sfn, world, state):
    if state == "WaitForImage":
        stack.control("config", {"imageDelaySeconds": 8})
    elif state == "WaitBeforePoll":
        # The AMI event is lost: the run polls after its wait for the event times out.
        stack.control("config", {"imageDelaySeconds": 30})
        stack.control("faults", {"kind": "drop-event", "count": 1})
    else:
        stack.control("config", {"statusCheckDelaySeconds": 30})
    name, stopped = stop_in(stack, sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"}, state)
    reap = reap_of(sfn, name)
    assert reap["status"] == "SUCCEEDED", reap
    nothing = {"instances": [], "images": [], "snapshots": []}
    wait_for(lambda: tagged(ec2, name) == nothing, timeout=10, what="nothing tagged")
    print(f"{state}: clean {time.monotonic() - stopped:.1f} s after the stop")
    # The reap removed what the run had made by then: its image, and its instance once launched.
    removed = json.loads(reap["output"])["results"][0]["result"]
    assert removed["deregisteredImageIds"], removed
    assert bool(removed["terminatedInstanceIds"]) == (state == "WaitForInstance"), removed
    assert time.monotonic() - stopped < 60, "reaped within a minute of the stop"
    assert ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]["InstanceId"] == world.instance_id
    assert instance(ec2, world.instance_id)["State"]["Name"] == "running"
    lock = stack.client("dynamodb").get_item(TableName="RunLockTable", Key={"resourceId": {"S": world.instance_id}}, ConsistentRead=True)
    assert "Item" not in lock, lock


def test_a_share_stopped_after_its_grant_leaves_no_grant(stack, ec2, sfn):
    key = stack.client("kms").create_key(Description="CMK-A", Tags=SHAREABLE)["KeyMetadata"]["Arn"]
    image_id = encrypted_image(stack, ec2, key)
    # Share answers late, so that the run is stopped after GrantKeys has given B the key.
    stack.control("faults", {"kind": "delay", "action": "ModifyImageAttribute", "seconds": 6, "count": 1})
    name, stopped = stop_in(stack, sfn, "ShareImage", {"imageId": image_id, "accountIds": [B]}, "Share")
    reap = reap_of(sfn, name)
    assert reap["status"] == "SUCCEEDED", reap
    wait_for(lambda: access_left(stack, ec2, image_id, key) == NOTHING_SHARED, timeout=15, what="nothing shared")
    print(f"share: clean {time.monotonic() - stopped:.1f} s after the stop")
    assert time.monotonic() - stopped < 60, "reaped within a minute of the stop"
    # The run had granted B the key when it was stopped; the reap revoked that grant.
    revoked = json.loads(reap["output"])["results"][1]["result"]
    assert [g["accountId"] for g in revoked[0]["grants"]] == [B], revoked


def test_a_run_that_ends_on_its_own_is_not_reaped(stack, ec2, sfn, world):
    from workflow import run

    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1c", "keepImage": True})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    time.sleep(2)
    names = [e["name"] for e in sfn.list_executions(stateMachineArn=state_machine_arn(sfn, "Reap"))["executions"]]
    assert f"reap-{result.name}" not in names
    assert tagged(ec2, result.name)["instances"] == [result.output["newInstanceId"]]


def test_a_copy_stopped_while_the_target_copies_leaves_nothing_in_either_account(stack, ec2, sfn):
    from types import SimpleNamespace

    from accounts import copy_input
    from audits import audit_copy

    b_key = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})["targetKmsKeyArn"]
    key = stack.client("kms").create_key(Description="CMK-A", Tags=SHAREABLE)["KeyMetadata"]["Arn"]
    image_id = encrypted_image(stack, ec2, key)
    stack.control("config", {"imageDelaySeconds": 8})
    name, stopped = stop_in(stack, sfn, "CopyImage", copy_input(image_id, b_key), "WaitForTarget")
    reap = reap_of(sfn, name)
    assert reap["status"] == "SUCCEEDED", reap
    removed = json.loads(reap["output"])["results"][2]["result"]["removedImageIds"]
    assert len(removed) == 1, removed  # B's copy, made before the stop
    audit_copy(stack, ec2, SimpleNamespace(name=name, status="ABORTED"), image_id, key)
    print(f"copy: clean {time.monotonic() - stopped:.1f} s after the stop; removed {removed}")
    assert time.monotonic() - stopped < 60, "reaped within a minute of the stop"


def test_a_migration_failing_with_states_runtime_skips_its_catch_and_is_reaped(stack, ec2, sfn, world):
    """States.Runtime is never caught (no Catch, not even on States.ALL, takes it), so the run's
    own Rollback does not run; the reaper takes back what it had made."""
    from workflow import finish

    stack.control("faults", {"kind": "states-runtime", "state": "VerifyInstance", "count": 1})
    name, arn = start(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"}, prefix="runtime")
    result = finish(sfn, name, arn)
    assert (result.status, result.error) == ("FAILED", "States.Runtime"), (result.error, result.cause)
    assert "Rollback" not in result.states, result.states
    ended = time.monotonic()
    reap = reap_of(sfn, name)
    assert reap["status"] == "SUCCEEDED", reap
    removed = json.loads(reap["output"])["results"][0]["result"]
    assert removed["deregisteredImageIds"] and removed["terminatedInstanceIds"], removed
    wait_for(lambda: tagged(ec2, name) == {"instances": [], "images": [], "snapshots": []}, timeout=10, what="nothing tagged")
    print(f"States.Runtime: clean {time.monotonic() - ended:.1f} s after the failure")
    assert ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]["InstanceId"] == world.instance_id
    assert instance(ec2, world.instance_id)["State"]["Name"] == "running"
