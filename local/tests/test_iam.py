"""IAM on the local stack: every signed call is judged as AWS judges it (layer/iam.py). Each test
fails without the behaviour it names: moto 5.2.5 alone answers every call whoever makes it."""

from __future__ import annotations

import json
import time
import uuid

import boto3
import pytest
from botocore.exceptions import ClientError

from amiflow_local.seed import organization_root, seed
from workflow import wait_for

A, B = "123456789012", "210987654321"
EC2_VIA = {"StringEquals": {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}}
EBS_KEY_ACTIONS = ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext",
                   "kms:ReEncryptFrom", "kms:ReEncryptTo"]


def allow(actions, resources="*", condition=None, effect="Allow") -> dict:
    statement = {"Effect": effect, "Action": actions, "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def make_role(stack, statements, account: str = A, trust_principal: str | None = None, external_id: str | None = None) -> str:
    """A role in `account` with these identity statements; it trusts `trust_principal` (default:
    the account itself)."""
    iam = stack.client("iam") if account == A else stack.account(account).client("iam", endpoint_url=stack.endpoint)
    name = f"t-{uuid.uuid4().hex[:10]}"
    trust = {"Effect": "Allow", "Principal": {"AWS": trust_principal or f"arn:aws:iam::{account}:root"}, "Action": "sts:AssumeRole"}
    if external_id:
        trust["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]}))["Role"]["Arn"]
    if statements:
        iam.put_role_policy(RoleName=name, PolicyName="p", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}))
    return arn


def session_of(stack, role_arn: str, via=None, **kwargs) -> boto3.session.Session:
    sts = via.client("sts", endpoint_url=stack.endpoint) if via is not None else stack.client("sts")
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="test", **kwargs)["Credentials"]
    return boto3.session.Session(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                                 aws_session_token=creds["SessionToken"], region_name="us-east-1")


def client_as(stack, role_arn: str, service: str):
    return session_of(stack, role_arn).client(service, endpoint_url=stack.endpoint)


def refused(call, code: str) -> str:
    with pytest.raises(ClientError) as error:
        call()
    assert error.value.response["Error"]["Code"] == code, error.value.response["Error"]
    return error.value.response["Error"]["Message"]


@pytest.fixture
def world(ec2):
    return seed(ec2, "us-east-1", name=f"iam-{uuid.uuid4().hex[:6]}")


def encrypted_image(stack, ec2, world, key: str) -> str:
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=4, Encrypted=True, KmsKeyId=key)["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=world.instance_id, Device="/dev/sdk")
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "available", what="available")
    return image_id


def test_a_function_may_make_only_the_calls_its_role_allows(stack, world):
    launch = stack.as_function("launch", "ec2")
    assert launch.describe_instances(InstanceIds=[world.instance_id])["Reservations"]
    message = refused(lambda: launch.terminate_instances(InstanceIds=[world.instance_id]), "UnauthorizedOperation")
    assert "assumed-role/amiflow-local-LaunchFunctionRole/launch" in message
    assert f"instance/{world.instance_id}" in message
    assert any(d["action"] == "ec2:TerminateInstances" for d in stack.control("denials"))


def test_json_services_answer_access_denied_exception(stack):
    wait_image = stack.as_function("wait-image", "dynamodb")
    wait_image.put_item(TableName="TaskTokenTable", Item={"imageId": {"S": "ami-1"}, "tokenKey": {"S": "t"}})
    refused(lambda: wait_image.put_item(TableName="RunLockTable", Item={"resourceId": {"S": "i-1"}}), "AccessDeniedException")
    refused(lambda: stack.as_function("wait-image", "kms").create_key(), "AccessDeniedException")
    refused(lambda: stack.as_function("wait-image", "stepfunctions").list_executions(
        stateMachineArn=f"arn:aws:states:us-east-1:{A}:stateMachine:MigrateInstance"), "AccessDeniedException")


def test_a_resource_tag_condition_is_judged_on_the_resource(stack, ec2, world):
    cleanup = stack.as_function("cleanup", "ec2")
    refused(lambda: cleanup.terminate_instances(InstanceIds=[world.instance_id]), "UnauthorizedOperation")
    ec2.create_tags(Resources=[world.instance_id], Tags=[{"Key": "amiflow:execution", "Value": "x"}])
    assert cleanup.terminate_instances(InstanceIds=[world.instance_id])["TerminatingInstances"]


def test_tags_are_judged_by_their_keys_and_by_the_action_that_creates_them(stack, ec2, world):
    trigger = stack.as_function("trigger", "ec2")
    trigger.create_tags(Resources=[world.instance_id], Tags=[{"Key": "amiflow:status", "Value": "done:x"}])
    refused(lambda: trigger.create_tags(Resources=[world.instance_id], Tags=[{"Key": "amiflow:migrate-to", "Value": "us-east-1b"}]),
            "UnauthorizedOperation")
    launch = stack.as_function("launch", "ec2")
    refused(lambda: launch.create_tags(Resources=[world.instance_id], Tags=[{"Key": "a", "Value": "b"}]), "UnauthorizedOperation")
    image_id = ec2.describe_instances(InstanceIds=[world.instance_id])["Reservations"][0]["Instances"][0]["ImageId"]
    made = launch.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"],
                                TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}])
    assert made["Instances"][0]["Tags"] == [{"Key": "a", "Value": "b"}]


def test_an_explicit_deny_wins(stack, world):
    role = make_role(stack, [allow("ec2:*"), allow("ec2:TerminateInstances", effect="Deny")])
    ec2 = client_as(stack, role, "ec2")
    assert ec2.describe_instances(InstanceIds=[world.instance_id])["Reservations"]
    message = refused(lambda: ec2.terminate_instances(InstanceIds=[world.instance_id]), "UnauthorizedOperation")
    assert "explicit deny" in message


def test_copy_image_is_judged_on_the_source_snapshots_too(stack, ec2, world):
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "available", what="available")
    images_only = client_as(stack, make_role(stack, [allow("ec2:CopyImage", "arn:aws:ec2:us-east-1::image/*")]), "ec2")
    message = refused(lambda: images_only.copy_image(SourceImageId=image_id, SourceRegion="us-east-1", Name="copy-one"), "UnauthorizedOperation")
    assert ":snapshot/snap-" in message
    both = client_as(stack, make_role(stack, [allow("ec2:CopyImage", ["arn:aws:ec2:us-east-1::image/*",
                                                                       "arn:aws:ec2:us-east-1::snapshot/*"])]), "ec2")
    assert both.copy_image(SourceImageId=image_id, SourceRegion="us-east-1", Name="copy-two")["ImageId"].startswith("ami-")


def test_passing_the_instance_role_needs_pass_role(stack, ec2, world):
    iam = stack.client("iam")
    role = make_role(stack, [], trust_principal=A)
    profile = f"p-{uuid.uuid4().hex[:8]}"
    iam.create_instance_profile(InstanceProfileName=profile)
    iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=role.rsplit("/", 1)[-1])
    image_id = ec2.describe_instances(InstanceIds=[world.instance_id])["Reservations"][0]["Instances"][0]["ImageId"]
    run = allow("ec2:RunInstances")
    launch = dict(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"], IamInstanceProfile={"Name": profile})
    message = refused(lambda: client_as(stack, make_role(stack, [run]), "ec2").run_instances(**launch), "UnauthorizedOperation")
    assert "iam:PassRole" in message
    to_other_service = allow("iam:PassRole", role, {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}})
    refused(lambda: client_as(stack, make_role(stack, [run, to_other_service]), "ec2").run_instances(**launch), "UnauthorizedOperation")
    to_ec2 = allow("iam:PassRole", role, {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}})
    assert client_as(stack, make_role(stack, [run, to_ec2]), "ec2").run_instances(**launch)["Instances"]


def test_assume_role_needs_the_trust_policy_and_the_callers_own_permission(stack):
    caller = make_role(stack, [allow("sts:AssumeRole", f"arn:aws:iam::{B}:role/*")])
    stranger = make_role(stack, [allow("sts:AssumeRole", "*")])
    no_permission = make_role(stack, [allow("ec2:DescribeImages")])
    target = make_role(stack, [allow("ec2:DescribeImages")], account=B)
    iam_b = stack.account(B).client("iam", endpoint_url=stack.endpoint)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": [caller, no_permission]},
                                                     "Action": "sts:AssumeRole", "Condition": {"StringEquals": {"sts:ExternalId": "ext"}}}]}
    iam_b.update_assume_role_policy(RoleName=target.rsplit("/", 1)[-1], PolicyDocument=json.dumps(trust))

    def assume(who: str, **kwargs):
        return lambda: session_of(stack, target, via=session_of(stack, who), **kwargs)

    assert assume(caller, ExternalId="ext")().client("sts", endpoint_url=stack.endpoint).get_caller_identity()["Account"] == B
    refused(assume(caller), "AccessDenied")
    refused(assume(caller, ExternalId="other"), "AccessDenied")
    refused(assume(stranger, ExternalId="ext"), "AccessDenied")
    refused(assume(no_permission, ExternalId="ext"), "AccessDenied")


def test_a_key_is_judged_by_its_policy_iam_and_grants_together(stack):
    kms = stack.client("kms")
    user = make_role(stack, [])
    iam_user = make_role(stack, [allow("kms:DescribeKey")])
    granted = make_role(stack, [])
    only_user = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{A}:root"}, "Action": ["kms:CreateGrant", "kms:PutKeyPolicy"], "Resource": "*"},
        {"Sid": "User", "Effect": "Allow", "Principal": {"AWS": user}, "Action": "kms:DescribeKey", "Resource": "*"}]}
    key = kms.create_key(Policy=json.dumps(only_user))["KeyMetadata"]["Arn"]
    # A role named in the key policy needs no IAM policy; the account's IAM alone is not enough
    # while the key policy does not delegate to the account.
    assert client_as(stack, user, "kms").describe_key(KeyId=key)["KeyMetadata"]["Arn"] == key
    refused(lambda: client_as(stack, iam_user, "kms").describe_key(KeyId=key), "AccessDeniedException")
    refused(lambda: client_as(stack, granted, "kms").describe_key(KeyId=key), "AccessDeniedException")
    kms.create_grant(KeyId=key, GranteePrincipal=granted, Operations=["DescribeKey"])
    assert client_as(stack, granted, "kms").describe_key(KeyId=key)["KeyMetadata"]["Arn"] == key
    # Delegating to the account lets IAM policies count; an explicit deny in the key policy wins.
    delegated = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Account", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{A}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "NotHim", "Effect": "Deny", "Principal": {"AWS": granted}, "Action": "kms:*", "Resource": "*"}]}
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(delegated))
    assert client_as(stack, iam_user, "kms").describe_key(KeyId=key)["KeyMetadata"]["Arn"] == key
    refused(lambda: client_as(stack, granted, "kms").describe_key(KeyId=key), "AccessDeniedException")


def test_ec2_uses_a_key_with_the_callers_kms_permissions(stack, ec2, world):
    key = stack.client("kms").create_key(Description="CMK")["KeyMetadata"]["Arn"]
    image_id = encrypted_image(stack, ec2, world, key)
    run = allow(["ec2:RunInstances", "ec2:DescribeInstances"])

    def launched_state(role: str) -> dict:
        client = client_as(stack, role, "ec2")
        made = client.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=world.subnets["us-east-1b"])["Instances"][0]
        time.sleep(1)
        return client.describe_instances(InstanceIds=[made["InstanceId"]])["Reservations"][0]["Instances"][0]

    # Without KMS permissions the launch succeeds, then the instance ends with a client error.
    ended = launched_state(make_role(stack, [run]))
    assert ended["State"]["Name"] == "terminated"
    assert ended["StateReason"]["Code"] == "Client.InternalError"
    # Direct use is not use through EC2.
    direct = make_role(stack, [run, allow(EBS_KEY_ACTIONS, key, {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}})])
    assert launched_state(direct)["State"]["Name"] == "terminated"
    # Every action the EBS guide lists, through EC2: it runs.
    assert launched_state(make_role(stack, [run, allow(EBS_KEY_ACTIONS, key, EC2_VIA)]))["State"]["Name"] == "running"
    missing_one = [a for a in EBS_KEY_ACTIONS if a != "kms:ReEncryptTo"]
    assert launched_state(make_role(stack, [run, allow(missing_one, key, EC2_VIA)]))["State"]["Name"] == "terminated"
    # A disabled key is another failure, whoever launches.
    stack.client("kms").disable_key(KeyId=key.split("/")[-1])  # moto 5.2.5 takes only the key id here
    ended = launched_state(make_role(stack, [run, allow(EBS_KEY_ACTIONS, key, EC2_VIA)]))
    assert ended["StateReason"]["Code"] == "Client.InvalidKMSKey.InvalidState"


def test_organizations_list_parents_is_judged_on_the_child(stack):
    org = stack.client("organizations")
    root = organization_root(org)
    ou = org.create_organizational_unit(ParentId=root, Name=f"ou-{uuid.uuid4().hex[:6]}")["OrganizationalUnit"]
    org_id = ou["Arn"].split("/")[1]
    on_this_ou = make_role(stack, [allow("organizations:ListParents", ou["Arn"])])
    assert client_as(stack, on_this_ou, "organizations").list_parents(ChildId=ou["Id"])["Parents"][0]["Id"] == root
    elsewhere = make_role(stack, [allow("organizations:ListParents", f"arn:aws:organizations::{A}:ou/{org_id}/ou-zzzz-99999999")])
    message = refused(lambda: client_as(stack, elsewhere, "organizations").list_parents(ChildId=ou["Id"]), "AccessDeniedException")
    assert ou["Arn"] in message


def test_a_keys_tags_are_its_resource_tags(stack):
    kms = stack.client("kms")
    marked = kms.create_key(Tags=[{"TagKey": "amiflow:shareable", "TagValue": "true"}])["KeyMetadata"]["Arn"]
    unmarked = kms.create_key()["KeyMetadata"]["Arn"]
    role = make_role(stack, [allow("kms:DescribeKey", f"arn:aws:kms:us-east-1:{A}:key/*",
                                   {"StringEquals": {"aws:ResourceTag/amiflow:shareable": "true"}})])
    as_role = client_as(stack, role, "kms")
    assert as_role.describe_key(KeyId=marked)["KeyMetadata"]["Arn"] == marked
    message = refused(lambda: as_role.describe_key(KeyId=unmarked), "AccessDeniedException")
    assert unmarked in message


def test_an_item_call_is_judged_with_its_partition_key_as_leading_keys(stack):
    """grant-kms may take key-policy locks and no instance's run lock, and create-image and cleanup
    the reverse: `dynamodb:LeadingKeys`."""
    grant_kms = stack.as_function("grant-kms", "dynamodb")
    key_lock = {"resourceId": {"S": f"kms-key-policy/arn:aws:kms:us-east-1:{A}:key/1"}, "execution": {"S": "x"}}
    grant_kms.put_item(TableName="RunLockTable", Item=key_lock)
    grant_kms.delete_item(TableName="RunLockTable", Key={"resourceId": key_lock["resourceId"]})
    message = refused(lambda: grant_kms.put_item(TableName="RunLockTable", Item={"resourceId": {"S": "i-1"}}), "AccessDeniedException")
    assert "dynamodb:PutItem" in message
    refused(lambda: grant_kms.delete_item(TableName="RunLockTable", Key={"resourceId": {"S": "i-1"}}), "AccessDeniedException")
    # And the run lock's functions may touch instances' items only.
    refused(lambda: stack.as_function("create-image", "dynamodb").put_item(TableName="RunLockTable", Item=key_lock), "AccessDeniedException")
    refused(lambda: stack.as_function("cleanup", "dynamodb").delete_item(TableName="RunLockTable", Key={"resourceId": key_lock["resourceId"]}),
            "AccessDeniedException")


def test_an_s3_object_call_is_judged_on_the_object_and_a_listing_on_its_prefix(stack):
    """(Service Authorization Reference, Amazon S3: GetObject and PutObject on the object,
    ListObjectsV2 as s3:ListBucket on the bucket with s3:prefix.) The fleet function may use the
    fleets' files only; a function without S3 in its role may not read them."""
    bucket = "amiflow-local-fleetreportbucket"
    key = f"fleets/iam-{uuid.uuid4().hex[:6]}/plan.json"
    fleet = stack.as_function("fleet", "s3")
    fleet.put_object(Bucket=bucket, Key=key, Body=b"{}")
    assert fleet.get_object(Bucket=bucket, Key=key)["Body"].read() == b"{}"
    assert [o["Key"] for o in fleet.list_objects_v2(Bucket=bucket, Prefix=key.rsplit("/", 1)[0] + "/")["Contents"]] == [key]
    message = refused(lambda: fleet.put_object(Bucket=bucket, Key="elsewhere/plan.json", Body=b"{}"), "AccessDenied")
    assert f"arn:aws:s3:::{bucket}/elsewhere/plan.json" in message
    refused(lambda: fleet.list_objects_v2(Bucket=bucket, Prefix="elsewhere/"), "AccessDenied")
    refused(lambda: fleet.delete_object(Bucket=bucket, Key=key), "AccessDenied")
    refused(lambda: stack.as_function("launch", "s3").get_object(Bucket=bucket, Key=key), "AccessDenied")


def test_put_events_is_judged_on_the_bus_with_the_entrys_source_and_detail_type(stack):
    """(Service Authorization Reference, EventBridge: PutEvents on the event bus, with
    events:source and events:detail-type.) The approval function may put events on the default bus
    only; a function without events:PutEvents may put none."""
    entry = {"Source": "amiflow", "DetailType": "amiflow Run Awaiting Approval", "Detail": "{}"}
    approval = stack.as_function("approval", "events")
    assert approval.put_events(Entries=[entry])["FailedEntryCount"] == 0
    stack.client("events").create_event_bus(Name="elsewhere")
    message = refused(lambda: approval.put_events(Entries=[{**entry, "EventBusName": "elsewhere"}]), "AccessDeniedException")
    assert f"arn:aws:events:us-east-1:{A}:event-bus/elsewhere" in message
    refused(lambda: stack.as_function("launch", "events").put_events(Entries=[entry]), "AccessDeniedException")
