"""Instances: launch from an image's real mappings, image visibility, capacity faults, status
checks, and the KMS check EC2 makes when it creates the volumes.

AWS:
- RunInstances creates the volumes of the AMI's block device mapping, with any mapping given in
  the request applied over it; a volume from an encrypted snapshot is encrypted with the
  snapshot's key unless the request names another
  (https://docs.aws.amazon.com/ebs/latest/userguide/ebs-encryption.html,
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/block-device-mapping-concepts.html).
  A request's mapping of a device the AMI maps may change one setting alone (DeleteOnTermination,
  say); a device the AMI does not map needs a size or a snapshot.
- DeleteOnTermination is what the launch's mapping says, else what the AMI's mapping says, else
  true: a root volume, and a data volume attached at launch through the API, are deleted with the
  instance by default
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/preserving-volumes-on-termination.html).
- An image id the caller cannot see is refused with InvalidAMIID.NotFound, a malformed one with
  InvalidAMIID.Malformed (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html).
- No capacity in an AZ is InsufficientInstanceCapacity (same page).
- A new instance's system and instance status checks are `initializing` before they are `ok`, or
  `impaired` (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-system-instance-status-check.html).
- A launch whose principal may not use the KMS key of an encrypted volume returns success; the
  instance then goes from pending to terminated with StateReason Client.InternalError ("Client
  error on launch"); a key that is disabled or pending deletion gives
  Client.InvalidKMSKey.InvalidState instead
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/troubleshooting-launch.html#troubleshooting-launch-internal).
- RunInstances with a ClientToken already used by a launch returns that launch's reservation and
  starts nothing; the same token with other parameters is IdempotentParameterMismatch
  (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html).
- An image that is not `available` (pending, failed) cannot be launched: InvalidAMIID.Unavailable
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html).
- DescribeInstanceTypeOfferings answers what each AZ offers
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstanceTypeOfferings.html).
  moto 5.2.5 holds that data for the `aws` partition's Regions only; for the others (cn-north-1,
  cn-northwest-1, us-gov-*) it answers nothing, so a test declares its world's offerings
  (`declare_offerings`, the control endpoint `instance-type-offerings`). Regions moto has data
  for cannot be redeclared.
moto 5.2.5 ignores the image's mappings, wants a size or snapshot in every mapping, turns a
mapping silent on DeleteOnTermination into false, never checks the image id, reports status `ok` at once,
knows no KMS, and starts a new instance for every call whatever its ClientToken.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from moto.ec2.exceptions import EC2ClientError, InvalidAMIIdError, InvalidRequest, MalformedAMIIdError, MissingParameterError
from moto.ec2.models.instance_types import INSTANCE_TYPE_OFFERINGS
from moto.ec2.models.instances import Instance, InstanceBackend, StateReason
from moto.ec2.responses.instances import InstanceResponse

from . import consistency, images, kms, sharing
from .state import config, faults

_original_run_instances = InstanceBackend.run_instances
# Regions moto ships offerings for, before any test declares its own.
_SHIPPED_OFFERINGS = frozenset(INSTANCE_TYPE_OFFERINGS["availability-zone"])
_original_parse_mappings = InstanceResponse._parse_block_device_mapping


class InsufficientInstanceCapacity(EC2ClientError):
    def __init__(self, az: str, instance_type: str):
        super().__init__(
            "InsufficientInstanceCapacity",
            f"We currently do not have sufficient {instance_type} capacity in the Availability Zone you requested "
            f"({az}). Our system will be working on provisioning additional capacity.",
        )


def merge_mappings(image_mappings: list[dict[str, Any]], requested: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The image's EBS mappings with the request's applied over them, by device. Pure."""
    by_device: dict[str, dict[str, Any]] = {}
    for mapping in image_mappings:
        if mapping.get("Ebs"):
            by_device[mapping["DeviceName"]] = copy.deepcopy(mapping)
    for mapping in requested:
        device = mapping["DeviceName"]
        if mapping.get("NoDevice") is not None:
            by_device.pop(device, None)
            continue
        base = by_device.setdefault(device, {"DeviceName": device, "Ebs": {}})
        for key, value in (mapping.get("Ebs") or {}).items():
            if value is None or (key == "Encrypted" and value is False):
                continue
            base["Ebs"][key] = value
    return list(by_device.values())


def _parse_mappings(self: InstanceResponse) -> list[dict[str, Any]]:
    mappings = _original_parse_mappings(self)
    raw = self._get_param("BlockDeviceMappings", [])
    for parsed, given in zip(mappings, raw):
        parsed["Ebs"]["Throughput"] = (given.get("Ebs") or {}).get("Throughput")
        if not (given.get("Ebs") or {}).get("Encrypted"):
            parsed["Ebs"]["Encrypted"] = None
        if "DeleteOnTermination" not in (given.get("Ebs") or {}):
            parsed["Ebs"]["DeleteOnTermination"] = None
    return mappings


def _validate_mapping(device_mapping: dict[str, Any]) -> None:
    # moto's own check, less the size-or-snapshot rule, which needs the image (see _run_instances).
    if "NoDevice" in device_mapping:
        if device_mapping["NoDevice"] != "":
            raise InvalidRequest()
        return
    if "Ebs" not in device_mapping:
        raise MissingParameterError("ebs")


def unsized_device(merged: list[dict[str, Any]]) -> str | None:
    """The first device of a merged mapping with neither a size nor a snapshot. Pure."""
    for mapping in merged:
        if not mapping["Ebs"].get("VolumeSize") and not mapping["Ebs"].get("SnapshotId"):
            return mapping["DeviceName"]
    return None


def _target_az(backend, kwargs: dict[str, Any]) -> str:
    if kwargs.get("subnet_id"):
        return backend.get_subnet(kwargs["subnet_id"]).availability_zone
    return kwargs.get("placement") or f"{backend.region_name}a"


# moto's response fills in this token when the request has none.
_NO_TOKEN = "ABCDE"
_launch_lock = threading.Lock()


class IdempotentParameterMismatch(EC2ClientError):
    def __init__(self, action: str):
        super().__init__(
            "IdempotentParameterMismatch",
            f"The client token you have provided is associated with a {action} request with different parameters.",
        )


def launch_fingerprint(image_id: str, count: int, kwargs: dict[str, Any]) -> tuple:
    """What makes two launches with one ClientToken the same request. Pure."""
    return (image_id, count, kwargs.get("instance_type"), kwargs.get("subnet_id"), kwargs.get("key_name"))


def run_instances(self, image_id: str, count: int, user_data, security_group_names, **kwargs: Any):
    token = kwargs.get("client_token")
    if not token or token == _NO_TOKEN:
        return _run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
    fingerprint = launch_fingerprint(image_id, count, kwargs)
    with _launch_lock:
        for reservation in self.reservations.values():
            if any(getattr(i, "client_token", None) == token for i in reservation.instances):
                if getattr(reservation, "amiflow_fingerprint", fingerprint) != fingerprint:
                    raise IdempotentParameterMismatch("RunInstances")
                return reservation
        reservation = _run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
        reservation.amiflow_fingerprint = fingerprint
        return reservation


def _run_instances(self, image_id: str, count: int, user_data, security_group_names, **kwargs: Any):
    if not image_id and kwargs.get("launch_template"):
        # A launch from a template takes the template's image.
        image_id = self._get_template_from_args(kwargs["launch_template"]).data.get("ImageId")
    if not image_id or not image_id.startswith("ami-"):
        raise MalformedAMIIdError([image_id])
    image = sharing.visible_image(self.account_id, self.region_name, image_id)
    if image is None:
        raise InvalidAMIIdError([image_id])
    images.require_available(image)
    az = _target_az(self, kwargs)
    if faults.capacity_refused(az):
        raise InsufficientInstanceCapacity(az, kwargs.get("instance_type", "m1.small"))

    owner_backend = sharing.backend_of(image)
    merged = merge_mappings(image.block_device_mappings, kwargs.get("block_device_mappings") or [])
    if unsized_device(merged):
        raise MissingParameterError("size or snapshotId")
    # Volumes are created without a snapshot of another account (moto looks snapshots up in the
    # caller's account); the snapshot's size and encryption are applied below instead.
    plan = []
    for mapping in merged:
        ebs = mapping["Ebs"]
        snapshot = owner_backend.snapshots.get(ebs.get("SnapshotId") or "")
        encrypted = bool(ebs.get("Encrypted")) or bool(snapshot and snapshot.encrypted)
        key = ebs.get("KmsKeyId") or (snapshot.kms_key_id if snapshot and snapshot.encrypted else None)
        if encrypted and not key:
            key = kms.default_ebs_key(self.account_id, self.region_name)
        size = ebs.get("VolumeSize") or (snapshot.volume.size if snapshot else 8)
        plan.append((mapping["DeviceName"], ebs, snapshot, encrypted, key, size))
    kwargs["block_device_mappings"] = [
        {
            "DeviceName": device,
            "Ebs": {
                "VolumeSize": size,
                # The real type, IOPS and throughput are set on the volume below: moto's
                # create_volume would want IOPS it is not given.
                "VolumeType": "gp2",
                "DeleteOnTermination": ebs.get("DeleteOnTermination") is not False,
                "Encrypted": False,
            },
        }
        for device, ebs, _snapshot, _encrypted, _key, size in plan
    ]
    reservation = _original_run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
    for instance in reservation.instances:
        consistency.stamp(instance)
        keys = set()
        for device, ebs, snapshot, encrypted, key, _size in plan:
            block = instance.block_device_mapping.get(device)
            if block is None:
                continue
            volume = self.get_volume(block.volume_id)
            volume.snapshot_id = snapshot.id if snapshot else None
            volume.encrypted = encrypted
            volume.kms_key_id = key
            volume.volume_type = ebs.get("VolumeType") or (snapshot.volume.volume_type if snapshot else "gp2")
            volume.iops = ebs.get("Iops")
            volume.throughput = ebs.get("Throughput")
            if encrypted and key:
                keys.add(key)
        instance.amiflow_checks_at = time.monotonic() + config.status_check_delay_seconds
        faults.claim_impairment(instance.id)
        problems = {kms.ec2_key_problem(self.account_id, self.region_name, k) for k in sorted(keys)} - {None}
        if problems:
            _fail_for_kms(instance, problems)
    return reservation


def launch_failure(problems: set[str]) -> tuple[str, str]:
    """The StateReason (code, message) of a launch whose volumes' keys EC2 could not use. Pure."""
    if problems & {"invalid-state", "missing"}:
        return "Client.InvalidKMSKey.InvalidState", "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state"
    return "Client.InternalError", "Client.InternalError: Client error on launch"


def _fail_for_kms(instance: Instance, problems: set[str]) -> None:
    instance._state.name = "pending"
    instance._state.code = 0
    code, message = launch_failure(problems)

    def terminate() -> None:
        instance.terminate()
        instance.state_reason = StateReason(message, code)

    timer = threading.Timer(config.kms_failure_delay_seconds, terminate)
    timer.daemon = True
    timer.start()


def _status(self: Instance) -> dict[str, Any]:
    if self.state_code != 16:
        return {"Status": "not-applicable"}
    if faults.impaired(self.id):
        return {"Status": "impaired", "Details": [{"Name": "reachability", "Status": "failed"}]}
    if time.monotonic() < getattr(self, "amiflow_checks_at", 0):
        return {"Status": "initializing", "Details": [{"Name": "reachability", "Status": "initializing"}]}
    return {"Status": "ok", "Details": [{"Name": "reachability", "Status": "passed"}]}


def install() -> None:
    InstanceBackend.run_instances = run_instances
    InstanceResponse._parse_block_device_mapping = _parse_mappings
    InstanceResponse._validate_block_device_mapping = staticmethod(_validate_mapping)
    Instance.instance_status = property(_status)
    Instance.system_status = property(_status)


def declare_offerings(region: str, offerings: dict[str, list[str]]) -> dict[str, Any]:
    """The instance types each AZ of `region` offers, for a Region moto holds no offerings for."""
    if region in _SHIPPED_OFFERINGS:
        raise ValueError(f"moto has offerings for {region}; they stay as they are")
    if not all(az.startswith(region) for az in offerings):
        raise ValueError(f"every AZ must be in {region}: {sorted(offerings)}")
    INSTANCE_TYPE_OFFERINGS["availability-zone"][region] = [
        {"InstanceType": t, "Location": az, "LocationType": "availability-zone"} for az, types in offerings.items() for t in types
    ]
    regional = sorted({t for types in offerings.values() for t in types})
    INSTANCE_TYPE_OFFERINGS["region"][region] = [{"InstanceType": t, "Location": region, "LocationType": "region"} for t in regional]
    return {"region": region, "offerings": offerings}
