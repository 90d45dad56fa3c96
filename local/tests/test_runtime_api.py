"""The stack's Lambda runtime API (amiflow_local/functions.py), with a probe function written in
Python so that each behaviour can be provoked: the deadline Lambda hands a function, a function
that runs past its Timeout, and one whose process dies. Lambda's runtime API page
(runtimes-api.html) and its timeout page (configuration-timeout.html) say what each must be."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest

from amiflow_local.functions import FunctionHost
from amiflow_local.template import Template

# A function that does what its event asks: tell its deadline, sleep, or exit.
PROBE = f"""#!{sys.executable}
import json, os, sys, time, urllib.request
api = os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
while True:
    with urllib.request.urlopen(api + "next") as event:
        request_id = event.headers["Lambda-Runtime-Aws-Request-Id"]
        deadline_ms = int(event.headers["Lambda-Runtime-Deadline-Ms"])
        ask = json.loads(event.read())
    if ask.get("exit"):
        sys.exit(3)
    time.sleep(ask.get("sleep", 0))
    if ask.get("fail"):
        urllib.request.urlopen(urllib.request.Request(api + request_id + "/error", method="POST",
            data=json.dumps({{"errorType": "ImageFailed", "errorMessage": "no"}}).encode()))
        continue
    answer = {{"deadlineMs": deadline_ms, "pid": os.getpid()}}
    urllib.request.urlopen(urllib.request.Request(api + request_id + "/response", method="POST",
        data=json.dumps(answer).encode()))
"""


@pytest.fixture
def host(tmp_path):
    (tmp_path / "bin").mkdir()
    probe = tmp_path / "bin" / "probe"
    probe.write_text(PROBE)
    probe.chmod(0o755)
    host = FunctionHost(tmp_path / "bin", tmp_path / "logs", {"PATH": "/usr/bin:/bin"},
                        arn_prefix="arn:aws:lambda:us-east-1:123456789012:function:")
    host.start({"probe": {}}, {"probe": 2.0})
    yield host
    host.stop()


def invoke(host, event: dict) -> tuple[int, dict]:
    status, body = host.invoke("probe", json.dumps(event).encode())
    return status, json.loads(body)


def test_the_deadline_is_the_hand_over_plus_the_functions_timeout(host):
    before = time.time() * 1000
    status, answer = invoke(host, {})
    assert status == 200
    # Unix time in milliseconds, the Timeout (2 s) after the event was handed over.
    assert before + 2000 <= answer["deadlineMs"] <= time.time() * 1000 + 2000
    host.set_timeout("probe", 5)
    status, answer = invoke(host, {})
    assert answer["deadlineMs"] >= time.time() * 1000 + 4000


def test_an_invocation_past_its_timeout_is_sandbox_timedout_and_its_environment_replaced(host):
    environments = {p.pid for p in host.processes["probe"]}
    started = time.monotonic()
    status, answer = invoke(host, {"sleep": 30})
    assert time.monotonic() - started < 5
    assert status == 500
    assert answer["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 2.00 seconds" in answer["errorMessage"]
    # The environment that held it was replaced; the next invocations run.
    assert len({p.pid for p in host.processes["probe"]} - environments) == 1
    assert all(invoke(host, {})[0] == 200 for _ in range(3))


def test_a_function_error_keeps_its_type_and_a_dead_runtime_is_an_exit_error(host):
    assert invoke(host, {"fail": True}) == (500, {"errorType": "ImageFailed", "errorMessage": "no"})
    status, answer = invoke(host, {"exit": True})
    assert status == 500 and answer["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in answer["errorMessage"]
    assert invoke(host, {})[0] == 200


def test_a_function_with_reserved_concurrency_runs_that_many_invocations_at_once(tmp_path):
    (tmp_path / "bin").mkdir()
    for name in ("one", "two"):
        (tmp_path / "bin" / name).write_text(PROBE)
        (tmp_path / "bin" / name).chmod(0o755)
    host = FunctionHost(tmp_path / "bin", tmp_path / "logs", {"PATH": "/usr/bin:/bin"})
    host.start({"one": {}, "two": {}}, {"one": 10.0, "two": 10.0}, {"one": 1, "two": None})
    try:
        for name, alone in (("one", True), ("two", False)):
            threads = [threading.Thread(target=host.invoke, args=(name, b'{"sleep": 1}')) for _ in range(2)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            took = time.monotonic() - started
            # ReservedConcurrentExecutions 1: the second waits for the first.
            assert (took >= 2) == alone, (name, took)
    finally:
        host.stop()


def test_the_template_reserves_one_trigger_environment_unless_told_not_to():
    root = __import__("pathlib").Path(__file__).resolve().parents[2]

    def reserved(parameters):
        functions = Template(root, "123456789012", "us-east-1", parameters).functions()
        return {f.binary: f.reserved_concurrency for f in functions}

    assert reserved({})["trigger"] == 1
    assert reserved({"TriggerReservedConcurrency": "0"})["trigger"] is None
    assert reserved({})["launch"] is None
