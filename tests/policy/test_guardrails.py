"""guardrails/guardrails.yaml, evaluated: its service control policy and its permission-boundary
variant let only the named principals set or remove amiflow:* tags, and leave every other tag
alone. The decisions come from the same IAM simulator the local stack judges calls with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from amiflow_local.layer import iam
from amiflow_local.template import _CfnLoader

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
OPERATOR = f"arn:aws:iam::{ACCOUNT}:role/ops-admin"
AMIFLOW = f"arn:aws:iam::{ACCOUNT}:role/amiflow-TriggerFunctionRole-ABC123"
DEVELOPER = f"arn:aws:iam::{ACCOUNT}:role/developer"
INSTANCE = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0123456789abcdef0"
# What AWS attaches to every root, OU and account unless replaced.
FULL_ACCESS = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
MAY_TAG = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["ec2:CreateTags", "ec2:DeleteTags"], "Resource": "*"}]}


def resolved(node: Any, taggers: list[str]) -> Any:
    if isinstance(node, dict):
        if node == {"Ref": "TaggerPrincipalArns"}:
            return taggers
        return {k: resolved(v, taggers) for k, v in node.items()}
    if isinstance(node, list):
        return [resolved(v, taggers) for v in node]
    return node


@pytest.fixture(scope="module")
def policies() -> dict[str, Any]:
    doc = yaml.load((ROOT / "guardrails" / "guardrails.yaml").read_text(), Loader=_CfnLoader)
    resources = resolved(doc["Resources"], [OPERATOR, AMIFLOW])
    return {
        "scp": resources["AmiflowTagsServiceControlPolicy"]["Properties"]["Content"],
        "boundary": resources["AmiflowTagsPermissionBoundary"]["Properties"]["PolicyDocument"],
    }


@pytest.fixture(scope="module")
def judge():
    judge = iam.Judge(iam.node_binary())
    yield judge
    judge.stop()


def decide(judge, policies, variant: str, role: str, action: str, keys: list[str] | None) -> str:
    session = role.replace(":iam::", ":sts::").replace(":role/", ":assumed-role/") + "/s"
    context: dict[str, Any] = {"aws:PrincipalArn": role}
    if keys is not None:
        context["aws:TagKeys"] = keys
    simulation: dict[str, Any] = {
        "request": {"principal": session, "action": action,
                    "resource": {"resource": INSTANCE, "accountId": ACCOUNT}, "contextVariables": context},
        "identityPolicies": [{"name": "may-tag", "policy": MAY_TAG}],
        "serviceControlPolicies": [],
        "resourceControlPolicies": [],
    }
    if variant == "scp":
        simulation["serviceControlPolicies"] = [
            {"orgIdentifier": "r-root", "policies": [{"name": "FullAWSAccess", "policy": FULL_ACCESS}]},
            {"orgIdentifier": ACCOUNT, "policies": [{"name": "FullAWSAccess", "policy": FULL_ACCESS},
                                                    {"name": "amiflow-tags", "policy": policies["scp"]}]},
        ]
    elif role not in (OPERATOR, AMIFLOW):
        # The boundary goes on the identities that are not taggers.
        simulation["permissionBoundaryPolicies"] = [{"name": "amiflow-tags", "policy": policies["boundary"]}]
    (result,) = judge.decide([simulation])
    assert result["decision"] != "Invalid", result["detail"]
    return result["decision"]


@pytest.mark.parametrize("variant", ["scp", "boundary"])
@pytest.mark.parametrize("role, action, keys, expected", [
    (DEVELOPER, "ec2:CreateTags", ["amiflow:share-with"], "ExplicitlyDenied"),
    (DEVELOPER, "ec2:CreateTags", ["team", "amiflow:migrate-to"], "ExplicitlyDenied"),
    (DEVELOPER, "ec2:DeleteTags", ["amiflow:status"], "ExplicitlyDenied"),
    (DEVELOPER, "ec2:DeleteTags", None, "ExplicitlyDenied"),
    (DEVELOPER, "ec2:CreateTags", ["team"], "Allowed"),
    (DEVELOPER, "ec2:DeleteTags", ["team"], "Allowed"),
    (OPERATOR, "ec2:CreateTags", ["amiflow:share-with"], "Allowed"),
    (OPERATOR, "ec2:DeleteTags", None, "Allowed"),
    (AMIFLOW, "ec2:CreateTags", ["amiflow:status"], "Allowed"),
])
def test_only_the_named_principals_set_or_remove_amiflow_tags(judge, policies, variant, role, action, keys, expected):
    assert decide(judge, policies, variant, role, action, keys) == expected
