"""Audits the end-to-end tests share: what a run left behind in each account."""

from __future__ import annotations

import json

from accounts import B, as_account
from workflow import instance, tagged


def audit(ec2, result, world, *, source_state: str = "running") -> None:
    """Everything tagged with the execution is a declared output of a successful run, or gone; the
    source is in the state the run was allowed to leave it in."""
    left = tagged(ec2, result.name)
    if result.status == "SUCCEEDED":
        kept = [result.output["imageId"]] if result.output["imageKept"] else []
        assert left["instances"] == [result.output["newInstanceId"]] and left["images"] == kept, left
        if not kept:
            assert left["snapshots"] == [], left
    else:
        assert left == {"instances": [], "images": [], "snapshots": []}, left
    assert instance(ec2, world.instance_id)["State"]["Name"] == source_state


def access_left(stack, ec2, image_id: str, key: str) -> dict:
    """What other accounts were given on A's image and key: launch permissions, snapshot
    permissions, amiflow's grants and amiflow's key-policy statements."""
    kms = stack.client("kms")
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    snapshots = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m]
    volume_permissions = {
        p.get("UserId") or p.get("Group")
        for s in snapshots
        for p in ec2.describe_snapshot_attribute(SnapshotId=s, Attribute="createVolumePermission")["CreateVolumePermissions"]
    }
    policy = json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
    return {
        "launch": ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"],
        "volumes": sorted(volume_permissions),
        "grants": sorted(g["GranteePrincipal"] for g in kms.list_grants(KeyId=key)["Grants"] if g.get("Name", "").startswith("amiflow-")),
        "statements": [s["Sid"] for s in policy["Statement"] if s.get("Sid", "").startswith("Amiflow")],
    }


NOTHING_SHARED = {"launch": [], "volumes": [], "grants": [], "statements": []}
SHARED_WITH_B = {"launch": [{"UserId": B}], "volumes": [B], "grants": [f"arn:aws:iam::{B}:root"], "statements": []}


def audit_copy(stack, ec2, result, image_id: str, key: str) -> None:
    """After a CopyImage run: A has given nothing away, and B holds the declared copy or nothing."""
    assert access_left(stack, ec2, image_id, key) == NOTHING_SHARED
    b_ec2 = as_account(stack, B, "ec2")
    left = tagged(b_ec2, result.name)
    # Every snapshot EC2 copied for B from this image names its copy: "Copied for DestinationAmi
    # ami-… from SourceAmi ami-…". A copy that is gone must have taken its snapshots along.
    made = {
        s["SnapshotId"]: s["Description"].split()[3]
        for s in b_ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
        if s.get("Description", "").endswith(f"from SourceAmi {image_id}")
    }
    live = {i["ImageId"] for i in b_ec2.describe_images(Owners=["self"])["Images"]}
    copies = sorted(set(made.values()) & live)
    if result.status == "SUCCEEDED":
        assert left["images"] == [result.output["targetImageId"]] and copies == left["images"], (left, copies)
    else:
        assert left["images"] == [] and copies == [], (left, copies)
    orphans = [snapshot for snapshot, copy in made.items() if copy not in live]
    assert orphans == [], orphans
