"""Tag Change on Resource events for EC2 instances and images.

AWS: a change to a resource's tags sends `Tag Change on Resource` (source `aws.tag`) to the
account's default bus, with detail {changed-tag-keys, service, resource-type, version, tags}
(https://docs.aws.amazon.com/tag-editor/latest/userguide/eventbridge-events.html).
moto 5.2.5 sends none.

Not a behaviour but its cost: moto finds one resource's tags (for every instance, image, volume
and snapshot it describes) by matching a pattern against every tag of every resource in the
backend, so that each Describe call grew with everything a test session had made. The tags are
read here by the resource's id instead, with the same answer.
"""

from __future__ import annotations

from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.models.tags import EC2_PREFIX_TO_RESOURCE, get_prefix
from moto.ec2.responses.tags import TagResponse

from . import events
from .state import config

_original_create_tags = TagResponse.create_tags
_original_delete_tags = TagResponse.delete_tags
_versions: dict[str, int] = {}


def _emit(self: TagResponse, changed: list[str]) -> None:
    account, region = self.current_account, self.region
    for resource_id in self._get_param("Resources", []):
        if resource_id.startswith("i-"):
            kind, arn = "instance", f"arn:{config.partition}:ec2:{region}:{account}:instance/{resource_id}"
        elif resource_id.startswith("ami-"):
            kind, arn = "image", f"arn:{config.partition}:ec2:{region}::image/{resource_id}"
        else:
            continue
        _versions[resource_id] = _versions.get(resource_id, 0) + 1
        tags = {t["key"]: t["value"] for t in self.ec2_backend.describe_tags(filters={"resource-id": [resource_id]})}
        event = events.envelope(
            account, region, "aws.tag", "Tag Change on Resource", [arn],
            {"changed-tag-keys": changed, "service": "ec2", "resource-type": kind, "version": _versions[resource_id], "tags": tags},
        )
        events.deliver(account, region, "default", event)


def create_tags(self: TagResponse):
    result = _original_create_tags(self)
    _emit(self, [t["Key"] for t in self._get_param("Tags", [])])
    return result


def delete_tags(self: TagResponse):
    result = _original_delete_tags(self)
    _emit(self, [t["Key"] for t in self._get_param("Tags", [])])
    return result


def own_tags(self: TaggedEC2Resource) -> list[dict[str, str]]:
    """A resource's tags, as moto's describe_tags answers them for its id."""
    if not self.id:
        return []
    kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
    return [{"resource_id": self.id, "key": key, "value": value, "resource_type": kind}
            for key, value in self.ec2_backend.tags.get(self.id, {}).items()]


def install() -> None:
    TaggedEC2Resource.get_tags = own_tags
    TagResponse.create_tags = create_tags
    TagResponse.delete_tags = delete_tags
