"""`make peer-test`: moto's own tests for the services amiflow uses, run in-process with the
fidelity layer installed, so that a change of the layer that breaks a correct moto behaviour shows.

The tests come from moto's source distribution for the pinned version (it carries its `tests/`
folder): EC2 images, volumes and snapshots, instances and tags, KMS, EventBridge and Step
Functions. Each failure is either the layer being more faithful to AWS than moto (listed in
local/peer-expected.txt with the reason, and in local/README.md), or a defect of the layer. The
run fails on any failure not listed, and on a listed one that now passes (the list is stale).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

LOCAL = Path(__file__).resolve().parent
ROOT = LOCAL.parent
PEER = ROOT / "target" / "peer"
EXPECTED = LOCAL / "peer-expected.txt"
SUITES = [
    "tests/test_ec2/test_amis.py",
    "tests/test_ec2/test_elastic_block_store.py",
    "tests/test_ec2/test_instances.py",
    "tests/test_ec2/test_tags.py",
    "tests/test_kms",
    "tests/test_events",
    "tests/test_stepfunctions",
]
# Modules that drive moto's own Lambda in Docker, which no machine here runs: not a layer matter.
IGNORED = [
    "tests/test_events/test_events_lambdatriggers_integration.py",
    "tests/test_stepfunctions/parser/test_stepfunctions_lambda_integration.py",
    "tests/test_stepfunctions/parser/test_stepfunctions_lambda_retry_integration.py",
]
# What the selected suites import besides themselves.
SUPPORT = ["tests/__init__.py", "tests/conftest.py", "tests/markers.py", "tests/test_ec2/__init__.py",
           "tests/test_ec2/helpers.py"]


def pinned_moto() -> str:
    for line in (LOCAL / "requirements.txt").read_text().splitlines():
        if line.lower().startswith("moto=="):
            return line.split("==", 1)[1].strip()
    raise SystemExit("local/requirements.txt pins no moto version")


def sources(version: str) -> Path:
    """moto's tests for `version`, fetched once into target/peer."""
    tree = PEER / f"moto-{version}"
    if (tree / "tests").is_dir():
        return tree
    PEER.mkdir(parents=True, exist_ok=True)
    archive = PEER / f"moto-{version}.tar.gz"
    if not archive.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--no-binary", ":all:", f"moto=={version}", "-d", str(PEER)], check=True)
    wanted = [f"moto-{version}/{p}" for p in SUITES + SUPPORT]
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if any(m.name == w or m.name.startswith(w + "/") for w in wanted)]
        tar.extractall(PEER, members=members, filter="data")
    return tree


def expected() -> dict[str, str]:
    """test id -> why it fails with the layer (the AWS behaviour the layer follows)."""
    out = {}
    for line in EXPECTED.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            test, _, why = line.partition(" | ")
            out[test.strip()] = why.strip()
    return out


def failures(report: Path) -> set[str]:
    failed = set()
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            module = case.get("classname", "").replace(".", "/")
            module = re.sub(r"/(Test[A-Za-z0-9_]+)$", r".py::\1", module)
            module = module if ".py" in module else module + ".py"
            failed.add(f"{module}::{case.get('name')}")
    return failed


def main() -> int:
    tree = sources(pinned_moto())
    # --without-layer: moto alone, to tell the layer's failures from the environment's.
    alone = "--without-layer" in sys.argv
    report = PEER / ("report-alone.xml" if alone else "report.xml")
    plugin = [] if alone else ["-p", "amiflow_local.peer_plugin"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugin, "-p", "no:cacheprovider",
         "--rootdir", str(tree), "-o", "addopts=", "-o", "testpaths=", "-W", "ignore::pytest.PytestUnknownMarkWarning",
         f"--junitxml={report}", *[f"--ignore={i}" for i in IGNORED], *SUITES],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{LOCAL}"},
    )
    if not report.exists():
        return run.returncode or 1
    failed = failures(report)
    if alone:
        for test in sorted(failed):
            print(f"  fails without the layer: {test}")
        return 0
    known = expected()
    new = sorted(failed - set(known))
    stale = sorted(set(known) - failed)
    print(f"\npeer tests: {len(failed)} failed with the layer, {len(known)} expected (local/peer-expected.txt)")
    for test in new:
        print(f"  NOT EXPECTED: {test}")
    for test in stale:
        print(f"  EXPECTED BUT PASSED (remove it from the list): {test}")
    return 1 if new or stale else 0


if __name__ == "__main__":
    sys.exit(main())
