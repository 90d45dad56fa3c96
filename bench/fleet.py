"""`make bench`, P4: a hundred migrations at once, with a share of the mutating EC2 calls throttled.

Each run moves its own instance (seeded beforehand, as `make demo` seeds one) to another AZ and
keeps its image, so that what each run made can be counted afterwards: one image and one new
instance per run, found by the `amiflow:execution` tag that every resource amiflow makes carries.
The throttle is the local stack's `throttle` fault (RequestLimitExceeded, HTTP 503) on every
mutating EC2 action a migration makes, each call throttled with the given probability. The extra
state transitions are those over a run of the same input on the same stack without the throttle.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from amiflow_local.seed import seed

REGION = "us-east-1"
# The EC2 actions a migration makes that change something.
MUTATING = ["CreateImage", "CreateTags", "RunInstances", "ModifyInstanceAttribute", "AssociateAddress"]


def _transitions(sfn, arn: str) -> int:
    count, token = 0, None
    while True:
        page = sfn.get_execution_history(executionArn=arn, maxResults=1000, **({"nextToken": token} if token else {}))
        count += sum(1 for e in page["events"] if e["type"].endswith("StateEntered"))
        token = page.get("nextToken")
        if not token:
            return count


def _start(sfn, machine: str, instance_id: str) -> tuple[str, str]:
    name = f"fleet-{uuid.uuid4().hex[:12]}"
    arn = sfn.start_execution(stateMachineArn=machine, name=name, input=json.dumps(
        {"instanceId": instance_id, "targetAvailabilityZone": f"{REGION}b", "keepImage": True}))["executionArn"]
    return name, arn


def _follow(sfn, arns: list[str], limit: float) -> dict[str, str]:
    deadline = time.monotonic() + limit
    statuses = {arn: "RUNNING" for arn in arns}
    while any(s == "RUNNING" for s in statuses.values()) and time.monotonic() < deadline:
        for arn in [a for a, s in statuses.items() if s == "RUNNING"]:
            statuses[arn] = sfn.describe_execution(executionArn=arn)["status"]
        time.sleep(1)
    return statuses


def _made(ec2, name: str) -> tuple[int, int]:
    """Images and instances tagged as made by the run."""
    tagged = [{"Name": "tag:amiflow:execution", "Values": [name]}]
    images = ec2.describe_images(Owners=["self"], Filters=tagged)["Images"]
    instances = [i for r in ec2.describe_instances(Filters=tagged)["Reservations"] for i in r["Instances"]
                 if i["State"]["Name"] != "terminated"]
    return len(images), len(instances)


def measure(stack, runs: int = 100, share: float = 0.2, limit: float = 1800) -> dict:
    ec2, sfn = stack.client("ec2"), stack.client("stepfunctions")
    machine = next(m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"] if m["name"] == "MigrateInstance")
    stack.control("config", {"imageDelaySeconds": 1, "statusCheckDelaySeconds": 1})
    worlds = [seed(ec2, REGION, name=f"fleet-{i}-{uuid.uuid4().hex[:4]}") for i in range(runs + 1)]

    # The same run without the throttle: how many transitions a run takes on its own.
    _, alone = _start(sfn, machine, worlds[0].instance_id)
    if _follow(sfn, [alone], 300)[alone] != "SUCCEEDED":
        raise RuntimeError("the unthrottled run did not succeed")
    baseline = _transitions(sfn, alone)

    stack.control("faults", [{"kind": "throttle", "action": action, "share": share} for action in MUTATING])
    stack.control("invocations", method="DELETE")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        named = list(pool.map(lambda w: _start(sfn, machine, w.instance_id), worlds[1:]))
    statuses = _follow(sfn, [arn for _, arn in named], limit)
    wall = time.monotonic() - started
    fired = stack.control("faults")["fired"]
    stack.control("faults", method="DELETE")

    transitions = [_transitions(sfn, arn) for _, arn in named]
    made = [_made(ec2, name) for name, _ in named]
    return {
        "runs": runs,
        "share": share,
        "succeeded": sum(1 for s in statuses.values() if s == "SUCCEEDED"),
        "statuses": {s: sum(1 for v in statuses.values() if v == s) for s in set(statuses.values())},
        "duplicate_images": sum(max(0, images - 1) for images, _ in made),
        "duplicate_instances": sum(max(0, instances - 1) for _, instances in made),
        "missing": sum(1 for images, instances in made if images == 0 or instances == 0),
        "baseline": baseline,
        "extra_transitions": statistics.mean(transitions) - baseline,
        "most_transitions": max(transitions),
        "throttled": sum(1 for f in fired if f.get("kind") == "throttle"),
        "wall": wall,
        "invocations": sum(stack.control("invocations").values()),
    }


def table(result: dict) -> str:
    return "\n".join([
        "| runs | throttled share | succeeded | duplicate images | duplicate instances | calls throttled | "
        "transitions per run (alone) | extra per run (mean) | most | wall time | Lambda invocations |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {result['runs']} | {100 * result['share']:.0f}% | {result['succeeded']} | {result['duplicate_images']} | "
        f"{result['duplicate_instances']} | {result['throttled']} | {result['baseline']} | "
        f"{result['extra_transitions']:.2f} | {result['most_transitions']} | {result['wall']:.0f} s | {result['invocations']} |",
    ])
