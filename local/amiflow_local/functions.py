"""Runs the project's Lambda binaries, unchanged, behind a Lambda runtime API of the stack's own,
and invokes them the way the Lambda service does.

The runtime API follows https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html: a process
asks `/runtime/invocation/next` for an event and answers it at `/runtime/invocation/{id}/response`
or `/error`. Lambda-Runtime-Deadline-Ms is "the date that the function times out in Unix time
milliseconds": the moment the event is handed over plus the function's Timeout. cargo-lambda's
emulator, used before, sent the timeout itself (600000), a deadline in 1970, so that a handler
could not tell how long it had. As Lambda does (configuration-timeout.html), an invocation that
runs past its Timeout ends with the error Sandbox.Timedout ("Task timed out after N seconds") and
its execution environment is replaced; one whose process dies ends with Runtime.ExitError.
"""

from __future__ import annotations

import json
import queue
import select
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Lambda runs concurrent invocations in separate execution environments; two processes per
# function let two invocations of one function run at the same time here too. A function with
# ReservedConcurrentExecutions has no more than that: its other invocations wait their turn, as
# Lambda's asynchronous queue holds the events it throttles.
ENVIRONMENTS_PER_FUNCTION = 2


class Invocation:
    """One event on its way through the runtime API."""

    def __init__(self, payload: bytes, timeout: float):
        self.request_id = str(uuid.uuid4())
        self.payload = payload
        self.timeout = timeout
        self.handed_over: float | None = None  # time.monotonic() when a process took it
        self.process: subprocess.Popen | None = None  # the execution environment that holds it
        self.answer: tuple[int, bytes] | None = None
        self.done = threading.Event()

    def finish(self, status: int, body: bytes) -> bool:
        """The first answer counts; a late one (after a time-out) is dropped, as Lambda drops it."""
        if self.done.is_set():
            return False
        self.answer = (status, body)
        self.done.set()
        return True


class _RuntimeApi(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    host: "FunctionHost"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> tuple[str, int, list[str]] | None:
        # /.rt/<function>/<environment>/2018-06-01/runtime/...
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[0] != ".rt" or parts[3] != "2018-06-01" or parts[4] != "runtime":
            return None
        return parts[1], int(parts[2]), parts[5:]

    def do_GET(self) -> None:
        route = self._route()
        if route is None or route[2] != ["invocation", "next"]:
            return self._send(404, b'{"errorMessage": "unknown runtime API path"}')
        name, environment, _ = route
        invocation = self.host.next_for(name, environment, self._still_asking)
        if invocation is None:
            return  # the process that asked is gone (replaced or stopped)
        deadline_ms = int((time.time() + invocation.timeout) * 1000)
        try:
            self._send(200, invocation.payload, {
                "Content-Type": "application/json",
                "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": self.host.function_arn(name),
                "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{invocation.request_id.replace('-', '')[:24]}",
            })
        except OSError:
            self.host.give_back(name, invocation)
            self.close_connection = True

    def _still_asking(self) -> bool:
        """Whether the process that asked for an event still waits on this connection: it sends
        nothing more, so a readable socket means it closed."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return not readable or self.connection.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False

    def do_POST(self) -> None:
        route = self._route()
        body = self._body()
        if route is None:
            return self._send(404)
        name, environment, rest = route
        if rest == ["init", "error"]:
            self.host.init_failed(name, environment, body)
            return self._send(202, b'{"status": "OK"}')
        if len(rest) == 3 and rest[0] == "invocation" and rest[2] in ("response", "error"):
            invocation = self.host.taken.get(rest[1])
            if invocation is None:
                return self._send(400, b'{"errorMessage": "unknown request id", "errorType": "InvalidRequestID"}')
            if rest[2] == "response":
                invocation.finish(200, body)
            else:
                invocation.finish(500, lambda_error_body(body, self.headers.get("Lambda-Runtime-Function-Error-Type")))
            return self._send(202, b'{"status": "OK"}')
        self._send(404)


class FunctionHost:
    """A Lambda runtime API on a loopback port, and processes of each function binary that take
    their invocations from it, each function bounded by its Timeout from the template."""

    def __init__(self, binaries: Path, log_dir: Path, base_env: dict[str, str], arn_prefix: str = ""):
        self.binaries = binaries
        self.log_dir = log_dir
        self.base_env = base_env
        self.arn_prefix = arn_prefix
        self.server: ThreadingHTTPServer | None = None
        self.port = 0
        self.processes: dict[str, list[subprocess.Popen]] = {}
        self.environments: dict[str, dict[str, str]] = {}
        self.timeouts: dict[str, float] = {}
        self.environment_counts: dict[str, int] = {}
        # Told of each invocation (the layer's count of them).
        self.on_invoke = lambda name: None
        # Called with each invocation's seconds from hand-over to answer.
        self.on_finish = lambda name, seconds: None
        self.queues: dict[str, queue.Queue[Invocation]] = {}
        self.taken: dict[str, Invocation] = {}
        self.lock = threading.Lock()

    def start(self, functions: dict[str, dict[str, str]], timeouts: dict[str, float],
              reserved: dict[str, int | None] | None = None) -> None:
        """functions: binary name -> its environment from template.yaml; timeouts: binary name ->
        its Timeout in seconds; reserved: binary name -> its ReservedConcurrentExecutions."""
        missing = [name for name in functions if not (self.binaries / name).is_file()]
        if missing:
            raise RuntimeError(
                f"function binaries not built: {', '.join(missing)} (in {self.binaries}); run `cargo build --bins`"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handler = type("RuntimeApi", (_RuntimeApi,), {"host": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.timeouts.update(timeouts)
        for name, limit in (reserved or {}).items():
            if limit is not None:
                self.environment_counts[name] = min(ENVIRONMENTS_PER_FUNCTION, int(limit))
        for name, env in functions.items():
            self.environments[name] = env
            self.queues[name] = queue.Queue()
            self.processes[name] = [self._spawn(name, n) for n in range(self._count(name))]

    def _count(self, name: str) -> int:
        return self.environment_counts.get(name, ENVIRONMENTS_PER_FUNCTION)

    def function_arn(self, name: str) -> str:
        return f"{self.arn_prefix}{name}"

    def _spawn(self, name: str, number: int) -> subprocess.Popen:
        env = dict(self.base_env)
        env.update(self.environments[name])
        env.update({
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
            "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{self.port}/.rt/{name}/{number}",
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

    def next_for(self, name: str, environment: int, still_asking) -> Invocation | None:
        """Blocks until there is an event for the function, or the process asking is gone (None);
        the environment now holds the event."""
        while still_asking():
            try:
                invocation = self.queues[name].get(timeout=0.5)
            except queue.Empty:
                continue
            if invocation.done.is_set():
                continue
            if not still_asking():
                self.queues[name].put(invocation)
                return None
            with self.lock:
                invocation.process = self.processes[name][environment]
            invocation.handed_over = time.monotonic()
            self.taken[invocation.request_id] = invocation
            return invocation
        return None

    def give_back(self, name: str, invocation: Invocation) -> None:
        """An event that could not be handed over goes back to the queue, for another process."""
        self.taken.pop(invocation.request_id, None)
        invocation.handed_over = None
        invocation.process = None
        self.queues[name].put(invocation)

    def init_failed(self, name: str, environment: int, body: bytes) -> None:
        process = self.processes[name][environment]
        for invocation in list(self.taken.values()):
            if invocation.process is process and not invocation.done.is_set():
                invocation.finish(500, lambda_error_body(body, "Runtime.InitError"))

    def set_timeout(self, name: str, seconds: float) -> None:
        """UpdateFunctionConfiguration's Timeout: the next invocations get the new deadline, in
        new execution environments, as after any update of a function's configuration."""
        self.timeouts[name] = seconds
        with self.lock:
            self._restart(name)

    def _restart(self, name: str) -> None:
        """New execution environments for the function (called with the lock held)."""
        for process in self.processes.get(name, []):
            if process.poll() is None:
                process.terminate()
        for process in self.processes.get(name, []):
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes[name] = [self._spawn(name, n) for n in range(self._count(name))]

    def _replace(self, name: str, process: subprocess.Popen) -> None:
        """A new execution environment in place of this one (called with the lock held)."""
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        if process in self.processes[name]:
            number = self.processes[name].index(process)
            self.processes[name][number] = self._spawn(name, number)

    def reconfigure(self, functions: dict[str, dict[str, str]]) -> list[str]:
        """A stack update that changes functions' environment variables: as Lambda does, the next
        invocations run in new execution environments with the new values. Returns the functions
        whose environment changed."""
        changed = []
        with self.lock:
            for name, env in functions.items():
                if self.environments.get(name) == env:
                    continue
                self.environments[name] = env
                self._restart(name)
                changed.append(name)
        return changed

    def invoke(self, name: str, payload: bytes) -> tuple[int, bytes]:
        """Invokes a function; returns (200, its answer) or (500, {errorType, errorMessage}). A
        function whose process died is started again first, as Lambda starts a new execution
        environment."""
        with self.lock:
            for number, process in enumerate(self.processes[name]):
                if process.poll() is not None:
                    self.processes[name][number] = self._spawn(name, number)
        self.on_invoke(name)
        invocation = Invocation(payload or b"{}", self.timeouts.get(name, 3.0))
        self.queues[name].put(invocation)
        try:
            while not invocation.done.wait(0.1):
                process, handed_over = invocation.process, invocation.handed_over
                if process is None or handed_over is None:
                    continue
                with self.lock:
                    if process.poll() is not None:
                        invocation.finish(500, json.dumps({
                            "errorType": "Runtime.ExitError",
                            "errorMessage": f"RequestId: {invocation.request_id} Error: Runtime exited with error: exit status {process.returncode}",
                        }).encode())
                    elif time.monotonic() > handed_over + invocation.timeout:
                        if invocation.finish(500, json.dumps({
                            "errorType": "Sandbox.Timedout",
                            "errorMessage": f"RequestId: {invocation.request_id} Error: Task timed out after {invocation.timeout:.2f} seconds",
                        }).encode()):
                            self._replace(name, process)
            assert invocation.answer is not None
            if invocation.handed_over is not None:
                self.on_finish(name, time.monotonic() - invocation.handed_over)
            return invocation.answer
        finally:
            self.taken.pop(invocation.request_id, None)

    def stop(self) -> None:
        everything = [p for group in self.processes.values() for p in group]
        for process in everything:
            if process.poll() is None:
                process.terminate()
        for process in everything:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def lambda_error_body(body: bytes, error_type: str | None = None) -> bytes:
    """Lambda's {errorType, errorMessage} for a function's error answer; a body that is not one
    becomes Runtime.Unknown (or the type the runtime named in Lambda-Runtime-Function-Error-Type)."""
    try:
        parsed = json.loads(body or b"{}")
        if isinstance(parsed, dict) and "errorType" in parsed:
            return body
    except ValueError:
        pass
    return json.dumps({
        "errorType": error_type or "Runtime.Unknown",
        "errorMessage": body.decode("utf-8", "replace"),
    }).encode()
