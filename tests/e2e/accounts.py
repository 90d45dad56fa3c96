"""What the cross-account tests share: the accounts, an encrypted image of A, calls as another
account, and the CopyImage input."""

from __future__ import annotations

import time
import uuid

from amiflow_local.seed import seed

from workflow import wait_for

A, B, C, D = "123456789012", "210987654321", "333333333333", "444444444444"
ORG_ID = "o-amiflow0001"
APPS_OU = f"arn:aws:organizations::{A}:ou/{ORG_ID}/ou-root-appsaaaa"
# A key its owner lets amiflow share (grant-kms refuses any other: KeyNotShareable).
SHAREABLE = [{"TagKey": "amiflow:shareable", "TagValue": "true"}]


def encrypted_image(stack, ec2, key: str | None, tags=None) -> str:
    """An available image of A with an encrypted data volume (key None: the aws/ebs key)."""
    world = seed(ec2, "us-east-1", name=f"src-{uuid.uuid4().hex[:6]}")
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=4, Encrypted=True, **({"KmsKeyId": key} if key else {}))["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=world.instance_id, Device="/dev/sdh")
    image_id = ec2.create_image(
        InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}",
        TagSpecifications=[{"ResourceType": "image", "Tags": tags or [{"Key": "app", "Value": "web"}]}],
    )["ImageId"]
    wait_for(lambda: ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "available", what="image")
    return image_id


def as_account(stack, account: str, service: str):
    return stack.account(account).client(service, endpoint_url=stack.endpoint)


def launch_as(stack, account: str, image_id: str) -> str:
    ec2 = as_account(stack, account, "ec2")
    world = seed(ec2, "us-east-1", name=f"recv-{uuid.uuid4().hex[:6]}")
    instance_id = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"])["Instances"][0]["InstanceId"]
    time.sleep(1.2)  # longer than the stack's delay before a launch without key access terminates
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def copy_input(image_id: str, b_key: str, name: str | None = None) -> dict:
    return {
        "sourceImageId": image_id, "sourceRegion": "us-east-1", "targetAccountId": B,
        "targetRoleArn": f"arn:aws:iam::{B}:role/amiflow-copy", "externalId": "ext-b",
        "targetKmsKeyId": b_key, "name": name or f"copy-{uuid.uuid4().hex[:6]}",
    }
