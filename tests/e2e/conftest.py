"""Starts the local AWS stack once for the end-to-end tests, on a free loopback port, and stops it
at the end of the session."""

from __future__ import annotations

import sys
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "local"))

from amiflow_local.harness import RunningStack  # noqa: E402

REGION = "us-east-1"


class Stack:
    def __init__(self, endpoint: str, log_dir: Path):
        self.endpoint = endpoint
        self.log_dir = log_dir
        self.session = boto3.session.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION
        )

    def client(self, service: str):
        return self.session.client(service, endpoint_url=self.endpoint)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("stack-logs")
    try:
        running = RunningStack(log_dir)
    except RuntimeError as error:
        pytest.fail(str(error))
    yield Stack(running.endpoint, log_dir)
    running.stop()


@pytest.fixture
def ec2(stack):
    return stack.client("ec2")


@pytest.fixture
def sfn(stack):
    return stack.client("stepfunctions")


@pytest.fixture
def lambda_(stack):
    return stack.client("lambda")
