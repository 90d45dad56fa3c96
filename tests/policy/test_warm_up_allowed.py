"""Each function's warm-up (AMIFLOW_WARM_UP, the call it makes during init) is a call its own role
allows: a warm-up the role refuses would open the connection but log a refusal at every cold
start, and put AccessDenied in the account's trail. GetCallerIdentity needs no permission
(https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from amiflow_local.template import Template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Template(ROOT, "123456789012", "us-east-1")
WARMED = [f for f in TEMPLATE.functions() if f.environment.get("AMIFLOW_WARM_UP")]
NEEDS_NO_PERMISSION = {"sts:GetCallerIdentity"}


def allowed_actions(function) -> list[str]:
    return [
        action
        for policy in function.policies for statement in policy["Statement"] if statement["Effect"] == "Allow"
        for action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    ]


def test_the_functions_whose_first_call_has_a_harmless_twin_warm_up():
    assert {f.binary for f in WARMED} >= {"create-image", "wait-image", "launch", "verify-instance", "cleanup",
                                          "share-image", "copy-image", "trigger", "preflight"}


@pytest.mark.parametrize("function", WARMED, ids=[f.binary for f in WARMED])
def test_a_warm_up_is_a_call_the_functions_role_allows(function):
    action = function.environment["AMIFLOW_WARM_UP"]
    assert action in NEEDS_NO_PERMISSION or any(fnmatch.fnmatchcase(action, a) for a in allowed_actions(function)), (
        f"{function.binary}'s role does not allow its warm-up {action}")
