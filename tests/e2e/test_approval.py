"""Test, then commit or discard: a MigrateInstance run with "cutover": "approve" launches and
verifies the copy, announces it with the comparison of source and copy, and waits; an approval
moves the Elastic IP and applies sourceAction, a discard (or no decision in time) removes the copy
and leaves the source exactly as it was. amiflow's own events reach a queue through a rule, as
they would reach SNS or a chat."""

from __future__ import annotations

import json
import uuid

import pytest

from test_cli import amiflow
from workflow import finish, instance, start, tagged, wait_for


@pytest.fixture
def announcements(stack):
    """A queue that a rule on the default bus fills with every event of source `amiflow`."""
    sqs, events = stack.client("sqs"), stack.client("events")
    name = f"amiflow-events-{uuid.uuid4().hex[:6]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=name, EventPattern=json.dumps({"source": ["amiflow"]}))
    events.put_targets(Rule=name, Targets=[{"Id": "queue", "Arn": arn}])
    seen: list[dict] = []

    def received(detail_type: str, execution: str) -> dict:
        def look():
            for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []):
                seen.append(json.loads(message["Body"]))
            return next((e for e in seen if e["detail-type"] == detail_type and e["detail"]["execution"] == execution), None)
        return wait_for(look, timeout=120, what=f"the {detail_type} event of {execution}")

    yield received
    events.remove_targets(Rule=name, Ids=["queue"])
    events.delete_rule(Name=name)


def source_as_it_is(ec2, world) -> dict:
    """What an operator would check of the source: state, place, tags, volumes, address."""
    i = instance(ec2, world.instance_id)
    address = ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]
    return {
        "state": i["State"]["Name"], "az": i["Placement"]["AvailabilityZone"], "subnet": i["SubnetId"],
        "private_ip": i["PrivateIpAddress"], "type": i["InstanceType"],
        "tags": sorted((t["Key"], t["Value"]) for t in i.get("Tags", [])),
        "volumes": sorted((m["DeviceName"], m["Ebs"]["VolumeId"]) for m in i["BlockDeviceMappings"]),
        "groups": sorted(g["GroupId"] for g in i["SecurityGroups"]),
        "address_on": address.get("InstanceId"),
    }


def awaiting(sfn, ec2, world, announcements, **extra):
    name, arn = start(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b",
                                               "sourceAction": "stop", "cutover": "approve", **extra}, prefix="approve")
    event = announcements("amiflow Run Awaiting Approval", name)
    return name, arn, event


def test_an_approved_run_waits_with_the_comparison_then_commits(stack, sfn, ec2, world, announcements):
    before = source_as_it_is(ec2, world)
    name, arn, event = awaiting(sfn, ec2, world, announcements)
    detail = event["detail"]
    assert event["source"] == "amiflow" and detail["taskToken"]
    copy = detail["newInstanceId"]
    rows = {r["setting"]: r for r in detail["comparison"]}
    assert rows["Availability Zone"] == {"setting": "Availability Zone", "status": "changed", "source": "us-east-1a", "copy": "us-east-1b"}
    assert rows["instance type"]["status"] == "carried" and rows["user data"]["status"] == "carried"
    assert rows["Elastic IP"]["status"] == "at-cutover" and rows["Elastic IP"]["copy"] == "none"
    assert any(r["status"] == "not-carried" and r["setting"].startswith("private IP address") for r in detail["comparison"])
    # The approval function's own words: a summary, the time to decide by, and how to answer.
    assert detail["summary"].startswith(f"{world.instance_id} is copied to {copy} in us-east-1b;")
    assert "changed: Availability Zone" in detail["summary"] and "at cutover: Elastic IP" in detail["summary"]
    assert detail["answer"]["approve"] == f"amiflow approve {name}" and detail["decideBy"].endswith("Z")
    # While it waits: the copy runs, the source and its address are untouched.
    assert instance(ec2, copy)["State"]["Name"] == "running"
    assert source_as_it_is(ec2, world) == before
    shown = amiflow(stack, "status", name)
    assert shown.returncode == 0 and "awaiting approval" in shown.stdout, shown.stdout
    assert "Elastic IP" in shown.stdout and "at-cutover" in shown.stdout

    approved = amiflow(stack, "approve", name, "--watch")
    assert approved.returncode == 0, approved.stderr
    result = finish(sfn, name, arn)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert result.output["newInstanceId"] == copy and result.output["elasticIp"] == world.public_ip
    address = ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]
    assert address["InstanceId"] == copy
    assert instance(ec2, world.instance_id)["State"]["Name"] in ("stopping", "stopped")
    after = {r["setting"]: r for r in result.output["comparison"]}
    assert after["Elastic IP"]["status"] == "carried"
    assert announcements("amiflow Run Succeeded", name)["detail"]["output"]["newInstanceId"] == copy
    again = amiflow(stack, "approve", name)
    assert again.returncode == 2 and "not waiting for a decision" in again.stderr


def test_a_discarded_run_leaves_the_source_exactly_as_it_was(stack, sfn, ec2, world, announcements):
    before = source_as_it_is(ec2, world)
    name, arn, event = awaiting(sfn, ec2, world, announcements)
    discarded = amiflow(stack, "discard", name)
    assert discarded.returncode == 0, discarded.stderr
    result = finish(sfn, name, arn)
    assert (result.status, result.error) == ("FAILED", "Discarded")
    assert tagged(ec2, name) == {"instances": [], "images": [], "snapshots": []}
    assert instance(ec2, event["detail"]["newInstanceId"])["State"]["Name"] in ("shutting-down", "terminated")
    assert source_as_it_is(ec2, world) == before
    failed = announcements("amiflow Run Failed", name)["detail"]
    assert failed["error"] == "Discarded"


def test_no_decision_in_time_discards(stack, sfn, ec2, world, announcements):
    before = source_as_it_is(ec2, world)
    name, arn, _ = awaiting(sfn, ec2, world, announcements, approvalTimeoutSeconds=10)
    result = finish(sfn, name, arn, timeout=120)
    assert (result.status, result.error) == ("FAILED", "ApprovalTimedOut")
    assert "no decision within 10 s" in result.cause
    assert tagged(ec2, name) == {"instances": [], "images": [], "snapshots": []}
    assert source_as_it_is(ec2, world) == before
