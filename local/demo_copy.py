"""`make demo-copy`: a cross-account copy on the local stack.

Account A (123456789012) owns an AMI with a data volume encrypted with its key CMK-A. Account B
(210987654321) has deployed target-account.yaml and owns CMK-B. CopyImage shares the AMI, its
snapshots and CMK-A with B, copies it as B re-encrypted with CMK-B, waits for B's AMI event
(forwarded to A's bus), re-applies the tags in B, and takes the sharing back. Exits 0 only if B
owns the copy, encrypted with CMK-B, and A's sharing is gone.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))

from amiflow_local.accounts import clients_for  # noqa: E402
from amiflow_local.harness import RunningStack  # noqa: E402
from amiflow_local.seed import seed  # noqa: E402
from demo import amiflow  # noqa: E402

REGION = "us-east-1"
B = "210987654321"


def control(endpoint: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{endpoint}/_amiflow/{path}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="amiflow-demo-copy-") as logs, RunningStack(Path(logs)) as stack:
        a = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION)
        ec2, kms = (a.client(s, endpoint_url=stack.endpoint) for s in ("ec2", "kms"))
        b = clients_for(stack.endpoint, REGION, B)
        b_ec2 = b("ec2")
        print(f"local AWS stack on {stack.endpoint}")

        cmk_a = kms.create_key(Description="CMK-A", Tags=[{"TagKey": "amiflow:shareable", "TagValue": "true"}])["KeyMetadata"]["Arn"]
        world = seed(ec2, REGION, name="golden")
        volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=10, Encrypted=True, KmsKeyId=cmk_a)["VolumeId"]
        ec2.attach_volume(VolumeId=volume, InstanceId=world.instance_id, Device="/dev/sdh")
        image_id = ec2.create_image(
            InstanceId=world.instance_id, Name="golden-web",
            TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "app", "Value": "web"}, {"Key": "release", "Value": "2026.11"}]}],
        )["ImageId"]
        while ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] != "available":
            time.sleep(0.2)
        print(f"account A: {image_id} (data volume encrypted with CMK-A {cmk_a})")

        made = control(stack.endpoint, "target-account", {"accountId": B, "externalId": "demo-external-id"})
        cmk_b = made["targetKmsKeyArn"]
        print(f"account B: target-account.yaml deployed (role {made['roles'][0]}), CMK-B {cmk_b}")

        command = ["copy", "--source-image-id", image_id, "--target-account", B, "--target-role-arn", made["roles"][0],
                   "--external-id", "demo-external-id", "--target-kms-key-id", cmk_b, "--copy-name", "golden-web-copy", "--watch"]
        print(f"$ amiflow {' '.join(command)}", flush=True)
        result = amiflow(stack.endpoint, *command)
        if result.returncode != 0:
            return 1
        out = json.loads(result.stdout)
        copy = b_ec2.describe_images(ImageIds=[out["targetImageId"]])["Images"][0]
        keys = sorted({m["Ebs"].get("KmsKeyId") for m in copy["BlockDeviceMappings"] if m["Ebs"].get("Encrypted")})
        tags = {t["Key"]: t["Value"] for t in copy.get("Tags", [])}
        sharing = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]
        grants = kms.list_grants(KeyId=cmk_a)["Grants"]
        print()
        print(f"copy           {out['targetImageId']} owned by {copy['OwnerId']}, {copy['State']}")
        print(f"encrypted with {', '.join(keys)}")
        print(f"tags           {', '.join(f'{k}={v}' for k, v in sorted(tags.items()))}")
        print(f"A's sharing    launch permissions {sharing or 'none'}, grants on CMK-A {len(grants)}")
        ok = copy["OwnerId"] == B and keys == [cmk_b] and not sharing and not grants and tags.get("app") == "web"
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
