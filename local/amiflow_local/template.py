"""Reads template.yaml, the one description of the deployable stack, so that the local stack
creates the same functions, table and state machines with the same substitutions."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from moto.utilities.utils import get_partition


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form intrinsic functions."""


def _intrinsic(name: str):
    def construct(loader: yaml.Loader, node: yaml.Node) -> dict:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if name == "Fn::GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    return construct


for _short, _long in {
    "!Ref": "Ref",
    "!GetAtt": "Fn::GetAtt",
    "!Sub": "Fn::Sub",
    "!Join": "Fn::Join",
    "!If": "Fn::If",
    "!Equals": "Fn::Equals",
    "!Select": "Fn::Select",
    "!Not": "Fn::Not",
    "!And": "Fn::And",
    "!Or": "Fn::Or",
    "!Condition": "Condition",
}.items():
    _CfnLoader.add_constructor(_short, _intrinsic(_long))


@dataclass
class Function:
    logical_id: str
    binary: str
    environment: dict[str, str]
    events: dict[str, Any]
    role_name: str = ""
    # Its role's inline policies, resolved, as SAM makes them from the function's Policies.
    policies: list[dict[str, Any]] = field(default_factory=list)
    # Seconds Lambda lets an invocation run (the function's Timeout, else Globals', else 3).
    timeout: float = 3.0
    # ReservedConcurrentExecutions: at most that many invocations at once (None: no limit).
    reserved_concurrency: int | None = None
    # LoggingConfig, the function's over Globals': LogFormat, ApplicationLogLevel, LogGroup.
    logging: dict[str, Any] = field(default_factory=dict)
    # Tracing: Active or PassThrough (X-Ray).
    tracing: str = "PassThrough"

    @property
    def log_group(self) -> str:
        """Where Lambda sends the function's logs: LoggingConfig's LogGroup, else /aws/lambda/<name>
        (https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-loggroups.html)."""
        return self.logging.get("LogGroup") or f"/aws/lambda/{self.binary}"

    def lambda_variables(self) -> dict[str, str]:
        """The variables Lambda itself sets from the logging configuration: with application
        log-level filtering, "Lambda sets the application log level in the runtime using the
        AWS_LAMBDA_LOG_LEVEL environment variable" and the format in AWS_LAMBDA_LOG_FORMAT; a
        custom runtime such as the functions' reads them
        (https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-log-level.html).
        Log levels need the JSON format, and INFO is the default level."""
        form = self.logging.get("LogFormat", "Text")
        out = {"AWS_LAMBDA_LOG_FORMAT": form}
        if form == "JSON":
            out["AWS_LAMBDA_LOG_LEVEL"] = self.logging.get("ApplicationLogLevel", "INFO")
        return out

    @property
    def runtime_environment(self) -> dict[str, str]:
        """The environment the function's process gets: its variables and Lambda's."""
        return {**self.environment, **self.lambda_variables()}


@dataclass
class StateMachine:
    logical_id: str
    name: str
    definition: str
    role_policies: list = field(default_factory=list)
    # Tracing's Enabled: X-Ray traces of its executions.
    tracing: bool = False


@dataclass
class Table:
    logical_id: str
    name: str
    properties: dict[str, Any]


class Template:
    def __init__(self, root: Path, account: str, region: str, parameters: dict[str, str] | None = None, file: str = "template.yaml"):
        self.root = root
        self.account = account
        self.region = region
        self.partition = get_partition(region)
        self.doc = yaml.load((root / file).read_text(), Loader=_CfnLoader)
        self.resources: dict[str, dict] = self.doc["Resources"]
        self.parameters = {
            name: str(spec.get("Default", "")) for name, spec in self.doc.get("Parameters", {}).items()
        }
        for name, value in (parameters or {}).items():
            if name not in self.parameters:
                raise KeyError(f"template.yaml has no parameter {name}")
            self.parameters[name] = str(value)

    # Names the local stack gives to resources: a function is named by its binary, the table by
    # its logical id, a state machine by its Name property.
    def function_name(self, logical_id: str) -> str:
        return self.resources[logical_id]["Metadata"]["BuildProperties"]["Binary"]

    def function_arn(self, logical_id: str) -> str:
        return f"arn:{self.partition}:lambda:{self.region}:{self.account}:function:{self.function_name(logical_id)}"

    def ref(self, name: str) -> str:
        pseudo = {
            "AWS::AccountId": self.account,
            "AWS::Region": self.region,
            "AWS::Partition": self.partition,
            "AWS::StackName": "amiflow-local",
            "AWS::URLSuffix": "amazonaws.com",
            # The property is left out: here, None.
            "AWS::NoValue": None,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            value = self.parameters[name]
            if self.doc["Parameters"][name].get("Type") == "CommaDelimitedList":
                return [v for v in value.split(",") if v] if value else [""]
            return value
        resource = self.resources[name]
        kind = resource["Type"]
        if kind == "AWS::Serverless::Function":
            return self.function_name(name)
        if kind == "AWS::DynamoDB::Table":
            return name
        if kind == "AWS::Serverless::StateMachine":
            return self.state_machine_arn(name)
        if kind == "AWS::Logs::LogGroup":
            return self.resolve(resource["Properties"]["LogGroupName"])
        if kind == "AWS::S3::Bucket":
            return self.bucket_name(name)
        raise ValueError(f"Ref to {kind} {name} is not supported locally")

    def bucket_name(self, logical_id: str) -> str:
        """A bucket without BucketName: CloudFormation names it after the stack and the logical id,
        in lower case, with a random suffix; locally there is one stack, so no suffix."""
        given = self.resources[logical_id].get("Properties", {}).get("BucketName")
        return self.resolve(given) if given else f"{self.ref('AWS::StackName')}-{logical_id.lower()}"

    def function_role_name(self, logical_id: str) -> str:
        """The role SAM makes for a function (logical id `<Function>Role`), as the local stack names it."""
        return f"amiflow-local-{logical_id}Role"

    def get_att(self, logical_id: str, attribute: str) -> str:
        if logical_id not in self.resources and logical_id.endswith("Role") and attribute == "Arn":
            function = logical_id[: -len("Role")]
            if self.resources.get(function, {}).get("Type") == "AWS::Serverless::Function":
                return f"arn:{self.partition}:iam::{self.account}:role/{self.function_role_name(function)}"
        kind = self.resources[logical_id]["Type"]
        if kind == "AWS::Serverless::Function" and attribute == "Arn":
            return self.function_arn(logical_id)
        if kind == "AWS::S3::Bucket" and attribute == "Arn":
            return f"arn:{self.partition}:s3:::{self.bucket_name(logical_id)}"
        if kind == "AWS::DynamoDB::Table" and attribute == "Arn":
            return f"arn:{self.partition}:dynamodb:{self.region}:{self.account}:table/{logical_id}"
        raise ValueError(f"GetAtt {logical_id}.{attribute} is not supported locally")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                return self.get_att(*arg)
            if key == "Fn::Sub":
                return re.sub(r"\$\{([^}!]+)\}", lambda m: self._sub_var(m.group(1)), arg)
            if key == "Fn::Join":
                sep, parts = arg
                parts = self.resolve(parts)
                return sep.join(str(p) for p in (parts if isinstance(parts, list) else [parts]))
            if key == "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                return left == right
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::If":
                name, when_true, when_false = arg
                return self.resolve(when_true if self.condition(name) else when_false)
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value

    def _sub_var(self, name: str) -> str:
        if "." in name:
            logical_id, attribute = name.split(".", 1)
            return self.get_att(logical_id, attribute)
        return str(self.ref(name))

    def condition(self, name: str | None) -> bool:
        if name is None:
            return True
        return bool(self.resolve(self.doc.get("Conditions", {})[name]))

    def resources_of(self, kind: str) -> list[tuple[str, dict]]:
        """Resources of a type whose Condition (if any) holds."""
        return [
            (lid, r) for lid, r in self.resources.items()
            if r["Type"] == kind and self.condition(r.get("Condition"))
        ]

    def functions(self) -> list[Function]:
        globals_ = self.doc.get("Globals", {}).get("Function", {})
        global_env = globals_.get("Environment", {}).get("Variables", {})
        out = []
        for logical_id, resource in self.resources.items():
            if resource["Type"] != "AWS::Serverless::Function":
                continue
            props = resource.get("Properties", {})
            env = dict(global_env)
            env.update(props.get("Environment", {}).get("Variables", {}))
            out.append(
                Function(
                    logical_id=logical_id,
                    binary=self.function_name(logical_id),
                    environment={k: str(self.resolve(v)) for k, v in env.items()},
                    events=props.get("Events", {}),
                    role_name=self.function_role_name(logical_id),
                    policies=[self.resolve(p) for p in props.get("Policies", []) or [] if "Statement" in p],
                    timeout=float(self.resolve(props.get("Timeout", globals_.get("Timeout", 3)))),
                    reserved_concurrency=_int_or_none(self.resolve(props.get("ReservedConcurrentExecutions"))),
                    tracing=self.resolve(props.get("Tracing", globals_.get("Tracing", "PassThrough"))),
                    logging=self.resolve({**globals_.get("LoggingConfig", {}), **props.get("LoggingConfig", {})}),
                )
            )
        return out

    def output(self, name: str) -> Any:
        return self.resolve(self.doc["Outputs"][name]["Value"])

    def tables(self) -> list[Table]:
        return [
            Table(logical_id=lid, name=lid, properties=r.get("Properties", {}))
            for lid, r in self.resources.items()
            if r["Type"] == "AWS::DynamoDB::Table"
        ]

    def buckets(self) -> list[tuple[str, dict[str, Any]]]:
        """Each bucket's name and its resolved properties."""
        return [(self.bucket_name(lid), self.resolve(r.get("Properties", {}))) for lid, r in self.resources_of("AWS::S3::Bucket")]

    def log_groups(self) -> list[tuple[str, int | None]]:
        """Each log group's name and retention in days (None: kept for ever)."""
        return [
            (self.resolve(r["Properties"]["LogGroupName"]), _int_or_none(self.resolve(r["Properties"].get("RetentionInDays"))))
            for _, r in self.resources_of("AWS::Logs::LogGroup")
        ]

    def alarms(self) -> list[dict[str, Any]]:
        """The CloudWatch alarms, as PutMetricAlarm's parameters (AlarmName: the stack's name and
        the logical id, as CloudFormation names an alarm without one)."""
        out = []
        for logical_id, resource in self.resources_of("AWS::CloudWatch::Alarm"):
            props = {k: v for k, v in self.resolve(resource["Properties"]).items() if v is not None}
            props.setdefault("AlarmName", f"{self.ref('AWS::StackName')}-{logical_id}")
            out.append(props)
        return out

    def state_machine_arn(self, logical_id: str) -> str:
        name = self.resolve(self.resources[logical_id]["Properties"]["Name"])
        return f"arn:{self.partition}:states:{self.region}:{self.account}:stateMachine:{name}"

    def state_machines(self) -> list[StateMachine]:
        out = []
        for logical_id, resource in self.resources.items():
            if resource["Type"] != "AWS::Serverless::StateMachine":
                continue
            props = resource["Properties"]
            definition = (self.root / props["DefinitionUri"]).read_text()
            substitutions = {k: str(self.resolve(v)) for k, v in props.get("DefinitionSubstitutions", {}).items()}
            for key, value in substitutions.items():
                definition = definition.replace("${" + key + "}", value)
            left = re.findall(r"\$\{[A-Za-z0-9]+\}", definition)
            if left:
                raise ValueError(f"{props['DefinitionUri']}: no substitution for {sorted(set(left))}")
            json.loads(definition)
            out.append(StateMachine(logical_id=logical_id, name=self.resolve(props["Name"]), definition=definition,
                                    tracing=bool(self.resolve(props.get("Tracing", {}).get("Enabled", False)))))
        return out


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
