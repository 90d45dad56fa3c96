"""`make bench`, P4 on paper: how many migrations an account sustains under EC2's API throttling,
and whether the state machines' retries carry a burst of 1,000 runs through it.

EC2 throttles each API action per account and Region with a token bucket: a request takes a
token, a bucket refills at a set rate up to its capacity, and a request that finds it empty fails
with RequestLimitExceeded. RunInstances, StartInstances, StopInstances and TerminateInstances also
draw on a resource bucket, one token per instance. The figures below are those of "Request
throttling for the Amazon EC2 API"
(https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html): its category table,
its uncategorized actions and its resource buckets.

A Step Functions retrier with `JitterStrategy: FULL` waits a random time between 0 and
min(IntervalSeconds * BackoffRate^(n-1), MaxDelaySeconds) before retry n, up to MaxAttempts
retries (https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html).

The model (pure; `simulate` is seeded):
- every call of a burst arrives at once at one action's bucket, full at the start: the worst case,
  as if every run's AMI became available in the same second;
- a throttled call is retried only by the state machine's `transient` retrier. The SDK's own
  retries (up to 3 more attempts within a few seconds) are left out, so the window is a lower
  bound;
- a throttled request takes no token; amiflow has the account's buckets to itself.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

POLICIES = Path(__file__).resolve().parent.parent / "statemachine" / "src" / "policies.yaml"

# (capacity, refill per second), by category.
NON_MUTATING = (100, 20)
# DescribeInstances and the others below, asked without a filter or pagination. A request by id
# is counted here: neither a filter nor pagination, so the smaller bucket, to be safe.
UNFILTERED = (50, 10)
UNFILTERED_ACTIONS = {"DescribeInstances", "DescribeInstanceStatus", "DescribeNetworkInterfaces",
                      "DescribeSecurityGroups", "DescribeSnapshots", "DescribeSpotInstanceRequests",
                      "DescribeVolumes"}
MUTATING = (50, 5)
# Actions with buckets of their own, of those amiflow's functions may call.
UNCATEGORIZED = {
    "CopyImage": (100, 1),
    "CreateTags": (100, 10),
    "DeleteSnapshot": (100, 5),
    "DeleteTags": (100, 10),
    "DeregisterImage": (100, 5),
    "ModifyImageAttribute": (100, 5),
    "ModifySnapshotAttribute": (100, 5),
    "RunInstances": (5, 2),
    "StartInstances": (5, 2),
    "TerminateInstances": (100, 5),
}
# One token per instance.
RESOURCE = {
    "RunInstances": (1000, 2),
    "StartInstances": (1000, 2),
    "StopInstances": (1000, 20),
    "TerminateInstances": (1000, 20),
}


def request_bucket(action: str) -> tuple[int, float]:
    """The request bucket of an EC2 action (its name without `ec2:`)."""
    if action in UNCATEGORIZED:
        return UNCATEGORIZED[action]
    if action in UNFILTERED_ACTIONS:
        return UNFILTERED
    if action.startswith(("Describe", "List", "Search", "Get")):
        return NON_MUTATING
    return MUTATING


@dataclass(frozen=True)
class Retrier:
    interval: float
    backoff: float
    attempts: int
    max_delay: float | None

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry `retry` (1-based)."""
        wait = self.interval * self.backoff ** (retry - 1)
        return min(wait, self.max_delay) if self.max_delay else wait

    def window(self) -> float:
        """The longest time from the first attempt to the last."""
        return sum(self.ceiling(n) for n in range(1, self.attempts + 1))


def transient_retrier(path: Path = POLICIES) -> Retrier:
    """The state machines' retrier for Throttled and ServiceUnavailable."""
    policy = yaml.safe_load(path.read_text())["retry"]["transient"]
    if policy.get("JitterStrategy") != "FULL":
        raise ValueError("the model assumes JitterStrategy FULL")
    return Retrier(policy["IntervalSeconds"], policy["BackoffRate"], policy["MaxAttempts"], policy.get("MaxDelaySeconds"))


def sustained(calls_per_run: dict[str, float], instances_per_run: int = 1) -> list[dict]:
    """For each EC2 action a run calls, the runs per hour its buckets' refill allows, fewest first."""
    rows = []
    for action, calls in calls_per_run.items():
        capacity, refill = request_bucket(action)
        per_hour = 3600 * refill / calls
        bucket = f"{capacity} / {refill:g} per s"
        if action in RESOURCE:
            r_capacity, r_refill = RESOURCE[action]
            per_hour = min(per_hour, 3600 * r_refill / instances_per_run)
            bucket += f"; instances {r_capacity} / {r_refill:g} per s"
        rows.append({"action": action, "calls": calls, "bucket": bucket, "capacity": capacity, "refill": refill,
                     "per_hour": per_hour})
    return sorted(rows, key=lambda r: (r["per_hour"], r["action"]))


@dataclass(frozen=True)
class Outcome:
    calls: int
    exhausted: int  # calls that ran out of retries: their runs fail and roll back
    last_served: float  # seconds from the burst to the last call that got a token
    retries: int


def simulate(calls: int, capacity: float, refill: float, retrier: Retrier, seed: int) -> Outcome:
    """`calls` requests at once at one bucket, each retried by `retrier` with full jitter."""
    rng = random.Random(seed)
    tokens, clock = float(capacity), 0.0
    pending = [(0.0, n, 0) for n in range(calls)]
    heapq.heapify(pending)
    exhausted = retries = 0
    last = 0.0
    while pending:
        at, n, retried = heapq.heappop(pending)
        tokens, clock = min(capacity, tokens + refill * (at - clock)), at
        if tokens >= 1:
            tokens -= 1
            last = at
        elif retried == retrier.attempts:
            exhausted += 1
        else:
            retries += 1
            heapq.heappush(pending, (at + rng.uniform(0, retrier.ceiling(retried + 1)), n, retried + 1))
    return Outcome(calls, exhausted, last, retries)


def burst(runs: int, calls_per_run: dict[str, float], retrier: Retrier, seeds: int = 10) -> list[dict]:
    """Each action whose bucket a burst of `runs` overflows: the time its refill needs for them,
    and the simulated worst over `seeds` seeds."""
    rows = []
    for action, per_run in calls_per_run.items():
        calls = round(runs * per_run)
        capacity, refill = request_bucket(action)
        if action in RESOURCE:  # the tighter of the two, at one instance per call
            capacity, refill = min((capacity, refill), RESOURCE[action], key=lambda b: (b[1], b[0]))
        if calls <= capacity:
            continue
        outcomes = [simulate(calls, capacity, refill, retrier, seed) for seed in range(seeds)]
        rows.append({
            "action": action, "calls": calls, "capacity": capacity, "refill": refill,
            "drain": (calls - capacity) / refill,
            "exhausted": max(o.exhausted for o in outcomes),
            "last_served": max(o.last_served for o in outcomes),
            "retries_per_call": sum(o.retries for o in outcomes) / (len(outcomes) * calls),
        })
    return sorted(rows, key=lambda r: -r["drain"])
