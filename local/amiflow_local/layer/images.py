"""CreateImage records the instance's real volumes.

AWS: "Amazon EC2 creates a snapshot of each EBS volume attached to the instance" and the AMI's
block device mapping lists each of them with its size, type, IOPS, throughput and encryption
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateImage.html). Tags given with
ResourceType=snapshot go on every snapshot the call creates.

moto 5.2.5 makes one made-up 15 GiB snapshot and fails (HTTP 500) on a snapshot TagSpecification.
"""

from __future__ import annotations

from typing import Any

from moto.ec2.exceptions import InvalidTaggableResourceType
from moto.ec2.models.amis import Ami, AmiBackend

_original_create_image = AmiBackend.create_image
_original_mappings = Ami.block_device_mappings


def _mappings(self: Ami) -> list[dict[str, Any]]:
    own = getattr(self, "amiflow_mappings", None)
    return own if own is not None else _original_mappings.fget(self)


def _tags(specs: list[dict[str, Any]], kind: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for s in specs if s["ResourceType"] == kind for t in s.get("Tags", [])}


def create_image(self, instance_id: str, name: str, description: str, tag_specifications: list[dict[str, Any]]) -> Ami:
    for spec in tag_specifications:
        if spec["ResourceType"] not in ("image", "snapshot"):
            raise InvalidTaggableResourceType(spec["ResourceType"])
    image_specs = [s for s in tag_specifications if s["ResourceType"] == "image"]
    ami = _original_create_image(self, instance_id, name, description, tag_specifications=image_specs)
    instance = self.get_instance(instance_id)
    # Replace moto's made-up snapshot by one snapshot per attached EBS volume.
    self.snapshots.pop(ami.ebs_snapshot.id, None)
    snapshot_tags = _tags(tag_specifications, "snapshot")
    mappings = []
    for device, block in instance.get_block_device_mapping:
        volume = self.get_volume(block.volume_id)
        snapshot = self.create_snapshot(
            volume.id, f"Created by CreateImage({instance_id}) for {ami.id}", ami.owner_id, from_ami=ami.id
        )
        snapshot.kms_key_id = volume.kms_key_id
        snapshot.add_tags(snapshot_tags)
        ebs = {
            "SnapshotId": snapshot.id,
            "VolumeSize": volume.size,
            "DeleteOnTermination": bool(block.delete_on_termination),
            "VolumeType": volume.volume_type,
            "Encrypted": bool(volume.encrypted),
        }
        if volume.kms_key_id:
            ebs["KmsKeyId"] = volume.kms_key_id
        if volume.iops:
            ebs["Iops"] = volume.iops
        if volume.throughput:
            ebs["Throughput"] = volume.throughput
        mappings.append({"DeviceName": device, "Ebs": ebs})
        if device == instance.root_device_name:
            ami.ebs_snapshot = snapshot
    ami.amiflow_mappings = mappings
    ami.root_device_name = instance.root_device_name
    ami.root_device_type = "ebs"
    return ami


def install() -> None:
    AmiBackend.create_image = create_image
    Ami.block_device_mappings = property(_mappings)
