"""The source account's bus takes from target accounts only the AMI events that end a copy's wait
(template.yaml, TargetAccountEventsPolicy; README, Safety)."""

from __future__ import annotations

import json
import uuid

from amiflow_local.seed import seed

from accounts import A, B, as_account
from workflow import wait_for


def test_a_target_account_can_put_only_ami_events_on_the_source_bus(stack):
    stack.control("target-account", {"accountId": B, "externalId": "ext-b"})
    b_events = as_account(stack, B, "events")
    # B's own administrator forwards more than target-account.yaml does.
    rule = f"more-{uuid.uuid4().hex[:6]}"
    b_events.put_rule(Name=rule, EventPattern=json.dumps({"source": ["my.app"]}))
    b_events.put_targets(Rule=rule, Targets=[{"Id": "a", "Arn": f"arn:aws:events:us-east-1:{A}:event-bus/default"}])
    marker = uuid.uuid4().hex
    b_events.put_events(Entries=[{"Source": "my.app", "DetailType": "EC2 AMI State Change",
                                  "Detail": json.dumps({"ImageId": "ami-0123456789abcdef0", "State": "available", "marker": marker})}])
    # A real AMI event of B, forwarded by target-account.yaml's rule, still arrives.
    b_ec2 = as_account(stack, B, "ec2")
    stack.control("config", {"imageDelaySeconds": 0})
    image_id = b_ec2.create_image(InstanceId=seed(b_ec2, "us-east-1", name=f"b-{uuid.uuid4().hex[:6]}").instance_id,
                                  Name=f"b-{uuid.uuid4().hex[:6]}")["ImageId"]
    wait_for(lambda: [d for d in stack.control("events") if d["account"] == A and d["event"]["detail"].get("ImageId") == image_id],
             what="B's AMI event on A's bus")
    b_events.remove_targets(Rule=rule, Ids=["a"])
    assert [d for d in stack.control("events") if d["account"] == A and marker in json.dumps(d["event"])] == []
