"""What an operator has to watch amiflow with, in template.yaml: every function logs JSON at the
stack's log level into a log group of its own that keeps its logs LogRetentionDays, every function
and state machine is traced with X-Ray, and every state machine has an alarm on its failed
executions. (What the functions and the state machines do with these settings is shown end to end
in tests/e2e/test_observability.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from amiflow_local.template import Template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Template(ROOT, "123456789012", "us-east-1")
FUNCTIONS = TEMPLATE.functions()
MACHINES = TEMPLATE.state_machines()


def test_there_is_something_to_check():
    assert len(FUNCTIONS) >= 11 and len(MACHINES) >= 5


@pytest.mark.parametrize("function", FUNCTIONS, ids=[f.binary for f in FUNCTIONS])
def test_a_function_logs_json_at_the_stack_level_into_its_own_group_with_retention(function):
    assert function.logging["LogFormat"] == "JSON"
    assert function.logging["ApplicationLogLevel"] == TEMPLATE.parameters["LogLevel"]
    groups = dict(TEMPLATE.log_groups())
    assert function.log_group in groups, f"{function.binary} logs into {function.log_group}, which the template does not make"
    assert groups[function.log_group] == int(TEMPLATE.parameters["LogRetentionDays"])
    assert function.tracing == "Active"


def test_no_two_functions_share_a_log_group():
    assert len({f.log_group for f in FUNCTIONS}) == len(FUNCTIONS)


@pytest.mark.parametrize("machine", MACHINES, ids=[m.name for m in MACHINES])
def test_a_state_machine_is_traced_and_alarmed_on_failed_executions(machine):
    assert machine.tracing
    arn = TEMPLATE.state_machine_arn(machine.logical_id)
    watching = [
        a for a in TEMPLATE.alarms()
        if a["Namespace"] == "AWS/States" and a["MetricName"] == "ExecutionsFailed"
        and a["Dimensions"] == [{"Name": "StateMachineArn", "Value": arn}]
    ]
    assert len(watching) == 1, f"{machine.name}: {len(watching)} alarms on its failed executions"
    alarm = watching[0]
    # One failed execution is enough, and a period with no execution is not a failure.
    assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == ("Sum", 1, "GreaterThanOrEqualToThreshold")
    assert alarm["TreatMissingData"] == "notBreaching"
    assert "AlarmActions" not in alarm, "no topic given: the alarm notifies no one"


def test_the_alarms_notify_the_topic_given():
    topic = "arn:aws:sns:us-east-1:123456789012:amiflow-alarms"
    with_topic = Template(ROOT, "123456789012", "us-east-1", {"AlarmTopicArn": topic})
    alarms = with_topic.alarms()
    assert alarms and all(a["AlarmActions"] == [topic] for a in alarms)
