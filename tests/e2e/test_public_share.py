"""A public share and the account's block public access settings: amiflow reads them first and
refuses a share they would stop before it changes anything, naming the setting and who manages it
(https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/block-public-access-to-amis.html,
https://docs.aws.amazon.com/ebs/latest/userguide/block-public-access-snapshots.html)."""

from __future__ import annotations

import uuid

import pytest

from accounts import A
from amiflow_local.seed import seed
from workflow import message, run, wait_for


@pytest.fixture
def plain_image(stack, ec2):
    world = seed(ec2, "us-east-1", name=f"pub-{uuid.uuid4().hex[:6]}")
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "available", what="image")
    yield image_id
    stack.control("block-public-access", method="DELETE")


def public_now(ec2, image_id: str) -> tuple[bool, bool]:
    """Whether the image, and whether any of its snapshots, is public."""
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    snapshots = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m]
    snapshot_groups = [
        p.get("Group") for s in snapshots
        for p in ec2.describe_snapshot_attribute(SnapshotId=s, Attribute="createVolumePermission")["CreateVolumePermissions"]
    ]
    launch = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]
    return {"Group": "all"} in launch, "all" in snapshot_groups


@pytest.mark.parametrize("setting,cause", [
    ({}, "block public access for AMIs is block-new-sharing in us-east-1 (the account manages it"),
    ({"kind": "image", "state": "block-new-sharing", "managedBy": "declarative-policy"},
     "block public access for AMIs is block-new-sharing in us-east-1 (a declarative policy of the organization manages it"),
    ({"kind": "snapshot", "state": "block-all-sharing"},
     "block public access for snapshots is block-all-sharing in us-east-1 (the account manages it"),
])
def test_a_public_share_the_account_blocks_fails_before_any_change(stack, ec2, sfn, plain_image, setting, cause):
    if setting.get("kind") == "snapshot":
        ec2.disable_image_block_public_access()
    if setting:
        stack.control("block-public-access", {"accountId": A, **setting})
    result = run(sfn, "ShareImage", {"imageId": plain_image, "public": True})
    assert (result.status, result.error) == ("FAILED", "PublicSharingBlocked"), (result.error, result.cause)
    assert message(result).startswith("public: " + cause), result.cause
    assert public_now(ec2, plain_image) == (False, False)
    assert "Share" not in result.states


def test_a_public_share_the_account_allows_makes_image_and_snapshots_public(stack, ec2, sfn, plain_image):
    ec2.disable_image_block_public_access()
    result = run(sfn, "ShareImage", {"imageId": plain_image, "public": True})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert {"group": "all"} in result.output["launchPermissions"]
    assert public_now(ec2, plain_image) == (True, True)
