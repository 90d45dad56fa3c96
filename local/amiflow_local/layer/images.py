"""Images: real volumes, and a lifecycle with pending, available, failed and deregistered.

CreateImage records the instance's real volumes, and refuses a name already in use.

AWS: AMI names are unique per account and Region; a second CreateImage with a name in use fails
with InvalidAMIName.Duplicate (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html).
moto 5.2.5 accepts any number of images with one name.

AWS: "Amazon EC2 creates a snapshot of each EBS volume attached to the instance" and the AMI's
block device mapping lists each of them with its size, type, IOPS, throughput and encryption
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateImage.html). Tags given with
ResourceType=snapshot go on every snapshot the call creates.

moto 5.2.5 makes one made-up 15 GiB snapshot and fails (HTTP 500) on a snapshot TagSpecification.

Lifecycle. AWS: a new image (CreateImage, CopyImage) is `pending`, and so are its snapshots, until
it is `available` (snapshots `completed`), or `failed` with a StateReason; DeregisterImage makes
it `deregistered` (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_Image.html,
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitor-ami-events.html). Each change to
available, failed and deregistered sends an EC2 AMI State Change event (events.py).
moto 5.2.5 makes images available at once and sends no event.

Refusals. AWS: an image that is not `available` (pending, failed) cannot be shared; a
DeregisterImage with DeleteAssociatedSnapshots deletes each snapshot of the image that no other
image uses and answers DeleteSnapshotResults, one return code per snapshot: `success`, `skipped`
(another image uses it), `missing-permissions` (the caller may not ec2:DeleteSnapshot it)
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeregisterImage.html,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteSnapshotReturnCode.html).
moto 5.2.5 shares pending images and ignores DeleteAssociatedSnapshots.

Snapshots by owner. AWS: DescribeSnapshots' OwnerIds scopes the answer to snapshots of those
owners: account ids, or `self` for the caller's account
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSnapshots.html). Owner
aliases (`amazon`) are not modelled: they match nothing here.
moto 5.2.5 ignores OwnerIds: `self` answered every snapshot of the backend, the 1,301 behind its
catalogue of public images among them (none of the caller's), and serializing them was the
costliest call the tests made.
"""

from __future__ import annotations

import threading
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError, InvalidTaggableResourceType
from moto.ec2.models.amis import Ami, AmiBackend
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.elastic_block_store import ElasticBlockStore as EBSResponse

from . import consistency, events, publicaccess
from .state import config, faults

_original_create_image = AmiBackend.create_image
_original_deregister_image = AmiBackend.deregister_image
_original_modify_image_attribute = AmiBackend.modify_image_attribute
_original_mappings = Ami.block_device_mappings


def _mappings(self: Ami) -> list[dict[str, Any]]:
    own = getattr(self, "amiflow_mappings", None)
    return own if own is not None else _original_mappings.fget(self)


def _tags(specs: list[dict[str, Any]], kind: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for s in specs if s["ResourceType"] == kind for t in s.get("Tags", [])}


class DuplicateAmiName(EC2ClientError):
    def __init__(self, name: str, image_id: str):
        super().__init__("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {image_id}")


# CreateImage calls are serialised, so that two at once cannot both take a name.
_create_lock = threading.Lock()


def create_image(self, instance_id: str, name: str, description: str, tag_specifications: list[dict[str, Any]]) -> Ami:
    for spec in tag_specifications:
        if spec["ResourceType"] not in ("image", "snapshot"):
            raise InvalidTaggableResourceType(spec["ResourceType"])
    with _create_lock:
        for existing in self.amis.values():
            if existing.name == name and existing.owner_id == self.account_id and existing.state != "deregistered":
                raise DuplicateAmiName(name, existing.id)
        return _create_image(self, instance_id, name, description, tag_specifications)


def _create_image(self, instance_id: str, name: str, description: str, tag_specifications: list[dict[str, Any]]) -> Ami:
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
    consistency.stamp(ami)
    start_lifecycle(self, ami)
    return ami


def snapshots_of(backend, ami: Ami) -> list:
    ids = [m["Ebs"]["SnapshotId"] for m in ami.block_device_mappings if m.get("Ebs", {}).get("SnapshotId")]
    return [backend.snapshots[i] for i in ids if i in backend.snapshots]


def start_lifecycle(backend, ami: Ami) -> None:
    """The image and its snapshots are pending until the configured delay has passed."""
    ami.state = "pending"
    for snapshot in snapshots_of(backend, ami):
        snapshot.status = "pending"
    if config.image_delay_seconds <= 0:
        settle(backend, ami.id)
        return
    timer = threading.Timer(config.image_delay_seconds, settle, args=(backend, ami.id))
    timer.daemon = True
    timer.start()


def settle(backend, image_id: str) -> None:
    ami = backend.amis.get(image_id)
    if ami is None or ami.state != "pending":
        return
    reason = getattr(ami, "amiflow_failure", None) or faults.image_failure(image_id)
    if reason:
        code, _, message = reason.partition(": ")
        ami.state = "failed"
        ami.state_reason = {"Code": code, "Message": message or reason}
        for snapshot in snapshots_of(backend, ami):
            snapshot.status = "error"
        events.emit_ami_state(ami.owner_id, backend.region_name, image_id, "failed", message or reason)
        return
    ami.state = "available"
    for snapshot in snapshots_of(backend, ami):
        snapshot.status = "completed"
    events.emit_ami_state(ami.owner_id, backend.region_name, image_id, "available")


def deregister_image(self, ami_id: str) -> None:
    ami = self.amis.get(ami_id)
    _original_deregister_image(self, ami_id)
    if ami is not None:
        consistency.note_deregistered([s.id for s in snapshots_of(self, ami)])
        events.emit_ami_state(ami.owner_id, self.region_name, ami_id, "deregistered")


class ImageUnavailable(EC2ClientError):
    def __init__(self, image_id: str, state: str):
        super().__init__("InvalidAMIID.Unavailable", f"The image id '[{image_id}]' is not available (it is {state})")


def require_available(ami: Ami) -> None:
    """An image that is pending or failed cannot be launched, shared or copied."""
    if ami.state != "available":
        raise ImageUnavailable(ami.id, ami.state)


def modify_image_attribute(self, ami_id: str, launch_permissions_to_add, launch_permissions_to_remove) -> None:
    ami = self.amis.get(ami_id)
    if ami is not None and launch_permissions_to_add:
        require_available(ami)
        if any(p.get("Group") == "all" for p in launch_permissions_to_add):
            publicaccess.require_image_public_allowed(self.account_id, self.region_name)
    result = _original_modify_image_attribute(self, ami_id, launch_permissions_to_add, launch_permissions_to_remove)
    if ami is not None:
        made = getattr(ami, "amiflow_permission_at", {})
        for permission in launch_permissions_to_add:
            made.setdefault(permission_key(permission), consistency.deadline())
        for permission in launch_permissions_to_remove:
            made.pop(permission_key(permission), None)
        ami.amiflow_permission_at = made
    return result


def permission_key(permission: dict[str, str]) -> tuple:
    return tuple(sorted(permission.items()))


def delete_associated_snapshots(backend, ami: Ami) -> list[dict[str, str]]:
    """What DeregisterImage with DeleteAssociatedSnapshots does to each snapshot of the image,
    after the image itself is gone: one return code per snapshot."""
    from . import iam, iam_requests

    results = []
    for snapshot in snapshots_of(backend, ami):
        others = [a for a in backend.amis.values() if a.id != ami.id and snapshot in snapshots_of(backend, a)]
        if others:
            results.append({"SnapshotId": snapshot.id, "ReturnCode": "skipped"})
            continue
        principal = iam.current_principal(backend.account_id)
        check = iam_requests.Ec2(principal, backend.region_name).existing("ec2:DeleteSnapshot", snapshot.id)
        if iam.judge_checks(principal, [check], backend.region_name) is not None:
            results.append({"SnapshotId": snapshot.id, "ReturnCode": "missing-permissions"})
            continue
        backend.snapshots.pop(snapshot.id, None)
        results.append({"SnapshotId": snapshot.id, "ReturnCode": "success"})
    return results


def deregister_image_response(self: AmisResponse) -> ActionResult:
    ami_id = self._get_param("ImageId")
    self.error_on_dryrun()
    ami = self.ec2_backend.amis.get(ami_id)
    self.ec2_backend.deregister_image(ami_id)
    result: dict[str, Any] = {"Return": True}
    if ami is not None and str(self._get_param("DeleteAssociatedSnapshots", False)).lower() == "true":
        result["DeleteSnapshotResults"] = delete_associated_snapshots(self.ec2_backend, ami)
    return ActionResult(result)


def describe_snapshots_response(self: EBSResponse) -> ActionResult:
    snapshots = self.ec2_backend.describe_snapshots(
        snapshot_ids=self._get_param("SnapshotIds", []), filters=self._filters_from_querystring()
    )
    owners = self._get_param("OwnerIds", [])
    if owners:
        wanted = {self.current_account if owner == "self" else owner for owner in owners}
        snapshots = [s for s in snapshots if s.owner_id in wanted]
    return ActionResult({"Snapshots": snapshots})


def install() -> None:
    EBSResponse.describe_snapshots = describe_snapshots_response
    AmiBackend.create_image = create_image
    AmiBackend.deregister_image = deregister_image
    AmiBackend.modify_image_attribute = modify_image_attribute
    AmisResponse.deregister_image = deregister_image_response
    Ami.block_device_mappings = property(_mappings)
