"""On-Demand Capacity Reservations: create, describe, cancel, and launches that target one.

AWS (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-capacity-reservations.html,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateCapacityReservation.html,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CapacityReservation.html):
- CreateCapacityReservation reserves `InstanceCount` instances of a type and platform in one AZ
  (`AvailabilityZone` or `AvailabilityZoneId`), `open` or `targeted`; it is `active` at once, with
  `AvailableInstanceCount` = `TotalInstanceCount`. It fails with InsufficientInstanceCapacity when
  EC2 has no capacity for it (the layer's `insufficient-capacity` fault on that AZ). A repeated
  ClientToken returns the same reservation. Tags may be given at creation
  (`capacity-reservation`).
- A launch with `CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId`
  runs in that reservation: it must be active and match the instance type and the AZ; a full one
  refuses the launch with ReservationCapacityExceeded
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html). The instance
  shows `CapacityReservationId`; a terminated instance gives its place back.
- CancelCapacityReservation makes it `cancelled`; the instances in it keep running.
- An unknown id is InvalidCapacityReservationId.NotFound (the pattern of EC2's not-found codes).
moto 5.2.5 has none of these actions, and ignores a launch's CapacityReservationSpecification.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.responses.instances import InstanceResponse

from .state import config, faults

_lock = threading.Lock()
# (account, region) -> reservation id -> reservation (the API's shape)
_reservations: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
# (account, region, client token) -> reservation id
_tokens: dict[tuple[str, str, str], str] = {}


def _not_found(reservation_id: str) -> EC2ClientError:
    return EC2ClientError("InvalidCapacityReservationId.NotFound", f"The Capacity Reservation ID '{reservation_id}' does not exist")


def _where(response: Any) -> tuple[str, str]:
    return response.current_account, response.region


def _zone_name(backend: Any, name: str | None, zone_id: str | None) -> tuple[str, str]:
    for zone in backend.describe_availability_zones():
        if (name and zone.name == name) or (zone_id and zone.zone_id == zone_id):
            return zone.name, zone.zone_id
    raise EC2ClientError("InvalidParameterValue", f"Invalid availability zone: [{name or zone_id}]")


def create_capacity_reservation(self: InstanceResponse) -> ActionResult:
    self.error_on_dryrun()
    account, region = _where(self)
    token = self._get_param("ClientToken")
    with _lock:
        known = _tokens.get((account, region, token)) if token else None
        if known:
            return ActionResult({"CapacityReservation": dict(_reservations[(account, region)][known])})
    zone, zone_id = _zone_name(self.ec2_backend, self._get_param("AvailabilityZone"), self._get_param("AvailabilityZoneId"))
    count = int(self._get_param("InstanceCount") or 0)
    instance_type = self._get_param("InstanceType")
    platform = self._get_param("InstancePlatform")
    if count < 1 or not instance_type or not platform:
        raise EC2ClientError("MissingParameter", "InstanceType, InstancePlatform and an InstanceCount of at least 1 are required")
    if faults.capacity_refused(zone):
        raise EC2ClientError("InsufficientInstanceCapacity",
                             f"There is no Spot capacity available that matches your request. We currently do not have sufficient {instance_type} capacity in the Availability Zone you requested ({zone}).")
    reservation_id = "cr-" + uuid.uuid4().hex[:17]
    tags = self._parse_tag_specification().get("capacity-reservation", {})
    reservation = {
        "CapacityReservationId": reservation_id,
        "OwnerId": account,
        "CapacityReservationArn": f"arn:{config.partition}:ec2:{region}:{account}:capacity-reservation/{reservation_id}",
        "AvailabilityZone": zone,
        "AvailabilityZoneId": zone_id,
        "InstanceType": instance_type,
        "InstancePlatform": platform,
        "Tenancy": self._get_param("Tenancy") or "default",
        "TotalInstanceCount": count,
        "AvailableInstanceCount": count,
        "EbsOptimized": bool(self._get_param("EbsOptimized")),
        "State": "active",
        "EndDateType": self._get_param("EndDateType") or "unlimited",
        "InstanceMatchCriteria": self._get_param("InstanceMatchCriteria") or "open",
        "CreateDate": datetime.now(timezone.utc),
        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
        "ReservationType": "default",
    }
    with _lock:
        _reservations.setdefault((account, region), {})[reservation_id] = reservation
        if token:
            _tokens[(account, region, token)] = reservation_id
    if tags:
        # In moto's tag store too, where IAM's ResourceTag conditions and DescribeTags look.
        self.ec2_backend.create_tags([reservation_id], tags)
    return ActionResult({"CapacityReservation": dict(reservation)})


def _with_tags(backend: Any, reservation: dict[str, Any]) -> dict[str, Any]:
    tags = backend.tags.get(reservation["CapacityReservationId"], {})
    return {**reservation, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}


def _matches(reservation: dict[str, Any], tags: dict[str, str], filters: dict[str, list[str]]) -> bool:
    for name, wanted in filters.items():
        if name.startswith("tag:"):
            if tags.get(name[4:]) not in wanted:
                return False
        elif name == "tag-key":
            if not any(k in wanted for k in tags):
                return False
        else:
            field = {"state": "State", "instance-type": "InstanceType", "availability-zone": "AvailabilityZone",
                     "instance-platform": "InstancePlatform", "owner-id": "OwnerId"}.get(name)
            if field is None:
                raise EC2ClientError("InvalidParameterValue", f"The filter '{name}' is invalid")
            if str(reservation[field]) not in wanted:
                return False
    return True


def describe_capacity_reservations(self: InstanceResponse) -> ActionResult:
    self.error_on_dryrun()
    account, region = _where(self)
    ids = self._get_param("CapacityReservationIds", [])
    filters = self._filters_from_querystring()
    with _lock:
        mine = dict(_reservations.get((account, region), {}))
    for reservation_id in ids:
        if reservation_id not in mine:
            raise _not_found(reservation_id)
    found = [
        _with_tags(self.ec2_backend, r) for rid, r in mine.items()
        if (not ids or rid in ids) and _matches(r, self.ec2_backend.tags.get(rid, {}), filters)
    ]
    return ActionResult({"CapacityReservations": found})


def cancel_capacity_reservation(self: InstanceResponse) -> ActionResult:
    self.error_on_dryrun()
    account, region = _where(self)
    reservation_id = self._get_param("CapacityReservationId")
    with _lock:
        reservation = _reservations.get((account, region), {}).get(reservation_id)
        if reservation is None:
            raise _not_found(reservation_id)
        if reservation["State"] != "active":
            raise EC2ClientError("IncorrectState", f"The Capacity Reservation '{reservation_id}' is {reservation['State']} and cannot be cancelled.")
        reservation["State"] = "cancelled"
    return ActionResult({"Return": True})


def _target(response: InstanceResponse) -> str | None:
    spec = response._get_param("CapacityReservationSpecification") or {}
    return ((spec.get("CapacityReservationTarget") or {}).get("CapacityReservationId")) or None


_original_run = InstanceResponse.run_instances
_original_terminate = InstanceResponse.terminate_instances


def run_instances(self: InstanceResponse) -> ActionResult:
    reservation_id = _target(self)
    if reservation_id is None or self._get_param("DryRun"):
        return _original_run(self)
    account, region = _where(self)
    count = int(self._get_param("MinCount") or 1)
    subnet_id = self._get_param("SubnetId")
    zone = self.ec2_backend.get_subnet(subnet_id).availability_zone if subnet_id else self._get_param("Placement.AvailabilityZone")
    instance_type = self._get_param("InstanceType")
    with _lock:
        reservation = _reservations.get((account, region), {}).get(reservation_id)
        if reservation is None:
            raise _not_found(reservation_id)
        if reservation["State"] != "active":
            raise EC2ClientError("InvalidParameterValue", f"The Capacity Reservation '{reservation_id}' is {reservation['State']}.")
        if reservation["InstanceType"] != instance_type or (zone and reservation["AvailabilityZone"] != zone):
            raise EC2ClientError("InvalidParameterCombination",
                                 f"The instance type {instance_type} in {zone} does not match Capacity Reservation '{reservation_id}' "
                                 f"({reservation['InstanceType']} in {reservation['AvailabilityZone']}).")
        if reservation["AvailableInstanceCount"] < count:
            raise EC2ClientError("ReservationCapacityExceeded",
                                 f"The targeted Capacity Reservation '{reservation_id}' does not have enough available instance capacity to fulfill your request.")
        reservation["AvailableInstanceCount"] -= count
    try:
        answer = _original_run(self)
    except Exception:
        with _lock:
            reservation["AvailableInstanceCount"] += count
        raise
    launched = answer.result
    new = [i for i in launched.instances if getattr(i, "capacity_reservation_id", None) is None]
    for instance in new:
        instance.capacity_reservation_id = reservation_id
    # A repeated ClientToken answers the earlier launch and starts nothing: its place was taken then.
    unused = count - len(new)
    if unused:
        with _lock:
            reservation["AvailableInstanceCount"] += unused
    return answer


def terminate_instances(self: InstanceResponse) -> ActionResult:
    account, region = _where(self)
    ids = self._get_param("InstanceIds", [])
    before = {i: getattr(self.ec2_backend.get_instance(i), "capacity_reservation_id", None) for i in ids
              if _exists(self.ec2_backend, i)}
    answer = _original_terminate(self)
    with _lock:
        for instance_id, reservation_id in before.items():
            reservation = _reservations.get((account, region), {}).get(reservation_id or "")
            instance = self.ec2_backend.get_instance(instance_id)
            if reservation is not None and getattr(instance, "capacity_reservation_id", None):
                instance.capacity_reservation_id = None
                if reservation["State"] == "active":
                    reservation["AvailableInstanceCount"] = min(reservation["TotalInstanceCount"], reservation["AvailableInstanceCount"] + 1)
    return answer


def _exists(backend: Any, instance_id: str) -> bool:
    try:
        backend.get_instance(instance_id)
        return True
    except Exception:  # noqa: BLE001 - EC2 refuses the unknown id itself
        return False


def reset() -> None:
    with _lock:
        _reservations.clear()
        _tokens.clear()


def install() -> None:
    InstanceResponse.create_capacity_reservation = create_capacity_reservation
    InstanceResponse.describe_capacity_reservations = describe_capacity_reservations
    InstanceResponse.cancel_capacity_reservation = cancel_capacity_reservation
    InstanceResponse.run_instances = run_instances
    InstanceResponse.terminate_instances = terminate_instances
