"""EvacuateZone end to end: a tier of instances moves wave after wave, one MigrateInstance
execution per instance, never more at once than the cap; a preview changes nothing; the fleet
stops at its failure allowance; Auto Scaling members are refused; the report is written to S3,
and a fleet whose report does not fit in the execution's output finds it there."""

from __future__ import annotations

import json
import uuid

import pytest
from amiflow_local.seed import seed_fleet

from workflow import finish, instance, run, start, state_machine_arn, tagged, wait_for

pytestmark = pytest.mark.xdist_group("evacuate")

BUCKET = "amiflow-local-fleetreportbucket"


@pytest.fixture
def fleet(ec2, request):
    # Twelve instances in three waves, the first larger than the cap of 4.
    waves = getattr(request, "param", [6, 4, 2])
    return seed_fleet(ec2, "us-east-1", name=f"evac-{uuid.uuid4().hex[:6]}", waves=waves)


def children(sfn, fleet_name: str) -> list[dict]:
    """The fleet's MigrateInstance executions (named after the fleet), with their times."""
    machine = state_machine_arn(sfn, "MigrateInstance")
    pages = sfn.get_paginator("list_executions").paginate(stateMachineArn=machine)
    return [e for page in pages for e in page["executions"] if e["name"].startswith(f"{fleet_name}-")]


def most_at_once(executions: list[dict]) -> int:
    """The largest number of executions running at one moment."""
    moments = sorted([(e["startDate"], 1) for e in executions] + [(e["stopDate"], -1) for e in executions])
    running = peak = 0
    for _, change in moments:
        running += change
        peak = max(peak, running)
    return peak


def by_instance(result) -> dict[str, dict]:
    return {entry["instanceId"]: entry for entry in result.output["instances"]}


def stored_report(stack, location: str) -> dict:
    """The report the run wrote to S3, read where its output says it is."""
    bucket, key = location.removeprefix("s3://").split("/", 1)
    return json.loads(stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_zone_of_twelve_evacuates_in_three_waves_never_more_than_four_at_once(stack, sfn, ec2, fleet):
    result = run(sfn, "EvacuateZone", {
        "sourceAvailabilityZone": "us-east-1a", "targetAvailabilityZone": "use1-az2",
        "tagFilters": {"fleet": [fleet.tag["fleet"]]}, "waveTag": "amiflow:wave", "maxConcurrency": 4,
    }, timeout=600, prefix="evac")
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    # An AZ ID names the same zone in every account; this account calls it:
    target = ec2.describe_availability_zones(ZoneIds=["use1-az2"])["AvailabilityZones"][0]["ZoneName"]
    assert target != "us-east-1a" and result.output["targetAvailabilityZone"] == target
    report = by_instance(result)
    assert sorted(report) == sorted(fleet.instance_ids)
    for instance_id, entry in report.items():
        assert entry["status"] == "SUCCEEDED", entry
        assert entry["wave"] == fleet.waves[instance_id]
        moved = instance(ec2, entry["newInstanceId"])
        assert moved["Placement"]["AvailabilityZone"] == target
        assert moved["State"]["Name"] == "running"
        assert entry["execution"].endswith(f":{result.name}-{instance_id}")
    runs = children(sfn, result.name)
    assert len(runs) == 12 and all(r["status"] == "SUCCEEDED" for r in runs)
    # The first wave (6) ran 4 at once, never more.
    assert most_at_once(runs) == 4
    # Waves in order: each wave's children all ended before the next wave's first started.
    wave_of = {f"{result.name}-{i}": w for i, w in fleet.waves.items()}
    for earlier, later in (("1", "2"), ("2", "3")):
        ended = max(r["stopDate"] for r in runs if wave_of[r["name"]] == earlier)
        began = min(r["startDate"] for r in runs if wave_of[r["name"]] == later)
        assert ended <= began, f"wave {later} began before wave {earlier} ended"
    assert result.output["counts"] == {"SUCCEEDED": 12}
    # The report is in S3 too, where the output says.
    assert result.output["report"] == f"s3://{BUCKET}/fleets/{result.name}/report.json"
    assert result.output["summary"].endswith(result.output["report"])
    stored = stored_report(stack, result.output["report"])
    assert {e["instanceId"]: e["newInstanceId"] for e in stored["instances"]} == {i: e["newInstanceId"] for i, e in report.items()}


def report_of(sfn, execution_arn: str) -> dict:
    """The Report state's output: the fleet's report, also when the fleet failed."""
    events = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000, reverseOrder=True)["events"]
    exited = next(e["stateExitedEventDetails"] for e in events
                  if e.get("stateExitedEventDetails", {}).get("name") == "Report")
    return json.loads(exited["output"])


@pytest.mark.parametrize("fleet", [[2, 2, 2]], indirect=True)
def test_the_fleet_stops_at_its_failure_allowance_and_what_failed_is_rolled_back(stack, sfn, ec2, fleet):
    # The first two launches in the target AZ find no capacity: both children of wave 1 fail.
    stack.control("faults", {"kind": "insufficient-capacity", "availabilityZone": "us-east-1b", "count": 2})
    name, arn = start(sfn, "EvacuateZone", {
        "tagFilters": {"fleet": [fleet.tag["fleet"]]}, "targetAvailabilityZone": "us-east-1b",
        "waveTag": "amiflow:wave", "maxConcurrency": 2, "toleratedFailures": 1, "sourceAction": "terminate",
    }, prefix="evac")
    result = finish(sfn, name, arn, timeout=600)
    assert (result.status, result.error) == ("FAILED", "ToleratedFailuresExceeded")
    assert "0 moved, 2 failed" in result.cause and "4 not started" in result.cause, result.cause
    report = {e["instanceId"]: e for e in report_of(sfn, arn)["instances"]}
    first, later = fleet.instance_ids[:2], fleet.instance_ids[2:]
    for instance_id in first:
        assert (report[instance_id]["status"], report[instance_id]["error"]) == ("FAILED", "InsufficientCapacity")
        # The child rolled back: nothing it made is left, and the source runs where it was.
        assert tagged(ec2, f"{name}-{instance_id}") == {"instances": [], "images": [], "snapshots": []}
    for instance_id in later:
        assert (report[instance_id]["status"], report[instance_id]["error"]) == ("NOT_STARTED", "ToleratedFailuresExceeded")
    for instance_id in fleet.instance_ids:
        source = instance(ec2, instance_id)
        assert (source["State"]["Name"], source["Placement"]["AvailabilityZone"]) == ("running", "us-east-1a")
    # Only wave 1's children were ever started.
    assert sorted(r["name"] for r in children(sfn, name)) == sorted(f"{name}-{i}" for i in first)


def test_a_preview_lists_the_plan_and_changes_nothing(stack, sfn, ec2, fleet):
    member = fleet.instance_ids[-1]
    asg = stack.client("autoscaling")
    group = f"asg-{fleet.tag['fleet']}"
    asg.create_launch_configuration(LaunchConfigurationName=group, ImageId=instance(ec2, member)["ImageId"], InstanceType="t3.micro")
    asg.create_auto_scaling_group(AutoScalingGroupName=group, LaunchConfigurationName=group, MinSize=0, MaxSize=2,
                                  DesiredCapacity=0, VPCZoneIdentifier=fleet.world.subnets["us-east-1a"])
    asg.attach_instances(AutoScalingGroupName=group, InstanceIds=[member])
    images_before = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    result = run(sfn, "EvacuateZone", {
        "tagFilters": {"fleet": [fleet.tag["fleet"]]}, "sourceAvailabilityZone": "us-east-1a",
        "targetAvailabilityZone": "us-east-1b", "waveTag": "amiflow:wave", "validateOnly": True, "exclude": [fleet.instance_ids[0]],
    }, prefix="evac")
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    report = by_instance(result)
    assert report[member]["status"] == "REFUSED" and report[member]["error"] == "InAutoScalingGroup"
    assert group in report[member]["cause"]
    assert fleet.instance_ids[0] not in report
    would_move = [i for i in fleet.instance_ids[1:-1]]
    for instance_id in would_move:
        entry = report[instance_id]
        assert entry["status"] == "WOULD_MOVE", entry
        assert fleet.world.subnets["us-east-1b"] in entry["preview"]["targetSubnet"]
        assert entry["preview"]["instanceType"] == "t3.micro in us-east-1b"
        assert any("private IP address" in n for n in entry["preview"]["notCarried"])
    assert result.output["summary"].startswith(f"preview: {len(would_move)} would move, 0 would fail, 1 refused")
    # Nothing changed: no child execution, no image, every source where it was.
    assert children(sfn, result.name) == []
    assert {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]} == images_before
    for instance_id in fleet.instance_ids:
        assert instance(ec2, instance_id)["State"]["Name"] == "running"


LARGE = 160


@pytest.mark.parametrize("fleet", [[LARGE]], indirect=True)
def test_a_report_larger_than_the_output_limit_is_in_s3_and_the_output_says_where(stack, sfn, ec2, fleet):
    """A preview of 160 instances: each entry carries its preflight rows, and the report outgrows
    what the execution's output takes. The output keeps the counts and the summary and names the
    report's place; the report there lists every instance."""
    result = run(sfn, "EvacuateZone", {
        "tagFilters": {"fleet": [fleet.tag["fleet"]]}, "targetAvailabilityZone": "us-east-1b",
        "validateOnly": True, "maxConcurrency": 40,
    }, timeout=600, prefix="evac")
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    location = f"s3://{BUCKET}/fleets/{result.name}/report.json"
    assert "instances" not in result.output
    assert (result.output["report"], result.output["instancesOnlyInReport"]) == (location, LARGE)
    assert result.output["counts"] == {"WOULD_MOVE": LARGE}
    assert result.output["summary"] == f"preview: {LARGE} would move, 0 would fail, 0 refused; nothing was changed; the report: {location}"
    stored = stored_report(stack, location)
    assert sorted(e["instanceId"] for e in stored["instances"]) == sorted(fleet.instance_ids)
    assert all(e["preview"]["instanceType"] == "t3.micro in us-east-1b" for e in stored["instances"])
    assert len(json.dumps(stored)) > 256 * 1024
    assert children(sfn, result.name) == []
    # The CLI finds the report where the output says, and shows every instance.
    from test_cli import amiflow

    shown = amiflow(stack, "watch", result.name)
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.splitlines() if line.startswith("i-")]
    assert sorted(r[0] for r in rows) == sorted(fleet.instance_ids) and {r[2] for r in rows} == {"WOULD_MOVE"}
    assert location in shown.stdout


def test_an_auto_scaling_member_is_refused_by_migrate_instance_with_its_group(stack, sfn, ec2, world):
    asg = stack.client("autoscaling")
    group = f"asg-{uuid.uuid4().hex[:6]}"
    asg.create_launch_configuration(LaunchConfigurationName=group, ImageId=instance(ec2, world.instance_id)["ImageId"], InstanceType="t3.micro")
    asg.create_auto_scaling_group(AutoScalingGroupName=group, LaunchConfigurationName=group, MinSize=0, MaxSize=1,
                                  DesiredCapacity=0, VPCZoneIdentifier=world.subnets["us-east-1a"])
    asg.attach_instances(AutoScalingGroupName=group, InstanceIds=[world.instance_id])
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", "sourceAction": "terminate"})
    assert (result.status, result.error) == ("FAILED", "InAutoScalingGroup")
    assert group in result.cause and world.instance_id in result.cause
    assert tagged(ec2, result.name) == {"instances": [], "images": [], "snapshots": []}
    assert instance(ec2, world.instance_id)["State"]["Name"] == "running"


@pytest.mark.parametrize("fleet", [[2, 1]], indirect=True)
def test_the_cli_previews_then_drives_a_fleet_with_a_line_per_instance(stack, sfn, ec2, fleet):
    from test_cli import amiflow

    selection = ["--tag", f"fleet={fleet.tag['fleet']}", "--az", "us-east-1b", "--wave-tag", "amiflow:wave", "--max-concurrency", "2"]
    preview = amiflow(stack, "evacuate", *selection, "--dry-run", "--name", f"preview-{fleet.tag['fleet']}")
    assert preview.returncode == 0, preview.stderr
    rows = {line.split()[0]: line.split() for line in preview.stdout.splitlines() if line.startswith("i-")}
    assert sorted(rows) == sorted(fleet.instance_ids)
    assert all(row[2] == "WOULD_MOVE" for row in rows.values()), preview.stdout
    assert children(sfn, f"preview-{fleet.tag['fleet']}") == []

    name = f"cli-{fleet.tag['fleet']}"
    moved = amiflow(stack, "evacuate", *selection, "--source-action", "stop", "--watch", "--name", name)
    assert moved.returncode == 0, moved.stderr
    for instance_id in fleet.instance_ids:
        # Progress: the instance's line as its child runs, then its result (stderr, no terminal here).
        progress = [line for line in moved.stderr.splitlines() if line.strip().startswith(instance_id)]
        assert any("running: " in line for line in progress), moved.stderr
        assert any("moved: i-" in line for line in progress), moved.stderr
    table = {line.split()[0]: line.split() for line in moved.stdout.splitlines() if line.startswith("i-")}
    assert sorted(table) == sorted(fleet.instance_ids)
    for instance_id, row in table.items():
        assert row[1] == fleet.waves[instance_id] and row[2] == "SUCCEEDED", moved.stdout
        new_instance = row[-1]
        assert instance(ec2, new_instance)["Placement"]["AvailabilityZone"] == "us-east-1b"
        assert instance(ec2, instance_id)["State"]["Name"] in ("stopping", "stopped")
    assert "3 moved, 0 failed" in moved.stdout


@pytest.mark.parametrize("fleet", [[2]], indirect=True)
def test_a_fleet_with_approval_waits_for_each_child_and_counts_a_discard_as_a_failure(stack, sfn, ec2, fleet):
    from test_cli import amiflow

    name, arn = start(sfn, "EvacuateZone", {
        "tagFilters": {"fleet": [fleet.tag["fleet"]]}, "targetAvailabilityZone": "us-east-1b",
        "cutover": "approve", "toleratedFailures": 1, "sourceAction": "stop",
    }, prefix="evac")
    first, second = sorted(fleet.instance_ids)

    def awaiting(instance_id: str) -> bool:
        shown = amiflow(stack, "status", f"{name}-{instance_id}", "--output", "json")
        return shown.returncode == 0 and json.loads(shown.stdout)["awaitingApproval"]

    wait_for(lambda: awaiting(first) and awaiting(second), timeout=120, what="both children to wait for approval")
    assert amiflow(stack, "approve", f"{name}-{first}").returncode == 0
    assert amiflow(stack, "discard", f"{name}-{second}").returncode == 0
    result = finish(sfn, name, arn, timeout=300)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    report = by_instance(result)
    assert report[first]["status"] == "SUCCEEDED"
    assert (report[second]["status"], report[second]["error"]) == ("FAILED", "Discarded")
    assert instance(ec2, first)["State"]["Name"] in ("stopping", "stopped")
    assert instance(ec2, second)["State"]["Name"] == "running"
