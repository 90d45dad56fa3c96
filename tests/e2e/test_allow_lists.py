"""Tags are not a back door: the stack owner's AllowedReceivers, AllowedCopyTargets and
TagSourceActions bound what a tag may start, and a non-empty list binds ShareImage and CopyImage
however they were started (README, Safety)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from amiflow_local.seed import organization_root, seed

from accounts import B, C, D, as_account, copy_input, encrypted_image
from workflow import fire, message, run, state_machine_arn, wait_for


def tag_status(ec2, resource_id: str) -> str:
    if resource_id.startswith("ami-"):
        tags = ec2.describe_images(ImageIds=[resource_id])["Images"][0].get("Tags", [])
    else:
        tags = ec2.describe_instances(InstanceIds=[resource_id])["Reservations"][0]["Instances"][0].get("Tags", [])
    return {t["Key"]: t["Value"] for t in tags}.get("amiflow:status") or ""


def executions(sfn, machine: str, resource_id: str) -> list[dict]:
    listed = sfn.list_executions(stateMachineArn=state_machine_arn(sfn, machine))["executions"]
    return [e for e in listed if resource_id in e["name"]]


def untouched(ec2, image_id: str) -> bool:
    return ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []


def test_a_share_with_tag_shares_nothing_while_allowed_receivers_is_empty(stack, ec2, sfn, cmk):
    image_id = encrypted_image(stack, ec2, cmk)
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": "amiflow:share-with", "Value": B}])
    status = wait_for(lambda: tag_status(ec2, image_id), what="status")
    assert status.startswith("invalid:amiflow:share-with: the stack s AllowedReceivers is empty"), status
    assert executions(sfn, "ShareImage", image_id) == []
    assert untouched(ec2, image_id) and stack.client("kms").list_grants(KeyId=cmk)["Grants"] == []


def test_a_share_with_tag_may_name_only_allowed_receivers(stack, ec2, sfn, cmk, stack_parameters):
    stack_parameters(AllowedReceivers=B)
    image_id = encrypted_image(stack, ec2, cmk)
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": "amiflow:share-with", "Value": f"{B},{D}"}])
    status = wait_for(lambda: tag_status(ec2, image_id), what="status")
    assert status == f"invalid:amiflow:share-with: not in the stack s AllowedReceivers: accountIds 1  {D}", status
    fire(stack)
    time.sleep(1)
    assert executions(sfn, "ShareImage", image_id) == []
    assert untouched(ec2, image_id) and stack.client("kms").list_grants(KeyId=cmk)["Grants"] == []


def test_a_non_empty_list_binds_a_share_started_directly(stack, ec2, sfn, cmk, stack_parameters):
    stack_parameters(AllowedReceivers=B)
    image_id = encrypted_image(stack, ec2, cmk)
    result = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B, D]})
    assert (result.status, result.error) == ("FAILED", "ReceiverNotAllowed")
    assert f"accountIds[1] {D}" in result.cause
    assert untouched(ec2, image_id) and stack.client("kms").list_grants(KeyId=cmk)["Grants"] == []
    allowed = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B]})
    assert allowed.status == "SUCCEEDED", (allowed.error, allowed.cause)


@pytest.fixture
def organization_tree(stack):
    """A's organization in AWS Organizations: root → platform → platform/web, and root → sandbox."""
    org = stack.client("organizations")
    root = organization_root(org)
    suffix = uuid.uuid4().hex[:6]
    platform = org.create_organizational_unit(ParentId=root, Name=f"platform-{suffix}")["OrganizationalUnit"]
    web = org.create_organizational_unit(ParentId=platform["Id"], Name=f"web-{suffix}")["OrganizationalUnit"]
    sandbox = org.create_organizational_unit(ParentId=root, Name=f"sandbox-{suffix}")["OrganizationalUnit"]
    return {"platform": platform["Arn"], "web": web["Arn"], "sandbox": sandbox["Arn"]}


def test_an_allowed_ou_admits_the_ous_beneath_it_and_no_other(stack, ec2, sfn, organization_tree, stack_parameters):
    stack_parameters(AllowedReceivers=organization_tree["platform"])
    image_id = ec2.create_image(InstanceId=seed(ec2, "us-east-1", name=f"ou-{uuid.uuid4().hex[:6]}").instance_id,
                                Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "available", what="image")
    outside = run(sfn, "ShareImage", {"imageId": image_id, "organizationalUnitArns": [organization_tree["sandbox"]]})
    assert (outside.status, outside.error) == ("FAILED", "ReceiverNotAllowed")
    assert untouched(ec2, image_id)
    beneath = run(sfn, "ShareImage", {"imageId": image_id, "organizationalUnitArns": [organization_tree["web"]]})
    assert beneath.status == "SUCCEEDED", (beneath.error, beneath.cause)
    permissions = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]
    assert permissions == [{"OrganizationalUnitArn": organization_tree["web"]}]


def test_a_copy_goes_only_to_allowed_targets(stack, ec2, sfn, cmk, stack_parameters):
    b_key = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})["targetKmsKeyArn"]
    stack_parameters(AllowedCopyTargets=C)
    image_id = encrypted_image(stack, ec2, cmk)
    # By tag, to an account the list does not hold: nothing starts.
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": "amiflow:copy-to", "Value": f"{B}:arn:aws:iam::{B}:role/amiflow-copy:{b_key}"}])
    status = wait_for(lambda: tag_status(ec2, image_id), what="status")
    assert status == f"invalid:amiflow:copy-to: {B} is not in the stack s AllowedCopyTargets", status
    assert executions(sfn, "CopyImage", image_id) == []
    # Started directly, the non-empty list binds it too, before any change.
    result = run(sfn, "CopyImage", copy_input(image_id, b_key))
    assert (result.status, result.error) == ("FAILED", "CopyTargetNotAllowed")
    assert message(result).startswith(f"targetAccountId: {B} is not in the stack's AllowedCopyTargets")
    assert untouched(ec2, image_id) and stack.client("kms").list_grants(KeyId=cmk)["Grants"] == []
    assert as_account(stack, B, "ec2").describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [f"*{image_id}*"]}])["Images"] == []


def test_a_tag_alone_never_stops_or_terminates_the_source(stack, ec2, sfn):
    world = seed(ec2, "us-east-1", name=f"term-{uuid.uuid4().hex[:6]}")
    ec2.create_tags(Resources=[world.instance_id], Tags=[{"Key": "amiflow:migrate-to", "Value": "us-east-1c"},
                                                       {"Key": "amiflow:source-action", "Value": "terminate"}])
    status = wait_for(lambda: tag_status(ec2, world.instance_id), what="status")
    assert status == "invalid:amiflow:source-action: terminate is not among the stack s TagSourceActions  keep   start the run directly", status
    fire(stack)
    time.sleep(1)
    assert executions(sfn, "MigrateInstance", world.instance_id) == []
    source = ec2.describe_instances(InstanceIds=[world.instance_id])["Reservations"][0]["Instances"][0]
    assert source["State"]["Name"] == "running"


def test_a_tag_started_migration_takes_its_image_without_a_reboot_unless_allowed(stack, ec2, sfn, stack_parameters):
    def started_input(world) -> dict:
        wait_for(lambda: tag_status(ec2, world.instance_id).startswith("running:"), what="started")
        execution = executions(sfn, "MigrateInstance", world.instance_id)[0]
        return json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])

    world = seed(ec2, "us-east-1", name=f"noreboot-{uuid.uuid4().hex[:6]}")
    ec2.create_tags(Resources=[world.instance_id], Tags=[{"Key": "amiflow:migrate-to", "Value": "us-east-1c"}])
    assert started_input(world)["noReboot"] is True
    stack_parameters(TagSourceActions="keep,stop,reboot")
    opted = seed(ec2, "us-east-1", name=f"reboot-{uuid.uuid4().hex[:6]}")
    ec2.create_tags(Resources=[opted.instance_id], Tags=[{"Key": "amiflow:migrate-to", "Value": "us-east-1c"},
                                                        {"Key": "amiflow:source-action", "Value": "stop"}])
    given = started_input(opted)
    assert "noReboot" not in given and given["sourceAction"] == "stop"
    for w in (world, opted):
        wait_for(lambda w=w: executions(sfn, "MigrateInstance", w.instance_id)[0]["status"] != "RUNNING", what="run ended", timeout=90)
