"""CopyImage: encryption, the copy's owner, and copies from other accounts; DescribeImages of
images shared with the caller.

AWS (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/CopyingAMIs.html,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CopyImage.html):
- `Encrypted` with `KmsKeyId` encrypts the copy's snapshots with that key. Without a key, an
  encrypted source keeps its key within its account; a copy into another account is encrypted
  with that account's default EBS key (aws/ebs).
- Copying another account's image needs a launch permission on the image and createVolumePermission
  on every snapshot ("You do not have permission to access the storage of this ami"), and use of
  the source key and the destination key; without a key it may use, the copy fails.
- The copy belongs to the caller; tags, launch permissions and createVolumePermission are not copied.
- Images with billing products (Marketplace, some Windows) cannot be copied to another account.
- DescribeImages by id, with ExecutableUsers=self, and with Owners returns other accounts' images
  that the caller may launch (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/usingsharedamis-finding.html);
  ImageIds, Owners, ExecutableUsers and Filters together answer the images that meet all of them,
  and an image just deregistered is answered with nothing rather than an error
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeImages.html).
- A source that is not `available` cannot be copied (InvalidAMIID.Unavailable); a ClientToken
  used again with other parameters is IdempotentParameterMismatch
  (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html).
moto 5.2.5 copies within the caller's account only, ignores Encrypted and KmsKeyId, and describes
only the caller's images.
"""

from __future__ import annotations

import threading
from typing import Any

from moto.ec2.exceptions import EC2ClientError, InvalidAMIIdError
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami, AmiBackend, random_ami_id
from moto.ec2.models.elastic_block_store import EBSBackend
from moto.ec2.responses.amis import AmisResponse
from moto.core.responses import ActionResult

from . import consistency, images, kms, publicaccess, sharing

_original_describe_images = AmiBackend.describe_images


class StorageNotAccessible(EC2ClientError):
    def __init__(self) -> None:
        super().__init__("InvalidRequest", "You do not have permission to access the storage of this ami")


class BillingProductNotCopyable(EC2ClientError):
    def __init__(self, image_id: str) -> None:
        super().__init__(
            "InvalidRequest",
            f"Images with EC2 BillingProduct codes cannot be copied to another AWS account ({image_id}).",
        )


def describe_images(self, ami_ids=None, filters=None, exec_users=None, owners=None):
    from moto.ec2.exceptions import MalformedAMIIdError
    from moto.ec2.utils import generic_filter

    account = self.account_id
    foreign: list[Any] = []
    for backends in list(ec2_backends.values()):
        backend = backends.get(self.region_name) if hasattr(backends, "get") else None
        if backend is None or backend.account_id == account:
            continue
        for ami in list(backend.amis.values()):
            if sharing.may_launch(ami, account):
                foreign.append(ami)
    own = [a for a in self.amis.copy().values() if not consistency.settling(a)]
    foreign = [a for a in foreign if not consistency.settling(a)]
    if ami_ids:
        malformed = [i for i in ami_ids if not i.startswith("ami-")]
        if malformed:
            raise MalformedAMIIdError(malformed)
        images = [a for a in own + foreign if a.id in ami_ids]
        deregistered = [i for i in ami_ids if i in self.deleted_amis]
        if not images and not deregistered:
            raise InvalidAMIIdError(ami_ids)
    else:
        images = own + (foreign if exec_users or owners else [])
    if exec_users:
        users = {account if u == "self" else u for u in exec_users}
        images = [a for a in images if _executable_by(a, users)]
    if owners:
        wanted = {account if o == "self" else o for o in owners}
        images = [a for a in images if a.owner_id in wanted or a.owner_alias in wanted]
    if filters:
        images = generic_filter(filters, images)
    return images


def _executable_by(ami: Any, users: set[str]) -> bool:
    """ExecutableUsers: images whose launch permissions name one of the users (an account, or its
    organization or OU), and public images, which everyone may launch."""
    if any(p.get("Group") == "all" for p in sharing.in_force(ami)):
        return True
    return any(sharing.named_in_permissions(ami, user) for user in users if user != "all")


def _may_copy_storage(backend_of_source: Any, ami: Ami, account: str) -> bool:
    for snapshot in images.snapshots_of(backend_of_source, ami):
        made = getattr(snapshot, "amiflow_permission_at", {})
        if consistency.young(made.get(account)) or consistency.young(made.get("all")):
            return False
        if not ({"all"} & snapshot.create_volume_permission_groups or account in snapshot.create_volume_permission_userids):
            return False
    return True


_original_add_volume_permission = EBSBackend.add_create_volume_permission


def add_create_volume_permission(self, snapshot_id: str, user_ids: list[str], groups: list[str]) -> None:
    if "all" in (groups or []):
        publicaccess.require_snapshot_public_allowed(self.account_id, self.region_name)
    _original_add_volume_permission(self, snapshot_id, user_ids, groups)
    snapshot = self.get_snapshot(snapshot_id)
    made = getattr(snapshot, "amiflow_permission_at", {})
    for who in list(user_ids or []) + list(groups or []):
        made.setdefault(who, consistency.deadline())
    snapshot.amiflow_permission_at = made


# CopyImage calls are serialised, so that two with one ClientToken make one copy.
_copy_lock = threading.Lock()


def copy_image(self, *args: Any, **kwargs: Any) -> Ami:
    with _copy_lock:
        return _copy_image(self, *args, **kwargs)


def _copy_image(
    self,
    source_image_id: str,
    source_region: str,
    name: str | None = None,
    description: str | None = None,
    encrypted: bool = False,
    kms_key_id: str | None = None,
    client_token: str | None = None,
) -> Ami:
    from .instances import IdempotentParameterMismatch

    account = self.account_id
    fingerprint = (source_image_id, source_region, name, bool(encrypted), kms_key_id)
    if client_token:
        for ami in self.amis.values():
            if getattr(ami, "amiflow_client_token", None) == client_token:
                if getattr(ami, "amiflow_fingerprint", fingerprint) != fingerprint:
                    raise IdempotentParameterMismatch("CopyImage")
                return ami
    source_backend = ec2_backends[account][source_region]
    source = source_backend.amis.get(source_image_id)
    cross_account = False
    if source is None:
        found = sharing.find_image(source_region, source_image_id)
        if found is None or not sharing.may_launch(found, account):
            raise InvalidAMIIdError([source_image_id])
        source, source_backend, cross_account = found, sharing.backend_of(found), True
        if source.product_codes:
            raise BillingProductNotCopyable(source_image_id)
        if not _may_copy_storage(source_backend, source, account):
            raise StorageNotAccessible()

    images.require_available(source)
    copy = Ami(self, random_ami_id(), source_ami=source, name=name, description=description)
    self.snapshots.pop(copy.ebs_snapshot.id, None)
    key_failure = None
    mappings = []
    for mapping in source.block_device_mappings:
        ebs = dict(mapping.get("Ebs") or {})
        source_snapshot = source_backend.snapshots.get(ebs.get("SnapshotId") or "")
        if source_snapshot is None:
            continue
        source_key = source_snapshot.kms_key_id if source_snapshot.encrypted else None
        if source_key and kms.ec2_key_problem(account, source_region, source_key):
            key_failure = "the source snapshot's KMS key cannot be used by this account"
        if encrypted and kms_key_id:
            key = kms_key_id
        elif source_key and not cross_account:
            key = source_key
        elif source_key or encrypted:
            key = kms.default_ebs_key(account, self.region_name)
        else:
            key = None
        problem = kms.ec2_key_problem(account, self.region_name, key) if key else None
        if problem == "missing":
            key_failure = f"the KMS key {key} does not exist"
        elif problem:
            key_failure = f"the KMS key {key} cannot be used by this account"
        volume = self.create_volume(size=source_snapshot.volume.size, zone_name=f"{self.region_name}a")
        snapshot = self.create_snapshot(volume.id, f"Copied for DestinationAmi {copy.id} from SourceAmi {source.id}", account, from_ami=copy.id)
        self.delete_volume(volume.id)
        snapshot.encrypted = bool(key)
        snapshot.kms_key_id = key
        ebs.update({"SnapshotId": snapshot.id, "Encrypted": bool(key)})
        ebs.pop("KmsKeyId", None)
        if key:
            ebs["KmsKeyId"] = key
        mappings.append({"DeviceName": mapping["DeviceName"], "Ebs": ebs})
        if mapping["DeviceName"] == source.root_device_name:
            copy.ebs_snapshot = snapshot
    copy.amiflow_mappings = mappings
    copy.root_device_name = source.root_device_name
    copy.root_device_type = source.root_device_type
    copy.amiflow_client_token = client_token
    copy.amiflow_fingerprint = fingerprint
    consistency.stamp(copy)
    self.amis[copy.id] = copy
    if key_failure:
        copy.amiflow_failure = f"Client.InvalidKMSKey.InvalidState: {key_failure}"
    images.start_lifecycle(self, copy)
    return copy


def copy_image_response(self: AmisResponse):
    self.error_on_dryrun()
    image = self.ec2_backend.copy_image(
        self._get_param("SourceImageId"),
        self._get_param("SourceRegion"),
        self._get_param("Name"),
        self._get_param("Description"),
        encrypted=str(self._get_param("Encrypted", False)).lower() == "true",
        kms_key_id=self._get_param("KmsKeyId"),
        client_token=self._get_param("ClientToken"),
    )
    # TagSpecifications tag the new image (and its snapshots) in the caller's account.
    specs = self._parse_tag_specification()
    image.add_tags(specs.get("image", {}))
    for snapshot in images.snapshots_of(self.ec2_backend, image):
        snapshot.add_tags(specs.get("snapshot", {}))
    return ActionResult({"ImageId": image.id})


def install() -> None:
    AmiBackend.describe_images = describe_images
    EBSBackend.add_create_volume_permission = add_create_volume_permission
    AmiBackend.copy_image = copy_image
    AmisResponse.copy_image = copy_image_response
