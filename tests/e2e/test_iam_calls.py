"""Every API call a function makes is granted by its own role.

The local stack knows which function signed each call (each runs with its own access key) and
which calls were made through the copy role in a target account (STS credentials). This test runs
every workflow, on its success and its rollback paths, and then checks each call against the Allow
statements of the caller's role in template.yaml or target-account.yaml. A permission missing from
a template fails here, as it would fail the first run on AWS.

The stack also refuses, as IAM would, any call the role does not allow on the resources it
touches (local/tests/test_iam.py, test_iam_enforced.py). This test adds that every role is
exercised by the four workflows, on success and rollback paths.
"""

from __future__ import annotations

import fnmatch
import time
import uuid
from pathlib import Path

import pytest
import yaml
from amiflow_local.seed import seed
from amiflow_local.template import _CfnLoader

from accounts import A, APPS_OU, B, SHAREABLE, as_account, copy_input, encrypted_image
from workflow import entered_states, new_environments, run, start, state_machine_arn, wait_for

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = {"create-image", "wait-image", "launch", "verify-instance", "cleanup", "share-image",
             "grant-kms", "copy-image", "trigger", "preflight", "reaper"}


def allowed_actions(template: str) -> dict[str, list[str]]:
    """Role (function binary, or IAM role name) -> the actions its Allow statements grant."""
    doc = yaml.load((ROOT / template).read_text(), Loader=_CfnLoader)
    granted: dict[str, list[str]] = {}
    for logical_id, resource in doc["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            owner = resource["Metadata"]["BuildProperties"]["Binary"]
        elif resource["Type"] == "AWS::IAM::Role":
            owner = logical_id
        else:
            continue
        for policy in props.get("Policies", []) or []:
            document = policy.get("PolicyDocument", policy)
            for statement in document.get("Statement", []):
                if statement["Effect"] == "Allow":
                    actions = statement["Action"]
                    granted.setdefault(owner, []).extend(actions if isinstance(actions, list) else [actions])
    return granted


def grants(patterns: list[str], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in patterns)


def succeeds(sfn, machine: str, payload: dict) -> None:
    result = run(sfn, machine, payload)
    assert result.status == "SUCCEEDED", (machine, result.error, result.cause)


def test_every_call_of_every_function_is_granted_by_its_role(stack, ec2, sfn, organization):
    deployed = stack.control("target-account", {"accountId": B, "externalId": "ext-b"})
    # The functions that act through the target role assume it in this test, not with credentials
    # an earlier test's run left in a warm environment.
    new_environments(stack, "copy-image", "wait-image")
    kms = stack.client("kms")
    cmk = kms.create_key(Description="CMK-A", Tags=SHAREABLE)["KeyMetadata"]["Arn"]
    b_key = deployed["targetKmsKeyArn"]
    image_id = encrypted_image(stack, ec2, cmk)
    managed_image = encrypted_image(stack, ec2, None)
    stack.control("calls", method="DELETE")

    # MigrateInstance: a success with preflight and every source action's path, and a rollback.
    for action in ("terminate", "stop"):
        world = seed(ec2, "us-east-1", name=f"iam-{uuid.uuid4().hex[:6]}")
        succeeds(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b",
                                          "sourceAction": action, "preflight": True})
    world = seed(ec2, "us-east-1", name=f"iam-{uuid.uuid4().hex[:6]}")
    stack.control("faults", {"kind": "impaired"})
    assert run(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"}).error == "StatusCheckFailed"

    # ShareImage with an account and an OU (grants and key policy), UnshareImage, a re-encrypted
    # share, CopyImage and a copy rolled back in both accounts.
    receivers = {"accountIds": [B], "organizationalUnitArns": [APPS_OU]}
    succeeds(sfn, "ShareImage", {"imageId": image_id, **receivers})
    succeeds(sfn, "UnshareImage", {"imageId": image_id, **receivers})
    succeeds(sfn, "ShareImage", {"imageId": managed_image, "accountIds": [B], "reencryptKmsKeyId": cmk})
    succeeds(sfn, "CopyImage", copy_input(image_id, b_key))
    stack.control("faults", {"kind": "fail-image"})
    assert run(sfn, "CopyImage", copy_input(image_id, b_key)).error == "ImageFailed"

    # The reaper: a migration stopped while it waits for its image is taken back.
    stack.control("config", {"imageDelaySeconds": 5})
    world = seed(ec2, "us-east-1", name=f"iam-{uuid.uuid4().hex[:6]}")
    name, arn = start(sfn, "MigrateInstance", {"instanceId": world.instance_id, "targetAvailabilityZone": "us-east-1b"})
    wait_for(lambda: "WaitForImage" in entered_states(sfn, arn), what="the run to wait for its image")
    sfn.stop_execution(executionArn=arn)
    reaps = state_machine_arn(sfn, "Reap")
    wait_for(lambda: any(e["name"] == f"reap-{name}" and e["status"] == "SUCCEEDED"
                         for e in sfn.list_executions(stateMachineArn=reaps)["executions"]), what="the reap")
    stack.control("config", {"imageDelaySeconds": 1})

    # The trigger: a tag event and a sweep.
    tagged = seed(ec2, "us-east-1", name=f"iam-{uuid.uuid4().hex[:6]}")
    ec2.create_tags(Resources=[tagged.instance_id], Tags=[{"Key": "amiflow:migrate-to", "Value": "us-east-1c"}])
    wait_for(lambda: any(t["Key"] == "amiflow:status" for t in ec2.describe_instances(InstanceIds=[tagged.instance_id])
                         ["Reservations"][0]["Instances"][0].get("Tags", [])), what="the trigger to start a run")
    stack.control("fire-schedule", {"rule": "trigger-Sweep"})
    time.sleep(1)

    granted = {**allowed_actions("template.yaml"), **allowed_actions("target-account.yaml")}
    seen: set[str] = set()
    refused = []
    for call in stack.control("calls"):
        kind, _, who = call["principal"].partition(":")
        if kind == "function":
            seen.add(who)
            if not grants(granted[who], call["action"]):
                refused.append((who, call["action"]))
        elif kind == "role" and who.endswith(":role/amiflow-copy"):
            seen.add("amiflow-copy")
            if not grants(granted["CopyRole"], call["action"]):
                refused.append(("amiflow-copy role", call["action"]))
    assert refused == [], f"calls their role does not grant: {refused}"
    assert seen >= FUNCTIONS | {"amiflow-copy"}, f"not exercised: {sorted((FUNCTIONS | {'amiflow-copy'}) - seen)}"
