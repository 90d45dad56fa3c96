"""Least privilege, checked: every IAM statement of template.yaml and target-account.yaml. (The
key-policy statements grant-kms writes are checked in its Rust unit tests: a `*` principal always
carries an organization condition.)"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import yaml

from amiflow_local.template import _CfnLoader

ROOT = Path(__file__).resolve().parents[2]

# Actions that may have Resource "*": read-only calls, and calls whose API has no resource-level
# permissions (a task token is not an ARN).
# Account-level actions with no resource type in the Service Authorization Reference.
STAR_RESOURCE_ALLOWED = ["ec2:Describe*", "states:SendTaskSuccess", "states:SendTaskFailure",
                         "ec2:GetImageBlockPublicAccessState", "ec2:GetSnapshotBlockPublicAccessState",
                         "autoscaling:DescribeAutoScalingInstances", "elasticloadbalancing:DescribeTargetGroups",
                         "elasticloadbalancing:DescribeTargetHealth"]
# Actions that end or remove something: they need a condition that limits them to what amiflow
# should touch.
DESTRUCTIVE = ["ec2:TerminateInstances", "ec2:StopInstances", "ec2:DeregisterImage", "ec2:DeleteSnapshot",
               "ec2:CancelCapacityReservation"]


def statements():
    """(template, resource, statement) for every IAM statement of both templates."""
    for name in ("template.yaml", "target-account.yaml"):
        doc = yaml.load((ROOT / name).read_text(), Loader=_CfnLoader)
        for logical_id, resource in doc["Resources"].items():
            props = resource.get("Properties", {})
            documents = []
            for policy in props.get("Policies", []) or []:
                if isinstance(policy, dict) and "Statement" in policy:
                    documents.append(policy)
                elif isinstance(policy, dict) and "PolicyDocument" in policy:
                    documents.append(policy["PolicyDocument"])
            for document in documents:
                for statement in document["Statement"]:
                    yield name, logical_id, statement


def as_list(value):
    return value if isinstance(value, list) else [value]


ALL = list(statements())


def test_there_are_statements_to_check():
    assert len(ALL) > 25


@pytest.mark.parametrize("where, resource, statement", ALL, ids=[f"{w}:{r}:{s.get('Sid', '')}" for w, r, s in ALL])
def test_statement_is_least_privilege(where, resource, statement):
    actions = as_list(statement["Action"])
    assert all("*" not in a.split(":", 1)[1] or a.startswith("ec2:Describe") for a in actions if a != "*"), f"wildcard action in {actions}"
    assert "*" not in actions, "a '*' action"
    if statement.get("Effect") != "Allow":
        return
    if "*" in as_list(statement.get("Resource")):
        for action in actions:
            assert any(fnmatch.fnmatchcase(action, allowed) for allowed in STAR_RESOURCE_ALLOWED), (
                f"{action} on Resource '*' although its API takes resource-level permissions"
            )
    for action in actions:
        if action in DESTRUCTIVE:
            assert statement.get("Condition"), f"{action} without a condition limiting it to amiflow's resources"


def test_the_rules_catch_what_they_are_for():
    """The checks above must fail on the statements they forbid."""
    bad = [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Allow", "Action": "ec2:*", "Resource": "*"},
        {"Effect": "Allow", "Action": "ec2:CreateImage", "Resource": "*"},
        {"Effect": "Allow", "Action": "ec2:TerminateInstances", "Resource": "arn:aws:ec2:*:*:instance/*"},
    ]
    for statement in bad:
        with pytest.raises(AssertionError):
            test_statement_is_least_privilege("x", "y", statement)
