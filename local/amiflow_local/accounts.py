"""Other accounts on the local stack: what target-account.yaml makes in a target account, and the
source bus policy that accepts its events (template.yaml's TargetAccountEventsPolicy)."""

from __future__ import annotations

import json

import boto3

from .template import Template


def session_for(endpoint: str, region: str, account: str) -> boto3.session.Session:
    """Credentials of `account`: moto gives AssumeRole credentials to the role's account."""
    base = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name=region)
    creds = base.client("sts", endpoint_url=endpoint).assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/amiflow-local-deployer", RoleSessionName="amiflow-local"
    )["Credentials"]
    return boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=region,
    )


def accept_events_from(endpoint: str, region: str, template: Template, accounts: list[str]) -> None:
    """The source bus policy of template.yaml, for these accounts."""
    events = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name=region).client(
        "events", endpoint_url=endpoint
    )
    for _, policy in template.resources_of("AWS::Events::EventBusPolicy") or [(None, None)]:
        statement_id = policy["Properties"]["StatementId"] if policy else "amiflow-target-account-ami-events"
        for account in accounts:
            events.put_permission(
                EventBusName="default", Action="events:PutEvents", Principal=account, StatementId=f"{statement_id}-{account}"
            )


def deploy_target_account(root, endpoint: str, region: str, source_account: str, account: str, external_id: str = "amiflow-local") -> dict:
    """Creates, in `account`, the resources of target-account.yaml: the copy role and the rule
    forwarding its AMI events to the source account's default bus."""
    target = Template(
        root,
        account,
        region,
        {
            "SourceAccountId": source_account,
            "TrustedRoleArns": f"arn:aws:iam::{source_account}:role/amiflow-local-execution",
            "ExternalId": external_id,
            "TargetKmsKeyArn": f"arn:aws:kms:{region}:{account}:key/00000000-0000-0000-0000-000000000000",
            "SourceRegion": region,
        },
        file="target-account.yaml",
    )
    session = session_for(endpoint, region, account)
    iam = session.client("iam", endpoint_url=endpoint)
    events = session.client("events", endpoint_url=endpoint)
    made: dict = {"accountId": account, "roles": [], "rules": []}
    for logical_id, resource in target.resources_of("AWS::IAM::Role"):
        props = target.resolve(resource["Properties"])
        name = props.get("RoleName", f"amiflow-{logical_id}")
        try:
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"]))
        except iam.exceptions.EntityAlreadyExistsException:
            pass
        for policy in props.get("Policies", []):
            iam.put_role_policy(RoleName=name, PolicyName=policy["PolicyName"], PolicyDocument=json.dumps(policy["PolicyDocument"]))
        made["roles"].append(f"arn:aws:iam::{account}:role/{name}")
    for logical_id, resource in target.resources_of("AWS::Events::Rule"):
        props = resource["Properties"]
        events.put_rule(Name=f"amiflow-{logical_id}", EventPattern=json.dumps(props["EventPattern"]))
        targets = []
        for t in props["Targets"]:
            targets.append({"Id": t["Id"], "Arn": target.resolve(t["Arn"])})
        events.put_targets(Rule=f"amiflow-{logical_id}", Targets=targets)
        made["rules"].append(f"amiflow-{logical_id}")
    return made
