"""The amiflow CLI against the local stack: starting and following a run, preflight, and refusals
that name the flag."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest
from amiflow_local.seed import seed
from amiflow_local.server import cargo_target_dir

from accounts import B, SHAREABLE, encrypted_image

CLI = str(cargo_target_dir() / "debug" / "amiflow")


def amiflow(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_REGION": "us-east-1"}
    return subprocess.run([CLI, "--endpoint-url", stack.endpoint, *args], capture_output=True, text=True, env=env, timeout=240)


def test_migrate_watch_follows_the_run_to_its_end(stack, ec2):
    world = seed(ec2, "us-east-1", name=f"cli-{uuid.uuid4().hex[:6]}")
    done = amiflow(stack, "migrate", "--instance-id", world.instance_id, "--az", "us-east-1b", "--source-action", "stop", "--watch")
    assert done.returncode == 0, done.stderr
    for state in ("CreateImage", "WaitForImage", "Launch", "VerifyInstance", "Complete"):
        assert state in done.stderr, done.stderr
    out = json.loads(done.stdout)
    assert out["availabilityZone"] == "us-east-1b" and out["sourceState"] in ("stopping", "stopped")
    listed = amiflow(stack, "status", "--output", "json")
    assert any(e["workflow"] == "MigrateInstance" and world.instance_id in e["name"] and e["status"] == "SUCCEEDED" for e in json.loads(listed.stdout))


def test_a_failed_run_ends_with_its_error_name_and_a_non_zero_exit(stack, ec2):
    world = seed(ec2, "us-east-1", name=f"cli-{uuid.uuid4().hex[:6]}")
    failed = amiflow(stack, "migrate", "--instance-id", world.instance_id, "--az", "us-east-1b", "--instance-type", "vt1.3xlarge", "--watch")
    assert failed.returncode == 1
    assert "InstanceTypeNotOffered" in failed.stderr


def test_preflight_reports_the_missing_key_permission_until_grant_kms_has_run(stack, ec2):
    key = stack.client("kms").create_key(Description="CMK-A", Tags=SHAREABLE)["KeyMetadata"]["Arn"]
    image_id = encrypted_image(stack, ec2, key)
    before = amiflow(stack, "preflight", "share", "--image-id", image_id, "--account", B, "--output", "json")
    assert before.returncode == 1, before.stdout
    rows = {r["check"]: r for r in json.loads(before.stdout)}
    assert rows[f"KMS {key} for {B}"]["result"] == "fail"
    shared = amiflow(stack, "share", "--image-id", image_id, "--account", B, "--watch")
    assert shared.returncode == 0, shared.stderr
    after = amiflow(stack, "preflight", "share", "--image-id", image_id, "--account", B, "--output", "json")
    assert after.returncode == 0, after.stdout
    assert {r["check"]: r for r in json.loads(after.stdout)}[f"KMS {key} for {B}"]["result"] == "pass"


@pytest.mark.parametrize(
    "args, flag",
    [
        (["migrate", "--instance-id", "i-12", "--az", "us-east-1b"], "--instance-id"),
        (["migrate", "--instance-id", "i-0123456789abcdef0", "--az", "eu-west-1b"], "--az"),
        (["share", "--image-id", "ami-0123456789abcdef0", "--account", "21098765432"], "--account (value 1)"),
        (["copy", "--source-image-id", "ami-0123456789abcdef0", "--target-account", B, "--target-role-arn", "arn:aws:iam::210987654321:user/x",
          "--external-id", "ext", "--target-kms-key-id", "alias/b", "--copy-name", "copy"], "--target-role-arn"),
    ],
)
def test_refusals_name_the_flag_and_start_nothing(stack, args, flag):
    refused = amiflow(stack, *args, "--dry-run")
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"error: {flag}:"), refused.stderr


def test_dry_run_prints_the_input_it_would_start(stack):
    printed = amiflow(stack, "migrate", "--instance-id", "i-0123456789abcdef0", "--subnet-id", "subnet-0123456789abcdef0", "--keep-image", "--dry-run")
    assert printed.returncode == 0
    assert json.loads(printed.stdout) == {"instanceId": "i-0123456789abcdef0", "targetSubnetId": "subnet-0123456789abcdef0",
                                          "noReboot": False, "sourceAction": "keep", "keepImage": True}


def test_profiles_with_credential_process_and_an_assumed_role_chain_are_used(stack, tmp_path):
    script = tmp_path / "credentials.sh"
    script.write_text("#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"process-key\", \"SecretAccessKey\": \"process-secret\"}'\n")
    script.chmod(0o755)
    config = tmp_path / "config"
    config.write_text(
        f"[profile process]\ncredential_process = {script}\nregion = us-east-1\n\n"
        "[profile chained]\nrole_arn = arn:aws:iam::123456789012:role/amiflow-operator\nsource_profile = process\nregion = us-east-1\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_CONFIG_FILE": str(config), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                "AWS_ENDPOINT_URL": stack.endpoint, "AWS_EC2_METADATA_DISABLED": "true"})
    stack.control("calls", method="DELETE")
    for profile in ("process", "chained"):
        done = subprocess.run([CLI, "--profile", profile, "status", "--output", "json"], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, (profile, done.stderr)
    principals = {c["principal"] for c in stack.control("calls")}
    # The chained profile's calls were signed with the role's session, which the process's keys assumed.
    assert any(p.startswith("role:arn:aws:iam::123456789012:role/amiflow-operator") for p in principals), principals


def test_exit_codes_tell_a_refusal_a_failed_run_and_an_api_failure_apart(stack):
    refused = amiflow(stack, "approve", "no-such-run")
    assert refused.returncode == 2 and "no amiflow execution named no-such-run" in refused.stderr
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_REGION": "us-east-1"}
    # Nothing listens on port 9: the call fails before AWS answers.
    unreachable = subprocess.run([CLI, "--endpoint-url", "http://127.0.0.1:9", "status"], capture_output=True, text=True, env=env, timeout=120)
    assert unreachable.returncode == 3, unreachable.stderr
    assert "ListStateMachines" in unreachable.stderr
