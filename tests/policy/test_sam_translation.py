"""What SAM makes of template.yaml (the pinned aws-sam-cli's translator, run here without AWS)
is what the local stack reads from it: each function's logging configuration (Globals' merged
with its own), tracing and timeout; and SAM gives every function and state machine role
the X-Ray write policy that tracing needs (for state machines with Policies, since
aws/serverless-application-model#1941)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from samtranslator.translator.transform import transform

from amiflow_local.template import Template, _CfnLoader

ROOT = Path(__file__).resolve().parents[2]
LOCAL = Template(ROOT, "123456789012", "us-east-1")
XRAY = {"AWSXrayWriteOnlyAccess": "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
        "AWSXRayDaemonWriteAccess": "arn:aws:iam::aws:policy/AWSXRayDaemonWriteAccess"}


class ManagedPolicies:
    """The managed policies SAM looks up by name (from IAM, on a real deploy)."""

    def load(self) -> dict[str, str]:
        return {**XRAY, "AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"}


@pytest.fixture(scope="module")
def region():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield


@pytest.fixture(scope="module")
def translated(region) -> dict:
    doc = yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)
    # sam build puts the artefacts in S3; the translator wants such URIs.
    doc["Globals"]["Function"]["CodeUri"] = "s3://bucket/code"
    for resource in doc["Resources"].values():
        if resource["Type"] == "AWS::Serverless::StateMachine":
            resource["Properties"]["DefinitionUri"] = "s3://bucket/definition"
    return transform(doc, {}, ManagedPolicies())["Resources"]


@pytest.mark.parametrize("function", LOCAL.functions(), ids=[f.binary for f in LOCAL.functions()])
def test_the_local_stack_reads_a_function_as_sam_deploys_it(translated, function):
    deployed = translated[function.logical_id]["Properties"]
    assert LOCAL.resolve(deployed["LoggingConfig"]) == function.logging
    assert deployed["TracingConfig"] == {"Mode": function.tracing}
    assert float(deployed["Timeout"]) == function.timeout
    role = translated[f"{function.logical_id}Role"]["Properties"]
    assert set(role["ManagedPolicyArns"]) & set(XRAY.values()), "no X-Ray write policy"


@pytest.mark.parametrize("machine", LOCAL.state_machines(), ids=[m.name for m in LOCAL.state_machines()])
def test_a_traced_state_machine_may_write_its_traces(translated, machine):
    deployed = translated[machine.logical_id]["Properties"]
    assert deployed["TracingConfiguration"] == {"Enabled": machine.tracing}
    role = translated[f"{machine.logical_id}Role"]["Properties"]
    assert set(role.get("ManagedPolicyArns", [])) & set(XRAY.values()), "no X-Ray write policy"
