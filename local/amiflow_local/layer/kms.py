"""KMS keys across accounts: key policies, grants, AWS managed keys, and the uses EC2 makes of a
key on a caller's behalf.

AWS: a principal of another account may use a key only if the key policy allows it (and, on AWS,
its own IAM policy) or a grant names it; AWS managed keys such as aws/ebs can never be used by
another account (https://docs.aws.amazon.com/kms/latest/developerguide/key-policy-modifying-external-accounts.html,
https://docs.aws.amazon.com/kms/latest/developerguide/grants.html). EC2 needs the key to create
volumes from an encrypted snapshot (https://docs.aws.amazon.com/ebs/latest/userguide/ebs-encryption.html).
moto 5.2.5 finds keys only in the caller's own account.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

from moto.ec2.models.elastic_block_store import EBSBackend
from moto.kms.models import kms_backends

from .organizations import condition_allows
from .state import faults

_original_default_key = EBSBackend._create_default_encryption_key

# What EC2 asks of a key for each use, on the caller's behalf.
EC2_USES = {
    "launch": ["kms:DescribeKey", "kms:Decrypt", "kms:CreateGrant"],
    "copy-source": ["kms:DescribeKey", "kms:Decrypt", "kms:ReEncryptFrom", "kms:CreateGrant"],
    "copy-target": ["kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:CreateGrant"],
}


def locate(key_ref: str, caller: str, region: str) -> Any | None:
    """The key a reference (id, ARN, alias name or alias ARN) names, in whatever account owns it."""
    account, where = caller, region
    if key_ref.startswith("arn:"):
        parts = key_ref.split(":")
        where, account = parts[3], parts[4]
    backend = kms_backends[account][where]
    try:
        key_id = backend.any_id_to_key_id(key_ref)
    except Exception:  # noqa: BLE001 - an unknown alias is an unknown key
        return None
    return backend.keys.get(key_id)


def default_ebs_key(account: str, region: str) -> str:
    """The account's AWS managed key for EBS (alias aws/ebs), created on first use as on AWS."""
    from moto.ec2.models import ec2_backends

    return ec2_backends[account][region]._create_default_encryption_key()


def _create_default_encryption_key(self) -> str:
    """moto creates aws/ebs as a customer managed key; on AWS it is AWS managed."""
    arn = _original_default_key(self)
    key = locate(arn, self.account_id, self.region_name)
    if key is not None:
        key.key_manager = "AWS"
    return arn


def _principal_account(principal: str) -> str | None:
    if principal.isdigit() and len(principal) == 12:
        return principal
    if principal.startswith("arn:aws:iam::"):
        return principal.split(":")[4]
    return None


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, (str, dict)) else list(value or [])


def policy_allows(key: Any, account: str, actions: list[str]) -> bool:
    """Whether the key policy allows a principal of `account` every one of `actions`."""
    if not key.policy:
        return False
    try:
        document = json.loads(key.policy)
    except ValueError:
        return False
    granted: set[str] = set()
    for statement in _as_list(document.get("Statement")):
        if statement.get("Effect") != "Allow":
            continue
        principal = statement.get("Principal", {})
        principals = _as_list(principal.get("AWS") if isinstance(principal, dict) else principal)
        matches = any(_principal_account(p) == account for p in principals)
        if not matches and "*" in principals:
            matches = condition_allows(statement.get("Condition", {}), account)
        if not matches:
            continue
        for action in actions:
            if any(fnmatch.fnmatchcase(action, pattern) for pattern in _as_list(statement.get("Action"))):
                granted.add(action)
    return all(a in granted for a in actions)


def grants_allow(key: Any, account: str, actions: list[str]) -> bool:
    wanted = {a.split(":", 1)[1] for a in actions}
    for grant in key.grants.values():
        if _principal_account(grant.grantee_principal) == account and wanted <= set(grant.operations):
            return True
    return False


def may_use(key: Any, account: str, actions: list[str]) -> bool:
    if key.key_state != "Enabled":
        return False
    if key.account_id == account:
        return True
    if key.key_manager == "AWS" or faults.kms_denied(account):
        return False
    return policy_allows(key, account, actions) or grants_allow(key, account, actions)


def ec2_may_use(account: str, region: str, key_ref: str, use: str) -> bool:
    key = locate(key_ref, account, region)
    return key is not None and may_use(key, account, EC2_USES[use])


def install() -> None:
    EBSBackend._create_default_encryption_key = _create_default_encryption_key
