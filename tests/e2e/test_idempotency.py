"""Idempotency: every function, invoked twice at the same moment with the same payload (as Lambda
does when a state machine retries a step whose first attempt is still running, or an event is
delivered twice), leaves the resources that one invocation leaves. The local stack runs two
execution environments of each function, so the two invocations really run at once.

Each test drives a workflow step by step with the payloads the state machines send (see
statemachine/*.asl.json), checking the resources after every doubled step."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from accounts import B, as_account, copy_input, encrypted_image
from workflow import instance, tagged, wait_for

ACCOUNT = "123456789012"


def invoke(stack, function: str, payload: dict) -> dict:
    answer = stack.client("lambda").invoke(FunctionName=function, Payload=json.dumps(payload))
    body = json.loads(answer["Payload"].read() or b"null")
    assert "FunctionError" not in answer, (function, body)
    return body


def twice_at_once(stack, function: str, payload: dict) -> list[dict]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda _: invoke(stack, function, payload), range(2)))


def names() -> tuple[str, str]:
    execution = f"idem-{uuid.uuid4().hex[:10]}"
    return execution, f"arn:aws:states:us-east-1:{ACCOUNT}:execution:MigrateInstance:{execution}"


def test_every_migration_step_twice_at_once_leaves_what_once_leaves(stack, ec2, world):
    execution, execution_arn = names()
    migration = {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b", "sourceAction": "stop"}

    checks = twice_at_once(stack, "preflight", {"workflow": "migrate", "input": migration})
    assert checks[0] == checks[1]
    assert tagged(ec2, execution) == {"instances": [], "images": [], "snapshots": []}

    made = twice_at_once(stack, "create-image", {"execution": execution, "executionArn": execution_arn, "input": migration})
    image = made[0]
    assert made[1]["imageId"] == image["imageId"]
    assert sorted(m["created"] for m in made) == [False, True], "one call made the image, the other found it"
    assert tagged(ec2, execution)["images"] == [image["imageId"]]
    wait_for(lambda: ec2.describe_images(ImageIds=[image["imageId"]])["Images"][0]["State"] == "available", what="the image")

    polled = twice_at_once(stack, "wait-image", {"action": "poll", "imageId": image["imageId"], "execution": execution, "attempt": 0})
    assert [p["ready"] for p in polled] == [True, True]

    launched = twice_at_once(stack, "launch", {"execution": execution, "image": image})
    assert launched[0]["instanceId"] == launched[1]["instanceId"]
    assert tagged(ec2, execution)["instances"] == [launched[0]["instanceId"]]
    new_instance = launched[0]

    def verified():
        answers = twice_at_once(stack, "verify-instance", {"execution": execution, "image": image, "instance": new_instance})
        return answers if all(a["ready"] for a in answers) else None

    checked = wait_for(verified, timeout=60, what="the new instance to pass its checks")
    assert checked[0]["instanceId"] == checked[1]["instanceId"] == new_instance["instanceId"]

    done = twice_at_once(stack, "cleanup", {"action": "complete", "execution": execution, "input": migration, "image": image, "instance": checked[0]})
    assert [d["newInstanceId"] for d in done] == [new_instance["instanceId"]] * 2
    assert tagged(ec2, execution) == {"instances": [new_instance["instanceId"]], "images": [], "snapshots": []}
    assert instance(ec2, world.instance_id)["State"]["Name"] in ("stopping", "stopped")
    assert ec2.describe_instances(Filters=[{"Name": "tag:amiflow:source-instance", "Values": [world.instance_id]},
                                           {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"][0]["Instances"][0]["InstanceId"] == new_instance["instanceId"]


def test_a_rollback_twice_at_once_removes_everything_once_and_leaves_the_source(stack, ec2, world):
    execution, execution_arn = names()
    migration = {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"}
    image = invoke(stack, "create-image", {"execution": execution, "executionArn": execution_arn, "input": migration})
    wait_for(lambda: ec2.describe_images(ImageIds=[image["imageId"]])["Images"][0]["State"] == "available", what="the image")
    new_instance = invoke(stack, "launch", {"execution": execution, "image": image})

    state = {"input": migration, "image": image, "instance": new_instance, "error": {"Error": "StatusCheckFailed"}}
    removed = twice_at_once(stack, "cleanup", {"action": "rollback", "execution": execution, "state": state})
    # Between them, the two terminated the new instance (one of them may find it already gone).
    assert {i for r in removed for i in r["terminatedInstanceIds"]} == {new_instance["instanceId"]}
    assert tagged(ec2, execution) == {"instances": [], "images": [], "snapshots": []}
    assert instance(ec2, world.instance_id)["State"]["Name"] == "running"
    address = ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]
    assert address["InstanceId"] == world.instance_id

    # The lock was given back: another run may now take it.
    other, other_arn = names()
    assert invoke(stack, "create-image", {"execution": other, "executionArn": other_arn, "input": migration})["created"]


def test_every_copy_step_twice_at_once_leaves_what_once_leaves(stack, ec2, cmk):
    deployed = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})
    image_id = encrypted_image(stack, ec2, cmk)
    b_key = deployed["targetKmsKeyArn"]
    b_ec2 = as_account(stack, B, "ec2")
    kms = stack.client("kms")
    execution = f"idem-{uuid.uuid4().hex[:10]}"
    copy = copy_input(image_id, b_key)

    plans = twice_at_once(stack, "share-image", {"action": "prepareCopy", "execution": execution, "input": copy})
    assert plans[0] == plans[1]
    plan = plans[0]
    # The plan carries the input, parsed once: the steps after it read it there.
    assert plan["copy"]["targetAccountId"] == B and plan["copy"]["name"] == copy["name"]
    keys = {"execution": execution, "executionArn": f"arn:aws:states:us-east-1:{ACCOUNT}:execution:CopyImage:{execution}",
            "imageId": plan["imageId"], "ownerAccount": plan["ownerAccount"],
            "kmsKeyIds": plan["kmsKeyIds"], "receivers": plan["receivers"]}

    twice_at_once(stack, "grant-kms", {"action": "grant", **keys})
    assert [g["GranteePrincipal"] for g in kms.list_grants(KeyId=cmk)["Grants"]] == [f"arn:aws:iam::{B}:root"]

    twice_at_once(stack, "share-image", {"action": "share", "execution": execution, "plan": plan})
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == [{"UserId": B}]

    copies = twice_at_once(stack, "copy-image", {"action": "copy", "execution": execution, "plan": plan})
    target = copies[0]["targetImageId"]
    assert copies[1]["targetImageId"] == target
    assert [i["ImageId"] for i in b_ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [copy["name"]]}])["Images"]] == [target]
    wait_for(lambda: b_ec2.describe_images(ImageIds=[target])["Images"][0]["State"] == "available", what="the copy")

    twice_at_once(stack, "copy-image", {"action": "tag", "execution": execution, "plan": plan, "copy": copies[0]})
    tags = {t["Key"]: t["Value"] for t in b_ec2.describe_images(ImageIds=[target])["Images"][0]["Tags"]}
    assert tags["amiflow:execution"] == execution and tags["app"] == "web"

    twice_at_once(stack, "share-image", {"action": "unshare", "execution": execution, "plan": plan})
    twice_at_once(stack, "grant-kms", {"action": "revoke", **keys})
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []
    assert kms.list_grants(KeyId=cmk)["Grants"] == []
    assert b_ec2.describe_images(ImageIds=[target])["Images"][0]["State"] == "available"

    # The rollback's removal of the copy, twice at once, removes it once.
    twice_at_once(stack, "copy-image", {"action": "remove", "execution": execution, "plan": plan})
    assert tagged(b_ec2, execution) == {"instances": [], "images": [], "snapshots": []}


def test_sharing_with_an_organization_twice_at_once_adds_its_key_policy_statements_once(stack, ec2, cmk):
    image_id = encrypted_image(stack, ec2, cmk)
    execution = f"idem-{uuid.uuid4().hex[:10]}"
    org = f"arn:aws:organizations::{ACCOUNT}:organization/o-amiflow0001"
    plans = twice_at_once(stack, "share-image", {"action": "prepareShare", "execution": execution,
                                                 "input": {"imageId": image_id, "organizationArns": [org]}})
    plan = plans[0]
    assert "copy" not in plan, "only a CopyImage plan carries its input"
    keys = {"execution": execution, "executionArn": f"arn:aws:states:us-east-1:{ACCOUNT}:execution:ShareImage:{execution}",
            "imageId": plan["imageId"], "ownerAccount": plan["ownerAccount"],
            "kmsKeyIds": plan["kmsKeyIds"], "receivers": plan["receivers"]}
    twice_at_once(stack, "grant-kms", {"action": "grant", **keys})
    policy = json.loads(stack.client("kms").get_key_policy(KeyId=cmk, PolicyName="default")["Policy"])
    # One pair: the use of the key, and CreateGrant for AWS resources in its own statement.
    sids = [s["Sid"] for s in policy["Statement"] if s.get("Sid", "").startswith("Amiflow")]
    assert sorted(sid.split("ami")[0] for sid in sids) == ["AmiflowOrgs", "AmiflowOrgsGrant"]
    twice_at_once(stack, "share-image", {"action": "share", "execution": execution, "plan": plan})
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == [{"OrganizationArn": org}]
    twice_at_once(stack, "share-image", {"action": "unshare", "execution": execution, "plan": plan})
    twice_at_once(stack, "grant-kms", {"action": "revoke", **keys})
    policy = json.loads(stack.client("kms").get_key_policy(KeyId=cmk, PolicyName="default")["Policy"])
    assert [s for s in policy["Statement"] if s.get("Sid", "").startswith("Amiflow")] == []
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []


def test_a_trigger_event_delivered_twice_at_once_starts_one_run(stack, ec2, sfn, world):
    ec2.create_tags(Resources=[world.instance_id], Tags=[{"Key": "amiflow:migrate-to", "Value": "us-east-1b"}])
    event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
             "account": ACCOUNT, "time": "2026-11-28T12:00:00Z", "region": "us-east-1",
             "resources": [f"arn:aws:events:us-east-1:{ACCOUNT}:rule/trigger-Sweep"], "detail": {}}
    twice_at_once(stack, "trigger", event)
    machine = [m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"] if m["name"] == "MigrateInstance"][0]
    runs = [e for e in sfn.list_executions(stateMachineArn=machine)["executions"] if world.instance_id in e["name"]]
    assert len(runs) == 1, runs
    final = wait_for(lambda: sfn.describe_execution(executionArn=runs[0]["executionArn"])["status"] != "RUNNING" and
                     sfn.describe_execution(executionArn=runs[0]["executionArn"]), timeout=120, what="the run to end")
    assert final["status"] == "SUCCEEDED", final.get("cause")
