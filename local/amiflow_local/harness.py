"""Starts and stops the local stack as a child process, for the demo and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
