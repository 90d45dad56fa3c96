"""Eventual consistency on the local stack (layer/consistency.py). Each test sets the knob and
fails without the behaviour it names: moto 5.2.5 alone is strongly consistent everywhere."""

from __future__ import annotations

import time
import uuid

import pytest
from botocore.exceptions import ClientError

from amiflow_local.seed import seed
from workflow import wait_for

B = "210987654321"
EBS_GRANT = ["CreateGrant", "Decrypt", "DescribeKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom", "ReEncryptTo"]


@pytest.fixture
def settling(stack):
    stack.control("config", {"eventualConsistencySeconds": 1.5, "imageDelaySeconds": 0})
    yield 1.5
    stack.control("config", {"eventualConsistencySeconds": 0})


@pytest.fixture
def world(ec2):
    return seed(ec2, "us-east-1", name=f"ec-{uuid.uuid4().hex[:6]}")


def code_of(call) -> str | None:
    try:
        call()
    except ClientError as error:
        return error.response["Error"]["Code"]
    return None


def test_a_new_instance_is_not_found_at_first(stack, ec2, world, settling):
    image_id = ec2.describe_instances(InstanceIds=[world.instance_id])["Reservations"][0]["Instances"][0]["ImageId"]
    new = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"])["Instances"][0]["InstanceId"]
    assert code_of(lambda: ec2.describe_instances(InstanceIds=[new])) == "InvalidInstanceID.NotFound"
    wait_for(lambda: code_of(lambda: ec2.describe_instances(InstanceIds=[new])) is None, what="visible")


def test_a_new_image_is_not_found_at_first(stack, ec2, world, settling):
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    assert code_of(lambda: ec2.describe_images(ImageIds=[image_id])) == "InvalidAMIID.NotFound"
    wait_for(lambda: code_of(lambda: ec2.describe_images(ImageIds=[image_id])) is None, what="visible")


def shared_with_b(ec2, world, seconds: float) -> str:
    """An image of A, settled, whose launch permission for B has just been added."""
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    time.sleep(seconds)
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"UserId": B}]})
    return image_id


def test_a_launch_permission_takes_a_while_to_be_in_force(stack, ec2, world, settling):
    image_id = shared_with_b(ec2, world, settling)
    b_ec2 = stack.account(B).client("ec2", endpoint_url=stack.endpoint)
    assert code_of(lambda: b_ec2.describe_images(ImageIds=[image_id])) == "InvalidAMIID.NotFound"
    wait_for(lambda: code_of(lambda: b_ec2.describe_images(ImageIds=[image_id])) is None, what="shared")


def test_a_snapshot_permission_takes_a_while_to_be_in_force(stack, ec2, world, settling):
    image_id = shared_with_b(ec2, world, settling)
    time.sleep(settling)
    snapshots = [m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"]]
    # B's client first: nothing but the copy comes between the last grant and the copy.
    b_ec2 = stack.account(B).client("ec2", endpoint_url=stack.endpoint)
    for snapshot in snapshots:
        ec2.modify_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission", OperationType="add", UserIds=[B])
    copy = dict(SourceImageId=image_id, SourceRegion="us-east-1", Name=f"copy-{uuid.uuid4().hex[:6]}")
    assert code_of(lambda: b_ec2.copy_image(**copy)) == "InvalidRequest"
    time.sleep(settling)
    assert b_ec2.copy_image(**copy)["ImageId"].startswith("ami-")


def test_a_grant_takes_a_while_to_be_in_force(stack, settling):
    kms = stack.client("kms")
    key = kms.create_key(Description="A's CMK")["KeyMetadata"]["Arn"]
    kms.create_grant(KeyId=key, GranteePrincipal=f"arn:aws:iam::{B}:root", Operations=EBS_GRANT)
    b_kms = stack.account(B).client("kms", endpoint_url=stack.endpoint)
    assert code_of(lambda: b_kms.describe_key(KeyId=key)) == "AccessDeniedException"
    wait_for(lambda: code_of(lambda: b_kms.describe_key(KeyId=key)) is None, what="granted")


def test_a_snapshot_of_an_image_just_deregistered_is_still_in_use(stack, ec2, world, settling):
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    time.sleep(settling)
    snapshot = ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    ec2.deregister_image(ImageId=image_id)
    assert code_of(lambda: ec2.delete_snapshot(SnapshotId=snapshot)) == "InvalidSnapshot.InUse"
    wait_for(lambda: code_of(lambda: ec2.delete_snapshot(SnapshotId=snapshot)) is None, what="deleted")


def test_an_eventually_consistent_read_may_miss_a_write(stack, settling):
    dynamodb = stack.client("dynamodb")
    key = {"imageId": {"S": f"ami-{uuid.uuid4().hex[:8]}"}, "tokenKey": {"S": "t"}}
    dynamodb.put_item(TableName="TaskTokenTable", Item=key)
    assert "Item" not in dynamodb.get_item(TableName="TaskTokenTable", Key=key)
    query = dict(TableName="TaskTokenTable", KeyConditionExpression="imageId = :i", ExpressionAttributeValues={":i": key["imageId"]})
    assert dynamodb.query(**query)["Items"] == []
    assert dynamodb.get_item(TableName="TaskTokenTable", Key=key, ConsistentRead=True)["Item"] == key
    assert dynamodb.query(**query, ConsistentRead=True)["Items"] == [key]
    time.sleep(settling)
    assert dynamodb.get_item(TableName="TaskTokenTable", Key=key)["Item"] == key
