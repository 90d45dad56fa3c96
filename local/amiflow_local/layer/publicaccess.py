"""Block public access for AMIs and for snapshots: account-level settings, per Region, that refuse
a public share.

AWS, AMIs (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/block-public-access-to-amis.html,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetImageBlockPublicAccessState.html):
the state is `block-new-sharing` or `unblocked`, and is on by default for new accounts. While it is
on, any attempt to make an AMI public fails (OperationNotPermitted); AMIs already public stay so.
`ManagedBy` is `account`, or `declarative-policy` when an Organizations declarative policy sets it,
and then the account cannot change it.

AWS, snapshots (https://docs.aws.amazon.com/ebs/latest/userguide/block-public-access-snapshots.html,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetSnapshotBlockPublicAccessState.html):
`block-all-sharing`, `block-new-sharing` or `unblocked`, with the same `ManagedBy`. Either block
refuses new public sharing.

moto 5.2.5 has none of these actions and lets any image or snapshot be made public.

The local stack's accounts are new accounts: AMIs blocked, snapshots unblocked. No AWS page found
states the snapshot default or the error code of a refused public snapshot share; the layer
assumes `unblocked` and OperationNotPermitted (the code AWS gives for AMIs). The control
endpoint (`POST /_amiflow/block-public-access`) sets a declarative policy's state, which the
account's own Enable/Disable calls then cannot change.
"""

from __future__ import annotations

import threading
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.elastic_block_store import ElasticBlockStore as EBSResponse

IMAGE_STATES = ("block-new-sharing", "unblocked")
SNAPSHOT_STATES = ("block-all-sharing", "block-new-sharing", "unblocked")
_DEFAULTS = {"image": "block-new-sharing", "snapshot": "unblocked"}

_lock = threading.Lock()
# (account, region, "image" | "snapshot") -> {"state": ..., "managedBy": ...}
_settings: dict[tuple[str, str, str], dict[str, str]] = {}


class OperationNotPermitted(EC2ClientError):
    def __init__(self, message: str):
        super().__init__("OperationNotPermitted", message)


def setting(account: str, region: str, kind: str) -> dict[str, str]:
    with _lock:
        return dict(_settings.get((account, region, kind)) or {"state": _DEFAULTS[kind], "managedBy": "account"})


def set_setting(account: str, region: str, kind: str, state: str, managed_by: str) -> dict[str, str]:
    allowed = IMAGE_STATES if kind == "image" else SNAPSHOT_STATES
    if state not in allowed:
        raise ValueError(f"{kind} block public access state {state!r}: one of {allowed}")
    if managed_by not in ("account", "declarative-policy"):
        raise ValueError(f"managedBy {managed_by!r}: account or declarative-policy")
    with _lock:
        _settings[(account, region, kind)] = {"state": state, "managedBy": managed_by}
    return setting(account, region, kind)


def reset() -> None:
    with _lock:
        _settings.clear()


def _change_by_account(account: str, region: str, kind: str, state: str) -> dict[str, str]:
    if setting(account, region, kind)["managedBy"] == "declarative-policy":
        raise OperationNotPermitted(
            f"Block public access for {'AMIs' if kind == 'image' else 'snapshots'} is managed by a "
            "declarative policy and can't be modified by the account."
        )
    return set_setting(account, region, kind, state, "account")


def require_image_public_allowed(account: str, region: str) -> None:
    if setting(account, region, "image")["state"] != "unblocked":
        raise OperationNotPermitted(
            "You can't publicly share this image because block public access for AMIs is enabled for "
            "this account. To publicly share the image, you must call the DisableImageBlockPublicAccess API."
        )


def require_snapshot_public_allowed(account: str, region: str) -> None:
    state = setting(account, region, "snapshot")["state"]
    if state != "unblocked":
        raise OperationNotPermitted(
            f"You can't publicly share this snapshot because block public access for snapshots is {state} "
            "for this account and Region."
        )


def _where(response: Any) -> tuple[str, str]:
    return response.current_account, response.region


def get_image_block_public_access_state(self: AmisResponse) -> ActionResult:
    self.error_on_dryrun()
    found = setting(*_where(self), "image")
    return ActionResult({"ImageBlockPublicAccessState": found["state"], "ManagedBy": found["managedBy"]})


def enable_image_block_public_access(self: AmisResponse) -> ActionResult:
    self.error_on_dryrun()
    state = self._get_param("ImageBlockPublicAccessState")
    if state != "block-new-sharing":
        raise EC2ClientError("InvalidParameterValue", f"ImageBlockPublicAccessState {state!r}: block-new-sharing")
    changed = _change_by_account(*_where(self), "image", state)
    return ActionResult({"ImageBlockPublicAccessState": changed["state"]})


def disable_image_block_public_access(self: AmisResponse) -> ActionResult:
    self.error_on_dryrun()
    changed = _change_by_account(*_where(self), "image", "unblocked")
    return ActionResult({"ImageBlockPublicAccessState": changed["state"]})


def get_snapshot_block_public_access_state(self: EBSResponse) -> ActionResult:
    self.error_on_dryrun()
    found = setting(*_where(self), "snapshot")
    return ActionResult({"State": found["state"], "ManagedBy": found["managedBy"]})


def enable_snapshot_block_public_access(self: EBSResponse) -> ActionResult:
    self.error_on_dryrun()
    state = self._get_param("State")
    if state not in ("block-all-sharing", "block-new-sharing"):
        raise EC2ClientError("InvalidParameterValue", f"State {state!r}: block-all-sharing or block-new-sharing")
    changed = _change_by_account(*_where(self), "snapshot", state)
    return ActionResult({"State": changed["state"]})


def disable_snapshot_block_public_access(self: EBSResponse) -> ActionResult:
    self.error_on_dryrun()
    changed = _change_by_account(*_where(self), "snapshot", "unblocked")
    return ActionResult({"State": changed["state"]})


def install() -> None:
    AmisResponse.get_image_block_public_access_state = get_image_block_public_access_state
    AmisResponse.enable_image_block_public_access = enable_image_block_public_access
    AmisResponse.disable_image_block_public_access = disable_image_block_public_access
    EBSResponse.get_snapshot_block_public_access_state = get_snapshot_block_public_access_state
    EBSResponse.enable_snapshot_block_public_access = enable_snapshot_block_public_access
    EBSResponse.disable_snapshot_block_public_access = disable_snapshot_block_public_access
