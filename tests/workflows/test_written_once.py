"""The state machines are written once: statemachine/src holds each workflow with named retry and
catch policies, and the ASL that SAM deploys is what statemachine/build.py writes from it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "statemachine"))

import build  # noqa: E402


def test_the_asl_in_the_repository_is_what_the_sources_make():
    stale = [p.name for p, text in build.outputs().items() if not p.exists() or p.read_text() != text]
    assert not stale, f"run `make statemachines`: {stale} differ from statemachine/src"


def test_every_asl_file_has_a_source():
    made = {p.name for p in build.outputs()}
    assert made == {p.name for p in (ROOT / "statemachine").glob("*.asl.json")}


def test_a_named_policy_expands_and_an_unknown_one_is_refused():
    known = build.policies()
    states = {"Step": {"Type": "Task", "Retry": ["lambda", {"policy": "transient", "also": ["KeyPolicyBusy"]}], "Catch": "rollback"}}
    build.expand(states, known, "test")
    retry = states["Step"]["Retry"]
    assert retry[0] == known["retry"]["lambda"]
    assert retry[1]["ErrorEquals"] == ["Throttled", "ServiceUnavailable", "KeyPolicyBusy"]
    assert retry[1]["MaxAttempts"] == known["retry"]["transient"]["MaxAttempts"]
    assert states["Step"]["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Rollback"}]
    with pytest.raises(ValueError, match="no retry policy 'lamda'"):
        build.expand({"Step": {"Retry": ["lamda"]}}, known, "test")
    json.dumps(states)
