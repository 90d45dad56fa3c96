"""The fault matrix: each row runs a workflow on the local stack under an injected fault (or
someone else's action), asserts its terminal state and error name, and audits what is left."""

from __future__ import annotations

import json
import time

import pytest

from accounts import B, as_account, copy_input, encrypted_image
from audits import NOTHING_SHARED, SHARED_WITH_B, access_left, audit, audit_copy
from workflow import entered_states, finish, instance, message, new_environments, run, start, state_machine_arn, tagged, wait_for


def enter(sfn, execution_arn: str, state: str) -> None:
    wait_for(lambda: state in entered_states(sfn, execution_arn), timeout=60, what=f"the run to enter {state}")


# Complete deletes the snapshots within DeregisterImage (DeleteAssociatedSnapshots): a successful
# migration makes no DeleteSnapshot call of its own.
MUTATING = ["CreateImage", "RunInstances", "CreateTags", "ModifyInstanceAttribute", "AssociateAddress", "DeregisterImage", "StopInstances"]


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


def test_throttling_of_terminate_instances_is_ridden_out_by_retries(stack, ec2, sfn, world):
    stack.control("faults", {"kind": "throttle", "action": "TerminateInstances", "count": 6})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", "sourceAction": "terminate"}, timeout=300)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert any(f["action"] == "TerminateInstances" for f in stack.control("faults")["fired"]), "the fault never fired"
    assert result.output["sourceState"] in ("shutting-down", "terminated")
    audit(ec2, result, world, source_state=instance(ec2, world.instance_id)["State"]["Name"])


@pytest.mark.parametrize("action", ["CreateImage", "RunInstances"])
def test_a_5xx_is_retried(stack, ec2, sfn, world, action):
    stack.control("faults", {"kind": "server-error", "action": action, "status": 503, "count": 5})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"}, timeout=300)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    audit(ec2, result, world)


def test_a_step_that_runs_out_of_time_says_so_before_its_deadline_and_is_retried(stack, ec2, sfn, lambda_, world):
    # create-image gets 4 s, and its first DescribeInstanceAttribute takes 6: the handler stops
    # 1.5 s before Lambda's deadline with ServiceUnavailable, instead of being killed (Sandbox.Timedout).
    original = lambda_.get_function_configuration(FunctionName="create-image")["Timeout"]
    lambda_.update_function_configuration(FunctionName="create-image", Timeout=4)
    try:
        stack.control("faults", {"kind": "delay", "action": "DescribeInstanceAttribute", "seconds": 6, "count": 1})
        name, arn = start(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"})
        result = finish(sfn, name, arn, timeout=300)
    finally:
        lambda_.update_function_configuration(FunctionName="create-image", Timeout=original)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    events = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    failures = [d for e in events for key, d in e.items() if key.endswith("FailedEventDetails")]
    assert [f["error"] for f in failures] == ["ServiceUnavailable"], failures
    assert "s before Lambda's deadline" in failures[0]["cause"]
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


def test_throttling_of_create_grant_is_ridden_out_by_retries(stack, ec2, sfn, cmk):
    image_id = encrypted_image(stack, ec2, cmk)
    stack.control("faults", {"kind": "throttle", "action": "CreateGrant", "count": 6})
    result = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B]}, timeout=300)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert any(f["action"] == "CreateGrant" for f in stack.control("faults")["fired"]), "the fault never fired"
    assert access_left(stack, ec2, image_id, cmk) == SHARED_WITH_B


@pytest.mark.parametrize("action", ["ModifyImageAttribute", "ModifySnapshotAttribute"])
def test_throttling_of_a_sharing_call_is_ridden_out_by_retries(stack, ec2, sfn, cmk, action):
    image_id = encrypted_image(stack, ec2, cmk)
    stack.control("faults", {"kind": "throttle", "action": action, "count": 6})
    result = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B]}, timeout=300)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert access_left(stack, ec2, image_id, cmk) == SHARED_WITH_B


def test_a_share_that_fails_part_way_takes_back_what_it_gave(stack, ec2, sfn, cmk):
    """The launch permission is added, then a snapshot refuses its permission: the undo runs on
    the plan, not on the step's success, and takes back the permission and the grant."""
    image_id = encrypted_image(stack, ec2, cmk)
    stack.control("faults", {"kind": "api-error", "action": "ModifySnapshotAttribute", "code": "InvalidSnapshot.InUse", "count": 1})
    result = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B]})
    assert (result.status, result.error) == ("FAILED", "AwsApi"), (result.error, result.cause)
    assert "UndoPermissions" in result.states and "UndoKeyAccess" in result.states
    assert access_left(stack, ec2, image_id, cmk) == NOTHING_SHARED


def test_throttling_while_unsharing_still_takes_everything_back(stack, ec2, sfn, cmk):
    image_id = encrypted_image(stack, ec2, cmk)
    assert run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B]}).status == "SUCCEEDED"
    stack.control("faults", [{"kind": "throttle", "action": "RevokeGrant", "count": 6},
                             {"kind": "throttle", "action": "ModifyImageAttribute", "count": 6}])
    result = run(sfn, "UnshareImage", {"imageId": image_id, "accountIds": [B]}, timeout=300)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert access_left(stack, ec2, image_id, cmk) == NOTHING_SHARED


@pytest.mark.parametrize("fault", [
    {"kind": "throttle", "action": "CopyImage", "count": 6},
    {"kind": "server-error", "action": "CopyImage", "status": 503, "count": 5},
    {"kind": "throttle", "action": "CreateTags", "count": 6},
], ids=["throttled CopyImage", "503 on CopyImage", "throttled CreateTags"])
def test_a_copy_rides_out_throttling_and_5xx(stack, ec2, sfn, cmk, fault):
    deployed = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})
    image_id = encrypted_image(stack, ec2, cmk)
    b_key = deployed["targetKmsKeyArn"]
    stack.control("faults", fault)
    result = run(sfn, "CopyImage", copy_input(image_id, b_key), timeout=300)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert any(f["action"] == fault["action"] for f in stack.control("faults")["fired"]), "the fault never fired"
    audit_copy(stack, ec2, result, image_id, cmk)


def test_kms_access_denied_during_a_copy_fails_it_and_takes_everything_back(stack, ec2, sfn, cmk):
    # B's use of A's key is denied (as an explicit deny in B, or a key policy change, would):
    # EC2 cannot read the source snapshots for B, and the copy fails.
    deployed = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})
    image_id = encrypted_image(stack, ec2, cmk)
    b_key = deployed["targetKmsKeyArn"]
    stack.control("faults", {"kind": "kms-denied", "accountId": B})
    result = run(sfn, "CopyImage", copy_input(image_id, b_key))
    assert result.status == "FAILED"
    assert result.error == "ImageFailed"
    assert "KMS key cannot be used" in result.cause, result.cause
    assert {"RemoveTargetCopy", "UndoPermissions", "UndoKeyAccess"} <= set(result.states)
    audit_copy(stack, ec2, result, image_id, cmk)


def test_a_role_that_cannot_be_assumed_is_named_and_nothing_is_left(stack, ec2, sfn, cmk):
    # moto lets any role be assumed; AssumeRole refused every time stands in for a trust policy
    # that refuses the caller.
    image_id = encrypted_image(stack, ec2, cmk)
    new_environments(stack, "copy-image")
    stack.control("faults", {"kind": "server-error", "action": "AssumeRole", "status": 403, "share": 1.0})
    result = run(sfn, "CopyImage", copy_input(image_id, f"arn:aws:kms:us-east-1:{B}:key/11111111-2222-3333-4444-555555555555"))
    stack.control("faults", method="DELETE")
    assert result.status == "FAILED"
    assert result.error == "RoleNotAssumable", result.cause
    assert message(result).startswith("targetRoleArn:")
    audit_copy(stack, ec2, result, image_id, cmk)


@pytest.mark.parametrize("function", ["create-image", "launch", "cleanup"])
def test_a_migration_step_that_crashes_after_its_side_effect_makes_nothing_twice(stack, ec2, sfn, world, function):
    stack.control("faults", {"kind": "crash-after-side-effect", "function": function})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", "sourceAction": "stop"})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert {"kind": "crash-after-side-effect", "function": function} in stack.control("faults")["fired"]
    audit(ec2, result, world, source_state=instance(ec2, world.instance_id)["State"]["Name"])
    assert instance(ec2, world.instance_id)["State"]["Name"] in ("stopping", "stopped")
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:amiflow:source-instance", "Values": [world.instance_id]}])["Images"]
    assert images == [], "the image (made once) is removed by Complete"


@pytest.mark.parametrize("function", ["grant-kms", "copy-image"])
def test_a_copy_step_that_crashes_after_its_side_effect_makes_nothing_twice(stack, ec2, sfn, cmk, function):
    deployed = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})
    image_id = encrypted_image(stack, ec2, cmk)
    b_key = deployed["targetKmsKeyArn"]
    stack.control("faults", {"kind": "crash-after-side-effect", "function": function})
    result = run(sfn, "CopyImage", copy_input(image_id, b_key))
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert {"kind": "crash-after-side-effect", "function": function} in stack.control("faults")["fired"]
    audit_copy(stack, ec2, result, image_id, cmk)


def test_a_second_run_for_an_instance_being_migrated_is_refused(stack, ec2, sfn, world):
    stack.control("config", {"imageDelaySeconds": 3})
    payload = {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"}
    first_name, first_arn = start(sfn, "MigrateInstance", payload)
    enter(sfn, first_arn, "WaitForImage")
    second = run(sfn, "MigrateInstance", {**payload, "targetAvailabilityZone": "us-east-1c"})
    first = finish(sfn, first_name, first_arn)
    assert second.status == "FAILED"
    assert second.error == "InstanceBusy"
    assert message(second).startswith(f"instanceId: {world.instance_id} is being migrated by execution ")
    assert first_name in message(second)
    audit(ec2, second, world)
    assert first.status == "SUCCEEDED", (first.error, first.cause)
    audit(ec2, first, world)
    # The lock was given back: the next run for the instance goes ahead.
    stack.control("config", {"imageDelaySeconds": 1})
    third = run(sfn, "MigrateInstance", {**payload, "targetAvailabilityZone": "us-east-1c"})
    assert third.status == "SUCCEEDED", (third.error, third.cause)


def test_a_lock_left_by_an_ended_run_is_taken_over(stack, ec2, sfn, world):
    # A run that ended without giving its lock back (aborted by an operator, or its cleanup never
    # ran): the lock item still names it. The next run sees that it is not RUNNING and goes ahead.
    payload = {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"}
    stack.control("faults", {"kind": "impaired"})
    ended = run(sfn, "MigrateInstance", payload)
    assert ended.status == "FAILED"
    ddb = stack.client("dynamodb")
    table = next(t for t in ddb.list_tables()["TableNames"] if "RunLock" in t)
    ended_arn = state_machine_arn(sfn, "MigrateInstance").replace(":stateMachine:", ":execution:") + ":" + ended.name
    for holder in (ended_arn, ended_arn + "-never-existed"):
        ddb.put_item(TableName=table, Item={
            "resourceId": {"S": world.instance_id}, "execution": {"S": holder.rsplit(":", 1)[1]},
            "executionArn": {"S": holder}, "expiresAt": {"N": str(int(time.time()) + 3600)},
        })
        result = run(sfn, "MigrateInstance", payload)
        assert result.status == "SUCCEEDED", (holder, result.error, result.cause)
        assert "Item" not in ddb.get_item(TableName=table, Key={"resourceId": {"S": world.instance_id}}), "the lock was given back"


def interfered(stack, sfn, world, source_action: str, interfere):
    """A run during whose image wait (3 s) someone else acts on the source."""
    stack.control("config", {"imageDelaySeconds": 3})
    name, arn = start(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", "sourceAction": source_action})
    enter(sfn, arn, "WaitForImage")
    interfere(InstanceIds=[world.instance_id])
    return finish(sfn, name, arn)


def test_a_source_stopped_by_someone_else_mid_run_is_migrated_and_left_stopped(stack, ec2, sfn, world):
    result = interfered(stack, sfn, world, "stop", ec2.stop_instances)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert result.output["sourceState"] == "stopped"
    audit(ec2, result, world, source_state="stopped")
    assert not any(t["Key"] == "amiflow:migrated-to" for t in instance(ec2, world.instance_id).get("Tags", [])), \
        "amiflow stopped nothing: the source was already stopped"


def test_a_source_terminated_by_someone_else_mid_run_still_gets_its_replacement(stack, ec2, sfn, world):
    result = interfered(stack, sfn, world, "terminate", ec2.terminate_instances)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert result.output["sourceState"] == "terminated"
    audit(ec2, result, world, source_state="terminated")
    address = ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]
    assert address.get("InstanceId") == result.output["newInstanceId"]


def test_a_failed_run_whose_source_was_terminated_keeps_the_image(stack, ec2, sfn, world):
    # The new instance fails its checks after someone terminated the source: the AMI may now be
    # the only copy of the source's data, so the rollback keeps it and says why.
    stack.control("faults", {"kind": "impaired"})
    result = interfered(stack, sfn, world, "keep", ec2.terminate_instances)
    assert result.status == "FAILED"
    assert result.error == "StatusCheckFailed"
    left = tagged(ec2, result.name)
    assert left["instances"] == [] and len(left["images"]) == 1, left
    kept = ec2.describe_images(ImageIds=left["images"])["Images"][0]
    assert kept["State"] == "available"
    reason = {t["Key"]: t["Value"] for t in kept["Tags"]}["amiflow:kept"]
    assert reason.startswith(f"source {world.instance_id} was terminated during the run")
    assert sorted(left["snapshots"]) == sorted(m["Ebs"]["SnapshotId"] for m in kept["BlockDeviceMappings"])
    address = ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]
    assert address["AllocationId"] == world.allocation_id, "the Elastic IP stays allocated"
