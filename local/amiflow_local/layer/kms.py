"""KMS keys: key policies and grants as one resource policy, the AWS managed EBS key's own policy,
and the uses EC2 makes of a key on a caller's behalf.

AWS:
- Access to a key is the key policy, the IAM policies where the key policy delegates to the
  account, and the grants, combined; an explicit deny wins. A grant gives its grantee the grant's
  operations; a grant to an account lets that account's principals use them as far as their own
  IAM policies allow (https://docs.aws.amazon.com/kms/latest/developerguide/control-access.html,
  https://docs.aws.amazon.com/kms/latest/developerguide/grant-authorization.html,
  https://docs.aws.amazon.com/kms/latest/developerguide/key-policy-modifying-external-accounts.html).
- An AWS managed key's policy lets the account's principals use it only through its service
  (`kms:ViaService`, `kms:CallerAccount`), so no other account can ever use aws/ebs
  (https://docs.aws.amazon.com/kms/latest/developerguide/concepts.html#aws-managed-key).
- When EC2 uses a customer managed key for a caller (creating the volumes of a launch from an
  encrypted snapshot, encrypting a copy), the caller must be allowed kms:CreateGrant, Decrypt,
  DescribeKey, GenerateDataKeyWithoutPlaintext and ReEncrypt* on it, the calls reaching KMS
  through EC2 (`kms:ViaService` = ec2.<region>.amazonaws.com)
  (https://docs.aws.amazon.com/ebs/latest/userguide/ebs-encryption-requirements.html). A snapshot
  of an encrypted volume keeps the volume's data key, so CreateImage asks nothing of KMS
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_Snapshot.html, DataEncryptionKeyId).
moto 5.2.5 finds keys only in the caller's own account, treats aws/ebs as customer managed, and
never checks a key EC2 uses.
"""

from __future__ import annotations

import json
from typing import Any

from moto.ec2.models.elastic_block_store import EBSBackend
from moto.kms import models as kms_models
from moto.kms.models import kms_backends
from moto.kms.utils import generate_private_key as _generate_private_key

from .state import config, faults

_original_default_key = EBSBackend._create_default_encryption_key

# What the EBS encryption guide requires of a caller for whom EC2 uses a key.
EBS_KEY_ACTIONS = [
    "kms:CreateGrant",
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
]


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


def key_tags(key: Any) -> dict[str, str]:
    """A key's tags (TagResource, or Tags at CreateKey)."""
    backend = kms_backends[key.account_id][key.region]
    listed = backend.list_resource_tags(key.id).get("Tags", [])
    return {t["TagKey"]: t["TagValue"] for t in listed}


def default_ebs_key(account: str, region: str) -> str:
    """The account's AWS managed key for EBS (alias aws/ebs), created on first use as on AWS."""
    from moto.ec2.models import ec2_backends

    return ec2_backends[account][region]._create_default_encryption_key()


def aws_managed_ebs_policy(account: str, region: str) -> dict[str, Any]:
    """The key policy AWS gives aws/ebs: use through EC2 by the account's principals, and reading
    its metadata by the account."""
    return {
        "Version": "2012-10-17",
        "Id": "auto-ebs-2",
        "Statement": [
            {
                "Sid": "Allow access through EBS for all principals in the account that are authorized to use EBS",
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                           "kms:CreateGrant", "kms:DescribeKey"],
                "Resource": "*",
                "Condition": {"StringEquals": {"kms:CallerAccount": account,
                                               "kms:ViaService": f"ec2.{region}.amazonaws.com"}},
            },
            {
                "Sid": "Allow direct access to key metadata to the account",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{config.partition}:iam::{account}:root"},
                "Action": ["kms:Describe*", "kms:Get*", "kms:List*", "kms:RevokeGrant"],
                "Resource": "*",
            },
        ],
    }


def _create_default_encryption_key(self) -> str:
    """moto creates aws/ebs as a customer managed key with the default policy; on AWS it is AWS
    managed, with the policy above."""
    arn = _original_default_key(self)
    key = locate(arn, self.account_id, self.region_name)
    if key is not None and key.key_manager != "AWS":
        key.key_manager = "AWS"
        key.policy = json.dumps(aws_managed_ebs_policy(self.account_id, self.region_name))
    return arn


def effective_policy(key: Any) -> dict[str, Any]:
    """The key policy with one Allow statement per grant, for its grantee and operations: what IAM
    evaluates as the key's resource policy."""
    try:
        document = json.loads(key.policy) if key.policy else {"Version": "2012-10-17", "Statement": []}
    except ValueError:
        document = {"Version": "2012-10-17", "Statement": []}
    statements = document.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else list(statements)
    from .consistency import settling

    for grant in key.grants.values():
        if settling(grant):
            continue  # a grant takes a while to be in force (consistency.py)
        grantee = grant.grantee_principal or ""
        if not grantee.startswith("arn:"):
            continue  # a service principal's grant is the service's, not a caller's
        statements.append({
            "Sid": f"Grant{grant.id[:16]}",
            "Effect": "Allow",
            "Principal": {"AWS": grantee},
            "Action": [f"kms:{op}" for op in grant.operations],
            "Resource": "*",
        })
    return {"Version": document.get("Version", "2012-10-17"), "Statement": statements}


def ec2_key_problem(account: str, region: str, key_ref: str) -> str | None:
    """Why EC2 cannot use a key for the caller of the request being answered: "missing",
    "invalid-state" (disabled or pending deletion), "denied" (the caller may not use it), or None."""
    from . import iam

    key = locate(key_ref, account, region)
    if key is None:
        return "missing"
    if key.key_state != "Enabled":
        return "invalid-state"
    if key.account_id != account and faults.kms_denied(account):
        return "denied"
    principal = iam.current_principal(account)
    context = {"kms:ViaService": f"ec2.{region}.amazonaws.com", "kms:CallerAccount": account}
    policy = effective_policy(key)
    checks = [
        iam.Check(action, key.arn, key.account_id,
                  {**context, **({"kms:GrantIsForAWSResource": "true"} if action == "kms:CreateGrant" else {})},
                  policy)
        for action in EBS_KEY_ACTIONS
    ]
    return "denied" if iam.judge_checks(principal, checks, region) is not None else None


class _KeyPairOnFirstUse:
    """The asymmetric key pair moto makes for every new KMS key, made when first used instead.

    Not a behaviour but its cost: moto 5.2.5 generates an RSA 2048 key pair for each CreateKey,
    symmetric ones included, whose pair serves only moto's Sign and GetPublicKey. That was a
    twentieth of a stack's CPU under the tests, which make hundreds of keys and sign nothing."""

    def __init__(self, key_spec: str) -> None:
        self._key_spec, self._made = key_spec, None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_key_spec", "_made"):
            raise AttributeError(name)
        if self._made is None:
            self._made = _generate_private_key(self._key_spec)
        return getattr(self._made, name)


def install() -> None:
    kms_models.generate_private_key = _KeyPairOnFirstUse
    EBSBackend._create_default_encryption_key = _create_default_encryption_key
