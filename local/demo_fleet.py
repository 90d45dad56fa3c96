"""`make demo-fleet`: a zone evacuation on the local stack.

Starts the stack, seeds a web tier of eight instances in us-east-1a in three waves (tag
`amiflow:wave` = 1, 2, 3), one of them in an Auto Scaling group. Then, with the amiflow CLI, it
previews the evacuation of the tier from us-east-1a to us-east-1b, both given by AZ ID
(`amiflow evacuate --dry-run`: the plan, changing nothing), and runs it (`--watch`: a line per instance, then a table). Exits 0 only if every
instance that may move moved, and the group's member was refused and left where it was.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))

from amiflow_local.harness import RunningStack  # noqa: E402
from amiflow_local.seed import seed_fleet  # noqa: E402

from demo import REGION, amiflow  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="amiflow-demo-") as logs, RunningStack(Path(logs)) as stack:
        session = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION)
        ec2 = session.client("ec2", endpoint_url=stack.endpoint)
        print(f"local AWS stack on {stack.endpoint}")

        fleet = seed_fleet(ec2, REGION, name="web", waves=[3, 3, 2])
        member = fleet.instance_ids[-1]
        asg = session.client("autoscaling", endpoint_url=stack.endpoint)
        image = ec2.describe_instances(InstanceIds=[member])["Reservations"][0]["Instances"][0]["ImageId"]
        asg.create_launch_configuration(LaunchConfigurationName="web-asg", ImageId=image, InstanceType="t3.micro")
        asg.create_auto_scaling_group(AutoScalingGroupName="web-asg", LaunchConfigurationName="web-asg", MinSize=0, MaxSize=1,
                                      DesiredCapacity=0, VPCZoneIdentifier=fleet.world.subnets[fleet.world.source_az])
        asg.attach_instances(AutoScalingGroupName="web-asg", InstanceIds=[member])
        # AZ IDs name the same zone in every account; this account's names map to them so:
        zone_id = {z["ZoneName"]: z["ZoneId"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
        target = f"{REGION}b"
        print(f"seeded {len(fleet.instance_ids)} instances tagged fleet=web in {fleet.world.source_az} "
              f"({zone_id[fleet.world.source_az]}), waves 3/3/2; {member} is in Auto Scaling group web-asg; "
              f"{target} is {zone_id[target]} in this account")

        selection = ["--from-az", zone_id[fleet.world.source_az], "--tag", "fleet=web", "--az", zone_id[target],
                     "--wave-tag", "amiflow:wave", "--max-concurrency", "2"]
        for command in (["evacuate", *selection, "--dry-run"], ["evacuate", *selection, "--source-action", "stop", "--watch"]):
            print(f"\n$ amiflow {' '.join(command)}", flush=True)
            result = amiflow(stack.endpoint, *command)
            print(result.stdout, flush=True)
            if result.returncode != 0:
                return 1

        placed = {}
        for reservation in ec2.describe_instances(Filters=[{"Name": "tag:fleet", "Values": ["web"]}])["Reservations"]:
            for instance in reservation["Instances"]:
                placed[instance["InstanceId"]] = (instance["Placement"]["AvailabilityZone"], instance["State"]["Name"])
        moved = [i for i, (az, state) in placed.items() if az == target and state == "running"]
        sources = [i for i in fleet.instance_ids if i != member]
        ok = (
            len(moved) == len(sources)
            and all(placed[i][1] in ("stopping", "stopped") for i in sources)
            and placed[member] == (fleet.world.source_az, "running")
        )
        stopped = [i for i in sources if placed[i][1] in ("stopping", "stopped")]
        print(f"{len(moved)} new instances running in {target}; {len(stopped)} of {len(sources)} sources stopped; "
              f"{member} is {placed[member][1]} in {placed[member][0]}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
