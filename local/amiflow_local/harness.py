"""Starts and stops the local stack as a child process, for the demo and the tests, and the
clients that talk to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

from .functions import free_port

LOCAL = Path(__file__).resolve().parents[1]


class RunningStack:
    def __init__(self, log_dir: Path, port: int | None = None, parameters: dict[str, str] | None = None, timeout: float = 120,
                 region: str | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path = log_dir / "stack.out"
        self._out = open(self.out_path, "w")
        arguments = [sys.executable, "-m", "amiflow_local.server", "--port", str(self.port), "--log-dir", str(log_dir)]
        if region:
            arguments += ["--region", region]
        for name, value in (parameters or {}).items():
            arguments += ["--parameter", f"{name}={value}"]
        self.process = subprocess.Popen(
            arguments,
            cwd=LOCAL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        while "stack ready" not in self.out_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the local stack did not start:\n" + self.out_path.read_text()[-3000:])
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()

    def __enter__(self) -> "RunningStack":
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


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
        # A deploy restarts the functions' environments before it answers: on a loaded machine
        # (CI measured one past 10 s) that takes a while.
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())
