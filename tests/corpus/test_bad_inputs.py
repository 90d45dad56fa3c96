"""The bad-input corpus: workflow inputs (bad-inputs.json), each refused by its state machine with
its error name and the field it concerns, and amiflow CLI invocations (bad-cli.json), each refused
with exit status 2 naming the flag, before anything starts. Either way the local stack holds the
same resources afterwards."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from amiflow_local.server import cargo_target_dir

from workflow import message, run

CORPUS = json.loads((Path(__file__).parent / "bad-inputs.json").read_text())
CLI_CORPUS = json.loads((Path(__file__).parent / "bad-cli.json").read_text())
CLI = cargo_target_dir() / "debug" / "amiflow"
MACHINES = ["MigrateInstance", "ShareImage", "UnshareImage", "CopyImage"]


def census(stack) -> dict:
    ec2 = stack.client("ec2")
    return {
        "images": sorted(i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]),
        "instances": sorted(i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]),
        "snapshots": sorted(s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]),
    }


def test_the_corpus_is_large_and_covers_every_workflow_and_the_cli():
    assert len(CORPUS) >= 40
    assert {c["workflow"] for c in CORPUS} == set(MACHINES)
    assert {c["args"][0] for c in CLI_CORPUS} == {"migrate", "share", "unshare", "copy"}


@pytest.fixture(scope="module")
def before(stack):
    return census(stack)


@pytest.mark.parametrize("case", CORPUS, ids=[f"{c['workflow']}: {c['case']}" for c in CORPUS])
def test_refused_with_its_name_and_field_before_any_change(stack, sfn, before, case):
    result = run(sfn, case["workflow"], case["input"])
    assert result.status == "FAILED", result
    assert result.error == case["error"], result.cause
    assert message(result).startswith(case["field"]), message(result)
    assert census(stack) == before, "a refused input changed the account"


def executions(sfn) -> int:
    from workflow import state_machine_arn

    return sum(len(sfn.list_executions(stateMachineArn=state_machine_arn(sfn, m))["executions"]) for m in MACHINES)


@pytest.mark.parametrize("case", CLI_CORPUS, ids=[f"amiflow {c['args'][0]}: {c['case']}" for c in CLI_CORPUS])
def test_the_cli_refuses_naming_the_flag_and_starts_nothing(stack, sfn, before, case):
    started = executions(sfn)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_REGION": "us-east-1"}
    # No --dry-run: were the input accepted, the CLI would start a run.
    refused = subprocess.run([str(CLI), "--endpoint-url", stack.endpoint, *case["args"]], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 2, refused
    assert refused.stderr.startswith(f"error: {case['flag']}:"), refused.stderr
    assert executions(sfn) == started, "a refused command started a run"
    assert census(stack) == before, "a refused command changed the account"
