"""Helpers the end-to-end tests share: start a workflow and follow it to its end."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field


@dataclass
class Run:
    name: str
    status: str
    output: dict | None
    error: str | None
    cause: str | None
    states: list[str] = field(default_factory=list)


def state_machine_arn(sfn, name: str) -> str:
    for machine in sfn.list_state_machines()["stateMachines"]:
        if machine["name"] == name:
            return machine["stateMachineArn"]
    raise AssertionError(f"no state machine named {name}")


def entered_states(sfn, execution_arn: str) -> list[str]:
    events = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
    return [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]


def start(sfn, machine: str, payload: dict, prefix: str = "e2e") -> tuple[str, str]:
    """Starts a run; answers its name and execution ARN."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    started = sfn.start_execution(stateMachineArn=state_machine_arn(sfn, machine), name=name, input=json.dumps(payload))
    return name, started["executionArn"]


def finish(sfn, name: str, execution_arn: str, timeout: float = 180) -> Run:
    """Follows a started run to its end."""
    deadline = time.monotonic() + timeout
    while True:
        described = sfn.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING":
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} still running after {timeout} s: {entered_states(sfn, execution_arn)}")
        time.sleep(0.25)
    output = described.get("output")
    return Run(
        name=name,
        status=described["status"],
        output=json.loads(output) if output else None,
        error=described.get("error"),
        cause=described.get("cause"),
        states=entered_states(sfn, execution_arn),
    )


def run(sfn, machine: str, payload: dict, timeout: float = 180, prefix: str = "e2e") -> Run:
    name, execution_arn = start(sfn, machine, payload, prefix)
    return finish(sfn, name, execution_arn, timeout)


def fire(stack) -> None:
    """The trigger's schedule comes round: EventBridge invokes it (asynchronously, as on AWS)."""
    stack.control("fire-schedule", {"rule": "trigger-Sweep"})


def wait_for(check, timeout: float = 30.0, what: str = "condition"):
    """Polls `check` until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def tagged(ec2, execution: str) -> dict[str, list[str]]:
    """Everything in the account that carries the execution's tag and still exists."""
    tag = [{"Name": "tag:amiflow:execution", "Values": [execution]}]
    instances = [
        i["InstanceId"]
        for r in ec2.describe_instances(Filters=tag)["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] not in ("terminated", "shutting-down")
    ]
    images = [i["ImageId"] for i in ec2.describe_images(Owners=["self"], Filters=tag)["Images"]]
    snapshots = [s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=tag)["Snapshots"]]
    return {"instances": instances, "images": images, "snapshots": snapshots}


def instance(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def message(result: Run) -> str:
    """A failed run's cause is the function's error as Lambda reports it: {errorType, errorMessage}."""
    cause = json.loads(result.cause)
    assert cause["errorType"] == result.error
    return cause["errorMessage"]


def new_environments(stack, *functions: str) -> None:
    """An UpdateFunctionConfiguration of each function (its Timeout as it is): their next
    invocations run in new execution environments, with nothing kept from earlier runs, such as
    a role's credentials, which a warm function uses again until they are near their expiry."""
    lambda_ = stack.client("lambda")
    for function in functions:
        timeout = lambda_.get_function_configuration(FunctionName=function)["Timeout"]
        lambda_.update_function_configuration(FunctionName=function, Timeout=timeout)


def log_files(stack, binary: str) -> list:
    """A function's log of each execution environment it had: <binary>.log, <binary>-2.log, …"""
    return [p for p in stack.log_dir.glob(f"{binary}*.log")
            if p.stem == binary or (p.stem.startswith(f"{binary}-") and p.stem[len(binary) + 1:].isdigit())]


def log_records(stack, binary: str, since: dict | None = None) -> list[dict]:
    """A function's JSON log records (Lambda's JSON log format), of every execution environment
    it had; with `since` (lines per log file, from `log_lines`), only those written after it."""
    since = since or {}
    return [json.loads(line) for log in log_files(stack, binary)
            for line in log.read_text().splitlines()[since.get(log, 0):] if line.startswith("{")]


def log_lines(stack, binary: str) -> dict:
    """How many lines each of a function's logs has now, for `log_records(since=…)`."""
    return {log: len(log.read_text().splitlines()) for log in log_files(stack, binary)}
