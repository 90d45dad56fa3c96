"""Starting runs from tags: the trigger function, fired by its schedule rule on the local stack."""

from __future__ import annotations


import time
import uuid

import pytest
from amiflow_local.seed import seed

from accounts import SHAREABLE
from workflow import fire, instance, log_records, wait_for


def status_of(ec2, instance_id: str) -> str | None:
    tags = {t["Key"]: t["Value"] for t in instance(ec2, instance_id).get("Tags", [])}
    return tags.get("amiflow:status")


def executions_for(sfn, instance_id: str) -> list[dict]:
    from workflow import state_machine_arn

    listed = sfn.list_executions(stateMachineArn=state_machine_arn(sfn, "MigrateInstance"))["executions"]
    return [e for e in listed if instance_id in e["name"]]


def test_a_tagged_instance_is_migrated_once_by_the_schedule(stack, ec2, sfn):
    world = seed(ec2, "us-east-1", name=f"tagged-{uuid.uuid4().hex[:6]}")
    ec2.create_tags(Resources=[world.instance_id], Tags=[{"Key": "amiflow:migrate-to", "Value": "us-east-1c"}])
    stack.control("config", {"statusCheckDelaySeconds": 2})
    fire(stack)
    running = wait_for(lambda: (s := status_of(ec2, world.instance_id)) and s.startswith("running:") and s, what="running")
    execution = running.split(":", 1)[1]
    # A second sweep during the run starts nothing.
    fire(stack)
    time.sleep(1)
    assert [e["name"] for e in executions_for(sfn, world.instance_id)] == [execution]
    wait_for(lambda: executions_for(sfn, world.instance_id)[0]["status"] == "SUCCEEDED", what="run finished", timeout=60)
    # The next sweep records the outcome; sweeps after it start nothing for the same request.
    fire(stack)
    wait_for(lambda: status_of(ec2, world.instance_id) == f"done:{execution}", what="done")
    fire(stack)
    time.sleep(1)
    assert len(executions_for(sfn, world.instance_id)) == 1
    migrated = [i for r in ec2.describe_instances(Filters=[{"Name": "tag:amiflow:execution", "Values": [execution]}])["Reservations"] for i in r["Instances"]]
    assert len(migrated) == 1 and migrated[0]["Placement"]["AvailabilityZone"] == "us-east-1c"
    assert "amiflow:migrate-to" not in {t["Key"] for t in migrated[0]["Tags"]}, "the copy must not ask to be migrated again"


@pytest.mark.parametrize("value, field", [("the moon", "amiflow:migrate-to"), ("eu-west-1a", "amiflow:migrate-to")])
def test_a_bad_tag_value_is_reported_and_starts_nothing(stack, ec2, sfn, value, field):
    world = seed(ec2, "us-east-1", name=f"bad-{uuid.uuid4().hex[:6]}")
    ec2.create_tags(Resources=[world.instance_id], Tags=[{"Key": "amiflow:migrate-to", "Value": value}])
    fire(stack)
    status = wait_for(lambda: status_of(ec2, world.instance_id), what="status")
    assert status.startswith(f"invalid:{field}:"), status
    assert executions_for(sfn, world.instance_id) == []


def test_tagging_an_instance_starts_its_migration_without_waiting_for_the_schedule(stack, ec2, sfn):
    world = seed(ec2, "us-east-1", name=f"tagnow-{uuid.uuid4().hex[:6]}")
    ec2.create_tags(Resources=[world.instance_id], Tags=[{"Key": "amiflow:migrate-to", "Value": "us-east-1b"}, {"Key": "amiflow:source-action", "Value": "keep"}])
    # The Tag Change on Resource event invokes the trigger for this instance alone.
    status = wait_for(lambda: status_of(ec2, world.instance_id), what="status")
    assert status.startswith("running:migrate-")
    wait_for(lambda: executions_for(sfn, world.instance_id) and executions_for(sfn, world.instance_id)[0]["status"] == "SUCCEEDED", what="run finished", timeout=60)
    assert len(executions_for(sfn, world.instance_id)) == 1


def test_an_image_tagged_share_with_is_shared_once(stack, ec2, sfn, stack_parameters):
    from accounts import B, encrypted_image
    from workflow import state_machine_arn

    stack_parameters(AllowedReceivers=B)
    key = stack.client("kms").create_key(Description="CMK-A", Tags=SHAREABLE)["KeyMetadata"]["Arn"]
    image_id = encrypted_image(stack, ec2, key)
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": "amiflow:share-with", "Value": B}])

    def image_status():
        tags = {t["Key"]: t["Value"] for t in ec2.describe_images(ImageIds=[image_id])["Images"][0].get("Tags", [])}
        return tags.get("amiflow:status")

    running = wait_for(lambda: (s := image_status()) and s.startswith("running:share-") and s, what="share started")
    execution = running.split(":", 1)[1]
    wait_for(lambda: ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == [{"UserId": B}], what="shared")
    fire(stack)
    wait_for(lambda: image_status() == f"done:{execution}", what="done", timeout=60)
    shares = [e for e in sfn.list_executions(stateMachineArn=state_machine_arn(sfn, "ShareImage"))["executions"] if image_id in e["name"]]
    assert [e["name"] for e in shares] == [execution]
    assert len(stack.client("kms").list_grants(KeyId=key)["Grants"]) == 1


def test_an_image_tagged_copy_to_in_the_explicit_form_is_copied(stack, ec2, sfn, stack_parameters):
    """The <account>:<role ARN>:<key> form assumes the role with the stack's CopyExternalId."""
    from accounts import B, as_account, encrypted_image

    stack_parameters(AllowedCopyTargets=B)
    b_key = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})["targetKmsKeyArn"]
    key = stack.client("kms").create_key(Description="CMK-A", Tags=SHAREABLE)["KeyMetadata"]["Arn"]
    image_id = encrypted_image(stack, ec2, key)
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": "amiflow:copy-to", "Value": f"{B}:arn:aws:iam::{B}:role/amiflow-copy:{b_key}"}])

    def image_status():
        tags = {t["Key"]: t["Value"] for t in ec2.describe_images(ImageIds=[image_id])["Images"][0].get("Tags", [])}
        return tags.get("amiflow:status") or ""

    running = wait_for(lambda: (s := image_status()).startswith("running:copy-") and s, what="copy started")
    execution = running.split(":", 1)[1]
    copied = wait_for(lambda: [i for i in as_account(stack, B, "ec2").describe_images(Owners=["self"])["Images"]
                               if {"Key": "amiflow:execution", "Value": execution} in i.get("Tags", [])], what="the copy in B", timeout=90)
    assert copied[0]["OwnerId"] == B
    from workflow import finish, state_machine_arn

    arn = f"{state_machine_arn(sfn, 'CopyImage').replace(':stateMachine:', ':execution:')}:{execution}"
    result = finish(sfn, execution, arn)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    fire(stack)
    wait_for(lambda: image_status() == f"done:{execution}", what="done", timeout=60)


def test_a_status_naming_no_run_stops_neither_the_sweep_nor_its_own_request(stack, ec2, sfn):
    # An amiflow:status naming an execution that does not exist (edited by hand, say) used to fail
    # every sweep at DescribeExecution. Now the error is recorded on that instance
    # (error:AwsApi:…ExecutionDoesNotExist…), the sweep goes on to the others, and that status
    # change brings the instance's own request round again: its run starts.
    bad = seed(ec2, "us-east-1", name=f"badstatus-{uuid.uuid4().hex[:6]}")
    good = seed(ec2, "us-east-1", name=f"goodstatus-{uuid.uuid4().hex[:6]}")
    ec2.create_tags(Resources=[bad.instance_id], Tags=[{"Key": "amiflow:status", "Value": "running:no-such-run"},
                                                       {"Key": "amiflow:migrate-to", "Value": "us-east-1c"}])
    ec2.create_tags(Resources=[good.instance_id], Tags=[{"Key": "amiflow:migrate-to", "Value": "us-east-1c"}])
    fire(stack)
    for world in (good, bad):
        runs = wait_for(lambda: executions_for(sfn, world.instance_id), what="run started")
        assert len(runs) == 1 and runs[0]["name"].startswith("migrate-")
        wait_for(lambda: executions_for(sfn, world.instance_id)[0]["status"] == "SUCCEEDED", what="run finished", timeout=90)
    records = log_records(stack, "trigger")
    assert any(
        r["level"] == "WARN" and r["fields"].get("resource") == bad.instance_id
        and r["fields"].get("error", "").startswith("DescribeExecution: ExecutionDoesNotExist") for r in records
    ), [r for r in records if r["level"] != "INFO"]
