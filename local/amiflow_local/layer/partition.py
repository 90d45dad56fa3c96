"""IAM refuses a policy whose resources name another partition than the account's.

AWS: an ARN begins `arn:<partition>:`, and a resource's partition is that of its Region: `aws-cn` in
the China Regions, `aws-us-gov` in GovCloud (US)
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference-arns.html). A policy document whose
Resource names another partition is refused with MalformedPolicyDocument: `Partition "aws" is not
valid for resource "arn:aws:…"` (the error IAM returns in aws-cn to a template that writes `arn:aws:`,
as reported in aws/copilot-cli#3844). moto 5.2.5 accepts every partition it knows, in every Region.

AWS KMS: a key policy whose principals are not valid in the key's partition is refused:
MalformedPolicyDocumentException, "Policy contains a statement with one or more invalid principals"
(https://repost.aws/knowledge-center/kms-policy-error-invalid-principals). moto 5.2.5 stores any
policy.
"""

from __future__ import annotations

import json
from typing import Any

from moto.core.exceptions import JsonRESTError
from moto.iam.policy_validation import IAMPolicyDocumentValidator
from moto.kms.models import KmsBackend
from moto.utilities.utils import PARTITION_NAMES

from .state import config

_original = IAMPolicyDocumentValidator._validate_resource_format
_original_put_key_policy = KmsBackend.put_key_policy
_original_create_key = KmsBackend.create_key


class MalformedPolicyDocumentException(JsonRESTError):
    def __init__(self) -> None:
        super().__init__("MalformedPolicyDocumentException", "Policy contains a statement with one or more invalid principals.")


def foreign_partition(resource: str, partition: str) -> str | None:
    """The partition an ARN names, when it is a known one other than `partition`."""
    parts = resource.split(":", 2)
    if len(parts) == 3 and parts[0] == "arn" and parts[1] in PARTITION_NAMES and parts[1] != partition:
        return parts[1]
    return None


def validate_resource_format(self: IAMPolicyDocumentValidator, resource: str) -> None:
    named = foreign_partition(resource, config.partition)
    if named is not None:
        self._resource_error = f'Partition "{named}" is not valid for resource "{resource}".'
        return
    _original(self, resource)


def principals(policy: dict[str, Any]) -> list[str]:
    """Every principal a key policy's statements name (Principal and NotPrincipal, all kinds)."""
    statements = policy.get("Statement", [])
    named: list[str] = []
    for statement in statements if isinstance(statements, list) else [statements]:
        for element in ("Principal", "NotPrincipal"):
            value = statement.get(element)
            values = value.values() if isinstance(value, dict) else [value] if value else []
            for v in values:
                named.extend(v if isinstance(v, list) else [v])
    return [p for p in named if isinstance(p, str)]


def check_key_policy(backend: KmsBackend, policy: str | None) -> None:
    if not policy:
        return
    try:
        document = json.loads(policy)
    except ValueError:
        return  # moto's own answer stands
    if any(foreign_partition(p, backend.partition) for p in principals(document)):
        raise MalformedPolicyDocumentException()


def put_key_policy(self: KmsBackend, key_id: str, policy: str) -> None:
    check_key_policy(self, policy)
    _original_put_key_policy(self, key_id, policy)


def create_key(self: KmsBackend, policy: str | None, *args: Any, **kwargs: Any) -> Any:
    check_key_policy(self, policy)
    return _original_create_key(self, policy, *args, **kwargs)


def install() -> None:
    IAMPolicyDocumentValidator._validate_resource_format = validate_resource_format
    KmsBackend.put_key_policy = put_key_policy
    KmsBackend.create_key = create_key
