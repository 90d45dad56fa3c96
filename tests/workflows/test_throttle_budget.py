"""The state machines' retries for a throttled call are long enough for a burst of 1,000
migrations: EC2's RunInstances bucket (5 requests, refilled at 2 per second) serves 1,000 calls
made at once only after about 500 s, and a run whose retries give up before its turn fails and
rolls back. The model is bench/throttle.py's (make bench prints it for every action a migration
calls)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import throttle  # noqa: E402

BURST = 1000
SEEDS = range(10)


def test_run_instances_has_the_documented_buckets():
    assert throttle.request_bucket("RunInstances") == (5, 2)
    assert throttle.RESOURCE["RunInstances"] == (1000, 2)
    assert throttle.request_bucket("CreateImage") == throttle.MUTATING == (50, 5)
    assert throttle.request_bucket("DescribeImages") == (100, 20)


@pytest.mark.parametrize("action", ["RunInstances", "CreateImage", "AssociateAddress", "ModifyInstanceAttribute"])
def test_a_burst_of_1000_runs_is_served_before_the_transient_retries_give_up(action):
    retrier = throttle.transient_retrier()
    capacity, refill = throttle.request_bucket(action)
    outcomes = [throttle.simulate(BURST, capacity, refill, retrier, seed) for seed in SEEDS]
    assert [o.exhausted for o in outcomes] == [0] * len(outcomes)
    # The bucket's refill, not the retries, sets the pace: the last call is served within twice
    # the time the refill needs.
    assert max(o.last_served for o in outcomes) < 2 * (BURST - capacity) / refill + retrier.ceiling(retrier.attempts)


def test_the_retries_before_this_policy_left_four_runs_in_ten_to_fail():
    # IntervalSeconds 2, BackoffRate 2, MaxAttempts 8, MaxDelaySeconds 120: a window of 366 s at most.
    before = throttle.Retrier(interval=2, backoff=2, attempts=8, max_delay=120)
    assert before.window() == 366
    outcomes = [throttle.simulate(BURST, 5, 2, before, seed) for seed in SEEDS]
    assert min(o.exhausted for o in outcomes) > 350


def test_a_burst_within_the_bucket_is_served_at_once_without_retries():
    outcome = throttle.simulate(50, 50, 5, throttle.transient_retrier(), seed=0)
    assert (outcome.exhausted, outcome.retries, outcome.last_served) == (0, 0, 0.0)


def test_the_binding_action_of_a_migration_is_run_instances():
    calls = {"RunInstances": 1, "CreateImage": 1, "CreateTags": 2, "DescribeImages": 4, "DescribeInstances": 4}
    rows = throttle.sustained(calls)
    assert rows[0]["action"] == "RunInstances" and rows[0]["per_hour"] == 7200
    assert {r["action"]: r["per_hour"] for r in rows}["DescribeInstances"] == 9000
