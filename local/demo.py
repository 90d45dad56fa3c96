"""`make demo`: the main job on the local stack.

Starts the stack, seeds an instance in us-east-1a (tags, two EBS volumes, a security group, a key
pair, an Elastic IP), migrates it to us-east-1b with MigrateInstance, prints each state as the run
passes it, then the result. Exits 0 only if the migration succeeded.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))

from amiflow_local.harness import RunningStack  # noqa: E402
from amiflow_local.seed import seed  # noqa: E402

REGION = "us-east-1"


def follow(sfn, execution_arn: str) -> dict:
    """Prints each state as the run enters it, and how long the previous one took (from the
    execution history's own timestamps)."""
    seen = 0
    previous = None
    while True:
        events = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
        for event in events[seen:]:
            details = event.get("stateEnteredEventDetails")
            if details:
                if previous:
                    print(f"      {previous[0]} took {(event['timestamp'] - previous[1]).total_seconds():.2f} s")
                print(f"  ->  {details['name']}", flush=True)
                previous = (details["name"], event["timestamp"])
        seen = len(events)
        described = sfn.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING":
            end = described.get("stopDate") or events[-1]["timestamp"]
            if previous:
                print(f"      {previous[0]} took {(end - previous[1]).total_seconds():.2f} s")
            total = (end - described["startDate"]).total_seconds()
            print(f"  {described['status']} after {total:.2f} s")
            return described
        time.sleep(0.3)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="amiflow-demo-") as logs, RunningStack(Path(logs)) as stack:
        session = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION)
        ec2 = session.client("ec2", endpoint_url=stack.endpoint)
        sfn = session.client("stepfunctions", endpoint_url=stack.endpoint)
        print(f"local AWS stack on {stack.endpoint}")

        world = seed(ec2, REGION, name="web-1")
        print(f"seeded {world.instance_id} in {world.source_az}: t3.micro, 2 EBS volumes, "
              f"{world.security_group_id}, key {world.key_name}, Elastic IP {world.public_ip}")

        machine = next(m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"] if m["name"] == "MigrateInstance")
        payload = {"instanceId": world.instance_id, "targetAvailabilityZone": f"{REGION}b", "sourceAction": "stop"}
        print(f"MigrateInstance {json.dumps(payload)}")
        execution = sfn.start_execution(stateMachineArn=machine, name=f"demo-{int(time.time())}", input=json.dumps(payload))
        result = follow(sfn, execution["executionArn"])
        if result["status"] != "SUCCEEDED":
            print(f"error: {result.get('error')}: {result.get('cause')}", file=sys.stderr)
            return 1

        out = json.loads(result["output"])
        new = ec2.describe_instances(InstanceIds=[out["newInstanceId"]])["Reservations"][0]["Instances"][0]
        address = ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]
        source = ec2.describe_instances(InstanceIds=[world.instance_id])["Reservations"][0]["Instances"][0]
        print()
        print(f"new instance   {out['newInstanceId']} in {new['Placement']['AvailabilityZone']} ({new['SubnetId']}), {new['State']['Name']}")
        print(f"elastic IP     {address['PublicIp']} now on {address.get('InstanceId')}")
        print(f"source         {world.instance_id}: {source['State']['Name']}")
        print(f"AMI            {out['imageId']} {'kept' if out['imageKept'] else 'removed, with snapshots ' + ', '.join(out['deletedSnapshotIds'])}")
        for note in out["notCarried"]:
            print(f"not carried    {note}")
        ok = (
            new["Placement"]["AvailabilityZone"] == f"{REGION}b"
            and address.get("InstanceId") == out["newInstanceId"]
            and source["State"]["Name"] in ("stopping", "stopped")
        )
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
