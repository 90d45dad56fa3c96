"""Eventual consistency, with a knob: `POST /_amiflow/config {"eventualConsistencySeconds": N}`.

AWS:
- EC2 is eventually consistent: a resource just created may not be found by the next Describe or
  by a call that names it (InvalidInstanceID.NotFound, InvalidAMIID.NotFound), and a change to a
  resource (a launch permission, a snapshot's createVolumePermission) takes a while to be in force
  everywhere; a snapshot of an AMI just deregistered may still be InvalidSnapshot.InUse
  (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html).
- A KMS grant can take up to about five minutes to be in force; a grant token helps only calls
  that can carry one, and EC2 cannot
  (https://docs.aws.amazon.com/kms/latest/developerguide/grant-tokens.html).
- A DynamoDB read that is not strongly consistent may not reflect a write made just before
  (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.ReadConsistency.html).
moto 5.2.5 is strongly consistent everywhere. For N seconds after each of the changes above (N = 0
by default) the layer answers as AWS may: the new instance or image is not found, the permission
or grant is not yet in force, the snapshot is still in use, the eventually consistent read misses
the write.
"""

from __future__ import annotations

import time
from typing import Any

from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.elastic_block_store import EBSBackend
from moto.ec2.models.instances import InstanceBackend

from .state import config

STAMP = "amiflow_settles_at"


def deadline() -> float:
    """When a change made now is seen everywhere (time.monotonic): now plus the knob's value at
    the time of the change, so that what was made with the knob at 0 is seen at once."""
    return time.monotonic() + config.eventual_consistency_seconds


def stamp(thing: Any) -> None:
    setattr(thing, STAMP, deadline())


def young(settles_at: float | None) -> bool:
    """Whether a change that settles at `settles_at` is still settling."""
    return settles_at is not None and time.monotonic() < settles_at


def settling(thing: Any) -> bool:
    return young(getattr(thing, STAMP, None))


# Instances: just launched ones are not found yet.
_original_all_reservations = InstanceBackend.all_reservations


def all_reservations(self, filters: Any = None) -> list:
    reservations = _original_all_reservations(self, filters)
    if config.eventual_consistency_seconds <= 0:
        return reservations
    visible = []
    for reservation in reservations:
        reservation.instances = [i for i in reservation.instances if not settling(i)]
        if reservation.instances:
            visible.append(reservation)
    return visible


# Snapshots of an AMI just deregistered are still in use.
_original_delete_snapshot = EBSBackend.delete_snapshot
deregistered_snapshots: dict[str, float] = {}


class SnapshotInUse(EC2ClientError):
    def __init__(self, snapshot_id: str, image_id: str):
        super().__init__(
            "InvalidSnapshot.InUse",
            f"The snapshot {snapshot_id} is currently in use by {image_id}",
        )


def delete_snapshot(self, snapshot_id: str):
    if young(deregistered_snapshots.get(snapshot_id)):
        snapshot = self.snapshots.get(snapshot_id)
        raise SnapshotInUse(snapshot_id, getattr(snapshot, "from_ami", None) or "an AMI")
    return _original_delete_snapshot(self, snapshot_id)


def note_deregistered(snapshot_ids: list[str]) -> None:
    settles_at = deadline()
    for snapshot_id in snapshot_ids:
        deregistered_snapshots[snapshot_id] = settles_at


# DynamoDB: an eventually consistent read does not see an item written just before.
_original_table_put = Table.put_item
_original_get_item = DynamoHandler.get_item
_original_backend_query = None
# (table, hash key, range key) -> when the last write to that item settles
written: dict[tuple[str, Any, Any], float] = {}


def _key(table_name: str, item: Any) -> tuple[str, Any, Any]:
    return (table_name, repr(getattr(item, "hash_key", None)), repr(getattr(item, "range_key", None)))


def table_put_item(self, *args: Any, **kwargs: Any):
    item = _original_table_put(self, *args, **kwargs)
    written[_key(self.name, item)] = deadline()
    return item


def get_item(self: DynamoHandler):
    if self.body.get("ConsistentRead"):
        return _original_get_item(self)
    table = self.dynamodb_backend.get_table(self.body["TableName"])
    hash_key, range_key = self.dynamodb_backend.get_keys_value(table, self.body["Key"])
    found = table.get_item(hash_key, range_key)
    if found is not None and young(written.get(_key(table.name, found))):
        from moto.core.responses import ActionResult

        return ActionResult({})
    return _original_get_item(self)


def query(self, table_name: str, *args: Any, **kwargs: Any):
    items, scanned, last = _original_backend_query(self, table_name, *args, **kwargs)
    if kwargs.get("consistent_read"):
        return items, scanned, last
    return [i for i in items if not young(written.get(_key(table_name, i)))], scanned, last


def install() -> None:
    global _original_backend_query
    from moto.dynamodb.models import DynamoDBBackend

    InstanceBackend.all_reservations = all_reservations
    EBSBackend.delete_snapshot = delete_snapshot
    Table.put_item = table_put_item
    DynamoHandler.get_item = get_item
    _original_backend_query = DynamoDBBackend.query
    DynamoDBBackend.query = query
