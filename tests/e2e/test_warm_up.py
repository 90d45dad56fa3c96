"""The warm-up, end to end under IAM as AWS enforces it: every new execution environment of a
function that has one makes its call during init (before any invocation), as its own role, and
the role allows it."""

from __future__ import annotations

from pathlib import Path

from amiflow_local.template import Template

from workflow import log_lines, log_records, new_environments, wait_for

ROOT = Path(__file__).resolve().parents[2]
WARM_UPS = {f.binary: f.environment["AMIFLOW_WARM_UP"]
            for f in Template(ROOT, "123456789012", "us-east-1").functions() if f.environment.get("AMIFLOW_WARM_UP")}


def said(records: list[dict], message: str) -> list[dict]:
    return [r for r in records if r["fields"].get("message") == message]


def test_a_new_environment_warms_its_connection_with_a_call_its_role_allows(stack):
    assert WARM_UPS, "template.yaml names no warm-up"
    # One function at a time: the warm-up gives up after 2 s, which a loaded local stack can
    # take when every environment starts at once (an AWS endpoint answers in a fraction of it).
    # Only the new environment's records count: an earlier test may have run the function under
    # a role stripped of its warm-up's permission (test_iam_enforced.py).
    for binary, action in WARM_UPS.items():
        seen = log_lines(stack, binary)
        new_environments(stack, binary)
        records = lambda: log_records(stack, binary, since=seen)  # noqa: E731
        wait_for(lambda: said(records(), "connection warmed"), what=f"{binary} warmed", timeout=60)
        assert {r["fields"]["warm_up"] for r in said(records(), "connection warmed")} == {action}, binary
        refused = [r for r in said(records(), "warm-up call failed; the first call opens the connection")
                   if not r["fields"]["error"].startswith("no answer within")]
        assert refused == [], f"{binary}: {refused[:1]}"
