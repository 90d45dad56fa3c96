"""Starts the local AWS stack once for the test session (end-to-end and layer tests), on a free
loopback port, and stops it at the end."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "local"))

from amiflow_local.harness import RunningStack  # noqa: E402

REGION = "us-east-1"


class Stack:
    def __init__(self, endpoint: str, log_dir: Path, region: str = REGION):
        self.endpoint = endpoint
        self.log_dir = log_dir
        self.region = region
        self.session = boto3.session.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name=region
        )

    def client(self, service: str, **config):
        options = {"config": Config(**config)} if config else {}
        return self.session.client(service, endpoint_url=self.endpoint, **options)

    def as_function(self, binary: str, service: str):
        """A client that signs as the stack's function `binary` does (its own access key), so that
        the stack judges its calls by that function's role."""
        session = boto3.session.Session(aws_access_key_id=f"function-{binary}", aws_secret_access_key="local", region_name=self.region)
        return session.client(service, endpoint_url=self.endpoint)

    def account(self, account_id: str) -> boto3.session.Session:
        """A session whose calls belong to another account (credentials from STS AssumeRole)."""
        sts = self.client("sts")
        partition = self.session.get_partition_for_region(self.region)
        creds = sts.assume_role(RoleArn=f"arn:{partition}:iam::{account_id}:role/amiflow-test", RoleSessionName="test")["Credentials"]
        return boto3.session.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
            region_name=self.region,
        )

    def control(self, path: str, body=None, method: str | None = None):
        """Calls the layer's control endpoint: faults, config, events."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.endpoint}/_amiflow/{path}", data=data, method=method or ("POST" if data else "GET"),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("stack-logs")
    try:
        # A short wait for the AMI event, so that the lost-event test reaches the fallback quickly.
        # The external id of the target role that test accounts deploy (amiflow:copy-to tags).
        running = RunningStack(log_dir, parameters={"EventWaitSeconds": "6", "CopyExternalId": "ext-b"})
    except RuntimeError as error:
        pytest.fail(str(error))
    stack = Stack(running.endpoint, log_dir)
    yield stack
    try:
        JUDGED.update(stack.control("iam"))
    finally:
        running.stop()


# What IAM judging cost the session, shown at its end (local/README.md: IAM on every signed call).
JUDGED: dict = {}


def pytest_terminal_summary(terminalreporter):
    if JUDGED:
        terminalreporter.write_line(
            f"local stack IAM: {JUDGED['requests']} calls judged with {JUDGED['simulations']} simulations "
            f"in {JUDGED['seconds']:.1f} s, {JUDGED['denials']} refused (enforced: {JUDGED['enforced']})"
        )


@pytest.fixture(autouse=True)
def clean_faults(request):
    """Every test on the stack starts and ends with no fault armed and the default delays. Tests
    that do not use the stack (the policy tests) do not start it."""
    if "stack" not in request.fixturenames:
        yield
        return
    stack = request.getfixturevalue("stack")
    stack.control("faults", method="DELETE")
    stack.control("config", {"imageDelaySeconds": 1, "statusCheckDelaySeconds": 1, "eventualConsistencySeconds": 0})
    yield
    stack.control("faults", method="DELETE")


@pytest.fixture
def ec2(stack):
    return stack.client("ec2")


@pytest.fixture
def sfn(stack):
    return stack.client("stepfunctions")


@pytest.fixture
def lambda_(stack):
    return stack.client("lambda")


@pytest.fixture
def stack_parameters(stack):
    """stack_parameters(Name=value, …): a stack update with these parameter values (the functions
    restart with the new environment, as Lambda does); the stack's own values come back when the
    test ends."""
    updated = []

    def apply(**values: str) -> None:
        stack.control("deploy", {"parameters": values})
        updated.append(values)

    yield apply
    if updated:
        stack.control("deploy", {"parameters": {}})
