"""Starts the local AWS stack once for each test process, on a free loopback port, and stops it at
the end. Under pytest-xdist (make test runs the suite in several workers) each worker has a stack
of its own, so that tests which arm faults or change the stack's settings never meet."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "local"))

from amiflow_local.harness import RunningStack, Stack  # noqa: E402


@pytest.fixture(scope="session")
def stack(tmp_path_factory, request):
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
        figures, durations = stack.control("iam"), stack.control("durations")
        JUDGED.append(figures)
        DURATIONS.append(durations)
        # Under pytest-xdist each worker runs a stack of its own; the figures travel to the
        # controller, which prints the session's sum (pytest_testnodedown).
        if hasattr(request.config, "workeroutput"):
            request.config.workeroutput["judged"] = figures
            request.config.workeroutput["durations"] = durations
    finally:
        running.stop()


# What IAM judging cost the session, one entry a stack, shown at its end (local/README.md: IAM on
# every signed call).
JUDGED: list[dict] = []
# Each stack's invocations answered and longest invocation per function: what the template's
# Timeouts are chosen from (template.yaml, Globals).
DURATIONS: list[dict] = []


def pytest_testnodedown(node, error):
    output = getattr(node, "workeroutput", {})
    if output.get("judged"):
        JUDGED.append(output["judged"])
    if output.get("durations"):
        DURATIONS.append(output["durations"])


def pytest_terminal_summary(terminalreporter):
    if JUDGED:
        total = {key: sum(f[key] for f in JUDGED) for key in ("requests", "simulations", "seconds", "denials")}
        terminalreporter.write_line(
            f"local stack IAM ({len(JUDGED)} stack{'s' if len(JUDGED) != 1 else ''}): {total['requests']} calls judged with {total['simulations']} "
            f"simulations in {total['seconds']:.1f} s, {total['denials']} refused "
            f"(enforced: {all(f['enforced'] for f in JUDGED)})"
        )
    if any(DURATIONS):
        longest: dict[str, tuple[float, int]] = {}
        for stack in DURATIONS:
            for function, seen in stack.items():
                before = longest.get(function, (0.0, 0))
                longest[function] = (max(before[0], seen["max"]), before[1] + seen["count"])
        terminalreporter.write_line("longest invocation per function (of how many): " + ", ".join(
            f"{function} {seconds:.1f} s ({count})" for function, (seconds, count) in sorted(longest.items())))


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
        stack.control("deploy", {"parameters": {}, "reset": True})
