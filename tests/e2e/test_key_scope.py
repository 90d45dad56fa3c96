"""KMS: amiflow grants only what a share needs, and only on keys their owner marked for sharing
(README, Safety). grant-kms's role is judged by the stack as IAM would judge it."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from accounts import B, SHAREABLE, copy_input, encrypted_image
from workflow import message, run

OPERATIONS = ["DescribeKey", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "CreateGrant", "GenerateDataKey",
              "GenerateDataKeyWithoutPlaintext"]


def nothing_given(stack, ec2, image_id: str, key: str, policy_before: str) -> None:
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []
    kms = stack.client("kms")
    assert kms.list_grants(KeyId=key)["Grants"] == []
    assert json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]) == json.loads(policy_before)


@pytest.mark.parametrize("machine", ["ShareImage", "CopyImage"])
def test_a_key_its_owner_did_not_mark_is_refused_before_any_change(stack, ec2, sfn, machine):
    kms = stack.client("kms")
    key = kms.create_key(Description="not for sharing")["KeyMetadata"]["Arn"]
    policy = kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
    image_id = encrypted_image(stack, ec2, key)
    if machine == "ShareImage":
        payload = {"imageId": image_id, "accountIds": [B]}
    else:
        b_key = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})["targetKmsKeyArn"]
        payload = copy_input(image_id, b_key)
    result = run(sfn, machine, payload)
    assert (result.status, result.error) == ("FAILED", "KeyNotShareable")
    assert "amiflow:shareable=true" in message(result)
    nothing_given(stack, ec2, image_id, key, policy)


@pytest.mark.parametrize("grantee, operations, marked, allowed", [
    (f"arn:aws:iam::{B}:root", OPERATIONS, True, True),
    (f"arn:aws:iam::{B}:role/anyone", OPERATIONS, True, False),
    (f"arn:aws:iam::{B}:root", OPERATIONS + ["Encrypt"], True, False),
    (f"arn:aws:iam::{B}:root", OPERATIONS, False, False),
])
def test_grant_kms_may_grant_only_shareable_keys_to_accounts_for_what_ec2_needs(stack, grantee, operations, marked, allowed):
    key = stack.client("kms").create_key(Description="k", **({"Tags": SHAREABLE} if marked else {}))["KeyMetadata"]["Arn"]
    as_grant_kms = stack.as_function("grant-kms", "kms")
    try:
        as_grant_kms.create_grant(KeyId=key, GranteePrincipal=grantee, Operations=operations, Name="amiflow-test")
        granted = True
    except ClientError as refused:
        assert refused.response["Error"]["Code"] == "AccessDeniedException"
        granted = False
    assert granted is allowed


def test_two_runs_editing_one_key_policy_keep_each_others_statements(stack, ec2, sfn):
    """Two ShareImage runs, started at once, share two images under one key with the organization:
    each adds its statements to the key policy. GetKeyPolicy answers each of them 2 s late, so both
    would read the policy before either writes it; the key's lock makes the second read wait for the
    first write."""
    from accounts import A, ORG_ID
    from workflow import finish, start

    kms = stack.client("kms")
    key = kms.create_key(Description="one key, two images", Tags=SHAREABLE)["KeyMetadata"]["Arn"]
    images = [encrypted_image(stack, ec2, key), encrypted_image(stack, ec2, key)]
    stack.control("faults", {"kind": "delay", "action": "GetKeyPolicy", "seconds": 2, "count": 2})
    organization = f"arn:aws:organizations::{A}:organization/{ORG_ID}"
    started = [start(sfn, "ShareImage", {"imageId": i, "organizationArns": [organization]}) for i in images]
    results = [finish(sfn, name, arn) for name, arn in started]
    assert [r.status for r in results] == ["SUCCEEDED", "SUCCEEDED"], [(r.error, r.cause) for r in results]
    first, second = (grant_keys_interval(sfn, arn) for _, arn in started)
    assert first[0] < second[1] and second[0] < first[1], f"the two GrantKeys did not overlap: {first} {second}"
    assert [f["kind"] for f in stack.control("faults")["fired"]].count("delay") == 2
    sids = {s.get("Sid") for s in json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])["Statement"]}
    for image_id, result in zip(images, results):
        assert set(result.output["kmsKeyAccess"][0]["keyPolicyStatements"]) <= sids, (image_id, sids)
    assert len([s for s in sids if s and s.startswith("Amiflow")]) == 4


def grant_keys_interval(sfn, execution_arn: str) -> tuple:
    """When the run's GrantKeys state was entered and left."""
    events = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
    entered = [e["timestamp"] for e in events if e.get("stateEnteredEventDetails", {}).get("name") == "GrantKeys"]
    exited = [e["timestamp"] for e in events if e.get("stateExitedEventDetails", {}).get("name") == "GrantKeys"]
    return entered[0], exited[-1]
