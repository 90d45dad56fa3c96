"""ShareImage, UnshareImage and CopyImage end to end on the local stack, with three accounts and
an organization map: A (123456789012) owns the images, B (210987654321) receives and copies,
C (333333333333) is in another OU, and D (444444444444) is outside the organization."""

from __future__ import annotations

import json
import uuid

import pytest
from botocore.exceptions import ClientError

from accounts import A, APPS_OU, B, C, D, ORG_ID, as_account, copy_input, encrypted_image, launch_as
from workflow import message, new_environments, run


def test_a_shared_encrypted_ami_launches_in_b_only_because_of_the_grant(stack, ec2, sfn, cmk):
    image_id = encrypted_image(stack, ec2, cmk)
    # Without grant-kms: the launch permission alone lets B start an instance that then dies.
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"UserId": B}]})
    bare = launch_as(stack, B, image_id)
    assert bare["State"]["Name"] == "terminated"
    assert bare["StateReason"]["Code"] == "Client.InternalError"
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Remove": [{"UserId": B}]})

    result = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B]})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    out = result.output
    assert out["imageId"] == image_id and out["reencrypted"] is False
    assert out["launchPermissions"] == [{"userId": B}]
    assert len(out["snapshotPermissions"]) == 3
    grants = out["kmsKeyAccess"][0]["grants"]
    assert out["kmsKeyAccess"][0]["kmsKeyId"] == cmk and [g["accountId"] for g in grants] == [B]
    kms_grants = stack.client("kms").list_grants(KeyId=cmk)["Grants"]
    assert [g["GranteePrincipal"] for g in kms_grants] == [f"arn:aws:iam::{B}:root"]
    assert launch_as(stack, B, image_id)["State"]["Name"] == "running"

    # A second run adds nothing: the grant is found by its name.
    again = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B]})
    assert again.status == "SUCCEEDED"
    assert len(stack.client("kms").list_grants(KeyId=cmk)["Grants"]) == 1


def test_sharing_with_an_ou_goes_through_the_key_policy(stack, ec2, sfn, cmk, organization):
    image_id = encrypted_image(stack, ec2, cmk)
    result = run(sfn, "ShareImage", {"imageId": image_id, "organizationalUnitArns": [APPS_OU]})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    statements = json.loads(stack.client("kms").get_key_policy(KeyId=cmk, PolicyName="default")["Policy"])["Statement"]
    ours = [s for s in statements if s.get("Sid", "").startswith("Amiflow")]
    # The use of the key, and CreateGrant in a statement of its own, only for grants to AWS
    # resources (EC2's, when B launches).
    assert len(ours) == 2
    for statement in ours:
        assert statement["Condition"]["ForAnyValue:StringLike"]["aws:PrincipalOrgPaths"] == [f"{ORG_ID}/*/ou-root-appsaaaa/*"]
    use, grant = ours
    assert "kms:CreateGrant" not in use["Action"]
    assert grant["Action"] == "kms:CreateGrant" and grant["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}
    assert launch_as(stack, B, image_id)["State"]["Name"] == "running"
    with pytest.raises(ClientError):
        as_account(stack, C, "ec2").describe_images(ImageIds=[image_id])


def test_unsharing_takes_back_permissions_grants_and_policy_statements(stack, ec2, sfn, cmk, organization):
    image_id = encrypted_image(stack, ec2, cmk)
    receivers = {"accountIds": [D], "organizationalUnitArns": [APPS_OU]}
    assert run(sfn, "ShareImage", {"imageId": image_id, **receivers}).status == "SUCCEEDED"
    assert as_account(stack, D, "ec2").describe_images(ImageIds=[image_id])["Images"]
    result = run(sfn, "UnshareImage", {"imageId": image_id, **receivers})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    for account in (B, D):
        with pytest.raises(ClientError):
            as_account(stack, account, "ec2").describe_images(ImageIds=[image_id])
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []
    assert stack.client("kms").list_grants(KeyId=cmk)["Grants"] == []
    statements = json.loads(stack.client("kms").get_key_policy(KeyId=cmk, PolicyName="default")["Policy"])["Statement"]
    assert not [s for s in statements if s.get("Sid", "").startswith("Amiflow")]


def test_copy_image_into_b_re_encrypted_with_bs_key(stack, ec2, sfn, cmk):
    deployed = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})
    image_id = encrypted_image(stack, ec2, cmk, tags=[{"Key": "app", "Value": "web"}, {"Key": "tier", "Value": "gold"}])
    b_key = deployed["targetKmsKeyArn"]
    stack.control("config", {"imageDelaySeconds": 2})
    result = run(sfn, "CopyImage", {
        "sourceImageId": image_id, "sourceRegion": "us-east-1", "targetAccountId": B,
        "targetRoleArn": f"arn:aws:iam::{B}:role/amiflow-copy", "externalId": "ext-b",
        "targetKmsKeyId": b_key, "name": f"web-copy-{uuid.uuid4().hex[:6]}",
    })
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert "StartPollingTarget" not in result.states, "the copy's event, forwarded from B, ended the wait"
    out = result.output
    assert out["ownerAccountId"] == B and out["kmsKeyId"] == b_key and out["sharingKept"] is False
    b_ec2 = as_account(stack, B, "ec2")
    copy = b_ec2.describe_images(ImageIds=[out["targetImageId"]])["Images"][0]
    assert copy["OwnerId"] == B and copy["State"] == "available"
    tags = {t["Key"]: t["Value"] for t in copy["Tags"]}
    assert tags["app"] == "web" and tags["tier"] == "gold" and tags["amiflow:source-image"] == image_id
    snapshots = b_ec2.describe_snapshots(SnapshotIds=[m["Ebs"]["SnapshotId"] for m in copy["BlockDeviceMappings"]])["Snapshots"]
    assert {s["KmsKeyId"] for s in snapshots} == {b_key}
    # A's sharing and grants are gone again.
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []
    assert stack.client("kms").list_grants(KeyId=cmk)["Grants"] == []


def test_an_aws_ebs_encrypted_ami_is_shared_through_re_encryption(stack, ec2, sfn, cmk):
    image_id = encrypted_image(stack, ec2, None)
    refused = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B]})
    assert refused.status == "FAILED" and refused.error == "ManagedKeyNeedsReencryption"
    assert message(refused).startswith("reencryptKmsKeyId:")

    result = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B], "reencryptKmsKeyId": cmk})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    out = result.output
    assert out["reencrypted"] is True and out["sourceImageId"] == image_id and out["imageId"] != image_id
    assert {"WaitForCopy", "Replan"} <= set(result.states)
    assert launch_as(stack, B, out["imageId"])["State"]["Name"] == "running"


@pytest.mark.parametrize("case", ["public-encrypted", "billing-product", "bad-account"])
def test_refusals_change_nothing(stack, ec2, sfn, cmk, case):
    image_id = encrypted_image(stack, ec2, cmk)
    if case == "public-encrypted":
        result = run(sfn, "ShareImage", {"imageId": image_id, "public": True})
        expected = ("EncryptedImageNotPublic", "public:")
    elif case == "billing-product":
        stack.control("billing-product", {"imageId": image_id, "code": "bp-6ba54002"})
        result = run(sfn, "CopyImage", {
            "sourceImageId": image_id, "sourceRegion": "us-east-1", "targetAccountId": B,
            "targetRoleArn": f"arn:aws:iam::{B}:role/amiflow-copy", "externalId": "ext-b",
            "targetKmsKeyId": f"arn:aws:kms:us-east-1:{B}:key/11111111-2222-3333-4444-555555555555", "name": "never",
        })
        expected = ("BillingProductNotCopyable", "sourceImageId:")
    else:
        result = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": ["21098765432"]})
        expected = ("InvalidInput", "accountIds[0]:")
    assert result.status == "FAILED"
    assert result.error == expected[0]
    assert message(result).startswith(expected[1]), result.cause
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []
    assert stack.client("kms").list_grants(KeyId=cmk)["Grants"] == []
    assert len(ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:amiflow:execution", "Values": [result.name]}])["Images"]) == 0


def test_a_failed_copy_is_rolled_back_in_both_accounts(stack, ec2, sfn, cmk):
    deployed = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})
    image_id = encrypted_image(stack, ec2, cmk)
    b_key = deployed["targetKmsKeyArn"]
    stack.control("faults", {"kind": "fail-image", "reason": "Server.InternalError: snapshot copy failed"})
    result = run(sfn, "CopyImage", copy_input(image_id, b_key))
    assert result.status == "FAILED"
    assert result.error == "ImageFailed"
    assert {"RemoveTargetCopy", "UndoPermissions", "UndoKeyAccess"} <= set(result.states)
    b_images = as_account(stack, B, "ec2").describe_images(Owners=["self"], Filters=[{"Name": "tag:amiflow:execution", "Values": [result.name]}])["Images"]
    assert b_images == []
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []
    assert stack.client("kms").list_grants(KeyId=cmk)["Grants"] == []
    assert ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "available"


def test_a_lost_event_of_the_copy_is_made_up_for_by_polling_through_the_role(stack, ec2, sfn, cmk):
    deployed = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})
    image_id = encrypted_image(stack, ec2, cmk)
    b_key = deployed["targetKmsKeyArn"]
    # The copy stays pending longer than the run waits for its event (EventWaitSeconds=6), and the
    # event is dropped: only polling as B can see the copy become available.
    stack.control("config", {"imageDelaySeconds": 7})
    stack.control("faults", {"kind": "drop-event"})
    result = run(sfn, "CopyImage", {**copy_input(image_id, b_key), "keepSharing": True})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert {"StartPollingTarget", "PollTarget"} <= set(result.states)
    assert result.output["sharingKept"] is True
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == [{"UserId": B}]


def test_a_copy_role_in_an_account_the_stack_does_not_list_cannot_be_assumed(stack, ec2, sfn, cmk):
    """Account D deployed target-account.yaml (a role named like the copy role, trusting the
    source's functions), but the source stack's TargetAccountIds does not list D: amiflow's roles
    may assume the copy role only in the listed accounts, so the copy fails and A gives nothing."""
    from audits import NOTHING_SHARED, access_left

    deployed = stack.control("target-account", {"accountId": D, "externalId": "ext-d", "listInSource": False})
    image_id = encrypted_image(stack, ec2, cmk)
    stack.control("denials", method="DELETE")
    payload = copy_input(image_id, deployed["targetKmsKeyArn"])
    payload.update({"targetAccountId": D, "targetRoleArn": deployed["roles"][0], "externalId": "ext-d"})
    result = run(sfn, "CopyImage", payload)
    assert (result.status, result.error) == ("FAILED", "RoleNotAssumable"), (result.error, result.cause)
    refused = [d for d in stack.control("denials") if d["action"] == "sts:AssumeRole"]
    assert refused and all(f":iam::{D}:role/" in d["resource"] for d in refused), refused
    assert access_left(stack, ec2, image_id, cmk) == NOTHING_SHARED
    assert as_account(stack, D, "ec2").describe_images(Owners=["self"])["Images"] == []


def test_a_warm_copy_image_assumes_the_target_role_once_for_many_runs(stack, ec2, sfn, cmk):
    b_key = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})["targetKmsKeyArn"]
    new_environments(stack, "copy-image")

    def assumed() -> int:
        return sum(c["count"] for c in stack.control("calls")
                   if c["principal"] == "function:copy-image" and c["action"] == "sts:AssumeRole")

    before = assumed()
    for _ in range(2):
        result = run(sfn, "CopyImage", copy_input(encrypted_image(stack, ec2, cmk), b_key))
        assert result.status == "SUCCEEDED", (result.error, result.cause)
    # Three copy-image invocations a run (copy, tag, remove), in up to two environments: at most
    # one AssumeRole each, where every invocation asked for one before.
    assert 1 <= assumed() - before <= 2
