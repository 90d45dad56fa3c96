"""`make demo`: the main job on the local stack.

Starts the stack, seeds an instance in us-east-1a (tags, two EBS volumes, a security group, a key
pair, an Elastic IP), migrates it to us-east-1b with the amiflow CLI (`amiflow migrate --watch`, which shows each
state as the run passes it), then prints the result. Exits 0 only if the migration succeeded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))

from amiflow_local.harness import RunningStack  # noqa: E402
from amiflow_local.seed import seed  # noqa: E402
from amiflow_local.server import cargo_target_dir  # noqa: E402

REGION = "us-east-1"


def amiflow(endpoint: str, *args: str) -> subprocess.CompletedProcess:
    """The amiflow CLI, against the local stack; its progress goes to this terminal."""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_REGION": REGION}
    return subprocess.run([str(cargo_target_dir() / "debug" / "amiflow"), "--endpoint-url", endpoint, *args],
                          stdout=subprocess.PIPE, text=True, env=env)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="amiflow-demo-") as logs, RunningStack(Path(logs)) as stack:
        session = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION)
        ec2 = session.client("ec2", endpoint_url=stack.endpoint)
        print(f"local AWS stack on {stack.endpoint}")

        world = seed(ec2, REGION, name="web-1")
        print(f"seeded {world.instance_id} in {world.source_az}: t3.micro, 2 EBS volumes, "
              f"{world.security_group_id}, key {world.key_name}, Elastic IP {world.public_ip}")

        command = ["migrate", "--instance-id", world.instance_id, "--az", f"{REGION}b", "--source-action", "stop", "--watch"]
        print(f"$ amiflow {' '.join(command)}", flush=True)
        result = amiflow(stack.endpoint, *command)
        if result.returncode != 0:
            return 1
        out = json.loads(result.stdout)
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
        for left in out.get("leftovers", []):
            print(f"left behind    {left['resourceId']}: {left['reason']}")
        ok = (
            new["Placement"]["AvailabilityZone"] == f"{REGION}b"
            and address.get("InstanceId") == out["newInstanceId"]
            and source["State"]["Name"] in ("stopping", "stopped")
        )
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
