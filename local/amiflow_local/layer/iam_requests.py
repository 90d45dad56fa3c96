"""Which resources a call touches, with their tags and policies, and the condition keys it carries:
what IAM evaluates for it (iam.py asks the evaluator).

Each action follows its row in the Service Authorization Reference (SAR):
- EC2 (https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html):
  CreateImage authorizes the instance, the new image and its new snapshots; RunInstances the image,
  the image's snapshots, the subnet, the security groups, the new network interface, volumes and
  instance, the key pair and launch template if named; CopyImage the source image, the new image
  and, since 2024-10-28, the source image's snapshots
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/copy-ami-permissions.html). Every resource
  brings `aws:ResourceTag/…` and `ec2:ResourceTag/…`; tags in the request bring `aws:RequestTag/…`
  and `aws:TagKeys`; tags given at creation also need `ec2:CreateTags` with `ec2:CreateAction`
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/supported-iam-actions-tagging.html). EC2
  has no resource policies: sharing an image or a snapshot is an attribute of it, which the layer's
  sharing module judges, so an EC2 resource counts as the caller's own for IAM.
- Passing an instance profile's role at launch needs `iam:PassRole` on the role with
  `iam:PassedToService` (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_passrole.html).
- KMS (https://docs.aws.amazon.com/kms/latest/developerguide/key-policy-default.html,
  https://docs.aws.amazon.com/kms/latest/developerguide/grant-authorization.html): the key is the
  resource; its key policy is the resource policy, and each grant adds what it allows to its
  grantee; `kms:CallerAccount`, `kms:ViaService`, `kms:GrantOperations`, `kms:GranteePrincipal`,
  `kms:GrantIsForAWSResource`.
- STS AssumeRole: the role, whose trust policy is the resource policy, with `sts:ExternalId`
  (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_create_for-user_externalid.html).
- DynamoDB: the table, with `dynamodb:LeadingKeys` for item calls; Step Functions: the state machine or the execution; task tokens: `*`.
"""

from __future__ import annotations

import json
from typing import Any

from .iam import Check, LayerError, Principal, role_named
from .state import config

# EC2 resource kinds by id prefix, and whether their ARN carries an account.
_KINDS = {
    "i-": ("instance", True),
    "ami-": ("image", False),
    "snap-": ("snapshot", False),
    "vol-": ("volume", True),
    "eni-": ("network-interface", True),
    "sg-": ("security-group", True),
    "subnet-": ("subnet", True),
    "eipalloc-": ("elastic-ip", True),
    "vpc-": ("vpc", True),
    "lt-": ("launch-template", True),
    "cr-": ("capacity-reservation", True),
}


def members(params: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """The members of a query-protocol list: `Tag.1.Key`, `Tag.1.Value` -> [{"Key", "Value"}]; a
    list of plain values (`ResourceId.1`) gives [{"": value}]. Pure."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in params.items():
        if not key.startswith(prefix + "."):
            continue
        number, _, rest = key[len(prefix) + 1:].partition(".")
        if number.isdigit():
            found.setdefault(int(number), {})[rest] = value
    return [found[n] for n in sorted(found)]


def values(params: dict[str, Any], prefix: str) -> list[str]:
    return [m[""] for m in members(params, prefix) if "" in m]


def tags_in(params: dict[str, Any], prefix: str = "Tag") -> dict[str, str]:
    return {m["Key"]: m.get("Value", "") for m in members(params, prefix) if "Key" in m}


def tag_specifications(params: dict[str, Any]) -> dict[str, dict[str, str]]:
    """TagSpecification.N (RunInstances, CreateImage …) or TagSpecifications.N (the EC2 query
    name of actions whose model gives the list no other name, CreateCapacityReservation) ->
    {resource type: tags}. Pure."""
    out: dict[str, dict[str, str]] = {}
    for spec in members(params, "TagSpecification") + members(params, "TagSpecifications"):
        if spec.get("ResourceType"):
            out.setdefault(spec["ResourceType"], {}).update(tags_in(spec))
    return out


def request_tag_context(tags: dict[str, str]) -> dict[str, Any]:
    if not tags:
        return {}
    context: dict[str, Any] = {f"aws:RequestTag/{k}": v for k, v in tags.items()}
    context["aws:TagKeys"] = sorted(tags)
    return context


def resource_tag_context(tags: dict[str, str], service: str = "ec2") -> dict[str, Any]:
    context: dict[str, Any] = {}
    for key, value in tags.items():
        context[f"aws:ResourceTag/{key}"] = value
        if service == "ec2":
            context[f"ec2:ResourceTag/{key}"] = value
    return context


class Ec2:
    """The EC2 resources of one request, named and tagged from moto's backends."""

    def __init__(self, principal: Principal, region: str) -> None:
        from moto.ec2.models import ec2_backends

        self.account = principal.account
        self.region = region
        self.backends = ec2_backends
        self.backend = ec2_backends[principal.account][region]

    def arn(self, resource_id: str, kind: str | None = None) -> str:
        if kind is None:
            kind, with_account = self.kind_of(resource_id)
        else:
            with_account = kind not in ("image", "snapshot")
        account = self.account if with_account else ""
        return f"arn:{config.partition}:ec2:{self.region}:{account}:{kind}/{resource_id}"

    @staticmethod
    def kind_of(resource_id: str) -> tuple[str, bool]:
        for prefix, kind in _KINDS.items():
            if resource_id.startswith(prefix):
                return kind
        raise LayerError(f"the layer cannot name the ARN of EC2 resource {resource_id}")

    def owner_backend(self, resource_id: str) -> Any:
        """The backend of the account that holds a resource (images and snapshots may be another
        account's, shared with the caller)."""
        if resource_id in self.backend.tags or resource_id in self.backend.amis or resource_id in self.backend.snapshots:
            return self.backend
        for regions in list(self.backends.values()):
            backend = regions.get(self.region) if hasattr(regions, "get") else None
            if backend is not None and (resource_id in backend.amis or resource_id in backend.snapshots):
                return backend
        return self.backend

    def tags(self, resource_id: str) -> dict[str, str]:
        return dict(self.owner_backend(resource_id).tags.get(resource_id, {}))

    def existing(self, action: str, resource_id: str, context: dict[str, Any] | None = None) -> Check:
        ctx = resource_tag_context(self.tags(resource_id))
        ctx.update(context or {})
        return Check(action, self.arn(resource_id), self.account, ctx)

    def new(self, action: str, kind: str, tags: dict[str, str] | None = None) -> Check:
        return Check(action, self.arn("*", kind), self.account, request_tag_context(tags or {}))

    def created_tags(self, action: str, specs: dict[str, dict[str, str]]) -> list[Check]:
        """Tags given at creation: ec2:CreateTags on each new resource, with ec2:CreateAction."""
        return [
            Check("ec2:CreateTags", self.arn("*", kind), self.account,
                  {"ec2:CreateAction": action, **request_tag_context(tags)})
            for kind, tags in sorted(specs.items()) if tags
        ]

    def image(self, image_id: str) -> Any | None:
        backend = self.owner_backend(image_id)
        return backend.amis.get(image_id)

    def image_snapshots(self, image_id: str) -> list[str]:
        image = self.image(image_id)
        if image is None:
            return []
        mappings = getattr(image, "amiflow_mappings", None) or image.block_device_mappings or []
        found = [((m.get("Ebs") or {}).get("SnapshotId")) for m in mappings]
        return sorted({s for s in found if s})


def ec2_checks(action: str, params: dict[str, Any], principal: Principal, region: str) -> list[Check]:
    ec2 = Ec2(principal, region)
    name = f"ec2:{action}"
    account_level = ("ModifyInstanceMetadataDefaults", "EnableImageBlockPublicAccess", "DisableImageBlockPublicAccess",
                     "EnableSnapshotBlockPublicAccess", "DisableSnapshotBlockPublicAccess")
    if action.startswith(("Describe", "Get")) or action in account_level:
        return [Check(name, "*", principal.account)]
    specs = tag_specifications(params)
    if action == "CreateImage":
        return [
            ec2.existing(name, params.get("InstanceId", "")),
            ec2.new(name, "image", specs.get("image")),
            ec2.new(name, "snapshot", specs.get("snapshot")),
            *ec2.created_tags(action, specs),
        ]
    if action == "CopyImage":
        source = params.get("SourceImageId", "")
        return [
            ec2.existing(name, source),
            ec2.new(name, "image", specs.get("image")),
            *[ec2.existing(name, s) for s in ec2.image_snapshots(source)],
            *ec2.created_tags(action, specs),
        ]
    if action == "RunInstances":
        return run_instances_checks(ec2, params, principal, specs)
    if action == "CreateCapacityReservation":
        # (Service Authorization Reference: capacity-reservation, with aws:RequestTag and aws:TagKeys.)
        return [ec2.new(name, "capacity-reservation", specs.get("capacity-reservation")), *ec2.created_tags(action, specs)]
    if action in ("CancelCapacityReservation", "ModifyCapacityReservation"):
        return [ec2.existing(name, params.get("CapacityReservationId", ""))]
    if action in ("CreateTags", "DeleteTags"):
        tags = tags_in(params)
        context = request_tag_context(tags) if action == "CreateTags" else {"aws:TagKeys": sorted(tags)}
        return [ec2.existing(name, r, context) for r in values(params, "ResourceId")]
    if action in ("TerminateInstances", "StopInstances", "StartInstances", "RebootInstances"):
        return [ec2.existing(name, i) for i in values(params, "InstanceId")]
    if action == "ModifyInstanceAttribute":
        groups = values(params, "GroupId")
        return [ec2.existing(name, params.get("InstanceId", "")), *[ec2.existing(name, g) for g in groups]]
    if action == "AssociateAddress":
        checks = []
        if params.get("AllocationId"):
            checks.append(ec2.existing(name, params["AllocationId"]))
        for key in ("InstanceId", "NetworkInterfaceId"):
            if params.get(key):
                checks.append(ec2.existing(name, params[key]))
        return checks
    if action in ("DeregisterImage", "ModifyImageAttribute", "ResetImageAttribute"):
        return [ec2.existing(name, params.get("ImageId", ""))]
    if action in ("DeleteSnapshot", "ModifySnapshotAttribute", "ResetSnapshotAttribute"):
        return [ec2.existing(name, params.get("SnapshotId", ""))]
    if action == "DeleteVolume":
        return [ec2.existing(name, params.get("VolumeId", ""))]
    raise LayerError(f"the layer does not know which resources ec2:{action} authorizes")


def run_instances_checks(ec2: Ec2, params: dict[str, Any], principal: Principal, specs: dict[str, dict[str, str]]) -> list[Check]:
    name = "ec2:RunInstances"
    image_id = params.get("ImageId", "")
    interfaces = members(params, "NetworkInterface")
    subnet = params.get("SubnetId") or next((i.get("SubnetId") for i in interfaces if i.get("SubnetId")), None)
    groups = values(params, "SecurityGroupId") or [
        g for i in interfaces for k, g in sorted(i.items()) if k.startswith("SecurityGroupId.")
    ]
    if not groups and subnet:
        groups = default_security_group(ec2, subnet)
    checks = []
    if image_id.startswith("ami-"):
        checks.append(ec2.existing(name, image_id))
        checks += [ec2.existing(name, s) for s in ec2.image_snapshots(image_id)]
    if subnet:
        checks.append(ec2.existing(name, subnet))
    checks += [ec2.existing(name, g) for g in groups]
    if params.get("KeyName"):
        checks.append(Check(name, f"arn:{config.partition}:ec2:{ec2.region}:{ec2.account}:key-pair/{params['KeyName']}", ec2.account))
    if params.get("LaunchTemplate.LaunchTemplateId"):
        checks.append(ec2.existing(name, params["LaunchTemplate.LaunchTemplateId"]))
    reservation = params.get("CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId")
    if reservation:
        checks.append(ec2.existing(name, reservation))
    checks += [
        ec2.new(name, "instance", specs.get("instance")),
        ec2.new(name, "network-interface", specs.get("network-interface")),
        ec2.new(name, "volume", specs.get("volume")),
    ]
    checks += ec2.created_tags("RunInstances", specs)
    role_arn = instance_profile_role(params, principal.account)
    if role_arn:
        checks.append(Check("iam:PassRole", role_arn, role_arn.split(":")[4], {"iam:PassedToService": "ec2.amazonaws.com"}))
    return checks


def default_security_group(ec2: Ec2, subnet_id: str) -> list[str]:
    """A launch that names no security group gets its VPC's default group."""
    try:
        vpc = ec2.backend.get_subnet(subnet_id).vpc_id
        group = ec2.backend.get_security_group_from_name("default", vpc_id=vpc)
    except Exception:  # noqa: BLE001 - an unknown subnet: EC2 refuses it after IAM
        return []
    return [group.id] if group is not None else []


def instance_profile_role(params: dict[str, Any], account: str) -> str | None:
    """The role an instance profile in a RunInstances request passes to the instance."""
    from moto.iam.models import iam_backends

    iam = iam_backends[account][config.partition]
    try:
        if params.get("IamInstanceProfile.Arn"):
            profile = iam.get_instance_profile_by_arn(params["IamInstanceProfile.Arn"])
        elif params.get("IamInstanceProfile.Name"):
            profile = iam.get_instance_profile(params["IamInstanceProfile.Name"])
        else:
            return None
    except Exception:  # noqa: BLE001 - an unknown profile: EC2 refuses it after IAM
        return None
    return profile.roles[0].arn if profile.roles else None


# KMS actions whose KeyId names the key, and those that name no key.
_KMS_KEYLESS = {"CreateKey", "ListKeys", "ListAliases", "GenerateRandom", "ListRetirableGrants", "RetireGrant"}


def kms_checks(action: str, params: dict[str, Any], principal: Principal, region: str) -> list[Check]:
    from . import kms

    name = f"kms:{action}"
    if action in _KMS_KEYLESS:
        return [Check(name, "*", principal.account)]
    key_ref = params.get("DestinationKeyId") if action == "ReEncrypt" else params.get("KeyId")
    if action == "ReEncrypt":
        name = "kms:ReEncryptTo"
    if not key_ref:
        return []  # Decrypt by ciphertext alone: the key is inside the blob; not used by amiflow
    key = kms.locate(key_ref, principal.account, region)
    if key is None:
        return []  # moto answers NotFoundException, as KMS does for a key no one has
    context: dict[str, Any] = {"kms:CallerAccount": principal.account}
    # ABAC for KMS: a key's tags are aws:ResourceTag/<key> on the calls that name it
    # (https://docs.aws.amazon.com/kms/latest/developerguide/abac.html).
    context.update(resource_tag_context(kms.key_tags(key), service="kms"))
    if action == "CreateGrant":
        context.update({
            "kms:GrantOperations": list(params.get("Operations") or []),
            "kms:GranteePrincipal": params.get("GranteePrincipal", ""),
            "kms:GrantIsForAWSResource": "false",
        })
    return [Check(name, key.arn, key.account_id, context, kms.effective_policy(key))]


def sts_checks(action: str, params: dict[str, Any], principal: Principal) -> list[Check]:
    if action in ("GetCallerIdentity", "GetSessionToken"):
        return []  # no permission is needed (https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html)
    if action != "AssumeRole":
        raise LayerError(f"the layer does not know which resources sts:{action} authorizes")
    role_arn = params.get("RoleArn", "")
    parts = role_arn.split(":")
    account = parts[4] if len(parts) > 4 else principal.account
    role = role_named(role_arn)
    context = {"sts:RoleSessionName": params.get("RoleSessionName", "")}
    if params.get("ExternalId"):
        context["sts:ExternalId"] = params["ExternalId"]
    if role is None:
        if principal.administrator:
            return []  # the stack's stand-in for another account's administrator (module docstring of iam.py)
        return [Check("sts:AssumeRole", role_arn, account, context, {"Version": "2012-10-17", "Statement": []})]
    trust = role.assume_role_policy_document
    trust = json.loads(trust) if isinstance(trust, str) else trust
    return [Check("sts:AssumeRole", role_arn, account, context, trust)]


def dynamodb_checks(action: str, params: dict[str, Any], principal: Principal, region: str) -> list[Check]:
    if action in ("ListTables", "DescribeLimits", "DescribeEndpoints"):
        return [Check(f"dynamodb:{action}", "*", principal.account)]
    table = params.get("TableName")
    if not table:
        raise LayerError(f"the layer does not know which resources dynamodb:{action} authorizes")
    arn = f"arn:{config.partition}:dynamodb:{region}:{principal.account}:table/{table}"
    key = leading_key(table, params, principal.account, region)
    context = {"dynamodb:LeadingKeys": [key]} if key is not None else {}
    return [Check(f"dynamodb:{action}", arn, principal.account, context)]


def leading_key(table_name: str, params: dict[str, Any], account: str, region: str) -> str | None:
    """The partition key value an item call names: `dynamodb:LeadingKeys`
    (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/specifying-conditions.html)."""
    from moto.dynamodb.models import dynamodb_backends

    try:
        table = dynamodb_backends[account][region].get_table(table_name)
    except Exception:  # noqa: BLE001 - an unknown table: DynamoDB refuses it after IAM
        return None
    item = params.get("Key") or params.get("Item") or {}
    value = item.get(table.hash_key_attr)
    if isinstance(value, dict) and value:
        return str(next(iter(value.values())))
    return None


def states_checks(action: str, params: dict[str, Any], principal: Principal) -> list[Check]:
    name = f"states:{action}"
    if action in ("SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat", "ListStateMachines", "ListActivities"):
        return [Check(name, "*", principal.account)]
    arn = params.get("executionArn") or params.get("stateMachineArn")
    if not arn:
        raise LayerError(f"the layer does not know which resources states:{action} authorizes")
    return [Check(name, arn, arn.split(":")[4])]


def organizations_checks(action: str, params: dict[str, Any], principal: Principal) -> list[Check]:
    # ListParents authorizes the child: an account or an OU of the caller's organization
    # (Service Authorization Reference, AWS Organizations: ListParents, resource types account and
    # organizationalunit).
    if action != "ListParents":
        raise LayerError(f"the layer does not know which resources organizations:{action} authorizes")
    from moto.organizations.models import organizations_backends

    org = organizations_backends[principal.account][config.partition].org
    child = params.get("ChildId", "")
    if org is None:
        return [Check("organizations:ListParents", "*", principal.account)]
    kind = "ou" if child.startswith("ou-") else "account"
    return [Check("organizations:ListParents", f"arn:{config.partition}:organizations::{org.master_account_id}:{kind}/{org.id}/{child}",
                  principal.account)]


def elbv2_checks(action: str, params: dict[str, Any], principal: Principal) -> list[Check]:
    """(Service Authorization Reference, Elastic Load Balancing V2: the Describe actions have no
    resource type; RegisterTargets and DeregisterTargets are on the target group.)"""
    name = f"elasticloadbalancing:{action}"
    if action.startswith("Describe"):
        return [Check(name, "*", principal.account)]
    if action in ("RegisterTargets", "DeregisterTargets"):
        arn = params.get("TargetGroupArn", "")
        return [Check(name, arn, arn.split(":")[4] if arn.count(":") >= 5 else principal.account)]
    raise LayerError(f"the layer does not know which resources elasticloadbalancing:{action} authorizes")


def s3_checks(action: str, params: dict[str, Any], principal: Principal) -> list[Check]:
    """(Service Authorization Reference, Amazon S3: GetObject, HeadObject (as s3:GetObject),
    PutObject and DeleteObject are on the object, `arn:aws:s3:::bucket/key`; ListObjectsV2 is
    s3:ListBucket on the bucket, with the `s3:prefix` condition key. S3 ARNs name no Region or
    account; the bucket's owner is the account that holds it.)"""
    bucket = params.get("Bucket", "")
    owner = bucket_owner(bucket) or principal.account
    if action in ("GetObject", "HeadObject", "PutObject", "DeleteObject"):
        name = "s3:GetObject" if action == "HeadObject" else f"s3:{action}"
        return [Check(name, f"arn:{config.partition}:s3:::{bucket}/{params.get('Key', '')}", owner)]
    if action in ("ListObjectsV2", "ListObjects"):
        return [Check("s3:ListBucket", f"arn:{config.partition}:s3:::{bucket}", owner, {"s3:prefix": params.get("Prefix", "")})]
    raise LayerError(f"the layer does not know which resources s3:{action} authorizes")


def bucket_owner(bucket: str) -> str | None:
    """The account whose S3 holds the bucket, if any does."""
    from moto.s3.models import s3_backends

    held = s3_backends.bucket_accounts.get(bucket)
    return held[1] if held else None


def events_checks(action: str, params: dict[str, Any], principal: Principal, region: str) -> list[Check]:
    """(Service Authorization Reference, Amazon EventBridge: PutEvents is on the event bus each
    entry names, the default bus when it names none, with the entry's `events:source` and
    `events:detail-type`, both multivalued.)"""
    if action != "PutEvents":
        raise LayerError(f"the layer does not know which resources events:{action} authorizes")
    checks = []
    for entry in params.get("Entries", []):
        bus = entry.get("EventBusName") or "default"
        arn = bus if bus.startswith("arn:") else f"arn:{config.partition}:events:{region}:{principal.account}:event-bus/{bus}"
        checks.append(Check("events:PutEvents", arn, arn.split(":")[4],
                            {"events:source": [entry.get("Source", "")], "events:detail-type": [entry.get("DetailType", "")]}))
    return checks


def checks_for(service: str, action: str, params: dict[str, Any], principal: Principal, region: str) -> list[Check]:
    """Every (action, resource) pair IAM evaluates for this call."""
    if principal.administrator and service not in ("kms", "sts"):
        return []  # only key and trust policies can refuse an administrator
    if service == "ec2":
        return ec2_checks(action, params, principal, region)
    if service == "kms":
        return kms_checks(action, params, principal, region)
    if service == "sts":
        return sts_checks(action, params, principal)
    if service == "dynamodb":
        return dynamodb_checks(action, params, principal, region)
    if service == "states":
        return states_checks(action, params, principal)
    if service == "organizations":
        return organizations_checks(action, params, principal)
    if service == "s3":
        return s3_checks(action, params, principal)
    if service == "events":
        return events_checks(action, params, principal, region)
    if service == "elasticloadbalancing":
        return elbv2_checks(action, params, principal)
    if service == "autoscaling" and action.startswith("Describe"):
        # (Service Authorization Reference, Amazon EC2 Auto Scaling: the Describe actions have no
        # resource type.)
        return [Check(f"autoscaling:{action}", "*", principal.account)]
    raise LayerError(f"the layer does not judge calls to {service} ({action})")
