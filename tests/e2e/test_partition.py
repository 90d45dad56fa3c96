"""amiflow in another partition: a second local stack in cn-northwest-1 (partition aws-cn), where
every ARN begins `arn:aws-cn:`. There, as on AWS, a Task state whose Resource names another
partition fails with States.Runtime, IAM refuses a policy whose resources do, and KMS refuses a
grantee or a key-policy principal that does (local/amiflow_local/layer/partition.py)."""

from __future__ import annotations

import json
import uuid

import pytest
from amiflow_local.harness import RunningStack, Stack
from amiflow_local.seed import seed
from botocore.exceptions import ClientError

from accounts import B, SHAREABLE
from workflow import instance, run, wait_for

REGION = "cn-northwest-1"
# The module starts a stack of its own: under pytest-xdist its tests stay on one worker.
pytestmark = pytest.mark.xdist_group("aws-cn")


@pytest.fixture(scope="module")
def cn(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("stack-logs-cn")
    try:
        running = RunningStack(log_dir, region=REGION)
    except RuntimeError as error:
        pytest.fail(str(error))
    stack = Stack(running.endpoint, log_dir, region=REGION)
    # moto ships no instance type offerings for the China Regions: the world declares t3.micro's.
    stack.control("instance-type-offerings", {"offerings": {f"{REGION}{z}": ["t3.micro"] for z in "abc"}})
    yield stack
    running.stop()


def test_a_migration_runs_in_aws_cn(cn):
    ec2, sfn = cn.client("ec2"), cn.client("stepfunctions")
    world = seed(ec2, REGION, name=f"cn-{uuid.uuid4().hex[:6]}")
    machines = {m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]}
    assert machines["MigrateInstance"].startswith(f"arn:aws-cn:states:{REGION}:")

    result = run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": f"{REGION}b"})

    assert result.status == "SUCCEEDED", (result.error, result.cause)
    new = instance(ec2, result.output["newInstanceId"])
    assert new["Placement"]["AvailabilityZone"] == f"{REGION}b"
    assert new["SubnetId"] == world.subnets[f"{REGION}b"]
    assert result.states[-3:] == ["Complete", "AnnounceSucceeded", "Succeeded"]


def test_an_encrypted_share_in_aws_cn_grants_the_key_to_the_accounts_aws_cn_root(cn):
    ec2, sfn, kms = cn.client("ec2"), cn.client("stepfunctions"), cn.client("kms")
    key = kms.create_key(Description="CMK-A in aws-cn", Tags=SHAREABLE)["KeyMetadata"]["Arn"]
    assert key.startswith(f"arn:aws-cn:kms:{REGION}:")
    world = seed(ec2, REGION, name=f"cn-src-{uuid.uuid4().hex[:6]}")
    volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=4, Encrypted=True, KmsKeyId=key)["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=world.instance_id, Device="/dev/sdh")
    image_id = ec2.create_image(InstanceId=world.instance_id, Name=f"cn-img-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "available", what="image")

    result = run(sfn, "ShareImage", {"imageId": image_id, "accountIds": [B]})

    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert [g["GranteePrincipal"] for g in kms.list_grants(KeyId=key)["Grants"]] == [f"arn:aws-cn:iam::{B}:root"]
    permissions = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]
    assert permissions == [{"UserId": B}]


def test_aws_cn_refuses_arns_of_the_aws_partition(cn):
    """What the local stack holds amiflow to in aws-cn: the three refusals an `arn:aws:` would meet."""
    kms, iam = cn.client("kms"), cn.client("iam")
    key = kms.create_key(Description="policy target")["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as grant:
        kms.create_grant(KeyId=key, GranteePrincipal=f"arn:aws:iam::{B}:root", Operations=["Decrypt"])
    assert grant.value.response["Error"]["Code"] == "ValidationException"

    policy = json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
    policy["Statement"].append({"Sid": "b", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{B}:root"}, "Action": "kms:Decrypt", "Resource": "*"})
    with pytest.raises(ClientError) as put:
        kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
    assert put.value.response["Error"]["Code"] == "MalformedPolicyDocumentException"

    role = f"partition-{uuid.uuid4().hex[:6]}"
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))
    document = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:CreateImage", "Resource": f"arn:aws:ec2:{REGION}:123456789012:instance/*"}]}
    with pytest.raises(ClientError) as put_role:
        iam.put_role_policy(RoleName=role, PolicyName="p", PolicyDocument=json.dumps(document))
    assert put_role.value.response["Error"]["Code"] == "MalformedPolicyDocument"
    assert 'Partition "aws" is not valid' in put_role.value.response["Error"]["Message"]
    document["Statement"][0]["Resource"] = document["Statement"][0]["Resource"].replace("arn:aws:", "arn:aws-cn:")
    iam.put_role_policy(RoleName=role, PolicyName="p", PolicyDocument=json.dumps(document))


def test_a_task_naming_the_aws_partition_fails_in_aws_cn(cn):
    """A state machine written with `arn:aws:states:::lambda:invoke`, as amiflow's were, fails in
    aws-cn at its first such Task, before it invokes anything."""
    iam, sfn = cn.client("iam"), cn.client("stepfunctions")
    role = iam.create_role(RoleName=f"partition-states-{uuid.uuid4().hex[:6]}", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }))["Role"]["Arn"]
    function = f"arn:aws-cn:lambda:{REGION}:123456789012:function:preflight"
    machines = {}
    for partition in ("aws", "aws-cn"):
        definition = {"StartAt": "Ask", "States": {"Ask": {
            "Type": "Task", "Resource": f"arn:{partition}:states:::lambda:invoke",
            "Parameters": {"FunctionName": function, "Payload": {"instanceId": "i-0123456789abcdef0"}}, "End": True}}}
        machines[partition] = sfn.create_state_machine(
            name=f"partition-{partition}-{uuid.uuid4().hex[:6]}", definition=json.dumps(definition), roleArn=role)["stateMachineArn"]

    wrong = sfn.start_execution(stateMachineArn=machines["aws"])["executionArn"]
    right = sfn.start_execution(stateMachineArn=machines["aws-cn"])["executionArn"]
    ended = {arn: wait_for(lambda arn=arn: (d := sfn.describe_execution(executionArn=arn))["status"] != "RUNNING" and d, what="execution")
             for arn in (wrong, right)}

    assert ended[wrong]["status"] == "FAILED"
    assert ended[wrong]["error"] == "States.Runtime"
    assert "different partition" in ended[wrong]["cause"]
    # The same Task with the partition's own ARN reaches the function (which refuses the input).
    assert "different partition" not in (ended[right].get("cause") or "")
