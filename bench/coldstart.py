"""`make bench`, P1: the cold start of every function, beside a Python/boto3 handler.

For each release binary (target/release, as `cargo lambda build --release` makes it for AWS), and
for a Python handler that builds the same boto3 clients, this measures the time from process
start until it first asks the Lambda runtime API for an event (its clients built), its peak RSS
at that moment (VmHWM), and the size of the binary and of its zip as Lambda takes it
(`bootstrap`, deflated). The runtime API here only notes the request and never answers it.
Medians over several starts, both kinds in the same run, on the same machine, without a CPU cap.
The first AWS call after init, over TLS and under a cap, is bench/firstcall.py's.

The same for one multi-call binary (functions/multicall), started as each function in turn
(`AMIFLOW_FUNCTION`), beside the functions' own binaries.
"""

from __future__ import annotations

import functools
import io
import os
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "local"))

from amiflow_local.server import cargo_target_dir  # noqa: E402
from amiflow_local.template import Template  # noqa: E402
from firstcall import RuntimeApi  # noqa: E402

STARTS = 5

# The clients a function builds (Deps::from_env), made the way a Python handler would.
BOTO3_HANDLER = """
import os, urllib.request
import boto3
session = boto3.session.Session()
clients = [session.client(s) for s in ("ec2", "stepfunctions", "dynamodb", "kms", "organizations", "sts")]
urllib.request.urlopen("http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/next")
"""


def start_once(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Seconds until the first /next, and the peak RSS (KiB) then."""
    api = RuntimeApi([])  # no event: the first request for one is what is timed
    started = time.monotonic()
    process = subprocess.Popen(command, env={**env, "AWS_LAMBDA_RUNTIME_API": api.address},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not api.done.wait(60):
            raise RuntimeError(f"{command[0]} never asked for an event")
        took = api.asked[0] - started
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
        return took, peak
    finally:
        process.kill()
        process.wait()
        api.close()


def zipped_size(binary: Path) -> int:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(binary, "bootstrap")
    return len(buffer.getvalue())


BASE = {"PATH": os.environ.get("PATH", ""), "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_LAMBDA_FUNCTION_NAME": "bench", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST"}
MULTICALL = "multicall"


def environment(function) -> dict[str, str]:
    """A function's environment without the warm-up: its call (to an endpoint there is none of
    here) is bench/firstcall.py's."""
    return {**BASE, **function.runtime_environment, "AWS_LAMBDA_FUNCTION_NAME": function.binary, "AMIFLOW_WARM_UP": ""}


@functools.cache
def template_functions() -> list:
    """The template's functions, by binary name."""
    return sorted(Template(ROOT, "123456789012", "us-east-1", {}).functions(), key=lambda f: f.binary)


def measure(binaries: Path) -> list[dict]:
    rows = []
    boto3 = [start_once([sys.executable, "-c", BOTO3_HANDLER], BASE) for _ in range(STARTS)]
    boto3_init = statistics.median(t for t, _ in boto3)
    rows.append({"name": "Python 3 + boto3 (same clients)", "init": boto3_init,
                 "rss": statistics.median(r for _, r in boto3), "size": None, "zip": None, "ratio": 1.0})
    for function in template_functions():
        binary = binaries / function.binary
        runs = [start_once([str(binary)], environment(function)) for _ in range(STARTS)]
        init = statistics.median(t for t, _ in runs)
        rows.append({"name": function.binary, "init": init, "rss": statistics.median(r for _, r in runs),
                     "size": binary.stat().st_size, "zip": zipped_size(binary), "ratio": init / boto3_init})
    return rows


def measure_multicall(binaries: Path, singles: list[dict]) -> list[dict]:
    """The functions' binaries (from `measure`) beside one multi-call binary started as each function."""
    binary = binaries / MULTICALL
    inits, peaks = [], []
    for function in template_functions():
        env = {**environment(function), "AMIFLOW_FUNCTION": function.binary}
        runs = [start_once([str(binary)], env) for _ in range(STARTS)]
        inits.append(statistics.median(t for t, _ in runs))
        peaks.append(statistics.median(r for _, r in runs))
    functions = [row for row in singles if row["size"]]
    zipped = zipped_size(binary)
    return [
        {"name": f"one per function ({len(functions)})", "count": len(functions),
         "size": sum(r["size"] for r in functions), "zip": sum(r["zip"] for r in functions),
         "largest": max(r["zip"] for r in functions), "init": statistics.median(r["init"] for r in functions),
         "rss": max(r["rss"] for r in functions)},
        {"name": "one multi-call binary", "count": 1, "size": binary.stat().st_size, "zip": zipped, "largest": zipped,
         "init": statistics.median(inits), "rss": max(peaks)},
    ]


def multicall_table(rows: list[dict]) -> str:
    lines = ["| binaries | total size | total zip | each function's zip (largest) | init (median over functions) | peak RSS (highest) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['size'] / 2**20:.1f} MiB | {row['zip'] / 2**20:.1f} MiB | "
                     f"{row['largest'] / 10**6:.2f} MB | {1000 * row['init']:.1f} ms | {row['rss'] / 1024:.1f} MiB |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["| function | init (median of %d) | of boto3's | peak RSS | binary | zip | zip (MB) |" % STARTS,
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        size = f"{row['size'] / 2**20:.1f} MiB" if row["size"] else ""
        zipped = f"{row['zip'] / 2**20:.1f} MiB" if row["zip"] else ""
        megabytes = f"{row['zip'] / 10**6:.2f} MB" if row["zip"] else ""
        lines.append(f"| {row['name']} | {1000 * row['init']:.1f} ms | {row['ratio']:.2f} | "
                     f"{row['rss'] / 1024:.1f} MiB | {size} | {zipped} | {megabytes} |")
    return "\n".join(lines)


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else cargo_target_dir() / "release"
    measured = measure(where)
    print(table(measured))
    print(multicall_table(measure_multicall(where, measured)))
