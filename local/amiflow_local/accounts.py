"""Other accounts on the local stack: what target-account.yaml makes in a target account, and the
source bus policy that accepts its events (template.yaml's TargetAccountEventsPolicy)."""

from __future__ import annotations

import json
from pathlib import Path

from typing import Any, Callable

from moto.utilities.utils import get_partition

from .clients import client, maker
from .template import Template


def clients_for(endpoint: str, region: str, account: str) -> Callable[[str], Any]:
    """Clients with credentials of `account`: moto gives AssumeRole credentials to the role's account."""
    creds = client("sts", endpoint, region).assume_role(
        RoleArn=f"arn:{get_partition(region)}:iam::{account}:role/amiflow-local-deployer", RoleSessionName="amiflow-local"
    )["Credentials"]
    return maker(endpoint, region, creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])


# The target accounts the source bus accepts events from, as TargetAccountIds lists them.
_accepted: set[str] = set()


def accept_events_from(endpoint: str, region: str, template: Template, accounts: list[str]) -> None:
    """The source bus policy of template.yaml (its TargetAccountEventsPolicy statement, conditions
    and all), for these accounts and those accepted before."""
    events = client("events", endpoint, region)
    _accepted.update(accounts)
    statement = dict(template.resolve(template.resources["TargetAccountEventsPolicy"]["Properties"]["Statement"]))
    statement["Sid"] = template.resources["TargetAccountEventsPolicy"]["Properties"]["StatementId"]
    statement["Principal"] = {"AWS": [f"arn:{template.partition}:iam::{a}:root" for a in sorted(_accepted)]}
    events.put_permission(EventBusName="default", Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))


def deploy_target_account(
    root, endpoint: str, region: str, source: Template, account: str, external_id: str = "amiflow-local",
    template_file: str = "target-account.yaml", target_kms_key_arn: str | None = None,
) -> dict:
    """Creates, in `account`, the resources of target-account.yaml (or of a copy of it, given by
    path): the copy role and the rule forwarding its AMI events to the source account's default
    bus. The role trusts the roles the source stack's TrustedRoleArns output names. Deploying
    again updates the role's trust and policies."""
    path = Path(template_file) if Path(template_file).is_absolute() else Path(root) / template_file
    target = Template(
        path.parent,
        account,
        region,
        {
            "SourceAccountId": source.account,
            "TrustedRoleArns": source.output("TrustedRoleArns"),
            "ExternalId": external_id,
            "TargetKmsKeyArn": target_kms_key_arn or f"arn:{source.partition}:kms:{region}:{account}:key/00000000-0000-0000-0000-000000000000",
            "SourceRegion": region,
        },
        file=path.name,
    )
    clients = clients_for(endpoint, region, account)
    iam, events = clients("iam"), clients("events")
    made: dict = {"accountId": account, "roles": [], "rules": [], "targetKmsKeyArn": target.parameters["TargetKmsKeyArn"]}
    for logical_id, resource in target.resources_of("AWS::IAM::Role"):
        props = target.resolve(resource["Properties"])
        name = props.get("RoleName", f"amiflow-{logical_id}")
        trust = json.dumps(props["AssumeRolePolicyDocument"])
        try:
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)
        except iam.exceptions.EntityAlreadyExistsException:
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=trust)
        wanted = {policy["PolicyName"]: policy["PolicyDocument"] for policy in props.get("Policies", []) if policy["PolicyDocument"].get("Statement")}
        for old in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            if old not in wanted:
                iam.delete_role_policy(RoleName=name, PolicyName=old)
        for policy_name, document in wanted.items():
            iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(document))
        made["roles"].append(f"arn:{target.partition}:iam::{account}:role/{name}")
    for logical_id, resource in target.resources_of("AWS::Events::Rule"):
        props = resource["Properties"]
        events.put_rule(Name=f"amiflow-{logical_id}", EventPattern=json.dumps(props["EventPattern"]))
        targets = []
        for t in props["Targets"]:
            targets.append({"Id": t["Id"], "Arn": target.resolve(t["Arn"])})
        events.put_targets(Rule=f"amiflow-{logical_id}", Targets=targets)
        made["rules"].append(f"amiflow-{logical_id}")
    return made
