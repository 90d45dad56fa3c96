"""The workflows under IAM as AWS enforces it: each function signs as its own role, and a role that
lacks a permission its function needs fails the run as AWS would, leaving nothing behind. Each
removal deploys a copy of template.yaml (or target-account.yaml) without one statement, as a stack
update would, and deploys the original again afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from amiflow_local.template import _CfnLoader

from accounts import B, as_account, copy_input, encrypted_image
from audits import NOTHING_SHARED, access_left, audit, audit_copy
from workflow import instance, new_environments, run, wait_for

ROOT = Path(__file__).resolve().parents[2]


def without_statement(tmp_path: Path, file: str, sid: str) -> Path:
    """A copy of a template with the statement `sid` removed from whichever policy holds it."""
    doc = yaml.load((ROOT / file).read_text(), Loader=_CfnLoader)
    removed = 0
    for resource in doc["Resources"].values():
        for policy in (resource.get("Properties") or {}).get("Policies", []) or []:
            document = policy.get("PolicyDocument", policy)
            if isinstance(document, dict) and "Statement" in document:
                before = len(document["Statement"])
                document["Statement"] = [s for s in document["Statement"] if s.get("Sid") != sid]
                removed += before - len(document["Statement"])
    assert removed == 1, f"{file} has {removed} statements named {sid}"
    copy = tmp_path / file
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    return copy


@pytest.fixture
def deploy(stack, tmp_path):
    """deploy(file, sid): the stack updated from a copy of `file` without statement `sid`; the
    original is deployed again when the test ends."""
    deployed = []

    def apply(file: str, sid: str) -> None:
        copy = without_statement(tmp_path, file, sid)
        if file == "template.yaml":
            stack.control("deploy", {"template": str(copy)})
            # A role update does not end warm environments; new ones hold no credentials of the
            # target role from an earlier run, so the next run assumes it under the new policy.
            new_environments(stack, "copy-image", "wait-image")
        else:
            stack.control("target-account", {"accountId": B, "externalId": "ext-b", "template": str(copy)})
        deployed.append(file)

    yield apply
    for file in deployed:
        if file == "template.yaml":
            stack.control("deploy", {"template": str(ROOT / file)})
        else:
            stack.control("target-account", {"accountId": B, "externalId": "ext-b"})


def denied(stack, action: str) -> bool:
    return any(d["action"] == action for d in stack.control("denials"))


# MigrateInstance: one missing permission per function --------------------------------------

MIGRATE_REMOVALS = [
    # (statement removed, input beyond the instance and AZ, the action IAM refuses, error name)
    ("CreateImageOfTheSource", {}, "ec2:CreateImage", "AwsApi"),
    ("KeepTaskTokens", {}, "dynamodb:PutItem", "AwsApi"),
    ("LaunchIntoTheTarget", {}, "ec2:RunInstances", "AwsApi"),
    ("FinishOnlyWhatThisStackLaunched", {}, "ec2:CreateTags", "AwsApi"),
    ("StampTheSourceWithWhereItWent", {"sourceAction": "stop"}, "ec2:CreateTags", "AwsApi"),
    ("ReadOnlyChecks", {"preflight": True}, "ec2:DescribeInstances", "PreflightFailed"),
]


@pytest.mark.parametrize("sid,extra,action,error", MIGRATE_REMOVALS, ids=[r[0] for r in MIGRATE_REMOVALS])
def test_a_migration_whose_role_lacks_a_permission_fails_and_leaves_nothing(stack, ec2, sfn, world, deploy, sid, extra, action, error):
    deploy("template.yaml", sid)
    stack.control("denials", method="DELETE")
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", **extra})
    assert result.status == "FAILED", result
    assert result.error == error, (result.error, result.cause)
    assert denied(stack, action), stack.control("denials")
    audit(ec2, result, world)
    address = ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]
    assert address["InstanceId"] == world.instance_id


def test_a_source_encrypted_with_a_customer_managed_key_is_migrated(stack, ec2, sfn, world):
    """The launch role must be allowed the KMS actions the EBS guide lists, through EC2."""
    key = stack.client("kms").create_key(Description="app data")["KeyMetadata"]["Arn"]
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=4, Encrypted=True, KmsKeyId=key)["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=world.instance_id, Device="/dev/sdf")
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    new = instance(ec2, result.output["newInstanceId"])
    volumes = ec2.describe_volumes(VolumeIds=[m["Ebs"]["VolumeId"] for m in new["BlockDeviceMappings"]])["Volumes"]
    assert key in {v.get("KmsKeyId") for v in volumes}
    audit(ec2, result, world)


def test_without_its_kms_permissions_the_launch_of_an_encrypted_source_fails_as_on_aws(stack, ec2, sfn, world, deploy):
    key = stack.client("kms").create_key(Description="app data")["KeyMetadata"]["Arn"]
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=4, Encrypted=True, KmsKeyId=key)["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=world.instance_id, Device="/dev/sdf")
    deploy("template.yaml", "UseTheVolumesKeysThroughEc2")
    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"})
    assert result.status == "FAILED"
    assert result.error == "LaunchFailed" and "Client.InternalError" in result.cause, (result.error, result.cause)
    audit(ec2, result, world)


# ShareImage and CopyImage -------------------------------------------------------------------

# The undo runs on the plan, whatever the step's result, and reads before it writes. A role that
# may not read its keys cannot show that no grant is left, so that run says RollbackFailed.
@pytest.mark.parametrize("sid,action,error", [("ChangeSharing", "ec2:ModifyImageAttribute", "AwsApi"),
                                              ("ReadOwnKeys", "kms:DescribeKey", "RollbackFailed"),
                                              ("GrantShareableKeysToAccounts", "kms:CreateGrant", "AwsApi")])
def test_a_share_whose_role_lacks_a_permission_fails_and_gives_nothing_away(stack, ec2, sfn, cmk, deploy, sid, action, error):
    image_id = encrypted_image(stack, ec2, cmk)
    deploy("template.yaml", sid)
    stack.control("denials", method="DELETE")
    result = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B]})
    assert result.status == "FAILED" and result.error == error, (result.error, result.cause)
    assert action.split(":")[1] in result.cause
    assert denied(stack, action), stack.control("denials")
    assert access_left(stack, ec2, image_id, cmk) == NOTHING_SHARED


@pytest.fixture
def target(stack):
    return stack.control("target-account", {"accountId": B, "externalId": "ext-b"})["targetKmsKeyArn"]


@pytest.mark.parametrize("file,sid,error", [
    ("template.yaml", "AssumeOnlyTheTargetRole", "RoleNotAssumable"),
    ("target-account.yaml", "CopySharedImagesHere", "AwsApi"),
    ("target-account.yaml", "ReadTheSourceKeysThroughEc2", "ImageFailed"),
])
def test_a_copy_whose_roles_lack_a_permission_fails_in_both_accounts(stack, ec2, sfn, cmk, target, deploy, file, sid, error):
    image_id = encrypted_image(stack, ec2, cmk)
    deploy(file, sid)
    result = run(sfn, "CopyImage", copy_input(image_id, target))
    assert result.status == "FAILED" and result.error == error, (result.error, result.cause)
    audit_copy(stack, ec2, result, image_id, cmk)


def test_copy_with_preflight_assumes_the_target_role(stack, ec2, sfn, cmk, target):
    """The target account's role trusts the preflight function's role too."""
    image_id = encrypted_image(stack, ec2, cmk)
    result = run(sfn, "CopyImage", {**copy_input(image_id, target), "preflight": True})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    audit_copy(stack, ec2, result, image_id, cmk)


# The trigger ----------------------------------------------------------------------------------

def test_a_trigger_that_may_not_start_runs_starts_none(stack, ec2, sfn, world, deploy):
    deploy("template.yaml", "StartTheWorkflows")
    stack.control("denials", method="DELETE")
    ec2.create_tags(Resources=[world.instance_id], Tags=[{"Key": "amiflow:migrate-to", "Value": "us-east-1b"}])
    wait_for(lambda: denied(stack, "states:StartExecution"), what="the trigger's StartExecution to be refused")
    executions = sfn.list_executions(stateMachineArn="arn:aws:states:us-east-1:123456789012:stateMachine:MigrateInstance")["executions"]
    assert not [e for e in executions if world.instance_id in e["name"]]
    assert instance(ec2, world.instance_id)["State"]["Name"] == "running"
