"""What an operator watches amiflow with, end to end: the functions log JSON at the level the stack's
LogLevel parameter sets (Lambda hands it to them as AWS_LAMBDA_LOG_LEVEL), and a failed execution
counts in the metric that its state machine's alarm watches."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from workflow import log_records, run, state_machine_arn, wait_for

EVENT = json.loads((Path(__file__).resolve().parents[2] / "events/wait-image/ami-state-change-available.json").read_text())


def handled(stack, image_id: str) -> list[dict]:
    """wait-image's log records about an AMI state change of image_id, once it has answered it."""
    event = {**EVENT, "resources": [f"arn:aws:ec2:us-east-1::image/{image_id}"], "detail": {**EVENT["detail"], "ImageId": image_id}}
    answer = stack.client("lambda").invoke(FunctionName="wait-image", Payload=json.dumps(event))
    assert "FunctionError" not in answer, answer["Payload"].read()
    return [r for r in log_records(stack, "wait-image") if image_id in json.dumps(r)]


def test_the_functions_log_json_at_the_level_the_stack_sets(stack, stack_parameters):
    at_info = handled(stack, f"ami-{uuid.uuid4().hex[:17]}")
    assert at_info, "at the default level INFO, wait-image says it handled the event"
    record = at_info[0]
    assert record["level"] == "INFO" and record["fields"]["message"] == "AMI state change handled", record

    stack_parameters(LogLevel="WARN")
    assert handled(stack, f"ami-{uuid.uuid4().hex[:17]}") == [], "at WARN, an INFO line is not written"


def test_a_failed_execution_counts_in_the_metric_its_alarm_watches(stack, sfn):
    failed = run(sfn, "MigrateInstance", {"instanceId": "i-0123456789abcdef0", "targetSubnetId": "subnet-0123456789abcdef0"})
    assert failed.status == "FAILED"

    arn = state_machine_arn(sfn, "MigrateInstance")
    cloudwatch = stack.client("cloudwatch")
    alarms = [
        a for a in cloudwatch.describe_alarms()["MetricAlarms"]
        if a.get("Dimensions") == [{"Name": "StateMachineArn", "Value": arn}]
    ]
    assert len(alarms) == 1, [a["AlarmName"] for a in alarms]
    alarm = alarms[0]
    now = datetime.now(timezone.utc)

    def counted() -> float:
        points = cloudwatch.get_metric_statistics(
            Namespace=alarm["Namespace"], MetricName=alarm["MetricName"], Dimensions=alarm["Dimensions"],
            StartTime=now - timedelta(seconds=alarm["Period"] * alarm["EvaluationPeriods"]),
            EndTime=now + timedelta(seconds=60), Period=alarm["Period"], Statistics=[alarm["Statistic"]],
        )["Datapoints"]
        return sum(p[alarm["Statistic"]] for p in points)

    assert wait_for(lambda: counted() >= alarm["Threshold"], what="the failure counted"), "the alarm would go off"
