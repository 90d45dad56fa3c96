"""MigrateInstance, end to end on the local stack: the real functions under the real Step
Functions interpreter, asserting the resources a user would look at afterwards."""

from __future__ import annotations

import json
import uuid

import pytest

from workflow import instance, log_records, message, run, state_machine_arn, tagged


def volumes_by_device(ec2, described: dict) -> dict[str, dict]:
    ids = {m["Ebs"]["VolumeId"]: m for m in described["BlockDeviceMappings"]}
    volumes = ec2.describe_volumes(VolumeIds=list(ids))["Volumes"]
    out = {}
    for volume in volumes:
        mapping = ids[volume["VolumeId"]]
        volume["DeleteOnTermination"] = mapping["Ebs"]["DeleteOnTermination"]
        out[mapping["DeviceName"]] = volume
    return out


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def test_migrates_to_the_target_az_with_every_setting(stack, ec2, sfn, world):
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    out = result.output
    assert out["availabilityZone"] == "us-east-1b"
    assert out["subnetId"] == world.subnets["us-east-1b"]
    assert out["sourceInstanceId"] == world.instance_id
    assert out["elasticIp"] == world.public_ip
    assert out["imageKept"] is False

    new = instance(ec2, out["newInstanceId"])
    source = instance(ec2, world.instance_id)
    assert new["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert new["SubnetId"] == world.subnets["us-east-1b"]
    assert new["ImageId"] == out["imageId"]
    assert new["InstanceType"] == source["InstanceType"] == "t3.micro"
    assert [g["GroupId"] for g in new["SecurityGroups"]] == [world.security_group_id]
    assert new["KeyName"] == world.key_name
    assert new["MetadataOptions"]["HttpTokens"] == "required"
    new_tags = tags_of(new)
    assert new_tags["Name"] == tags_of(source)["Name"]
    assert new_tags["team"] == "web"
    assert new_tags["amiflow:execution"] == result.name
    assert new_tags["amiflow:source-instance"] == world.instance_id
    user_data = ec2.describe_instance_attribute(InstanceId=out["newInstanceId"], Attribute="userData")
    assert "amiflow demo" in __import__("base64").b64decode(user_data["UserData"]["Value"]).decode()

    volumes = volumes_by_device(ec2, new)
    assert sorted(volumes) == ["/dev/sdf", "/dev/xvda"]
    assert volumes["/dev/xvda"]["Size"] == 8 and volumes["/dev/sdf"]["Size"] == 20
    assert tags_of(volumes["/dev/sdf"])["role"] == "data"
    assert volumes["/dev/sdf"]["DeleteOnTermination"] is False, "the source's data volume outlives its instance; so must the copy"
    assert volumes["/dev/xvda"]["DeleteOnTermination"] is True

    address = ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]
    assert address["InstanceId"] == out["newInstanceId"]

    # The AMI and its snapshots are gone, the source is untouched.
    assert ec2.describe_images(Filters=[{"Name": "image-id", "Values": [out["imageId"]]}])["Images"] == []
    assert len(out["deletedSnapshotIds"]) == 2
    left = ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": out["deletedSnapshotIds"]}])["Snapshots"]
    assert left == []
    assert source["State"]["Name"] == "running"
    assert out["sourceState"] == "running"
    assert "amiflow:migrated-to" not in tags_of(source)
    assert result.states[:4] == ["Start", "PreflightAsked", "CreateImage", "WaitForImage"]
    assert "Preflight" not in result.states, "no preflight unless the input asks"
    assert result.states[-3:] == ["Complete", "AnnounceSucceeded", "Succeeded"]

    # Every line a step logged about this run's image can be found by the run's name.
    about_the_image = [
        record for f in ("create-image", "launch", "verify-instance", "cleanup")
        for record in log_records(stack, f) if out["imageId"] in json.dumps(record)
    ]
    assert about_the_image and all(
        any(span.get("execution") == result.name for span in record["spans"]) for record in about_the_image
    ), about_the_image[:3]


def test_terminates_the_source_and_keeps_the_image_when_asked(ec2, sfn, world):
    result = run(
        sfn,
        "MigrateInstance",
        {"instanceId": world.instance_id, "targetSubnetId": world.subnets["us-east-1c"], "sourceAction": "terminate", "keepImage": True},
    )
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    out = result.output
    assert out["availabilityZone"] == "us-east-1c"
    assert out["sourceState"] in ("shutting-down", "terminated")
    source = instance(ec2, world.instance_id)
    assert source["State"]["Name"] in ("shutting-down", "terminated")
    assert tags_of(source)["amiflow:migrated-to"] == out["newInstanceId"]
    image = ec2.describe_images(ImageIds=[out["imageId"]])["Images"][0]
    assert image["State"] == "available"
    assert tags_of(image)["amiflow:execution"] == result.name
    snapshots = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
    assert len(snapshots) == 2
    described = ec2.describe_snapshots(SnapshotIds=snapshots)["Snapshots"]
    assert all(tags_of(s)["amiflow:execution"] == result.name for s in described)
    assert instance(ec2, out["newInstanceId"])["State"]["Name"] == "running"


def test_stops_the_source_when_asked(ec2, sfn, world):
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1c", "sourceAction": "stop"})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert result.output["sourceState"] in ("stopping", "stopped")
    assert instance(ec2, world.instance_id)["State"]["Name"] in ("stopping", "stopped")


def test_an_instance_type_not_offered_in_the_target_az_fails_and_leaves_nothing(ec2, sfn, world):
    # vt1.3xlarge is offered in us-east-1a but not in us-east-1b.
    result = run(
        sfn,
        "MigrateInstance",
        {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", "instanceType": "vt1.3xlarge", "sourceAction": "terminate"},
    )
    assert result.status == "FAILED"
    assert result.error == "InstanceTypeNotOffered"
    assert message(result) == "instanceType: vt1.3xlarge is not offered in us-east-1b"
    assert "Rollback" in result.states
    assert tagged(ec2, result.name) == {"instances": [], "images": [], "snapshots": []}
    source = instance(ec2, world.instance_id)
    assert source["State"]["Name"] == "running"
    address = ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]
    assert address["InstanceId"] == world.instance_id


@pytest.mark.parametrize(
    "payload, error, field",
    [
        ({"instanceId": "i-123", "targetAvailabilityZone": "us-east-1b"}, "InvalidInput", "instanceId"),
        ({"instanceId": "i-0123456789abcdef0"}, "InvalidInput", "targetAvailabilityZone"),
        ({"instanceId": "i-0123456789abcdef0", "targetAvailabilityZone": "eu-west-1a"}, "InvalidInput", "targetAvailabilityZone"),
        ({"instanceId": "i-0123456789abcdef0", "targetAvailabilityZone": "us-east-1b", "sourceAction": "delete"}, "InvalidInput", "sourceAction"),
        ({"instanceId": "i-0123456789abcdef0", "targetAvailabilityZone": "us-east-1b"}, "InstanceNotFound", "instanceId"),
    ],
)
def test_bad_input_is_refused_with_the_field_named_before_anything_is_made(ec2, sfn, payload, error, field):
    images_before = len(ec2.describe_images(Owners=["self"])["Images"])
    result = run(sfn, "MigrateInstance", payload)
    assert result.status == "FAILED"
    assert result.error == error
    assert message(result).startswith(f"{field}:"), result.cause
    assert "Launch" not in result.states
    assert len(ec2.describe_images(Owners=["self"])["Images"]) == images_before


def test_the_subnet_must_be_in_the_sources_vpc(ec2, sfn, world):
    other_vpc = ec2.create_vpc(CidrBlock="10.99.0.0/16")["Vpc"]["VpcId"]
    foreign = ec2.create_subnet(VpcId=other_vpc, CidrBlock="10.99.1.0/24", AvailabilityZone="us-east-1b")["Subnet"]["SubnetId"]
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetSubnetId": foreign})
    assert result.status == "FAILED"
    assert result.error == "TargetMismatch"
    assert message(result).startswith("targetSubnetId:")
    assert tagged(ec2, result.name) == {"instances": [], "images": [], "snapshots": []}


def test_rollback_removes_what_the_run_made_and_moves_the_elastic_ip_back(ec2, sfn, lambda_, world):
    kept = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", "keepImage": True})
    assert kept.status == "SUCCEEDED", (kept.error, kept.cause)
    assert tagged(ec2, kept.name)["instances"] == [kept.output["newInstanceId"]]
    # The source carrying the execution's tag must not make the rollback touch it.
    ec2.create_tags(Resources=[world.instance_id], Tags=[{"Key": "amiflow:execution", "Value": kept.name}])
    history = sfn.get_execution_history(
        executionArn=sfn.describe_execution(executionArn=_arn(sfn, kept.name))["executionArn"], maxResults=1000
    )["events"]
    image_state = next(
        json.loads(e["stateExitedEventDetails"]["output"])["image"]
        for e in history
        if e.get("stateExitedEventDetails", {}).get("name") == "CreateImage"
    )
    answer = lambda_.invoke(
        FunctionName="cleanup",
        Payload=json.dumps({"action": "rollback", "execution": kept.name, "state": {"input": {"instanceId": world.instance_id}, "image": image_state}}),
    )
    assert "FunctionError" not in answer, answer["Payload"].read()
    removed = json.loads(answer["Payload"].read())
    assert removed["terminatedInstanceIds"] == [kept.output["newInstanceId"]]
    assert removed["deregisteredImageIds"] == [kept.output["imageId"]]
    assert len(removed["deletedSnapshotIds"]) == 2
    assert removed["elasticIpRestoredTo"] == world.instance_id
    assert ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]["InstanceId"] == world.instance_id
    assert instance(ec2, world.instance_id)["State"]["Name"] == "running"
    assert tagged(ec2, kept.name) == {"instances": [world.instance_id], "images": [], "snapshots": []}


def _arn(sfn, name: str) -> str:
    from workflow import state_machine_arn

    return state_machine_arn(sfn, "MigrateInstance").replace(":stateMachine:", ":execution:") + ":" + name


def state_durations(sfn, name: str) -> dict[str, float]:
    """Seconds from each state's entry to the next state's entry, from the execution history."""
    events = sfn.get_execution_history(executionArn=_arn(sfn, name), maxResults=1000)["events"]
    entered = [(e["stateEnteredEventDetails"]["name"], e["timestamp"]) for e in events if "stateEnteredEventDetails" in e]
    return {a: (t2 - t1).total_seconds() for (a, t1), (_, t2) in zip(entered, entered[1:])}


@pytest.mark.parametrize("delay", [0, 4])
def test_the_run_waits_for_the_pending_image_and_is_woken_by_its_event(stack, ec2, sfn, world, delay):
    stack.control("config", {"imageDelaySeconds": delay})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert "StartPolling" not in result.states, "the event (or the first look) ended the wait, not polling"
    image_id = result.output["imageId"]
    states = [d["event"]["detail"]["State"] for d in stack.control("events") if d["event"]["detail"].get("ImageId") == image_id]
    assert states[0] == "available"
    if delay:
        waited = state_durations(sfn, result.name)["WaitForImage"]
        assert delay - 0.5 <= waited < delay + 2.5, waited


def test_a_lost_ami_event_is_made_up_for_by_polling(stack, ec2, sfn, world):
    # The image stays pending longer than the run waits for its event (EventWaitSeconds=6 here),
    # and the event is dropped: the run must time out of the wait and poll until it is available.
    stack.control("config", {"imageDelaySeconds": 7})
    stack.control("faults", {"kind": "drop-event"})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert {"StartPolling", "PollImage", "WaitBeforePoll"} <= set(result.states)
    assert [f["kind"] for f in stack.control("faults")["fired"]] == ["drop-event"]
    assert tagged(ec2, result.name)["images"] == []


def test_a_failed_image_fails_the_run_with_its_reason_and_leaves_nothing(stack, ec2, sfn, world):
    stack.control("faults", {"kind": "fail-image", "reason": "Server.InternalError: snapshot creation failed"})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"})
    assert result.status == "FAILED"
    assert result.error == "ImageFailed"
    assert "snapshot creation failed" in result.cause, result
    assert tagged(ec2, result.name) == {"instances": [], "images": [], "snapshots": []}
    assert instance(ec2, world.instance_id)["State"]["Name"] == "running"


def test_preflight_in_the_input_fails_the_run_before_anything_is_made(ec2, sfn, world):
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b",
                                           "instanceType": "vt1.3xlarge", "preflight": True})
    assert result.status == "FAILED"
    assert result.error == "PreflightFailed"
    assert "instance type offered" in message(result)
    assert "CreateImage" not in result.states
    assert tagged(ec2, result.name) == {"instances": [], "images": [], "snapshots": []}


def test_preflight_in_the_input_lets_a_sound_run_through(ec2, sfn, world):
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", "preflight": True})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert result.states[:4] == ["Start", "PreflightAsked", "Preflight", "CreateImage"]


def test_a_launch_that_crashes_after_its_side_effect_is_retried_without_a_second_instance(stack, ec2, sfn, world):
    # The function launches the instance, then its runtime dies (Lambda.Unknown): the retry must
    # find that instance (ClientToken and tag) instead of launching another.
    stack.control("faults", {"kind": "crash-after-side-effect", "function": "launch"})
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert [f["kind"] for f in stack.control("faults")["fired"]] == ["crash-after-side-effect"]
    made = [i for r in ec2.describe_instances(Filters=[{"Name": "tag:amiflow:execution", "Values": [result.name]}])["Reservations"] for i in r["Instances"]]
    assert [i["InstanceId"] for i in made] == [result.output["newInstanceId"]]


def instance_role(stack, ec2, world, path: str) -> str:
    """Gives the source an instance profile whose role has this path; answers the profile's ARN."""
    iam = stack.client("iam")
    name = f"app-{uuid.uuid4().hex[:6]}"
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    iam.create_role(RoleName=name, Path=path, AssumeRolePolicyDocument=json.dumps(trust))
    profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    ec2.associate_iam_instance_profile(IamInstanceProfile={"Arn": profile}, InstanceId=world.instance_id)
    return profile


def test_launch_passes_only_roles_the_stack_admits_by_default_those_under_amiflow_instance(stack, ec2, sfn, world):
    """InstanceRoleNamePattern defaults to amiflow-instance/*: a source whose role is elsewhere is
    not migrated (launch may not pass its role) and the run leaves nothing; one under the path is."""
    from audits import audit

    instance_role(stack, ec2, world, "/")
    stack.control("denials", method="DELETE")
    refused = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"})
    assert (refused.status, refused.error) == ("FAILED", "AwsApi"), (refused.error, refused.cause)
    assert "UnauthorizedOperation" in message(refused)
    assert [d["action"] for d in stack.control("denials")] == ["iam:PassRole"]
    audit(ec2, refused, world)

    ec2.disassociate_iam_instance_profile(AssociationId=ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [world.instance_id]}])["IamInstanceProfileAssociations"][0]["AssociationId"])
    profile = instance_role(stack, ec2, world, "/amiflow-instance/")
    moved = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"})
    assert moved.status == "SUCCEEDED", (moved.error, moved.cause)
    assert instance(ec2, moved.output["newInstanceId"])["IamInstanceProfile"]["Arn"] == profile


def test_the_sources_user_data_never_enters_the_execution_history(stack, ec2, sfn, world):
    """User data often holds secrets: the state carries its SHA-256 and length, and launch reads
    the data from the source. The new instance has it; no event of the history does."""
    import base64

    encoded = ec2.describe_instance_attribute(InstanceId=world.instance_id, Attribute="userData")["UserData"]["Value"]
    plain = base64.b64decode(encoded).decode()
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    copied = ec2.describe_instance_attribute(InstanceId=result.output["newInstanceId"], Attribute="userData")["UserData"]["Value"]
    assert base64.b64decode(copied).decode() == plain
    arn = next(e["executionArn"] for e in sfn.list_executions(stateMachineArn=state_machine_arn(sfn, "MigrateInstance"))["executions"]
               if e["name"] == result.name)
    history = json.dumps(sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"], default=str)
    assert encoded not in history and "amiflow demo" not in history
    assert '"sha256"' in history.replace('\\"', '"')


def test_a_target_given_by_az_id_is_the_zone_of_that_id_in_this_account(ec2, sfn, world):
    zones = {z["ZoneId"]: z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
    zone_id = next(i for i, name in zones.items() if name == "us-east-1c")
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": zone_id})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert result.output["availabilityZone"] == "us-east-1c"
    assert instance(ec2, result.output["newInstanceId"])["SubnetId"] == world.subnets["us-east-1c"]
    unknown = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "use1-az9"})
    assert (unknown.status, unknown.error) == ("FAILED", "InvalidInput")
    assert message(unknown).startswith("targetAvailabilityZone: use1-az9"), unknown.cause
