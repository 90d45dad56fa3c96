"""The local AWS stack: `python -m amiflow_local.server` (what `make local` runs).

moto on 127.0.0.1 with its Step Functions interpreter executing definitions, the fidelity layer
installed, Lambda Invoke calls for the project's functions routed to the real binaries, and the
table, functions and state machines of template.yaml created. Runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Shorter waits than on AWS, where images and instances take minutes; --parameter overrides.
LOCAL_PARAMETERS = {"EventWaitSeconds": "10", "ImagePollSeconds": "1", "InstancePollSeconds": "1",
                    "AccessPropagationSeconds": "2"}
ACCOUNT = "123456789012"
INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations/?$")
CONFIGURATION_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/configuration/?$")


def cargo_target_dir() -> Path:
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]).resolve()
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    return Path(json.loads(meta.stdout)["target_directory"])


class InvokeRouter:
    """WSGI middleware: Lambda Invoke for a project function goes to its binary; all else to moto.

    The function host answers a handler error with 500 and {errorType, errorMessage}; the Lambda
    service answers 200 with X-Amz-Function-Error: Unhandled. The translation is what lets the
    state machines' Retry and Catch see the function's own error name. GetFunctionConfiguration
    tells, and UpdateFunctionConfiguration with a Timeout sets, the time the function's next
    invocations get (the other settings are the template's).
    """

    def __init__(self, moto_app, host):
        self.moto_app = moto_app
        self.host = host

    def _function(self, path: str) -> str | None:
        match = INVOKE_PATH.match(path)
        if not match:
            return None
        name = match.group(1).split(":function:")[-1].split(":")[0]
        return name if name in self.host.names() else None

    def _configure(self, environ, start_response):
        match = CONFIGURATION_PATH.match(environ.get("PATH_INFO", ""))
        name = match and match.group(1).split(":function:")[-1].split(":")[0]
        if not name or name not in self.host.names() or environ.get("REQUEST_METHOD") not in ("GET", "PUT"):
            return None
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
        if environ["REQUEST_METHOD"] == "GET":
            body = {}
        timeout = body.get("Timeout")
        if timeout is not None:
            if not isinstance(timeout, int) or not 1 <= timeout <= 900:
                answer = json.dumps({"__type": "InvalidParameterValueException",
                                     "message": "Timeout must be between 1 and 900 seconds"}).encode()
                start_response("400 Bad Request", [("Content-Type", "application/json"),
                                                   ("X-Amzn-ErrorType", "InvalidParameterValueException"),
                                                   ("Content-Length", str(len(answer)))])
                return [answer]
            self.host.set_timeout(name, float(timeout))
        answer = json.dumps({"FunctionName": name, "FunctionArn": self.host.function_arn(name),
                             "Timeout": int(self.host.timeouts[name]), "MemorySize": 256,
                             "LastUpdateStatus": "Successful", "State": "Active"}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
        return [answer]

    def __call__(self, environ, start_response):
        configured = self._configure(environ, start_response)
        if configured is not None:
            return configured
        name = self._function(environ.get("PATH_INFO", ""))
        if name is None or environ.get("REQUEST_METHOD") != "POST":
            return self.moto_app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        payload = environ["wsgi.input"].read(length) if length else b"{}"
        if environ.get("HTTP_X_AMZ_INVOCATION_TYPE") == "Event":
            threading.Thread(target=self.host.invoke, args=(name, payload), daemon=True).start()
            start_response("202 Accepted", [("Content-Length", "0")])
            return [b""]
        from .layer.state import faults

        status, body = self.host.invoke(name, payload)
        if status == 200 and faults.crashes(name):
            # The function did its work, then its runtime died: Lambda reports an unhandled error,
            # which Step Functions names Lambda.Unknown.
            status, body = 500, json.dumps({
                "errorType": "Lambda.Unknown",
                "errorMessage": f"{name}: the runtime exited after the handler's side effects (injected fault)",
            }).encode()
        headers = [("Content-Type", "application/json"), ("X-Amz-Executed-Version", "$LATEST")]
        if status != 200:
            # The host's error answers are Lambda's {errorType, errorMessage} already.
            headers.append(("X-Amz-Function-Error", "Unhandled"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]


LAMBDA_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


def deploy_function_roles(iam, template) -> dict[str, str]:
    """Each function's role with the inline policies of its Policies in the template, as SAM
    deploys them; policies no longer in the template are removed (a stack update). Returns
    binary -> role ARN, which the layer's IAM judges the function's calls by."""
    arns = {}
    for function in template.functions():
        try:
            arn = iam.create_role(RoleName=function.role_name, AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST))["Role"]["Arn"]
        except iam.exceptions.EntityAlreadyExistsException:
            arn = iam.get_role(RoleName=function.role_name)["Role"]["Arn"]
        wanted = {f"{function.binary}-policy-{n}": policy for n, policy in enumerate(function.policies) if policy.get("Statement")}
        for name in iam.list_role_policies(RoleName=function.role_name)["PolicyNames"]:
            if name not in wanted:
                iam.delete_role_policy(RoleName=function.role_name, PolicyName=name)
        for name, policy in wanted.items():
            iam.put_role_policy(RoleName=function.role_name, PolicyName=name, PolicyDocument=json.dumps(policy))
        arns[function.binary] = arn
    return arns


def bootstrap(endpoint: str, region: str, template) -> None:
    """Creates the stack's resources as template.yaml describes them."""
    from .clients import maker
    from .layer import iam as layer_iam

    session = maker(endpoint, region)
    iam = session("iam")
    # The state machines' role (the local interpreter does not use it; the functions' roles are
    # their own, below).
    role = iam.create_role(
        RoleName="amiflow-local-states",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"}, "Action": "sts:AssumeRole"}]}),
    )["Role"]["Arn"]
    function_roles = deploy_function_roles(iam, template)
    layer_iam.function_roles.update(function_roles)

    dynamodb = session("dynamodb")
    for table in template.tables():
        props = table.properties
        dynamodb.create_table(
            TableName=table.name,
            AttributeDefinitions=props["AttributeDefinitions"],
            KeySchema=props["KeySchema"],
            BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"),
        )
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            dynamodb.update_time_to_live(TableName=table.name, TimeToLiveSpecification=ttl)

    s3 = session("s3")
    for name, props in template.buckets():
        s3.create_bucket(Bucket=name, **({} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}))
        # CloudFormation's property names, as the S3 API names them.
        for rule in props.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", []):
            s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]}]})
        if "PublicAccessBlockConfiguration" in props:
            s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"])
        rules = props.get("LifecycleConfiguration", {}).get("Rules", [])
        if rules:
            s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [
                {"ID": r["Id"], "Status": r["Status"], "Filter": {"Prefix": r.get("Prefix", "")},
                 "Expiration": {"Days": int(r["ExpirationInDays"])}} for r in rules]})

    # The functions exist in moto too, so that ListFunctions, GetFunction and event targets see
    # them; their code is the binary the router sends invocations to.
    lam = session("lambda")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("bootstrap", "served by the amiflow local stack\n")
    for function in template.functions():
        lam.create_function(
            FunctionName=function.binary,
            Runtime="provided.al2023",
            Role=function_roles[function.binary],
            Handler="bootstrap",
            Code={"ZipFile": archive.getvalue()},
            Environment={"Variables": function.environment},
            TracingConfig={"Mode": function.tracing},
        )

    events = session("events")
    for function in template.functions():
        for event_name, event in function.events.items():
            rule = f"{function.binary}-{event_name}"
            if event.get("Type") == "Schedule":
                events.put_rule(Name=rule, ScheduleExpression=template.resolve(event["Properties"]["Schedule"]))
            elif event.get("Type") == "EventBridgeRule":
                events.put_rule(Name=rule, EventPattern=json.dumps(template.resolve(event["Properties"]["Pattern"])))
            else:
                continue
            events.put_targets(Rule=rule, Targets=[{"Id": function.binary, "Arn": template.function_arn(function.logical_id)}])

    # The source bus accepts the AMI events of the target accounts in TargetAccountIds.
    from .accounts import accept_events_from

    accounts = [a for a in template.resolve({"Ref": "TargetAccountIds"}) if a]
    if accounts:
        accept_events_from(endpoint, region, template, accounts)

    sfn = session("stepfunctions")
    for machine in template.state_machines():
        sfn.create_state_machine(name=machine.name, definition=machine.definition, roleArn=role, type="STANDARD",
                                 tracingConfiguration={"enabled": machine.tracing})

    logs = session("logs")
    for name, days in template.log_groups():
        logs.create_log_group(logGroupName=name)
        if days is not None:
            logs.put_retention_policy(logGroupName=name, retentionInDays=days)
    cloudwatch = session("cloudwatch")
    for alarm in template.alarms():
        cloudwatch.put_metric_alarm(**alarm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="amiflow-local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("AMIFLOW_LOCAL_PORT", "4566")))
    parser.add_argument("--region", default=os.environ.get("AWS_REGION") or "us-east-1")
    parser.add_argument("--log-dir", type=Path, default=Path(os.environ.get("AMIFLOW_LOCAL_LOG_DIR", ROOT / "target" / "local-logs")))
    parser.add_argument(
        "--image-delay", type=float, default=float(os.environ.get("AMIFLOW_LOCAL_IMAGE_DELAY", "1")),
        help="seconds a new image stays pending (0 allowed)",
    )
    parser.add_argument(
        "--status-check-delay", type=float, default=float(os.environ.get("AMIFLOW_LOCAL_STATUS_CHECK_DELAY", "1")),
        help="seconds a new instance's status checks stay initializing",
    )
    parser.add_argument(
        "--parameter", action="append", default=[], metavar="NAME=VALUE",
        help="override a template.yaml parameter (e.g. EventWaitSeconds=5)",
    )
    args = parser.parse_args(argv)

    # moto reads these at import and at call time: its own port (the Step Functions interpreter
    # calls Lambda at localhost:MOTO_PORT) and whether state machines really run.
    os.environ["MOTO_PORT"] = str(args.port)
    os.environ["AWS_DEFAULT_REGION"] = args.region
    from moto.core.config import default_user_config
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    from . import layer
    from .functions import FunctionHost
    from .template import Template

    default_user_config["stepfunctions"] = {"execute_state_machine": True}
    layer.install()
    from moto.utilities.utils import get_partition

    layer.config.partition = get_partition(args.region)
    layer.config.region = args.region
    layer.iam.start(layer.iam.node_binary())
    # AMIFLOW_LOCAL_IAM=off answers every call unjudged, as moto alone does: only to measure what
    # judging costs (local/README.md); the tests of IAM fail that way.
    layer.config.iam_enforced = os.environ.get("AMIFLOW_LOCAL_IAM", "on") != "off"
    layer.config.image_delay_seconds = args.image_delay
    layer.config.status_check_delay_seconds = args.status_check_delay

    parameters = dict(LOCAL_PARAMETERS)
    parameters.update(p.split("=", 1) for p in args.parameter)
    template = Template(ROOT, ACCOUNT, args.region, parameters)
    endpoint = f"http://127.0.0.1:{args.port}"
    host = FunctionHost(
        cargo_target_dir() / "debug",
        args.log_dir,
        {
            "PATH": os.environ.get("PATH", ""),
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": args.region,
            "AWS_DEFAULT_REGION": args.region,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "RUST_BACKTRACE": "1",
            # Lambda sets no RUST_LOG; AWS_LAMBDA_LOG_LEVEL, from the template, wins over it anyway.
            **({"RUST_LOG": os.environ["RUST_LOG"]} if "RUST_LOG" in os.environ else {}),
        },
        arn_prefix=f"arn:{get_partition(args.region)}:lambda:{args.region}:{ACCOUNT}:function:",
    )
    host.on_invoke = layer.state.invocations.record
    host.on_finish = layer.state.invocations.finished
    layer.events.lambda_invoker = lambda name, payload: host.invoke(name, payload) if name in host.names() else None

    target_keys: dict[str, str] = {}
    # The parameter values of the last stack update: as CloudFormation keeps a parameter's previous
    # value unless an update gives another, a later update (a target account listed, say) keeps
    # them. `"reset": true` goes back to the stack's own values.
    current: dict[str, str] = dict(parameters)

    def target_account(body: dict) -> dict:
        from .accounts import accept_events_from, deploy_target_account

        account = body["accountId"]
        key = body.get("targetKmsKeyArn") or target_keys.get(account)
        if not key:
            # The account's own key for the copies (the stack parameter TargetKmsKeyArn), made once.
            from .accounts import clients_for

            kms = clients_for(endpoint, args.region, account)("kms")
            key = kms.create_key(Description="CMK-B: amiflow copies are encrypted with it")["KeyMetadata"]["Arn"]
        target_keys[account] = key
        made = deploy_target_account(
            ROOT, endpoint, args.region, template, account, body.get("externalId", "amiflow-local"),
            template_file=body.get("template", "target-account.yaml"), target_kms_key_arn=key,
        )
        accept_events_from(endpoint, args.region, template, [body["accountId"]])
        # The source stack lists the account in TargetAccountIds (a stack update), unless the
        # test models a target the source stack's owner never listed.
        listed = [a for a in parameters.get("TargetAccountIds", "").split(",") if a]
        if body.get("listInSource", True) and account not in listed:
            parameters["TargetAccountIds"] = current["TargetAccountIds"] = ",".join([*listed, account])
            deploy({})
        return made

    def deploy(body: dict) -> dict:
        """A stack update: from a copy of template.yaml (`template`), with parameter values
        (`parameters`, over those of the last update, or over the stack's own with `reset`). The functions' role policies and environment
        variables follow it; functions whose environment changed start new execution environments."""
        source = Path(body.get("template") or ROOT / "template.yaml")
        if body.get("reset"):
            current.clear()
            current.update(parameters)
        current.update(body.get("parameters") or {})
        updated = Template(source.parent, ACCOUNT, args.region, dict(current), file=source.name)
        from .clients import client

        iam = client("iam", endpoint, args.region)
        roles = deploy_function_roles(iam, updated)
        restarted = host.reconfigure({f.binary: f.runtime_environment for f in updated.functions()})
        return {"functionRoles": roles, "restarted": sorted(restarted)}

    layer.control.hooks["target-account"] = target_account
    layer.control.hooks["deploy"] = deploy
    app = layer.FaultInjector(layer.iam.Gate(InvokeRouter(DomainDispatcherApplication(create_backend_app), host)))
    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *_args, **_kwargs) -> None:  # one line per AWS call is noise here
            pass

    server = make_server("127.0.0.1", args.port, app, threaded=True, request_handler=QuietHandler)
    serving = threading.Thread(target=server.serve_forever, daemon=True)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        serving.start()
        # The stack's resources before the functions' environments, as CloudFormation creates a
        # function after what it refers to: a warm-up during init finds its table.
        bootstrap(endpoint, args.region, template)
        host.start({f.binary: f.runtime_environment for f in template.functions()},
                   {f.binary: f.timeout for f in template.functions()},
                   {f.binary: f.reserved_concurrency for f in template.functions()})
        print(f"amiflow local stack ready on {endpoint} (region {args.region}, logs in {args.log_dir})", flush=True)
        stopping.wait()
    finally:
        server.shutdown()
        host.stop()
        layer.iam.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
