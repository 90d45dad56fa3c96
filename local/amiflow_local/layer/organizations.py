"""The organization map, and the policy conditions that refer to it.

AWS: `aws:PrincipalOrgID` is the organization of the calling principal's account and
`aws:PrincipalOrgPaths` its path of organizational units, e.g. `o-a1b2c3/r-ab12/ou-ab12-11111111/`
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html).
"""

from __future__ import annotations

import fnmatch
from typing import Any

from .state import config


def _values(v: Any) -> list[str]:
    return [v] if isinstance(v, str) else list(v or [])


def condition_allows(condition: dict[str, Any], account: str) -> bool:
    """Evaluates the organization conditions of a statement for a principal of `account`. Any
    other condition key is treated as not satisfied, so that nothing is allowed by accident."""
    if not condition:
        return True
    org = config.org_of(account)
    path = config.ou_path_of(account)
    for operator, keys in condition.items():
        for key, wanted in keys.items():
            wanted = _values(wanted)
            lowered = key.lower()
            if lowered == "aws:principalorgid":
                actual = [org] if org else []
            elif lowered == "aws:principalorgpaths":
                actual = [path] if path else []
            elif lowered == "aws:principalaccount":
                actual = [account]
            else:
                return False
            if operator in ("StringEquals", "ForAnyValue:StringEquals"):
                ok = any(a in wanted for a in actual)
            elif operator in ("StringLike", "ForAnyValue:StringLike"):
                ok = any(fnmatch.fnmatchcase(a, w) for a in actual for w in wanted)
            else:
                return False
            if not ok:
                return False
    return True


def in_organization(account: str, organization_arn: str) -> bool:
    org = config.org_of(account)
    return bool(org) and organization_arn.rstrip("/").endswith(f"/{org}")


def in_ou(account: str, ou_arn: str) -> bool:
    """An OU ARN (arn:aws:organizations::MGMT:ou/o-xxx/ou-yyy) covers accounts whose path holds it."""
    path = config.ou_path_of(account)
    ou_id = ou_arn.rstrip("/").split("/")[-1]
    return bool(path) and f"/{ou_id}/" in f"/{path.strip('/')}/"
