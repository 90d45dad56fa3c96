"""Tag Change on Resource events for EC2 instances and images.

AWS: a change to a resource's tags sends `Tag Change on Resource` (source `aws.tag`) to the
account's default bus, with detail {changed-tag-keys, service, resource-type, version, tags}
(https://docs.aws.amazon.com/tag-editor/latest/userguide/eventbridge-events.html).
moto 5.2.5 sends none.
"""

from __future__ import annotations

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


def install() -> None:
    TagResponse.create_tags = create_tags
    TagResponse.delete_tags = delete_tags
