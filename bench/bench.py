"""`make bench`: what a migration costs and how soon it reacts, measured on the local stack.

P2, flat cost per run. A migration waits for its AMI by an EventBridge event (the AMI State
Change), not by polling, so its count of state transitions, Lambda invocations and AWS calls
should not grow with the time the AMI takes. One migration whose AMI stays pending for 1 s and
one for 60 s are counted from the execution history and the stack's own counters, and set beside
a polling design (a Wait of 15 s, a Describe task and a Choice, per loop) over the same 60 s and
over an hour. Prices: Step Functions standard workflows, $0.025 per 1,000 state transitions
(us-east-1, https://aws.amazon.com/step-functions/pricing/); Lambda, $0.20 per million requests
(https://aws.amazon.com/lambda/pricing/); duration is left out (a handler's time here is not
Lambda's).

P1, cold start: bench/coldstart.py; the first invocation over TLS under a CPU cap, with and
without the warm-up: bench/firstcall.py.

P3, reaction time. From the moment the AMI's `available` event is put on the bus to the moment
the run enters its Launch state (whose task then calls RunInstances), over 20 migrations.

P4, a hundred at once: bench/fleet.py; on paper, what one account sustains and a burst of 1,000:
bench/throttle.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "local"))

from amiflow_local.harness import RunningStack, Stack  # noqa: E402
from amiflow_local.seed import seed  # noqa: E402
from amiflow_local.server import cargo_target_dir  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import coldstart  # noqa: E402
import firstcall  # noqa: E402
import fleet  # noqa: E402
import throttle  # noqa: E402
from amiflow_local.template import Template  # noqa: E402

REGION = "us-east-1"
TRANSITION_PRICE = 0.025 / 1000
REQUEST_PRICE = 0.20 / 1_000_000
POLL_SECONDS = 15
REACTION_RUNS = 20


def history(sfn, arn: str) -> list[dict]:
    events, token = [], None
    while True:
        page = sfn.get_execution_history(executionArn=arn, maxResults=1000, **({"nextToken": token} if token else {}))
        events += page["events"]
        token = page.get("nextToken")
        if not token:
            return events


def run_migration(stack: Stack, image_seconds: int, before_start=lambda: None) -> tuple[list[dict], float]:
    """One MigrateInstance run of a new instance, its AMI pending this long, followed to success:
    its history, and its wall time. `before_start` runs just before the run is started."""
    ec2, sfn = stack.client("ec2"), stack.client("stepfunctions")
    world = seed(ec2, REGION, name=f"bench-{uuid.uuid4().hex[:6]}")
    stack.control("config", {"imageDelaySeconds": image_seconds, "statusCheckDelaySeconds": 1})
    before_start()
    machine = next(m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"] if m["name"] == "MigrateInstance")
    started = time.monotonic()
    arn = sfn.start_execution(stateMachineArn=machine, name=f"bench-{uuid.uuid4().hex[:12]}",
                              input=json.dumps({"instanceId": world.instance_id, "targetAvailabilityZone": f"{REGION}b"}))["executionArn"]
    while (status := sfn.describe_execution(executionArn=arn)["status"]) == "RUNNING":
        if time.monotonic() - started > image_seconds + 300:
            raise RuntimeError(f"the migration with a {image_seconds} s AMI did not end")
        time.sleep(0.25)
    if status != "SUCCEEDED":
        raise RuntimeError(f"the migration with a {image_seconds} s AMI ended {status}")
    return history(sfn, arn), time.monotonic() - started


def migrate(stack: Stack, image_seconds: int) -> dict:
    """One migration whose AMI stays pending this long; what it cost."""
    def forget_counts() -> None:
        stack.control("calls", method="DELETE")
        stack.control("invocations", method="DELETE")

    events, wall = run_migration(stack, image_seconds, forget_counts)
    time.sleep(1)  # the last event-driven invocations (a status change) land
    invocations, calls = stack.control("invocations"), stack.control("calls")
    return {
        "image_seconds": image_seconds,
        "wall_seconds": wall,
        "transitions": sum(1 for e in events if e["type"].endswith("StateEntered")),
        "invocations": sum(invocations.values()),
        "calls": sum(c["count"] for c in calls if c["principal"].startswith("function:")),
        # What the event-driven wait itself costs (wait-image registering, then woken by the event).
        "wait_invocations": invocations.get("wait-image", 0),
        "wait_calls": sum(c["count"] for c in calls if c["principal"] == "function:wait-image"),
        # The run's EC2 calls by action, for P4 on paper.
        "ec2_calls": ec2_calls(calls),
    }


def ec2_calls(calls: list[dict]) -> dict[str, int]:
    by_action: dict[str, int] = {}
    for call in calls:
        if call["principal"].startswith("function:") and call["action"].startswith("ec2:"):
            action = call["action"].removeprefix("ec2:")
            by_action[action] = by_action.get(action, 0) + call["count"]
    return by_action


def reaction(stack: Stack) -> float:
    """One migration with a 1 s AMI: seconds from its AMI's available event to Launch."""
    events, _ = run_migration(stack, 1)
    image_id = json.loads(next(e for e in events if e.get("stateExitedEventDetails", {}).get("name") == "CreateImage")
                          ["stateExitedEventDetails"]["output"])["image"]["imageId"]
    launch = next(e["timestamp"] for e in events if e.get("stateEnteredEventDetails", {}).get("name") == "Launch")
    available = next(d["at"] for d in stack.control("events")
                     if d["event"]["detail"].get("ImageId") == image_id and d["event"]["detail"].get("State") == "available")
    return launch.timestamp() - available


def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * p // 100) - 1)]


def polling(base: dict, wait_seconds: int) -> dict:
    """The same run with its AMI wait (one state, wait-image's invocations and calls) replaced by
    a loop of Wait, Describe and Choice, one DescribeImages a loop, on paper."""
    loops = -(-wait_seconds // POLL_SECONDS)
    return {
        "transitions": base["transitions"] - 1 + 3 * loops,
        "invocations": base["invocations"] - base["wait_invocations"] + loops,
        "calls": base["calls"] - base["wait_calls"] + loops,
    }


def cost(row: dict) -> float:
    return row["transitions"] * TRANSITION_PRICE + row["invocations"] * REQUEST_PRICE


BURST = 1000
# Measured once, not by each `make bench`: release builds take 8 to 20 minutes here.
RELEASE_PROFILE = Path(__file__).resolve().parent / "release-profile.md"


def paper(calls: dict[str, int]) -> tuple[list[str], list[dict]]:
    """P4 on paper (bench/throttle.py): what one account sustains, and a burst of 1,000."""
    rows = throttle.sustained(calls)
    retrier = throttle.transient_retrier()
    burst = throttle.burst(BURST, calls, retrier)
    lines = [
        "### On paper: what one account sustains",
        "",
        "bench/throttle.py, from the EC2 calls of the 1 s migration above (every function's, by action) and EC2's "
        "token buckets (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html); a call by id to "
        "DescribeInstances, DescribeVolumes or DescribeSnapshots counts in the smaller bucket of unfiltered calls. "
        "Runs per hour is what each action's refill allows, with amiflow alone in the account and Region.",
        "",
        "| EC2 action | calls per run | bucket (capacity / refill) | runs per hour |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {r['action']} | {r['calls']} | {r['bucket']} | {r['per_hour']:,.0f} |" for r in rows]
    lines += [
        "",
        f"One account sustains about {rows[0]['per_hour']:,.0f} migrations an hour, set by {rows[0]['action']}.",
        "",
        f"### On paper: a burst of {BURST:,}",
        "",
        f"{BURST:,} runs' calls to one action at the same moment (as if every AMI became available in the same "
        f"second), each throttled call retried only by the state machines' `transient` retrier (IntervalSeconds "
        f"{retrier.interval:g}, BackoffRate {retrier.backoff:g}, MaxAttempts {retrier.attempts}, MaxDelaySeconds "
        f"{retrier.max_delay:g}, full jitter: {retrier.window():,.0f} s at most); the SDK's own retries are left out. "
        "Worst of 10 seeds, for each action whose bucket the burst overflows:",
        "",
        "| EC2 action | calls | bucket (capacity / refill) | the refill needs | last served | ran out of retries | retries per call |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r['action']} | {r['calls']:,} | {r['capacity']} / {r['refill']:g} per s | {r['drain']:.0f} s | "
              f"{r['last_served']:.0f} s | {r['exhausted']} | {r['retries_per_call']:.1f} |" for r in burst]
    lines.append("")
    return lines, burst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table to this Markdown file")
    args = parser.parse_args()
    cold = coldstart.measure(cargo_target_dir() / "release")
    multi = coldstart.measure_multicall(cargo_target_dir() / "release", cold)
    # The template's own wait for the AMI event (30 min), not the short one the tests use.
    with tempfile.TemporaryDirectory(prefix="amiflow-bench-") as logs, \
            RunningStack(Path(logs), parameters={"EventWaitSeconds": "1800"}) as running:
        stack = Stack(running.endpoint, Path(logs))
        wait_image = next(f for f in Template(ROOT, "123456789012", REGION).functions() if f.binary == firstcall.FUNCTION)
        first = firstcall.measure(cargo_target_dir() / "release", running.port,
                                  {"PATH": os.environ.get("PATH", ""), "AWS_REGION": REGION, **wait_image.runtime_environment},
                                  Path(logs))
        rows = [migrate(stack, 1), migrate(stack, 60)]
        reactions = [reaction(stack) for _ in range(REACTION_RUNS)]
        many = fleet.measure(stack)
    short, long = rows
    machine = (f"on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
               f"{platform.release()}), {time.strftime('%Y-%m-%d')}")
    lines = [
        "## P1: cold start",
        "",
        f"`make bench` (bench/coldstart.py), {machine}: release binaries (`cargo build --release`), each started "
        f"{coldstart.STARTS} times against a runtime API that notes the first request for an event; a Python "
        "handler building the same boto3 clients in the same run (no CPU cap).",
        "",
        coldstart.table(cold),
        "",
        "### One binary per function, or one multi-call binary",
        "",
        f"Same run: the binaries above beside `{coldstart.MULTICALL}` (functions/multicall), every function in "
        f"one binary that runs the one `AMIFLOW_FUNCTION` names, started {coldstart.STARTS} times as each function.",
        "",
        coldstart.multicall_table(multi),
        "",
        "### The first invocation over TLS, under a CPU cap like Lambda's",
        "",
        f"`make bench` (bench/firstcall.py), same machine and run: the release `{firstcall.FUNCTION}` started "
        f"{firstcall.STARTS} times per row, woken by an AMI event, its one call (a DynamoDB Query) made over TLS to "
        "the local stack (a proxy with a test CA, RSA 2048), the process in a cgroup whose CPU quota is the memory's "
        f"share of one CPU (Lambda: one vCPU at {firstcall.ONE_VCPU_MB} MB). With the warm-up, init makes the same "
        "kind of call (AMIFLOW_WARM_UP), so that the first invocation finds its connection open.",
        "",
        firstcall.table(first),
        "",
        "## P2: flat cost per run",
        "",
        f"`make bench` (bench/{Path(__file__).name}), {machine}. One MigrateInstance run each, "
        "on the local stack; the polling rows are worked out from the measured run (a Wait of 15 s, a Describe "
        "task and a Choice per loop, in place of the one wait state and wait-image's work), not run. The invocations "
        "and calls are every function's during the run, the trigger's answers to the run's tag changes included.",
        "",
        "| design | AMI pending | state transitions | Lambda invocations | AWS calls by the functions | $ per 1,000 runs | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(f"| amiflow (AMI event) | {row['image_seconds']} s | {row['transitions']} | {row['invocations']} | "
                     f"{row['calls']} | {1000 * cost(row):.2f} | {row['wall_seconds']:.1f} s |")
    for seconds, label in ((60, "60 s"), (3600, "1 h")):
        row = polling(short, seconds)
        lines.append(f"| polling every 15 s | {label} | {row['transitions']} | {row['invocations']} | {row['calls']} | "
                     f"{1000 * cost(row):.2f} | |")
    same = all(short[k] == long[k] for k in ("transitions", "invocations", "calls"))
    p50, p99 = percentile(reactions, 50), percentile(reactions, 99)
    lines += [
        "", f"Same count for a 1 s and a 60 s AMI: {'yes' if same else 'no'}.", "",
        "## P3: reaction time",
        "",
        f"From the AMI's `available` event on the bus to the run entering Launch, over {len(reactions)} migrations "
        "run one after another (AMI pending 1 s), same machine and run as above.",
        "",
        "| p50 | p99 (nearest rank) | min | max |",
        "| --- | --- | --- | --- |",
        f"| {1000 * p50:.0f} ms | {1000 * p99:.0f} ms | {1000 * min(reactions):.0f} ms | {1000 * max(reactions):.0f} ms |",
        "",
        "## P4: a hundred at once",
        "",
        f"`make bench` (bench/fleet.py), same machine and run: {many['runs']} MigrateInstance runs started together, each "
        f"moving its own instance and keeping its image, with {100 * many['share']:.0f}% of the calls to "
        f"{', '.join(fleet.MUTATING)} answered RequestLimitExceeded (the stack's throttle fault). Duplicates are "
        "images and instances beyond one per run, found by their `amiflow:execution` tag. The local stack runs two "
        "execution environments per function (Lambda would run up to a hundred), so invocations queue for them: "
        "the wall time is the stack's, not Lambda's.",
        "",
        fleet.table(many),
        "",
    ]
    on_paper, burst = paper(short["ec2_calls"])
    lines += on_paper
    p4 = many["succeeded"] == many["runs"] and many["duplicate_images"] == many["duplicate_instances"] == 0 \
        and many["extra_transitions"] <= 2
    functions = [row for row in cold if row["size"]]
    worst_ratio = max(row["ratio"] for row in functions)
    worst_rss = max(row["rss"] for row in functions) * 1024 / 10**6
    worst_zip = max(row["zip"] for row in functions) / 10**6
    exhausted = sum(row["exhausted"] for row in burst)
    goals = [
        ("P1: init at most 1/10 of boto3's", f"{worst_ratio:.2f} of it at most", worst_ratio <= 0.1),
        ("P1: peak RSS at most 25 MB", f"{worst_rss:.1f} MB at most", worst_rss <= 25),
        ("P1: zip at most 4 MB", f"{worst_zip:.2f} MB at most", worst_zip <= 4),
        ("P2: the same count for a 1 s and a 60 s AMI", "same" if same else "different", same),
        ("P3: p99 at most 1 s", f"{1000 * p99:.0f} ms", p99 <= 1.0),
        ("P4: 100 successes, no duplicates, at most 2 extra transitions per run",
         f"{many['succeeded']} succeeded, {many['duplicate_images'] + many['duplicate_instances']} duplicates, "
         f"{many['extra_transitions']:.2f} extra", p4),
        (f"P4: a burst of {BURST:,} inside the retries", f"{exhausted} calls out of retries", exhausted == 0),
    ]
    lines += ["## Goals", "", "| goal | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {goal} | {measured} | {'yes' if met else 'no'} |" for goal, measured, met in goals]
    lines += ["", RELEASE_PROFILE.read_text().rstrip(), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Benchmarks\n\nFigures measured by `make bench`; each section says how.\n\n" + text)
    return 0 if all(met for _, _, met in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
