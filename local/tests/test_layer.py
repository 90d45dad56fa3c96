"""Each behaviour of the fidelity layer, tested on the running local stack. Each test fails
without the behaviour it names (moto alone does otherwise; local/README.md says what)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from amiflow_local.seed import base_image, seed
from workflow import wait_for

B = "210987654321"
# What the EBS encryption guide requires of whoever has EC2 use a key: what a receiver is granted.
EBS_GRANT = ["CreateGrant", "Decrypt", "DescribeKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom", "ReEncryptTo"]




@pytest.fixture
def world(ec2):
    return seed(ec2, "us-east-1", name=f"layer-{uuid.uuid4().hex[:6]}")


def image_state(ec2, image_id: str) -> str:
    return ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"]


def ami_events(stack, image_id: str) -> list[dict]:
    return [d["event"] for d in stack.control("events") if d["event"]["detail"].get("ImageId") == image_id]


# 1. Image lifecycle -------------------------------------------------------------------------

def test_a_new_image_and_its_snapshots_are_pending_then_available(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 1.5})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert image["State"] == "pending"
    snapshot_ids = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
    assert {s["State"] for s in ec2.describe_snapshots(SnapshotIds=snapshot_ids)["Snapshots"]} == {"pending"}
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    assert {s["State"] for s in ec2.describe_snapshots(SnapshotIds=snapshot_ids)["Snapshots"]} == {"completed"}


def test_a_zero_delay_makes_images_available_at_once(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", timeout=1, what="available")


def test_an_injected_failure_fails_the_image_with_a_reason(stack, ec2, world):
    stack.control("faults", {"kind": "fail-image", "reason": "Client.SnapshotLimitExceeded: too many snapshots"})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "failed", what="failed")
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert image["StateReason"] == {"Code": "Client.SnapshotLimitExceeded", "Message": "too many snapshots"}
    event = wait_for(lambda: [e for e in ami_events(stack, image_id) if e["detail"]["State"] == "failed"], what="event")[0]
    assert event["detail"]["ErrorMessage"] == "too many snapshots"


def test_deregistering_sends_the_deregistered_event(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    ec2.deregister_image(ImageId=image_id)
    states = [e["detail"]["State"] for e in ami_events(stack, image_id)]
    assert states == ["available", "deregistered"]


# 2. AMI events ------------------------------------------------------------------------------

def test_the_ami_event_has_the_real_shape(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    event = wait_for(lambda: ami_events(stack, image_id), what="event")[0]
    assert event["source"] == "aws.ec2"
    assert event["detail-type"] == "EC2 AMI State Change"
    assert event["account"] == "123456789012"
    assert event["region"] == "us-east-1"
    assert event["resources"] == [f"arn:aws:ec2:us-east-1::image/{image_id}"]
    assert set(event["detail"]) == {"RequestId", "ImageId", "State", "ErrorMessage"}
    assert event["detail"]["State"] == "available"
    time.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ")


def test_the_rule_delivers_the_event_to_wait_image(stack, ec2, world):
    dynamodb = stack.client("dynamodb")
    stack.control("config", {"imageDelaySeconds": 1})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    # A token waiting on the image: wait-image answers it when the event arrives (the token is not
    # one Step Functions knows, so the answer is "closed" and the token is forgotten).
    key = {"imageId": {"S": image_id}, "tokenKey": {"S": "k1"}}
    dynamodb.put_item(TableName="TaskTokenTable", Item={**key, "taskToken": {"S": "not-a-real-token"}, "execution": {"S": "x"}})
    wait_for(lambda: "Item" not in dynamodb.get_item(TableName="TaskTokenTable", Key=key), what="token answered by the event")


def test_a_dropped_event_is_not_delivered(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 0})
    stack.control("faults", {"kind": "drop-event"})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    time.sleep(0.3)
    assert ami_events(stack, image_id) == []
    assert stack.control("faults")["fired"][0]["kind"] == "drop-event"


def test_an_event_bus_target_forwards_to_another_accounts_bus(stack):
    # Account B forwards AMI events to A's default bus; A's bus accepts B; A's rule sends to SQS.
    a_events, sqs = stack.client("events"), stack.client("sqs")
    queue = sqs.create_queue(QueueName=f"ami-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rule = f"from-b-{uuid.uuid4().hex[:6]}"
    a_events.put_rule(Name=rule, EventPattern=json.dumps({"source": ["aws.ec2"], "account": [B]}))
    a_events.put_targets(Rule=rule, Targets=[{"Id": "q", "Arn": queue_arn}])
    a_events.put_permission(Action="events:PutEvents", Principal=B, StatementId=f"b-{uuid.uuid4().hex[:6]}")

    b = stack.account(B)
    b_events = b.client("events", endpoint_url=stack.endpoint)
    b_events.put_rule(Name="to-source", EventPattern=json.dumps({"source": ["aws.ec2"], "detail-type": ["EC2 AMI State Change"]}))
    b_events.put_targets(Rule="to-source", Targets=[{"Id": "a", "Arn": "arn:aws:events:us-east-1:123456789012:event-bus/default"}])
    b_ec2 = b.client("ec2", endpoint_url=stack.endpoint)
    b_world = seed(b_ec2, "us-east-1", name=f"b-{uuid.uuid4().hex[:6]}")
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = b_ec2.create_image(InstanceId=b_world.instance_id, Name="b-image")["ImageId"]
    message = wait_for(lambda: sqs.receive_message(QueueUrl=queue).get("Messages"), what="forwarded event")[0]
    event = json.loads(message["Body"])
    assert event["account"] == B and event["detail"]["ImageId"] == image_id


def test_a_bus_policy_admits_only_the_source_and_detail_type_it_names(stack):
    # A's bus accepts from B only EC2 AMI State Change events of aws.ec2; B forwards more.
    a_events, sqs = stack.client("events"), stack.client("sqs")
    queue = sqs.create_queue(QueueName=f"cond-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus = f"cond-{uuid.uuid4().hex[:6]}"
    bus_arn = a_events.create_event_bus(Name=bus)["EventBusArn"]
    a_events.put_rule(Name="from-b", EventBusName=bus, EventPattern=json.dumps({"account": [B]}))
    a_events.put_targets(Rule="from-b", EventBusName=bus, Targets=[{"Id": "q", "Arn": queue_arn}])
    a_events.put_permission(EventBusName=bus, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "ami-events-of-b", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{B}:root"},
        "Action": "events:PutEvents", "Resource": bus_arn,
        "Condition": {"ForAnyValue:StringEquals": {"events:source": "aws.ec2", "events:detail-type": "EC2 AMI State Change"}}}]}))

    b = stack.account(B)
    b_events = b.client("events", endpoint_url=stack.endpoint)
    rule = f"to-{bus}"
    b_events.put_rule(Name=rule, EventPattern=json.dumps({"source": ["aws.ec2", "my.app"]}))
    b_events.put_targets(Rule=rule, Targets=[{"Id": "a", "Arn": bus_arn}])
    b_events.put_events(Entries=[{"Source": "my.app", "DetailType": "EC2 AMI State Change", "Detail": "{}"}])
    b_ec2 = b.client("ec2", endpoint_url=stack.endpoint)
    b_world = seed(b_ec2, "us-east-1", name=f"b-{uuid.uuid4().hex[:6]}")
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = b_ec2.create_image(InstanceId=b_world.instance_id, Name=f"b-{uuid.uuid4().hex[:6]}")["ImageId"]
    received = []
    wait_for(lambda: received.extend(json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []))
             or any(e["detail"].get("ImageId") == image_id for e in received), what="the AMI event")
    assert [e["source"] for e in received] == ["aws.ec2"], received
    b_events.remove_targets(Rule=rule, Ids=["a"])


def test_a_schedule_rule_gets_no_event_put_on_its_bus(stack):
    # Two rules on A's default bus, each sending to a queue: one with a pattern, one with only a
    # schedule. A put event reaches the first; the second runs only when its schedule comes round.
    events, sqs = stack.client("events"), stack.client("sqs")

    def queue(name: str) -> tuple[str, str]:
        url = sqs.create_queue(QueueName=f"{name}-{uuid.uuid4().hex[:6]}")["QueueUrl"]
        return url, sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    (matched, matched_arn), (scheduled, scheduled_arn) = queue("pattern"), queue("schedule")
    source = f"my.app.{uuid.uuid4().hex[:6]}"
    pattern_rule, schedule_rule = f"pattern-{uuid.uuid4().hex[:6]}", f"schedule-{uuid.uuid4().hex[:6]}"
    events.put_rule(Name=pattern_rule, EventPattern=json.dumps({"source": [source]}))
    events.put_targets(Rule=pattern_rule, Targets=[{"Id": "q", "Arn": matched_arn}])
    events.put_rule(Name=schedule_rule, ScheduleExpression="rate(15 minutes)")
    events.put_targets(Rule=schedule_rule, Targets=[{"Id": "q", "Arn": scheduled_arn}])
    try:
        events.put_events(Entries=[{"Source": source, "DetailType": "Something Happened", "Detail": "{}"}])
        got = wait_for(lambda: sqs.receive_message(QueueUrl=matched).get("Messages"), what="the matching rule's event")
        assert json.loads(got[0]["Body"])["source"] == source
        assert sqs.receive_message(QueueUrl=scheduled, WaitTimeSeconds=1).get("Messages") is None

        stack.control("fire-schedule", {"rule": schedule_rule})
        fired = wait_for(lambda: sqs.receive_message(QueueUrl=scheduled).get("Messages"), what="the scheduled event")
        assert [json.loads(m["Body"])["detail-type"] for m in fired] == ["Scheduled Event"]
    finally:
        for rule in (pattern_rule, schedule_rule):
            events.remove_targets(Rule=rule, Ids=["q"])
            events.delete_rule(Name=rule)


# 3. Images carry the instance's real volumes --------------------------------------------------

def test_create_image_records_each_volume_and_tags_each_snapshot(stack, ec2, world):
    image_id = ec2.create_image(
        InstanceId=world.instance_id,
        Name=f"img-{uuid.uuid4().hex[:6]}",
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "run", "Value": "r1"}]}],
    )["ImageId"]
    mappings = {m["DeviceName"]: m["Ebs"] for m in ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"]}
    assert set(mappings) == {"/dev/xvda", "/dev/sdf"}
    assert (mappings["/dev/xvda"]["VolumeSize"], mappings["/dev/sdf"]["VolumeSize"]) == (8, 20)
    assert mappings["/dev/sdf"]["VolumeType"] == "gp3"
    snapshots = ec2.describe_snapshots(SnapshotIds=[m["SnapshotId"] for m in mappings.values()])["Snapshots"]
    assert all({"Key": "run", "Value": "r1"} in s["Tags"] for s in snapshots)


def test_an_ami_name_in_use_is_refused(stack, ec2, world):
    name = f"img-{uuid.uuid4().hex[:6]}"
    first = ec2.create_image(InstanceId=world.instance_id, Name=name)["ImageId"]
    with pytest.raises(ClientError) as refused:
        ec2.create_image(InstanceId=world.instance_id, Name=name)
    assert refused.value.response["Error"]["Code"] == "InvalidAMIName.Duplicate"
    assert first in refused.value.response["Error"]["Message"]
    assert len(ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]) == 1


def test_a_repeated_client_token_launches_nothing_new(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    token = uuid.uuid4().hex
    launch = dict(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"], ClientToken=token)
    first = ec2.run_instances(**launch)["Instances"][0]["InstanceId"]
    again = ec2.run_instances(**launch)["Instances"][0]["InstanceId"]
    assert again == first
    launched = [i for r in ec2.describe_instances(Filters=[{"Name": "image-id", "Values": [image_id]}])["Reservations"] for i in r["Instances"]]
    assert [i["InstanceId"] for i in launched] == [first]


def test_run_instances_builds_volumes_from_the_image_with_overrides(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    launched = ec2.run_instances(
        ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"],
        BlockDeviceMappings=[{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 30, "VolumeType": "io2", "Iops": 5000}}],
    )["Instances"][0]
    described = ec2.describe_instances(InstanceIds=[launched["InstanceId"]])["Reservations"][0]["Instances"][0]
    volumes = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in described["BlockDeviceMappings"]}
    assert set(volumes) == {"/dev/xvda", "/dev/sdf"}
    data = ec2.describe_volumes(VolumeIds=[volumes["/dev/sdf"]])["Volumes"][0]
    root = ec2.describe_volumes(VolumeIds=[volumes["/dev/xvda"]])["Volumes"][0]
    assert (data["Size"], data["VolumeType"], data["Iops"]) == (30, "io2", 5000)
    assert root["Size"] == 8 and root["SnapshotId"].startswith("snap-")


def root_device(ec2, image_id: str) -> str:
    return ec2.describe_images(ImageIds=[image_id])["Images"][0]["RootDeviceName"]


def deletes_on_termination(ec2, instance_id: str) -> dict[str, bool]:
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {m["DeviceName"]: m["Ebs"]["DeleteOnTermination"] for m in described["BlockDeviceMappings"]}


def test_delete_on_termination_comes_from_the_image_unless_the_launch_says(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 0})
    root = root_device(ec2, base_image(ec2))
    keeper = ec2.run_instances(
        ImageId=base_image(ec2), MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"],
        BlockDeviceMappings=[{"DeviceName": root, "Ebs": {"DeleteOnTermination": True}}],
    )["Instances"][0]["InstanceId"]
    image_id = ec2.create_image(InstanceId=keeper, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    image_root = ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"][0]
    assert image_root["Ebs"]["DeleteOnTermination"] is True
    # A mapping that resizes the root without naming DeleteOnTermination keeps the image's; a new
    # data volume attached at launch through the API is deleted with the instance by default.
    silent = ec2.run_instances(
        ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"],
        BlockDeviceMappings=[{"DeviceName": root, "Ebs": {"VolumeSize": 20}},
                             {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 5}}],
    )["Instances"][0]["InstanceId"]
    assert deletes_on_termination(ec2, silent) == {root: True, "/dev/sdf": True}
    kept = ec2.run_instances(
        ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"],
        BlockDeviceMappings=[{"DeviceName": root, "Ebs": {"DeleteOnTermination": False}}],
    )["Instances"][0]["InstanceId"]
    assert deletes_on_termination(ec2, kept) == {root: False}
    # A device the image does not map needs a size or a snapshot.
    with pytest.raises(ClientError) as refused:
        ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"],
                          BlockDeviceMappings=[{"DeviceName": "/dev/sdg", "Ebs": {"DeleteOnTermination": True}}])
    assert refused.value.response["Error"]["Code"] == "MissingParameter"


@pytest.mark.parametrize("image_id, code", [("ami-00000000000000000", "InvalidAMIID.NotFound"), ("img-123", "InvalidAMIID.Malformed")])
def test_run_instances_refuses_an_image_it_cannot_see(ec2, world, image_id, code):
    with pytest.raises(ClientError) as refused:
        ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"])
    assert refused.value.response["Error"]["Code"] == code


def test_a_described_resource_carries_exactly_the_tags_describe_tags_gives_it(stack, ec2, world):
    # The layer reads a resource's tags by its id (moto scans every tag of the backend); the
    # answer is DescribeTags' for that id, with other resources tagged alike around it.
    seed(ec2, "us-east-1", name=f"other-{uuid.uuid4().hex[:6]}")
    ec2.create_tags(Resources=[world.instance_id], Tags=[{"Key": "extra", "Value": world.instance_id}])
    described = ec2.describe_instances(InstanceIds=[world.instance_id])["Reservations"][0]["Instances"][0]
    volume_ids = [m["Ebs"]["VolumeId"] for m in described["BlockDeviceMappings"]]
    for resource_id, tags in [(world.instance_id, described["Tags"]),
                              *((v["VolumeId"], v.get("Tags", [])) for v in ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"])]:
        listed = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource_id]}])["Tags"]
        assert sorted((t["Key"], t["Value"]) for t in tags) == sorted((t["Key"], t["Value"]) for t in listed)
    assert {"Key": "extra", "Value": world.instance_id} in described["Tags"]


def test_snapshots_asked_by_owner_are_only_that_owners(stack, ec2, world):
    # moto's catalogue of public images comes with snapshots of other owners in every account.
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    mine = {m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"]}
    own = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert {s["OwnerId"] for s in own} == {"123456789012"}
    assert mine <= {s["SnapshotId"] for s in own}
    assert ec2.describe_snapshots(OwnerIds=["123456789012"])["Snapshots"] == own
    others = {s["OwnerId"] for s in ec2.describe_snapshots()["Snapshots"]} - {"123456789012"}
    assert others and ec2.describe_snapshots(OwnerIds=[sorted(others)[0]])["Snapshots"]


# 7. Status checks ---------------------------------------------------------------------------

def statuses(ec2, instance_id: str) -> tuple[str, str]:
    s = ec2.describe_instance_status(InstanceIds=[instance_id])["InstanceStatuses"][0]
    return s["SystemStatus"]["Status"], s["InstanceStatus"]["Status"]


def test_status_checks_initialize_then_pass(stack, ec2, world):
    stack.control("config", {"statusCheckDelaySeconds": 1})
    instance_id = ec2.run_instances(ImageId=base_image(ec2), MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"])["Instances"][0]["InstanceId"]
    assert statuses(ec2, instance_id) == ("initializing", "initializing")
    wait_for(lambda: statuses(ec2, instance_id) == ("ok", "ok"), what="ok")


def test_an_impaired_fault_shows_in_the_status_checks(stack, ec2, world):
    stack.control("config", {"statusCheckDelaySeconds": 0})
    stack.control("faults", {"kind": "impaired"})
    instance_id = ec2.run_instances(ImageId=base_image(ec2), MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"])["Instances"][0]["InstanceId"]
    assert statuses(ec2, instance_id) == ("impaired", "impaired")


# 8. Fault injection -------------------------------------------------------------------------

@pytest.mark.parametrize("service,action,call,code,status,count", [
    ("ec2", "DescribeVpcs", "describe_vpcs", "RequestLimitExceeded", 503, 2),
    ("kms", "ListKeys", "list_keys", "ThrottlingException", 400, 1),
])
def test_throttling_an_action_for_a_count(stack, service, action, call, code, status, count):
    client = stack.client(service, retries={"total_max_attempts": 1, "mode": "standard"})
    stack.control("faults", {"kind": "throttle", "action": action, "count": count})
    for _ in range(count):
        with pytest.raises(ClientError) as refused:
            getattr(client, call)()
        assert refused.value.response["Error"]["Code"] == code
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    getattr(client, call)()


def test_a_server_error_for_an_action(stack):
    ec2 = stack.client("ec2", retries={"total_max_attempts": 1, "mode": "standard"})
    stack.control("faults", {"kind": "server-error", "action": "DescribeSubnets", "status": 503})
    with pytest.raises(ClientError) as refused:
        ec2.describe_subnets()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


def test_no_capacity_in_an_availability_zone(stack, ec2, world):
    stack.control("faults", {"kind": "insufficient-capacity", "availabilityZone": "us-east-1c"})
    with pytest.raises(ClientError) as refused:
        ec2.run_instances(ImageId=base_image(ec2), MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1c"])
    assert refused.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
    ec2.run_instances(ImageId=base_image(ec2), MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1c"])


def test_a_function_crashes_after_its_side_effect(stack, lambda_):
    payload = json.dumps({"action": "rollback", "execution": "nothing-made", "state": {"input": {}}})
    assert "FunctionError" not in lambda_.invoke(FunctionName="cleanup", Payload=payload)
    stack.control("faults", {"kind": "crash-after-side-effect", "function": "cleanup"})
    answer = lambda_.invoke(FunctionName="cleanup", Payload=payload)
    assert answer.get("FunctionError") == "Unhandled"
    # The handler ran to success, but the crash replaces its answer, as Step Functions reports a
    # runtime that died.
    assert json.loads(answer["Payload"].read())["errorType"] == "Lambda.Unknown"
    assert "FunctionError" not in lambda_.invoke(FunctionName="cleanup", Payload=payload)


def test_the_stack_counts_each_functions_invocations(stack, lambda_):
    stack.control("invocations", method="DELETE")
    payload = json.dumps({"action": "rollback", "execution": "nothing-made", "state": {"input": {}}})
    for _ in range(2):
        lambda_.invoke(FunctionName="cleanup", Payload=payload)
    lambda_.invoke(FunctionName="cleanup", Payload=payload, InvocationType="Event")
    wait_for(lambda: stack.control("invocations").get("cleanup") == 3, what="three invocations counted")
    stack.control("invocations", method="DELETE")
    assert stack.control("invocations") == {}


def test_unknown_faults_are_refused_with_the_reason(stack):
    with pytest.raises(Exception) as refused:
        stack.control("faults", {"kind": "meteor"})
    assert "400" in str(refused.value)


# 5 and 6. Cross-account images and keys ---------------------------------------------------------

def test_a_shared_image_is_visible_to_and_launchable_by_the_receiver(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    b_ec2 = stack.account(B).client("ec2", endpoint_url=stack.endpoint)
    b_world = seed(b_ec2, "us-east-1", name=f"recv-{uuid.uuid4().hex[:6]}")
    with pytest.raises(ClientError):
        b_ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=b_world.subnets["us-east-1b"])
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"UserId": B}]})
    launched = b_ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=b_world.subnets["us-east-1b"])["Instances"][0]
    assert launched["ImageId"] == image_id


def test_launching_without_access_to_the_key_terminates_with_a_client_error(stack, shared_image):
    image_id, key = shared_image["image_id"], shared_image["key"]
    kms = stack.client("kms")
    b_ec2 = stack.account(B).client("ec2", endpoint_url=stack.endpoint)
    b_world = seed(b_ec2, "us-east-1", name=f"nokey-{uuid.uuid4().hex[:6]}")
    launched = b_ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=b_world.subnets["us-east-1b"])["Instances"][0]

    def state():
        return b_ec2.describe_instances(InstanceIds=[launched["InstanceId"]])["Reservations"][0]["Instances"][0]

    assert state()["State"]["Name"] == "pending"
    ended = wait_for(lambda: (s := state())["State"]["Name"] == "terminated" and s, what="terminated")
    assert ended["StateReason"] == {"Code": "Client.InternalError", "Message": "Client.InternalError: Client error on launch"}

    # With a grant for B of what the EBS guide lists, the same launch runs.
    kms.create_grant(KeyId=key, GranteePrincipal=f"arn:aws:iam::{B}:root", Operations=EBS_GRANT)
    again = b_ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=b_world.subnets["us-east-1b"])["Instances"][0]
    time.sleep(1)
    assert b_ec2.describe_instances(InstanceIds=[again["InstanceId"]])["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"


# 4 and 5. CopyImage and shared images across accounts ------------------------------------------

@pytest.fixture
def shared_image(stack, ec2, world):
    """An available image of account A with an encrypted data volume (A's CMK), shared with B."""
    kms = stack.client("kms")
    key = kms.create_key(Description="A's CMK")["KeyMetadata"]["Arn"]
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=4, Encrypted=True, KmsKeyId=key)["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=world.instance_id, Device="/dev/sdh")
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}",
                                TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "app", "Value": "web"}]}])["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"UserId": B}]})
    snapshots = [m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"]]
    return {"image_id": image_id, "key": key, "snapshots": snapshots}


def test_the_receiver_sees_a_shared_image_by_id_executable_users_and_owner(stack, shared_image):
    b_ec2 = stack.account(B).client("ec2", endpoint_url=stack.endpoint)
    image_id = shared_image["image_id"]
    assert b_ec2.describe_images(ImageIds=[image_id])["Images"][0]["OwnerId"] == "123456789012"
    assert image_id in [i["ImageId"] for i in b_ec2.describe_images(ExecutableUsers=["self"])["Images"]]
    assert image_id in [i["ImageId"] for i in b_ec2.describe_images(Owners=["123456789012"])["Images"]]
    c_ec2 = stack.account("333333333333").client("ec2", endpoint_url=stack.endpoint)
    with pytest.raises(ClientError) as refused:
        c_ec2.describe_images(ImageIds=[image_id])
    assert refused.value.response["Error"]["Code"] == "InvalidAMIID.NotFound"


def test_copying_another_accounts_image_needs_snapshot_permission(stack, ec2, shared_image):
    b_ec2 = stack.account(B).client("ec2", endpoint_url=stack.endpoint)
    with pytest.raises(ClientError) as refused:
        b_ec2.copy_image(SourceImageId=shared_image["image_id"], SourceRegion="us-east-1", Name="copy")
    assert refused.value.response["Error"]["Message"] == "You do not have permission to access the storage of this ami"


def test_a_cross_account_copy_belongs_to_the_caller_untagged_and_re_encrypted(stack, ec2, shared_image):
    for snapshot in shared_image["snapshots"]:
        ec2.modify_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission", OperationType="add", UserIds=[B])
    stack.client("kms").create_grant(
        KeyId=shared_image["key"], GranteePrincipal=f"arn:aws:iam::{B}:root",
        Operations=EBS_GRANT,
    )
    b = stack.account(B)
    b_ec2 = b.client("ec2", endpoint_url=stack.endpoint)
    b_key = b.client("kms", endpoint_url=stack.endpoint).create_key(Description="B's CMK")["KeyMetadata"]["Arn"]
    copy_id = b_ec2.copy_image(SourceImageId=shared_image["image_id"], SourceRegion="us-east-1", Name="copy",
                               Encrypted=True, KmsKeyId=b_key)["ImageId"]
    copy = b_ec2.describe_images(ImageIds=[copy_id])["Images"][0]
    assert copy["OwnerId"] == B
    assert copy.get("Tags", []) == []
    wait_for(lambda: image_state(b_ec2, copy_id) == "available", what="copy available")
    snapshots = b_ec2.describe_snapshots(SnapshotIds=[m["Ebs"]["SnapshotId"] for m in copy["BlockDeviceMappings"]])["Snapshots"]
    assert {s["OwnerId"] for s in snapshots} == {B}
    assert {s.get("KmsKeyId") for s in snapshots} == {b_key}


def test_a_copy_without_the_source_key_fails(stack, ec2, shared_image):
    for snapshot in shared_image["snapshots"]:
        ec2.modify_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission", OperationType="add", UserIds=[B])
    b_ec2 = stack.account(B).client("ec2", endpoint_url=stack.endpoint)
    copy_id = b_ec2.copy_image(SourceImageId=shared_image["image_id"], SourceRegion="us-east-1", Name="copy")["ImageId"]
    wait_for(lambda: image_state(b_ec2, copy_id) == "failed", what="copy failed")
    reason = b_ec2.describe_images(ImageIds=[copy_id])["Images"][0]["StateReason"]
    assert reason["Code"] == "Client.InvalidKMSKey.InvalidState"


def test_copy_image_with_an_unknown_key_fails(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    missing = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    copy_id = ec2.copy_image(SourceImageId=image_id, SourceRegion="us-east-1", Name="copy", Encrypted=True, KmsKeyId=missing)["ImageId"]
    wait_for(lambda: image_state(ec2, copy_id) == "failed", what="copy failed")


def test_a_same_account_copy_keeps_the_source_key(stack, ec2, shared_image):
    copy_id = ec2.copy_image(SourceImageId=shared_image["image_id"], SourceRegion="us-east-1", Name="same")["ImageId"]
    copy = ec2.describe_images(ImageIds=[copy_id])["Images"][0]
    keys = {m["Ebs"].get("KmsKeyId") for m in copy["BlockDeviceMappings"] if m["Ebs"].get("Encrypted")}
    assert keys == {shared_image["key"]}


def test_a_billing_product_image_cannot_be_copied_to_another_account(stack, ec2, shared_image):
    for snapshot in shared_image["snapshots"]:
        ec2.modify_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission", OperationType="add", UserIds=[B])
    stack.control("billing-product", {"imageId": shared_image["image_id"], "code": "bp-63a5400a"})
    b_ec2 = stack.account(B).client("ec2", endpoint_url=stack.endpoint)
    with pytest.raises(ClientError) as refused:
        b_ec2.copy_image(SourceImageId=shared_image["image_id"], SourceRegion="us-east-1", Name="copy")
    assert "BillingProduct" in refused.value.response["Error"]["Message"]


# 6 and 9. KMS across accounts, organizations ---------------------------------------------------

ORG = {"organizationId": "o-amiflow0001"}


@pytest.fixture
def organization(stack):
    stack.control("config", {"organization": {
        "123456789012": {**ORG, "ouPath": "o-amiflow0001/r-root/ou-root-platform/"},
        B: {**ORG, "ouPath": "o-amiflow0001/r-root/ou-root-apps/"},
        "333333333333": {**ORG, "ouPath": "o-amiflow0001/r-root/ou-root-sandbox/"},
    }})
    yield
    stack.control("config", {"organization": {}})


def test_another_account_needs_the_key_policy_or_a_grant_to_use_a_key(stack):
    kms = stack.client("kms")
    key = kms.create_key(Description="A's CMK")["KeyMetadata"]["Arn"]
    b_kms = stack.account(B).client("kms", endpoint_url=stack.endpoint)
    for call in (lambda: b_kms.describe_key(KeyId=key),
                 lambda: b_kms.generate_data_key_without_plaintext(KeyId=key, KeySpec="AES_256"),
                 lambda: b_kms.create_grant(KeyId=key, GranteePrincipal=f"arn:aws:iam::{B}:role/x", Operations=["Decrypt"])):
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    kms.create_grant(KeyId=key, GranteePrincipal=f"arn:aws:iam::{B}:root", Operations=["DescribeKey"])
    assert b_kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"] == key
    with pytest.raises(ClientError):
        b_kms.generate_data_key_without_plaintext(KeyId=key, KeySpec="AES_256")


def test_a_kms_denied_fault_takes_away_every_foreign_key(stack):
    kms = stack.client("kms")
    key = kms.create_key(Description="A's CMK")["KeyMetadata"]["Arn"]
    kms.create_grant(KeyId=key, GranteePrincipal=f"arn:aws:iam::{B}:root", Operations=["DescribeKey"])
    b_kms = stack.account(B).client("kms", endpoint_url=stack.endpoint)
    assert b_kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"] == key
    stack.control("faults", {"kind": "kms-denied", "accountId": B})
    with pytest.raises(ClientError) as refused:
        b_kms.describe_key(KeyId=key)
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    own = b_kms.create_key(Description="B's own")["KeyMetadata"]["KeyId"]
    assert b_kms.describe_key(KeyId=own)["KeyMetadata"]["KeyId"] == own


def test_a_key_policy_with_an_ou_condition_admits_only_that_ou(stack, organization):
    kms = stack.client("kms")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Owner", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Apps", "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": ["kms:DescribeKey", "kms:Decrypt"], "Resource": "*",
         "Condition": {"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": ["o-amiflow0001/r-root/ou-root-apps/*"]}}},
    ]}
    key = kms.create_key(Description="OU key", Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    assert stack.account(B).client("kms", endpoint_url=stack.endpoint).describe_key(KeyId=key)["KeyMetadata"]["Arn"] == key
    with pytest.raises(ClientError) as refused:
        stack.account("333333333333").client("kms", endpoint_url=stack.endpoint).describe_key(KeyId=key)
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"


def test_the_aws_managed_ebs_key_is_never_usable_by_another_account(stack, ec2, world):
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=4, Encrypted=True)["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=world.instance_id, Device="/dev/sdi")
    aws_ebs = stack.client("kms").describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]
    assert aws_ebs["KeyManager"] == "AWS"
    b_kms = stack.account(B).client("kms", endpoint_url=stack.endpoint)
    with pytest.raises(ClientError) as refused:
        b_kms.describe_key(KeyId=aws_ebs["Arn"])
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    # Its policy lets the account use it only through EC2: not even the owner can grant it away.
    with pytest.raises(ClientError) as refused:
        stack.client("kms").create_grant(KeyId=aws_ebs["Arn"], GranteePrincipal=f"arn:aws:iam::{B}:root", Operations=["DescribeKey"])
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"


def test_grants_are_validated_and_named_grants_are_not_made_twice(stack):
    kms = stack.client("kms")
    key = kms.create_key()["KeyMetadata"]["Arn"]
    with pytest.raises(ClientError) as refused:
        kms.create_grant(KeyId=key, GranteePrincipal=f"arn:aws:iam::{B}:root", Operations=["Decrypt", "Fly"])
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError):
        kms.create_grant(KeyId=key, GranteePrincipal="somebody", Operations=["Decrypt"])
    first = kms.create_grant(KeyId=key, GranteePrincipal=f"arn:aws:iam::{B}:root", Operations=["Decrypt"], Name="amiflow-b")
    again = kms.create_grant(KeyId=key, GranteePrincipal=f"arn:aws:iam::{B}:root", Operations=["Decrypt"], Name="amiflow-b")
    assert first["GrantId"] == again["GrantId"]
    assert len(kms.list_grants(KeyId=key)["Grants"]) == 1


def test_an_image_shared_with_an_ou_is_launchable_by_its_accounts_only(stack, ec2, world, organization):
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    ou = "arn:aws:organizations::123456789012:ou/o-amiflow0001/ou-root-apps"
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"OrganizationalUnitArn": ou}]})
    assert stack.account(B).client("ec2", endpoint_url=stack.endpoint).describe_images(ImageIds=[image_id])["Images"]
    with pytest.raises(ClientError):
        stack.account("333333333333").client("ec2", endpoint_url=stack.endpoint).describe_images(ImageIds=[image_id])


@pytest.fixture
def public_sharing(stack, ec2):
    """Block public access for AMIs lifted in the default account; the new-account defaults
    come back when the test ends."""
    ec2.disable_image_block_public_access()
    yield
    stack.control("block-public-access", method="DELETE")


def test_images_shared_with_the_organization_or_everyone(stack, ec2, world, organization, public_sharing):
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    outsider = stack.account("444444444444").client("ec2", endpoint_url=stack.endpoint)
    member = stack.account("333333333333").client("ec2", endpoint_url=stack.endpoint)
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"OrganizationArn": "arn:aws:organizations::123456789012:organization/o-amiflow0001"}]})
    assert member.describe_images(ImageIds=[image_id])["Images"]
    with pytest.raises(ClientError):
        outsider.describe_images(ImageIds=[image_id])
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"Group": "all"}]})
    assert outsider.describe_images(ImageIds=[image_id])["Images"]


def test_key_policy_account_principals_and_org_id_conditions(stack, organization):
    kms = stack.client("kms")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{B}:root"}, "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"], "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:DescribeKey", "Resource": "*",
         "Condition": {"StringEquals": {"aws:PrincipalOrgID": "o-amiflow0001"}}},
    ]}
    key = kms.create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    b_kms = stack.account(B).client("kms", endpoint_url=stack.endpoint)
    blob = b_kms.encrypt(KeyId=key, Plaintext=b"secret")["CiphertextBlob"]
    assert b_kms.decrypt(KeyId=key, CiphertextBlob=blob)["Plaintext"] == b"secret"
    member = stack.account("333333333333").client("kms", endpoint_url=stack.endpoint)
    assert member.describe_key(KeyId=key)["KeyMetadata"]["Arn"] == key
    with pytest.raises(ClientError):
        member.decrypt(KeyId=key, CiphertextBlob=blob)
    with pytest.raises(ClientError):
        stack.account("444444444444").client("kms", endpoint_url=stack.endpoint).describe_key(KeyId=key)


def test_a_cross_account_copy_without_a_key_uses_the_callers_aws_ebs_key(stack, ec2, shared_image):
    for snapshot in shared_image["snapshots"]:
        ec2.modify_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission", OperationType="add", UserIds=[B])
    stack.client("kms").create_grant(KeyId=shared_image["key"], GranteePrincipal=f"arn:aws:iam::{B}:root",
                                     Operations=EBS_GRANT)
    b = stack.account(B)
    b_ec2 = b.client("ec2", endpoint_url=stack.endpoint)
    copy_id = b_ec2.copy_image(SourceImageId=shared_image["image_id"], SourceRegion="us-east-1", Name="copy")["ImageId"]
    wait_for(lambda: image_state(b_ec2, copy_id) == "available", what="copy available")
    b_ebs = b.client("kms", endpoint_url=stack.endpoint).describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"]
    encrypted = [m["Ebs"] for m in b_ec2.describe_images(ImageIds=[copy_id])["Images"][0]["BlockDeviceMappings"] if m["Ebs"].get("Encrypted")]
    assert encrypted and {e["KmsKeyId"] for e in encrypted} == {b_ebs}


def test_a_copy_into_a_key_the_caller_may_not_use_fails(stack, ec2, shared_image):
    for snapshot in shared_image["snapshots"]:
        ec2.modify_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission", OperationType="add", UserIds=[B])
    stack.client("kms").create_grant(KeyId=shared_image["key"], GranteePrincipal=f"arn:aws:iam::{B}:root",
                                     Operations=EBS_GRANT)
    # B names a key of A's that A never opened to B as the destination key.
    foreign = stack.client("kms").create_key(Description="not B's")["KeyMetadata"]["Arn"]
    b_ec2 = stack.account(B).client("ec2", endpoint_url=stack.endpoint)
    copy_id = b_ec2.copy_image(SourceImageId=shared_image["image_id"], SourceRegion="us-east-1", Name="copy", Encrypted=True, KmsKeyId=foreign)["ImageId"]
    wait_for(lambda: image_state(b_ec2, copy_id) == "failed", what="copy failed")


def test_an_asymmetric_key_signs_and_its_public_key_verifies(stack):
    # The layer makes a key's pair on first use (moto makes one for every key, at CreateKey).
    kms = stack.client("kms")
    key = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    signature = kms.sign(KeyId=key, Message=b"amiflow", SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    assert kms.verify(KeyId=key, Message=b"amiflow", Signature=signature, SigningAlgorithm="RSASSA_PSS_SHA_256")["SignatureValid"]
    assert kms.get_public_key(KeyId=key)["PublicKey"]


# 10. EC2's refusals --------------------------------------------------------------------------

def test_a_pending_image_cannot_be_launched_shared_or_copied(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 3})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    for call in (
        lambda: ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"]),
        lambda: ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"UserId": B}]}),
        lambda: ec2.copy_image(SourceImageId=image_id, SourceRegion="us-east-1", Name=f"copy-{uuid.uuid4().hex[:6]}"),
    ):
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "InvalidAMIID.Unavailable"
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"UserId": B}]})


def test_a_client_token_used_again_with_other_parameters_is_refused(stack, ec2, world):
    image_id = ec2.describe_instances(InstanceIds=[world.instance_id])["Reservations"][0]["Instances"][0]["ImageId"]
    token = uuid.uuid4().hex
    launch = dict(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"], ClientToken=token)
    first = ec2.run_instances(**launch)["Instances"][0]["InstanceId"]
    assert ec2.run_instances(**launch)["Instances"][0]["InstanceId"] == first
    with pytest.raises(ClientError) as refused:
        ec2.run_instances(**{**launch, "SubnetId": world.subnets["us-east-1c"]})
    assert refused.value.response["Error"]["Code"] == "IdempotentParameterMismatch"
    stack.control("config", {"imageDelaySeconds": 0})
    source = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, source) == "available", what="available")
    copy = dict(SourceImageId=source, SourceRegion="us-east-1", Name="copy-a", ClientToken=token)
    assert ec2.copy_image(**copy)["ImageId"] == ec2.copy_image(**copy)["ImageId"]
    with pytest.raises(ClientError) as refused:
        ec2.copy_image(**{**copy, "Name": "copy-b"})
    assert refused.value.response["Error"]["Code"] == "IdempotentParameterMismatch"


def test_describe_images_answers_what_meets_every_criterion(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 0})
    mine = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    b_ec2 = stack.account(B).client("ec2", endpoint_url=stack.endpoint)
    b_world = seed(b_ec2, "us-east-1", name=f"theirs-{uuid.uuid4().hex[:6]}")
    theirs = b_ec2.create_image(InstanceId=b_world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(b_ec2, theirs) == "available", what="available")
    b_ec2.modify_image_attribute(ImageId=theirs, LaunchPermission={"Add": [{"UserId": "123456789012"}]})
    assert {i["ImageId"] for i in ec2.describe_images(ImageIds=[mine, theirs])["Images"]} == {mine, theirs}
    assert [i["ImageId"] for i in ec2.describe_images(ImageIds=[mine, theirs], Owners=["self"])["Images"]] == [mine]
    assert [i["ImageId"] for i in ec2.describe_images(ImageIds=[mine, theirs], ExecutableUsers=["self"])["Images"]] == [theirs]
    assert ec2.describe_images(ImageIds=[theirs], Owners=["self"])["Images"] == []
    assert ec2.describe_images(ImageIds=[mine], Filters=[{"Name": "name", "Values": ["no-such-name"]}])["Images"] == []


def test_a_just_deregistered_image_is_described_as_nothing(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    ec2.deregister_image(ImageId=image_id)
    assert ec2.describe_images(ImageIds=[image_id])["Images"] == []


def test_deregistering_with_its_snapshots_deletes_those_the_caller_may(stack, ec2, world):
    stack.control("config", {"imageDelaySeconds": 0})
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=4)["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=world.instance_id, Device="/dev/sdm")
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}",
                                TagSpecifications=[{"ResourceType": kind, "Tags": [{"Key": "amiflow:execution", "Value": "x"}]}
                                                   for kind in ("image", "snapshot")])["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    snapshots = sorted(m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"])
    # The first snapshot loses its tag: the cleanup function may delete only tagged ones.
    ec2.delete_tags(Resources=[snapshots[0]], Tags=[{"Key": "amiflow:execution"}])
    cleanup = stack.as_function("cleanup", "ec2")
    answer = cleanup.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
    codes = {r["SnapshotId"]: r["ReturnCode"] for r in answer["DeleteSnapshotResults"]}
    assert codes == {snapshots[0]: "missing-permissions", **{s: "success" for s in snapshots[1:]}}
    assert [s["SnapshotId"] for s in ec2.describe_snapshots(SnapshotIds=[snapshots[0]])["Snapshots"]] == [snapshots[0]]
    for deleted in snapshots[1:]:
        with pytest.raises(ClientError):
            ec2.describe_snapshots(SnapshotIds=[deleted])


# Block public access ------------------------------------------------------------------------

@pytest.fixture
def blocking(stack):
    yield
    stack.control("block-public-access", method="DELETE")


def test_a_new_account_blocks_public_amis_until_it_lifts_the_block(stack, ec2, world, blocking):
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: image_state(ec2, image_id) == "available", what="available")
    state = ec2.get_image_block_public_access_state()
    assert (state["ImageBlockPublicAccessState"], state["ManagedBy"]) == ("block-new-sharing", "account")
    with pytest.raises(ClientError) as refused:
        ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"Group": "all"}]})
    assert refused.value.response["Error"]["Code"] == "OperationNotPermitted"
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []
    assert ec2.disable_image_block_public_access()["ImageBlockPublicAccessState"] == "unblocked"
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"Group": "all"}]})
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == [{"Group": "all"}]


def test_a_snapshot_block_refuses_public_snapshots_and_a_declarative_policy_cannot_be_lifted(stack, ec2, world, blocking):
    volume = ec2.describe_instances(InstanceIds=[world.instance_id])["Reservations"][0]["Instances"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    snapshot_id = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    assert ec2.get_snapshot_block_public_access_state()["State"] == "unblocked"
    assert ec2.enable_snapshot_block_public_access(State="block-new-sharing")["State"] == "block-new-sharing"
    with pytest.raises(ClientError) as refused:
        ec2.modify_snapshot_attribute(SnapshotId=snapshot_id, Attribute="createVolumePermission", OperationType="add", GroupNames=["all"])
    assert refused.value.response["Error"]["Code"] == "OperationNotPermitted"
    ec2.modify_snapshot_attribute(SnapshotId=snapshot_id, Attribute="createVolumePermission", OperationType="add", UserIds=[B])
    stack.control("block-public-access", {"accountId": "123456789012", "kind": "image", "state": "block-new-sharing", "managedBy": "declarative-policy"})
    assert ec2.get_image_block_public_access_state()["ManagedBy"] == "declarative-policy"
    with pytest.raises(ClientError) as managed:
        ec2.disable_image_block_public_access()
    assert managed.value.response["Error"]["Code"] == "OperationNotPermitted"


# Step Functions status changes --------------------------------------------------------------

def status_changes(stack, execution_arn: str) -> list[str]:
    return [d["event"]["detail"]["status"] for d in stack.control("events")
            if d["event"]["detail-type"] == "Step Functions Execution Status Change"
            and d["event"]["detail"]["executionArn"] == execution_arn]


def test_executions_send_their_status_changes_and_a_stop_is_at_once(stack, sfn):
    role = "arn:aws:iam::123456789012:role/amiflow-local-states"
    machines = {}
    for name, definition in {
        "pass": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}},
        "long": {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 30, "End": True}}},
        "short": {"StartAt": "W", "TimeoutSeconds": 1, "States": {"W": {"Type": "Wait", "Seconds": 30, "End": True}}},
        "stamped": {"StartAt": "P", "States": {"P": {"Type": "Pass", "Parameters": {"at.$": "$$.Execution.StartTime"}, "End": True}}},
    }.items():
        machines[name] = sfn.create_state_machine(name=f"{name}-{uuid.uuid4().hex[:6]}", definition=json.dumps(definition), roleArn=role)["stateMachineArn"]
    done = sfn.start_execution(stateMachineArn=machines["pass"], input="{}")["executionArn"]
    wait_for(lambda: status_changes(stack, done) == ["RUNNING", "SUCCEEDED"], what="RUNNING then SUCCEEDED")
    event = next(d["event"] for d in stack.control("events") if d["event"]["resources"] == [done] and d["event"]["detail"]["status"] == "SUCCEEDED")
    assert event["source"] == "aws.states" and event["detail"]["stateMachineArn"] == machines["pass"]
    assert isinstance(event["detail"]["startDate"], int) and isinstance(event["detail"]["stopDate"], int)
    stopped = sfn.start_execution(stateMachineArn=machines["long"], input="{}")["executionArn"]
    sfn.stop_execution(executionArn=stopped)
    assert sfn.describe_execution(executionArn=stopped)["status"] == "ABORTED"
    assert status_changes(stack, stopped) == ["RUNNING", "ABORTED"]
    # An output holding the start time (a timestamp inside the interpreter) is sent as JSON text.
    stamped = sfn.start_execution(stateMachineArn=machines["stamped"], input="{}")["executionArn"]
    wait_for(lambda: status_changes(stack, stamped) == ["RUNNING", "SUCCEEDED"], what="the stamped run's events")
    timed_out = sfn.start_execution(stateMachineArn=machines["short"], input="{}")["executionArn"]
    wait_for(lambda: status_changes(stack, timed_out) == ["RUNNING", "TIMED_OUT"], timeout=10, what="TIMED_OUT")


def test_a_task_starts_another_state_machine_and_waits_for_its_json_output(stack, sfn):
    """startExecution.sync:2, as connect-stepfunctions.html documents it: Parameters name
    StateMachineArn, Name and Input; the result has the child's Status and Output (JSON) under
    capitalised names, dates in ms; a failed child fails the task with States.TaskFailed."""
    role = "arn:aws:iam::123456789012:role/amiflow-local-states"
    suffix = uuid.uuid4().hex[:6]
    child = sfn.create_state_machine(name=f"child-{suffix}", roleArn=role, definition=json.dumps({
        "StartAt": "C", "States": {
            "C": {"Type": "Choice", "Choices": [{"Variable": "$.fail", "BooleanEquals": True, "Next": "F"}], "Default": "S"},
            "F": {"Type": "Fail", "Error": "Boom", "Cause": "asked to"},
            "S": {"Type": "Pass", "Parameters": {"doubled.$": "States.MathAdd($.n, $.n)"}, "End": True}}}))["stateMachineArn"]
    parent = sfn.create_state_machine(name=f"parent-{suffix}", roleArn=role, definition=json.dumps({
        "StartAt": "T", "States": {"T": {
            "Type": "Task", "Resource": "arn:aws:states:::states:startExecution.sync:2",
            "Parameters": {"StateMachineArn": child, "Name.$": "$.name", "Input.$": "$"},
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Caught"}], "End": True},
            "Caught": {"Type": "Pass", "End": True}}}))["stateMachineArn"]

    def result(name: str, fail: bool) -> dict:
        arn = sfn.start_execution(stateMachineArn=parent, name=name, input=json.dumps({"name": name, "n": 21, "fail": fail}))["executionArn"]
        wait_for(lambda: sfn.describe_execution(executionArn=arn)["status"] != "RUNNING", what=f"{name} to end")
        described = sfn.describe_execution(executionArn=arn)
        assert described["status"] == "SUCCEEDED", described
        return json.loads(described["output"])

    done = result(f"ok-{suffix}", False)
    assert done["Status"] == "SUCCEEDED" and done["Output"] == {"doubled": 42}
    assert done["ExecutionArn"].endswith(f":child-{suffix}:ok-{suffix}") and isinstance(done["StartDate"], int)
    failed = result(f"no-{suffix}", True)
    assert failed["error"]["Error"] == "States.TaskFailed"
    cause = json.loads(failed["error"]["Cause"])
    assert (cause["Status"], cause["Error"], cause["Cause"]) == ("FAILED", "Boom", "asked to")


def test_a_distributed_map_reads_its_items_from_s3_and_writes_every_result_there(stack, sfn):
    """ItemReader (s3:getObject, JSON) and ResultWriter (s3:putObject), as
    input-output-resultwriter.html documents them: the manifest names the result files, whose
    records hold each child workflow's status and output; the writer's `Bucket.$` is read from the
    state's input. moto 5.2.5 writes an empty manifest, and reads the path from the results."""
    s3 = stack.client("s3")
    suffix = uuid.uuid4().hex[:6]
    bucket = f"map-results-{suffix}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="in/items.json", Body=json.dumps([{"n": n} for n in range(7)]).encode())
    role = "arn:aws:iam::123456789012:role/amiflow-local-states"
    machine = sfn.create_state_machine(name=f"dmap-{suffix}", roleArn=role, definition=json.dumps({
        "StartAt": "M", "States": {"M": {
            "Type": "Map", "MaxConcurrency": 3,
            "ItemReader": {"Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "JSON"},
                           "Parameters": {"Bucket.$": "$.bucket", "Key": "in/items.json"}},
            "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}, "StartAt": "P",
                              "States": {"P": {"Type": "Pass", "Parameters": {"doubled.$": "States.MathAdd($.n, $.n)"}, "End": True}}},
            "ResultWriter": {"Resource": "arn:aws:states:::s3:putObject", "Parameters": {"Bucket.$": "$.bucket", "Prefix": "out/run"}},
            "End": True}}}))["stateMachineArn"]
    arn = sfn.start_execution(stateMachineArn=machine, input=json.dumps({"bucket": bucket}))["executionArn"]
    wait_for(lambda: sfn.describe_execution(executionArn=arn)["status"] != "RUNNING", what="the map to end")
    described = sfn.describe_execution(executionArn=arn)
    assert described["status"] == "SUCCEEDED", (described.get("error"), described.get("cause"))
    written = json.loads(described["output"])["ResultWriterDetails"]
    assert written["Bucket"] == bucket and written["Key"].startswith("out/run/") and written["Key"].endswith("/manifest.json")
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=written["Key"])["Body"].read())
    assert manifest["DestinationBucket"] == bucket and manifest["ResultFiles"]["FAILED"] == []
    records = [r for f in manifest["ResultFiles"]["SUCCEEDED"]
               for r in json.loads(s3.get_object(Bucket=bucket, Key=f["Key"])["Body"].read())]
    assert {r["Status"] for r in records} == {"SUCCEEDED"}
    assert sorted(json.loads(r["Output"])["doubled"] for r in records) == [2 * n for n in range(7)]


def test_an_execution_history_comes_in_pages_and_newest_first_when_asked(stack, sfn):
    role = "arn:aws:iam::123456789012:role/amiflow-local-states"
    machine = sfn.create_state_machine(name=f"paged-{uuid.uuid4().hex[:6]}", roleArn=role, definition=json.dumps({
        "StartAt": "M", "States": {"M": {"Type": "Map", "ItemsPath": "$.items", "ItemProcessor": {
            "ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}, "End": True}}}))["stateMachineArn"]
    arn = sfn.start_execution(stateMachineArn=machine, name=f"paged-{uuid.uuid4().hex[:6]}", input=json.dumps({"items": list(range(30))}))["executionArn"]
    wait_for(lambda: sfn.describe_execution(executionArn=arn)["status"] == "SUCCEEDED", what="the run to end")
    first = sfn.get_execution_history(executionArn=arn)
    assert len(first["events"]) == 100 and "nextToken" in first
    rest = sfn.get_execution_history(executionArn=arn, nextToken=first["nextToken"])
    everything = first["events"] + rest["events"]
    assert "nextToken" not in rest and [e["id"] for e in everything] == list(range(1, len(everything) + 1))
    newest = sfn.get_execution_history(executionArn=arn, reverseOrder=True, maxResults=3)["events"]
    assert [e["id"] for e in newest] == [len(everything), len(everything) - 1, len(everything) - 2]
    assert newest[0]["type"] == "ExecutionSucceeded"


def test_a_capacity_reservation_holds_a_place_for_a_targeted_launch(stack, ec2, world):
    source = ec2.describe_instances(InstanceIds=[world.instance_id])["Reservations"][0]["Instances"][0]
    created = ec2.create_capacity_reservation(
        InstanceType="t3.micro", InstancePlatform="Linux/UNIX", AvailabilityZone="us-east-1b", InstanceCount=1,
        InstanceMatchCriteria="targeted", ClientToken=f"cr-{uuid.uuid4().hex[:6]}",
        TagSpecifications=[{"ResourceType": "capacity-reservation", "Tags": [{"Key": "purpose", "Value": "test"}]}],
    )["CapacityReservation"]
    reservation = created["CapacityReservationId"]
    assert (created["State"], created["AvailableInstanceCount"]) == ("active", 1)
    tagged = ec2.describe_capacity_reservations(Filters=[{"Name": "tag:purpose", "Values": ["test"]}])["CapacityReservations"]
    assert [r["CapacityReservationId"] for r in tagged] == [reservation]

    def launch():
        return ec2.run_instances(ImageId=source["ImageId"], InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                 SubnetId=world.subnets["us-east-1b"],
                                 CapacityReservationSpecification={"CapacityReservationTarget": {"CapacityReservationId": reservation}})

    launched = launch()["Instances"][0]
    described = ec2.describe_instances(InstanceIds=[launched["InstanceId"]])["Reservations"][0]["Instances"][0]
    assert described["CapacityReservationId"] == reservation
    assert ec2.describe_capacity_reservations(CapacityReservationIds=[reservation])["CapacityReservations"][0]["AvailableInstanceCount"] == 0
    with pytest.raises(ClientError) as full:
        launch()
    assert full.value.response["Error"]["Code"] == "ReservationCapacityExceeded"
    ec2.terminate_instances(InstanceIds=[launched["InstanceId"]])
    assert ec2.describe_capacity_reservations(CapacityReservationIds=[reservation])["CapacityReservations"][0]["AvailableInstanceCount"] == 1
    ec2.cancel_capacity_reservation(CapacityReservationId=reservation)
    assert ec2.describe_capacity_reservations(CapacityReservationIds=[reservation])["CapacityReservations"][0]["State"] == "cancelled"
    with pytest.raises(ClientError) as unknown:
        ec2.cancel_capacity_reservation(CapacityReservationId="cr-00000000000000000")
    assert unknown.value.response["Error"]["Code"] == "InvalidCapacityReservationId.NotFound"
    stack.control("faults", {"kind": "insufficient-capacity", "availabilityZone": "us-east-1c", "count": 1})
    with pytest.raises(ClientError) as none:
        ec2.create_capacity_reservation(InstanceType="t3.micro", InstancePlatform="Linux/UNIX", AvailabilityZone="us-east-1c", InstanceCount=1)
    assert none.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"


def test_a_registered_target_is_initial_then_healthy_and_a_deregistered_one_drains(stack, ec2, world):
    elb = stack.client("elbv2")
    stack.control("config", {"statusCheckDelaySeconds": 2})
    group = elb.create_target_group(Name=f"tg-{uuid.uuid4().hex[:6]}", Protocol="HTTP", Port=80, VpcId=world.vpc_id,
                                    TargetType="instance")["TargetGroups"][0]["TargetGroupArn"]

    def state() -> tuple[str, str | None]:
        health = elb.describe_target_health(TargetGroupArn=group, Targets=[{"Id": world.instance_id, "Port": 8080}])["TargetHealthDescriptions"][0]["TargetHealth"]
        return health["State"], health.get("Reason")

    elb.register_targets(TargetGroupArn=group, Targets=[{"Id": world.instance_id, "Port": 8080}])
    assert state() == ("initial", "Elb.RegistrationInProgress")
    wait_for(lambda: state()[0] == "healthy", timeout=10, what="the target to pass its checks")
    elb.deregister_targets(TargetGroupArn=group, Targets=[{"Id": world.instance_id, "Port": 8080}])
    assert state() == ("draining", "Target.DeregistrationInProgress")
    wait_for(lambda: state() == ("unused", "Target.NotRegistered"), timeout=10, what="the draining to end")
    stack.control("faults", {"kind": "impaired", "instanceId": world.instance_id})
    elb.register_targets(TargetGroupArn=group, Targets=[{"Id": world.instance_id, "Port": 8080}])
    wait_for(lambda: state() == ("unhealthy", "Target.FailedHealthChecks"), timeout=10, what="an impaired target to fail its checks")
