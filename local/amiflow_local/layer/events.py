"""EC2 AMI State Change events, and EventBridge delivery to Lambda and to other accounts' buses.

AWS: EC2 sends `EC2 AMI State Change` (source `aws.ec2`) to the default event bus of the account
that owns the image when it becomes available, failed, deregistered or disabled, with detail
{RequestId, ImageId, State, ErrorMessage}
(https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitor-ami-events.html). Rules deliver
matching events to their targets; a Lambda target is invoked asynchronously with the event
(https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-targets.html), and an event bus in
another account receives the event unchanged, where that bus's rules apply, if its resource
policy lets the sending account put events
(https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-cross-account.html), with the
conditions it sets on the event's source and detail type (`events:source`,
`events:detail-type`: https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-use-conditions.html).

A rule has an event pattern or a schedule expression: one with a pattern runs when an event
matches it, one with a schedule runs on its schedule
(https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_PutRule.html), so a schedule rule
gets no event put on its bus.

moto 5.2.5 emits no EC2 events and fails PutEvents (HTTP 500) when a rule has a Lambda target. It
also treats a schedule rule's missing pattern as one that matches everything, so that every event
on the bus ran the trigger's sweep (four sweeps per migration).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from moto.events.models import Rule, events_backends
from moto.utilities.arns import parse_arn

from .state import config, faults

log = logging.getLogger("amiflow.layer.events")

# Set by the launcher: invokes a function by name with a payload, asynchronously.
lambda_invoker: Callable[[str, bytes], None] | None = None
# Every event the layer put on a bus, for tests: (account, bus, event, when it was put there in
# Unix time, the start of a reaction for `make bench`).
delivered: list[tuple[str, str, dict[str, Any], float]] = []

_original_send_to_targets = Rule.send_to_targets


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def envelope(account: str, region: str, source: str, detail_type: str, resources: list[str], detail: dict[str, Any]) -> dict[str, Any]:
    """An event as EventBridge delivers it."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": account,
        "time": _now(),
        "region": region,
        "resources": resources,
        "detail": detail,
    }


def ami_event(account: str, region: str, image_id: str, state: str, error_message: str = "") -> dict[str, Any]:
    return envelope(
        account, region, "aws.ec2", "EC2 AMI State Change", [f"arn:{config.partition}:ec2:{region}::image/{image_id}"],
        {"RequestId": str(uuid.uuid4()), "ImageId": image_id, "State": state, "ErrorMessage": error_message},
    )


def emit_ami_state(account: str, region: str, image_id: str, state: str, error_message: str = "") -> None:
    """Puts the event on the owning account's default bus, unless a fault drops it."""
    if faults.event_dropped(image_id, state):
        log.info("dropped the %s event of %s (fault)", state, image_id)
        return
    deliver(account, region, "default", ami_event(account, region, image_id, state, error_message))


def matches(rule: Rule, event: dict[str, Any]) -> bool:
    """Whether an event put on its bus runs the rule: only a rule with a pattern, and only when the
    event matches it."""
    return rule.event_pattern.dump() is not None and rule.event_pattern.matches_event(event)


def fire_schedule(account: str, region: str, rule_name: str) -> dict[str, Any]:
    """Delivers a `Scheduled Event` to a schedule rule's targets now, as EventBridge does when the
    rule's schedule comes round (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-run-lambda-schedule.html).
    moto 5.2.5 stores schedule rules but never fires them."""
    backend = events_backends[account][region]
    rule = backend.describe_event_bus("default").rules.get(rule_name)
    if rule is None or not rule.scheduled_expression:
        raise KeyError(f"no schedule rule {rule_name} in {account}")
    event = envelope(account, region, "aws.events", "Scheduled Event", [rule.arn], {})
    delivered.append((account, "default", event, time.time()))
    for target in rule.targets:
        _send(rule, target, event)
    return event


def _bus_allows(bus: Any, sender: str, event: dict[str, Any]) -> bool:
    """Whether a bus's resource policy lets `sender` put this event on it."""
    if bus.account_id == sender:
        return True
    policy = getattr(bus, "policy", None)
    if not policy:
        return False
    document = json.loads(policy) if isinstance(policy, str) else policy
    from . import iam

    if iam.judge is not None and iam.config.iam_enforced:
        # The policy is judged as IAM judges it, conditions and all; the sending account's own
        # side allows (its rule sends).
        check = iam.Check("events:PutEvents", bus.arn, bus.account_id,
                          {"events:source": [event.get("source", "")], "events:detail-type": [event.get("detail-type", "")]},
                          document)
        return iam.judge_checks(iam.administrator(sender), [check], bus.region) is None
    return _principal_listed(document, sender)


def _principal_listed(document: dict[str, Any], sender: str) -> bool:
    """Without the IAM judge: a statement that names the sender (conditions on organizations only)."""
    for statement in document.get("Statement", []):
        if statement.get("Effect") != "Allow":
            continue
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if not any(a in ("events:PutEvents", "events:*") for a in actions):
            continue
        principal = statement.get("Principal", {})
        principals = principal.get("AWS", []) if isinstance(principal, dict) else [principal]
        principals = [principals] if isinstance(principals, str) else principals
        for p in principals:
            if p == sender or p == f"arn:{config.partition}:iam::{sender}:root":
                return True
            if p == "*":
                from .organizations import condition_allows

                if condition_allows(statement.get("Condition", {}), sender):
                    return True
    return False


def deliver(account: str, region: str, bus_name: str, event: dict[str, Any], sender: str | None = None) -> None:
    """Runs an event through a bus's rules, as EventBridge does."""
    backend = events_backends[account][region]
    try:
        bus = backend.describe_event_bus(bus_name)
    except Exception:  # noqa: BLE001 - a missing bus drops the event, as on AWS
        log.info("no event bus %s in %s", bus_name, account)
        return
    if sender and not _bus_allows(bus, sender, event):
        log.info("bus %s of %s refuses events from %s", bus_name, account, sender)
        return
    delivered.append((account, bus_name, event, time.time()))
    for rule in list(bus.rules.values()):
        if rule.state != "ENABLED" or not matches(rule, event):
            continue
        for target in rule.targets:
            _send(rule, target, event)


def _send(rule: Rule, target: dict[str, Any], event: dict[str, Any], transform_input: bool = True) -> None:
    """One target's delivery. `ingestion-time`, moto's own field, goes only to moto's deliveries."""
    moto_event = event
    event = {k: v for k, v in event.items() if k != "ingestion-time"}
    arn = parse_arn(target["Arn"])
    if arn.service == "lambda":
        name = arn.resource_id.split(":")[0]
        payload = json.dumps(event).encode()
        if lambda_invoker is None:
            log.warning("no Lambda invoker for %s", name)
            return
        threading.Thread(target=lambda_invoker, args=(name, payload), daemon=True).start()
    elif arn.service == "events" and arn.resource_type == "event-bus":
        deliver(arn.account, arn.region, arn.resource_id, dict(event), sender=rule.account_id)
    elif arn.service == "sqs" and not target.get("InputTransformer") and not target.get("SqsParameters"):
        # The whole event, as EventBridge sends it (moto's default template drops `account`).
        from moto.sqs.models import sqs_backends

        sqs_backends[arn.account][arn.region].send_message(queue_name=arn.resource_id, message_body=json.dumps(event))
    else:
        # Other targets (SQS, CloudWatch Logs, archives) as moto delivers them, with the event's
        # own time (PutEvents may set it; EventBridge keeps it).
        legacy = dict(event)
        legacy["time"] = _timestamp(event.get("time"))
        legacy["ingestion-time"] = moto_event.get("ingestion-time") or datetime.now(timezone.utc).timestamp()
        single = Rule.__new__(Rule)
        single.__dict__.update(rule.__dict__)
        single.targets = [target]
        _original_send_to_targets(single, legacy, transform_input)


def _timestamp(time: Any) -> float:
    """An event's `time` (ISO 8601, or moto's epoch seconds) as epoch seconds. Pure but for now."""
    if isinstance(time, (int, float)):
        return float(time)
    try:
        return datetime.strptime(str(time), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return datetime.now(timezone.utc).timestamp()


def _send_to_targets(self: Rule, original_event: dict[str, Any], transform_input: bool = True) -> None:
    """PutEvents through moto: Lambda and cross-account bus targets the layer's way."""
    if not matches(self, original_event):
        return
    event = dict(original_event)
    if isinstance(event.get("time"), (int, float)):
        event["time"] = datetime.fromtimestamp(event["time"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ingestion = event.pop("ingestion-time", None)
    for target in self.targets:
        # A replay passes its events untransformed (they keep `replay-name`), as moto's own does.
        _send(self, target, {**event, **({"ingestion-time": ingestion} if ingestion else {})}, transform_input)


def install() -> None:
    Rule.send_to_targets = _send_to_targets
