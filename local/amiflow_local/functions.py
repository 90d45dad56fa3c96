"""Runs the project's Lambda binaries, unchanged, under cargo-lambda's emulation of the Lambda
runtime API, and invokes them the way the Lambda service does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before it listened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


# Lambda runs concurrent invocations in separate execution environments; two processes per
# function let two invocations of one function run at the same time here too.
ENVIRONMENTS_PER_FUNCTION = 2


class FunctionHost:
    """cargo-lambda's runtime API on a loopback port, and processes of each function binary that
    all take invocations from it."""

    def __init__(self, cargo_lambda: str, workspace: Path, binaries: Path, log_dir: Path, base_env: dict[str, str]):
        self.cargo_lambda = cargo_lambda
        self.workspace = workspace
        self.binaries = binaries
        self.log_dir = log_dir
        self.base_env = base_env
        self.port = free_port()
        self.emulator: subprocess.Popen | None = None
        self.processes: dict[str, list[subprocess.Popen]] = {}
        self.environments: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()

    def start(self, functions: dict[str, dict[str, str]]) -> None:
        """functions: binary name -> its environment from template.yaml."""
        missing = [name for name in functions if not (self.binaries / name).is_file()]
        if missing:
            raise RuntimeError(
                f"function binaries not built: {', '.join(missing)} (in {self.binaries}); run `cargo build --bins`"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.emulator = subprocess.Popen(
            [self.cargo_lambda, "lambda", "watch", "--only-lambda-apis",
             "--invoke-address", "127.0.0.1", "--invoke-port", str(self.port)],
            stdout=open(self.log_dir / "cargo-lambda.log", "ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workspace,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, 60, "cargo lambda watch", self.emulator)
        except RuntimeError as error:
            log = (self.log_dir / "cargo-lambda.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{error}; its log ends:\n{log}") from None
        for name, env in functions.items():
            self.environments[name] = env
            self.processes[name] = [self._spawn(name, n) for n in range(ENVIRONMENTS_PER_FUNCTION)]

    def _spawn(self, name: str, number: int) -> subprocess.Popen:
        env = dict(self.base_env)
        env.update(self.environments[name])
        env.update({
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
            "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{self.port}/.rt/{name}",
            # Its own access key, so that the stack can tell which function made a call.
            "AWS_ACCESS_KEY_ID": f"function-{name}",
        })
        return subprocess.Popen(
            [str(self.binaries / name)],
            env=env,
            stdout=open(self.log_dir / (f"{name}.log" if number == 0 else f"{name}-{number + 1}.log"), "ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def names(self) -> set[str]:
        return set(self.environments)

    def reconfigure(self, functions: dict[str, dict[str, str]]) -> list[str]:
        """A stack update that changes functions' environment variables: as Lambda does, the next
        invocations run in new execution environments with the new values. Returns the functions
        whose environment changed."""
        changed = []
        with self.lock:
            for name, env in functions.items():
                if self.environments.get(name) == env:
                    continue
                for process in self.processes.get(name, []):
                    if process.poll() is None:
                        process.terminate()
                for process in self.processes.get(name, []):
                    try:
                        process.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        process.kill()
                self.environments[name] = env
                self.processes[name] = [self._spawn(name, n) for n in range(ENVIRONMENTS_PER_FUNCTION)]
                changed.append(name)
        return changed

    def invoke(self, name: str, payload: bytes, timeout: float = 900) -> tuple[int, bytes]:
        """Invokes a function; returns (status, body) as cargo-lambda answers: 200, or 500 with
        {errorType, errorMessage}. A function whose process died is started again first, as
        Lambda starts a new execution environment."""
        with self.lock:
            for number, process in enumerate(self.processes[name]):
                if process.poll() is not None:
                    self.processes[name][number] = self._spawn(name, number)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/2015-03-31/functions/{name}/invocations",
            data=payload or b"{}",
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def stop(self) -> None:
        everything = [p for group in self.processes.values() for p in group] + [self.emulator]
        for process in everything:
            if process and process.poll() is None:
                process.terminate()
        for process in everything:
            if process:
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()


def lambda_error_body(body: bytes) -> bytes:
    """cargo-lambda's error answer is already Lambda's {errorType, errorMessage}; make sure."""
    try:
        parsed = json.loads(body or b"{}")
        if isinstance(parsed, dict) and "errorType" in parsed:
            return body
    except ValueError:
        pass
    return json.dumps({"errorType": "Runtime.Unknown", "errorMessage": body.decode("utf-8", "replace")}).encode()
