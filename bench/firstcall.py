"""`make bench`, P1: the first invocation after a cold start, over TLS, under a CPU cap like Lambda's,
with and without the warm-up during init.

The function is wait-image, woken by an AMI State Change for an image no run waits for: its
invocation makes one AWS call, a DynamoDB Query of the token table (the call that stands between
an AMI's event and the run going on), and its warm-up (AMIFLOW_WARM_UP=dynamodb:Query) makes the
same kind of call during init. The local stack is served over TLS by a proxy in front of it, with
a test certificate authority the function trusts through SSL_CERT_FILE (which rustls-native-certs
reads): RSA 2048, as AWS's endpoints' certificates are. Each start measures the init (process start
to its first request for an event), the first invocation (event handed over to answer) and a
second one on the warm connection.

The CPU cap: Lambda gives a function CPU in proportion to its memory, one vCPU at 1,769 MB
(https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html). The function's process
runs in a cgroup whose CPU quota is that share of one CPU (cgroup v2 `cpu.max`, or v1
`cpu.cfs_quota_us`/`cpu.cfs_period_us`); the stack and the proxy run outside it. The init runs
either under the same cap, or at full CPU and the process is moved under the cap when it first
asks for an event: AWS's guide on serverlessland.com ("Utilize initialization phase") says that an
on-demand function's init runs on a full, unthrottled vCPU, and a provisioned one's under the
proportional share. The Lambda developer guide does not say, so both are measured.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import statistics
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ONE_VCPU_MB = 1769
STARTS = 7
FUNCTION = "wait-image"


# --- a certificate authority and a server certificate for 127.0.0.1 --------------------------------

def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key), as PEM files in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (x509.CertificateBuilder().subject_name(name("amiflow bench CA")).issuer_name(name("amiflow bench CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                          x509.DNSName("localhost")]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class TlsProxy:
    """HTTPS on 127.0.0.1 in front of the stack's HTTP port: each connection's TLS ends here and
    its bytes go on to the stack."""

    def __init__(self, upstream_port: int, certificate: Path, key: Path):
        self.upstream_port = upstream_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            secure = self.context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        def pump(source, sink) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for s in (source, sink):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(upstream, secure), daemon=True).start()
        pump(secure, upstream)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


# --- a CPU cap ---------------------------------------------------------------------------------------

class CpuCap:
    """A cgroup whose CPU quota is `memory_mb`'s share of one CPU, as Lambda gives it."""

    def __init__(self, memory_mb: int):
        self.memory_mb = memory_mb
        self.share = memory_mb / ONE_VCPU_MB
        period = 100_000
        quota = max(1000, int(period * self.share))
        name = f"amiflow-bench-{os.getpid()}-{memory_mb}"
        if Path("/sys/fs/cgroup/cgroup.controllers").exists():
            self.path = Path("/sys/fs/cgroup") / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.max").write_text(f"{quota} {period}")
        else:
            self.path = Path("/sys/fs/cgroup/cpu") / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(str(period))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def add(self, pid: int) -> None:
        """Moves the process (all its threads) into the cgroup."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def enter(self) -> None:
        """In the child, before exec: move this process into the cgroup."""
        self.add(os.getpid())

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def cap_or_why(memory_mb: int) -> tuple[CpuCap | None, str | None]:
    try:
        return CpuCap(memory_mb), None
    except OSError as e:
        return None, f"no cgroup with a CPU quota could be made here ({e.strerror}: {e.filename})"


# --- the runtime API ---------------------------------------------------------------------------------

class RuntimeApi:
    """Hands out the given events one by one, and notes when each was handed over, answered, and
    when the first request for an event came."""

    def __init__(self, events: list[dict], on_first_request=lambda: None):
        self.events = list(events)
        self.on_first_request = on_first_request
        self.asked: list[float] = []
        self.handed: list[float] = []
        self.answered: list[tuple[float, int]] = []
        self.done = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                api.asked.append(time.monotonic())
                if len(api.asked) == 1:
                    api.on_first_request()
                if not api.events:
                    api.done.set()
                    time.sleep(60)  # the process is killed first
                    return
                body = json.dumps(api.events.pop(0)).encode()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", f"bench-{len(api.handed)}")
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 60_000))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                api.handed.append(time.monotonic())
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                api.answered.append((time.monotonic(), 200 if self.path.endswith("/response") else 500))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ami_event(image_id: str) -> dict:
    return {
        "version": "0", "id": image_id, "detail-type": "EC2 AMI State Change", "source": "aws.ec2",
        "account": "123456789012", "time": "2026-11-29T12:00:00Z", "region": "us-east-1",
        "resources": [f"arn:aws:ec2:us-east-1::image/{image_id}"],
        "detail": {"RequestId": image_id, "ImageId": image_id, "State": "available", "ErrorMessage": ""},
    }


def start_once(binary: Path, env: dict[str, str], cap: CpuCap, init_capped: bool) -> dict[str, float]:
    """One cold start of the function: its init, first invocation and second invocation, in s.
    The invocations run under the cap; the init too when `init_capped`, else at full CPU."""
    spawned = threading.Event()
    pid: list[int] = []

    def cap_from_now() -> None:
        spawned.wait(10)
        cap.add(pid[0])

    api = RuntimeApi([ami_event(f"ami-{os.urandom(8).hex()[:17]}") for _ in range(2)],
                     on_first_request=(lambda: None) if init_capped else cap_from_now)
    started = time.monotonic()
    process = subprocess.Popen([str(binary)], env={**env, "AWS_LAMBDA_RUNTIME_API": api.address},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=cap.enter if init_capped else None)
    pid.append(process.pid)
    spawned.set()
    try:
        if not api.done.wait(120):
            raise RuntimeError(f"{binary.name} did not serve its two events")
        if any(status != 200 for _, status in api.answered):
            raise RuntimeError(f"{binary.name} failed an invocation")
        status = Path(f"/proc/{process.pid}/status").read_text()
        return {
            "init": api.asked[0] - started,
            "first": api.answered[0][0] - api.handed[0],
            "second": api.answered[1][0] - api.handed[1],
            # Peak RSS (KiB) after both invocations.
            "rss": int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))),
        }
    finally:
        process.kill()
        process.wait()
        api.close()


def measure(binaries: Path, stack_port: int, function_env: dict[str, str], work: Path,
            memories: tuple[int, ...] = (128, 256, 512, 1024)) -> dict:
    """Medians per memory size and warm-up; or why the cap could not be applied."""
    ca, certificate, key = make_certificates(work)
    proxy = TlsProxy(stack_port, certificate, key)
    env = {**function_env, "AWS_ENDPOINT_URL": f"https://127.0.0.1:{proxy.port}", "SSL_CERT_FILE": str(ca),
           "AWS_ACCESS_KEY_ID": f"function-{FUNCTION}", "AWS_SECRET_ACCESS_KEY": "local",
           "AWS_LAMBDA_FUNCTION_NAME": FUNCTION, "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST"}
    rows, why = [], None
    try:
        for memory in memories:
            cap, why = cap_or_why(memory)
            if cap is None:
                break
            try:
                for init_capped, warm in ((False, False), (False, True), (True, False), (True, True)):
                    runs = [start_once(binaries / FUNCTION, {**env, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory),
                                                             "AMIFLOW_WARM_UP": env["AMIFLOW_WARM_UP"] if warm else ""},
                                       cap, init_capped)
                            for _ in range(STARTS)]
                    rows.append({"memory": memory, "share": cap.share, "warm": warm, "init_capped": init_capped,
                                 **{k: statistics.median(r[k] for r in runs) for k in ("init", "first", "second")},
                                 "rss": max(r["rss"] for r in runs)})
            finally:
                cap.remove()
    finally:
        proxy.close()
    return {"rows": rows, "why_no_cap": why}


def table(result: dict) -> str:
    lines = [f"| memory (CPU share) | init's CPU | warm-up in init | init (median of {STARTS}) | first invocation | "
             "second invocation | init + first | peak RSS (highest) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        lines.append(f"| {row['memory']} MB ({100 * row['share']:.1f}%) | {'capped' if row['init_capped'] else 'full'} | "
                     f"{'yes' if row['warm'] else 'no'} | "
                     f"{1000 * row['init']:.0f} ms | {1000 * row['first']:.0f} ms | {1000 * row['second']:.0f} ms | "
                     f"{1000 * (row['init'] + row['first']):.0f} ms | {row['rss'] / 1024:.1f} MiB |")
    if result["why_no_cap"]:
        lines.append("")
        lines.append(f"The CPU cap could not be applied: {result['why_no_cap']}.")
    return "\n".join(lines)
