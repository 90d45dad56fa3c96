"""The bad-input corpus (bad-inputs.json): each input is refused with its error name and the field
it concerns, before any side effect; the local stack holds the same resources afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workflow import message, run

CORPUS = json.loads((Path(__file__).parent / "bad-inputs.json").read_text())


def census(stack) -> dict:
    ec2 = stack.client("ec2")
    return {
        "images": sorted(i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]),
        "instances": sorted(i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]),
        "snapshots": sorted(s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]),
    }


def test_the_corpus_is_large_and_covers_every_workflow():
    assert len(CORPUS) >= 40
    assert {c["workflow"] for c in CORPUS} == {"MigrateInstance", "ShareImage", "UnshareImage", "CopyImage"}


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
