"""Direct KMS calls with another account's key, and grant validation.

AWS: a principal may call DescribeKey, CreateGrant, ListGrants, Encrypt, Decrypt, ReEncrypt and
GenerateDataKey* on a key of another account by naming it by ARN
(https://docs.aws.amazon.com/kms/latest/developerguide/key-policy-modifying-external-accounts.html);
whether it may is IAM's decision, with the key policy and grants (iam.py, kms.effective_policy).
An explicit deny for the account (the `kms-denied` fault) answers AccessDeniedException.
CreateGrant checks its operations and grantee (an ARN of the key's partition), and a grant with a Name is not created twice for
the same parameters (https://docs.aws.amazon.com/kms/latest/APIReference/API_CreateGrant.html).
moto 5.2.5 looks keys up in the caller's account only and creates any grant it is given.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from moto.kms.exceptions import AccessDeniedException, NotFoundException, ValidationException
from moto.kms.models import KmsBackend, kms_backends
from moto.kms.responses import KmsResponse

from . import consistency, kms, partition
from .state import config, faults

GRANT_OPERATIONS = {
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
    "ReEncryptTo", "Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac",
    "DeriveSharedSecret",
}
GRANTEE = re.compile(r"^(arn:aws[a-z-]*:(iam|sts)::\d{12}:.+|[a-z0-9.-]+\.amazonaws\.com)$")

KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:")

# response method -> (the parameter naming the key, the action it needs)
CALLS = {
    "describe_key": ("KeyId", "kms:DescribeKey"),
    "create_grant": ("KeyId", "kms:CreateGrant"),
    "list_grants": ("KeyId", "kms:ListGrants"),
    "encrypt": ("KeyId", "kms:Encrypt"),
    "decrypt": ("KeyId", "kms:Decrypt"),
    "re_encrypt": ("DestinationKeyId", "kms:ReEncryptTo"),
    "generate_data_key": ("KeyId", "kms:GenerateDataKey"),
    "generate_data_key_without_plaintext": ("KeyId", "kms:GenerateDataKeyWithoutPlaintext"),
}

_original_backend = KmsResponse.kms_backend
_original_create_grant = KmsBackend.create_grant


def _backend(self: KmsResponse) -> KmsBackend:
    return getattr(self, "amiflow_backend", None) or _original_backend.fget(self)


def _owner(key_ref: str | None) -> tuple[str, str] | None:
    if key_ref and KEY_ARN.match(key_ref):
        parts = key_ref.split(":")
        return parts[4], parts[3]
    return None


def _cross_account(name: str, parameter: str, action: str):
    original = getattr(KmsResponse, name)

    def method(self: KmsResponse) -> Any:
        key_ref = self._get_param(parameter)
        owner = _owner(key_ref)
        if owner is None or owner[0] == self.current_account:
            return original(self)
        key = kms.locate(key_ref, self.current_account, self.region)
        if key is None:
            raise NotFoundException(f"Key '{key_ref}' does not exist")
        if faults.kms_denied(self.current_account):
            raise AccessDeniedException(
                f"User: arn:{config.partition}:iam::{self.current_account}:root is not authorized to perform: {action} "
                f"on resource: {key.arn} because no resource-based policy allows the {action} action"
            )
        self.amiflow_backend = kms_backends[owner[0]][owner[1]]
        try:
            return original(self)
        finally:
            self.amiflow_backend = None

    return method


def create_grant(self: KmsBackend, key_id, grantee_principal, operations, name, constraints, retiring_principal):
    if not operations:
        raise ValidationException("1 validation error detected: Value null at 'operations' failed to satisfy constraint: Member must not be null")
    unknown = sorted(set(operations) - GRANT_OPERATIONS)
    if unknown:
        raise ValidationException(
            f"1 validation error detected: Value '{unknown}' at 'operations' failed to satisfy constraint: "
            f"Member must satisfy constraint: [Member must satisfy enum value set: {sorted(GRANT_OPERATIONS)}]"
        )
    for principal, field in ((grantee_principal, "GranteePrincipal"), (retiring_principal, "RetiringPrincipal")):
        if principal and (not GRANTEE.match(principal) or partition.foreign_partition(principal, self.partition)):
            raise ValidationException(f"{field} {principal} is not a valid principal")
    key = self.describe_key(key_id)
    with _grant_lock:  # two calls at once with one name still make one grant
        if name:
            for grant in key.grants.values():
                if grant.name == name and grant.grantee_principal == grantee_principal and sorted(grant.operations) == sorted(operations):
                    return grant.id, grant.token
        grant_id, token = _original_create_grant(self, key_id, grantee_principal, operations, name, constraints, retiring_principal)
        consistency.stamp(key.grants[grant_id])
        return grant_id, token


_grant_lock = threading.Lock()


_original_validate_key_policy = KmsResponse._validate_key_policy


def _validate_key_policy(self: KmsResponse, key_id: str, action: str) -> None:
    """moto refuses DescribeKey to everyone when any Deny statement names the action, whatever its
    principal. Where the stack judges calls (iam.py), the key policy is IAM's to judge, with its
    principals; without it (moto's own tests in-process) moto's check stays."""
    from . import iam
    from .state import config

    if iam.judge is None or not config.iam_enforced:
        _original_validate_key_policy(self, key_id, action)


def install() -> None:
    KmsResponse._validate_key_policy = _validate_key_policy
    KmsResponse.kms_backend = property(_backend)
    for name, (parameter, action) in CALLS.items():
        setattr(KmsResponse, name, _cross_account(name, parameter, action))
    KmsBackend.create_grant = create_grant
