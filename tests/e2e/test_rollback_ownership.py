"""A rollback removes only what its run made (no confused deputy): anyone who may tag can put a
run's predictable `amiflow:execution` tag on something else, and a failing run must leave that
unchanged (README, Safety)."""

from __future__ import annotations

import json
import uuid

from amiflow_local.seed import seed

from workflow import finish, instance, state_machine_arn, tagged, wait_for


def test_what_carries_a_failing_runs_tag_but_is_not_its_own_survives_the_rollback(stack, ec2, sfn):
    world = seed(ec2, "us-east-1", name=f"deputy-{uuid.uuid4().hex[:6]}")
    bystander = seed(ec2, "us-east-1", name=f"bystander-{uuid.uuid4().hex[:6]}").instance_id
    ec2.modify_instance_attribute(InstanceId=bystander, DisableApiTermination={"Value": True})
    golden = ec2.create_image(InstanceId=bystander, Name=f"golden-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: ec2.describe_images(ImageIds=[golden])["Images"][0]["State"] == "available", what="image")
    data_volume = next(m["Ebs"]["VolumeId"] for m in instance(ec2, bystander)["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sdf")
    backup = ec2.create_snapshot(VolumeId=data_volume, Description="nightly backup")["SnapshotId"]

    # The execution name a tag-started run would get is predictable; here the test picks it.
    name = f"deputy-{uuid.uuid4().hex[:12]}"
    ec2.create_tags(Resources=[bystander, golden, backup], Tags=[{"Key": "amiflow:execution", "Value": name}])
    stack.control("faults", {"kind": "impaired"})  # the run's new instance fails its status checks
    arn = sfn.start_execution(stateMachineArn=state_machine_arn(sfn, "MigrateInstance"), name=name,
                              input=json.dumps({"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"}))["executionArn"]
    result = finish(sfn, name, arn)
    assert (result.status, result.error) == ("FAILED", "StatusCheckFailed")

    # The bystander is untouched: running, still protected, its data volume still kept.
    described = instance(ec2, bystander)
    assert described["State"]["Name"] == "running"
    assert ec2.describe_instance_attribute(InstanceId=bystander, Attribute="disableApiTermination")["DisableApiTermination"]["Value"] is True
    assert {m["DeviceName"]: m["Ebs"]["DeleteOnTermination"] for m in described["BlockDeviceMappings"]}["/dev/sdf"] is False
    assert ec2.describe_images(ImageIds=[golden])["Images"][0]["State"] == "available"
    assert ec2.describe_snapshots(SnapshotIds=[backup])["Snapshots"][0]["State"] == "completed"
    # Nothing the run made is left; what carries its tag is exactly the three it did not make.
    left = tagged(ec2, name)
    assert (left["instances"], left["images"], sorted(left["snapshots"])) == ([bystander], [golden], sorted([backup]))
    history = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    rollback = next(json.loads(e["stateExitedEventDetails"]["output"])["rollback"] for e in history
                    if e.get("stateExitedEventDetails", {}).get("name") == "Rollback")
    assert sorted(rollback["leftAloneIds"]) == sorted([bystander, golden, backup])
    assert len(rollback["terminatedInstanceIds"]) == 1 and rollback["terminatedInstanceIds"][0] != bystander
    assert address_on(ec2, world) == world.instance_id


def address_on(ec2, world) -> str:
    return ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]["InstanceId"]


def test_the_copy_role_cannot_mark_a_target_accounts_image_for_a_rollback(stack):
    """In the target account, the copy role tags only within CopyImage, and afterwards only
    amiflow's own copies and never with an amiflow: key: it cannot put a run's tag on an image it
    did not copy (so that the run's rollback, which may remove what carries the tag, would)."""
    from botocore.exceptions import ClientError

    from accounts import B, as_account

    stack.control("target-account", {"accountId": B, "externalId": "ext-b"})
    b_ec2 = as_account(stack, B, "ec2")
    theirs = seed(b_ec2, "us-east-1", name=f"b-{uuid.uuid4().hex[:6]}").instance_id
    golden = b_ec2.create_image(InstanceId=theirs, Name=f"b-golden-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: b_ec2.describe_images(ImageIds=[golden])["Images"][0]["State"] == "available", what="image")
    creds = stack.as_function("copy-image", "sts").assume_role(
        RoleArn=f"arn:aws:iam::{B}:role/amiflow-copy", RoleSessionName="amiflow-test", ExternalId="ext-b")["Credentials"]
    import boto3

    as_copy_role = boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"], region_name="us-east-1").client("ec2", endpoint_url=stack.endpoint)
    for tags in ([{"Key": "amiflow:execution", "Value": "copy-victim"}], [{"Key": "team", "Value": "x"}]):
        try:
            as_copy_role.create_tags(Resources=[golden], Tags=tags)
            raise AssertionError(f"the copy role tagged {golden} with {tags}")
        except ClientError as refused:
            assert refused.response["Error"]["Code"] == "UnauthorizedOperation"
    assert b_ec2.describe_images(ImageIds=[golden])["Images"][0].get("Tags", []) == []
