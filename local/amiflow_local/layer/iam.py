"""IAM on every signed call, judged as AWS judges it.

AWS evaluates each request against the caller's identity-based policies, the resource's policy
where the service has one (a KMS key policy and its grants, a role's trust policy), and the
condition keys of the request and of every resource it touches; an explicit Deny wins
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html). The
resources and condition keys of each action are those of the Service Authorization Reference
(https://docs.aws.amazon.com/service-authorization/latest/reference/reference_policies_actions-resources-contextkeys.html).
A denied EC2 call answers UnauthorizedOperation (HTTP 403); STS and IAM answer AccessDenied; the
JSON services answer AccessDeniedException
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html,
https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html).

moto 5.2.5 answers every call whoever makes it. The decisions here are not written by hand: each
is a simulation run by @cloud-copilot/iam-simulate (local/iam/evaluate.mjs, pinned in
local/package-lock.json), a maintained evaluator that checks resource ARNs against the Service
Authorization Reference and implements every condition operator. What this module adds is what
AWS knows and the evaluator cannot: who signed the call, which resources the call touches, their
tags, and the policies attached to each of them (iam_requests.py).

Who is judged: every function of the stack (it signs with its own key, `function-<binary>`, and
acts as its role from template.yaml), and every STS session of a role that exists in the stack's
IAM (the copy role of target-account.yaml). Credentials of anything else (the operator's `local`
key, and sessions of a role that does not exist, which is how the tests act in another account)
stand for that account's administrator: their own policies allow everything, and resource
policies (key policies, trust policies) still apply to them.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .state import config

EVALUATOR = Path(__file__).resolve().parents[2] / "iam" / "evaluate.mjs"
DEFAULT_ACCOUNT = "123456789012"
ADMINISTRATOR = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}

# function binary -> the ARN of its role (the launcher registers them from template.yaml)
function_roles: dict[str, str] = {}


class Judge:
    """The evaluator process: one JSON request a line in, one answer a line out."""

    def __init__(self, node: str = "node") -> None:
        self.lock = threading.Lock()
        self.process = subprocess.Popen(
            [node, str(EVALUATOR)],
            cwd=EVALUATOR.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            bufsize=1,
        )
        self.sequence = 0
        self.simulations = 0
        self.seconds = 0.0

    def decide(self, simulations: list[dict[str, Any]]) -> list[dict[str, str]]:
        with self.lock:
            started = time.monotonic()
            self.sequence += 1
            self.simulations += len(simulations)
            assert self.process.stdin and self.process.stdout
            self.process.stdin.write(json.dumps({"id": self.sequence, "simulations": simulations}) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
            self.seconds += time.monotonic() - started
        if not line:
            raise RuntimeError("the IAM evaluator (local/iam/evaluate.mjs) exited; run `make local-deps`")
        return json.loads(line)["results"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()


judge: Judge | None = None


def start(node: str = "node") -> None:
    global judge
    if judge is None:
        judge = Judge(node)


def stop() -> None:
    global judge
    if judge is not None:
        judge.stop()
        judge = None


@dataclass(frozen=True)
class Principal:
    arn: str  # the session ARN (assumed-role), or the account root for an administrator
    account: str
    role_arn: str | None = None
    administrator: bool = False
    session_policy: str | None = None

    def identity_policies(self) -> list[dict[str, Any]]:
        if self.administrator or self.role_arn is None:
            return [{"name": "administrator", "policy": ADMINISTRATOR}]
        role = role_named(self.role_arn)
        if role is None:
            return []
        policies = []
        for name, document in sorted(role.policies.items()):
            policies.append({"name": name, "policy": _document(document)})
        for arn, managed in sorted(role.managed_policies.items()):
            policies.append({"name": arn, "policy": _document(managed.document)})
        return policies


def _document(document: Any) -> Any:
    return json.loads(document) if isinstance(document, str) else document


def role_named(role_arn: str) -> Any | None:
    """The role with this ARN in the stack's IAM, or None."""
    from moto.iam.models import iam_backends

    account = role_arn.split(":")[4]
    try:
        return iam_backends[account][config.partition].get_role_by_arn(role_arn)
    except Exception:  # noqa: BLE001 - moto raises its own NoSuchEntity
        return None


def administrator(account: str) -> Principal:
    return Principal(arn=f"arn:{config.partition}:iam::{account}:root", account=account, administrator=True)


_sessions: dict[str, Any] = {}


def principal_for(access_key: str | None) -> Principal:
    if not access_key:
        return administrator(DEFAULT_ACCOUNT)
    if access_key.startswith("function-"):
        binary = access_key[len("function-"):]
        role_arn = function_roles.get(binary)
        if role_arn is None:
            return administrator(DEFAULT_ACCOUNT)
        account = role_arn.split(":")[4]
        return Principal(f"arn:{config.partition}:sts::{account}:assumed-role/{role_arn.rsplit('/', 1)[-1]}/{binary}", account, role_arn)
    session = _sessions.get(access_key) or _find_session(access_key)
    if session is None:
        return administrator(DEFAULT_ACCOUNT)
    if role_named(session.role_arn) is None:
        return administrator(session.account_id)
    return Principal(session.arn, session.account_id, session.role_arn, session_policy=session.policy)


def _find_session(access_key: str) -> Any | None:
    from moto.sts.models import sts_backends

    for account in list(sts_backends.keys()):
        for backend in list(sts_backends[account].values()):
            session = backend.get_assumed_role_from_access_key(access_key)
            if session is not None:
                _sessions[access_key] = session
                return session
    return None


@dataclass
class Check:
    """One (action, resource) pair a request needs, with its condition keys and the resource's
    own policy, if the service has resource policies."""

    action: str
    resource: str
    account: str  # the account the resource belongs to
    context: dict[str, Any] = field(default_factory=dict)
    resource_policy: dict[str, Any] | None = None


def _context(principal: Principal, region: str) -> dict[str, Any]:
    context: dict[str, Any] = {
        "aws:PrincipalArn": principal.role_arn or principal.arn,
        "aws:PrincipalAccount": principal.account,
        "aws:RequestedRegion": region,
        "aws:SecureTransport": "true",
    }
    org = config.org_of(principal.account)
    if org:
        context["aws:PrincipalOrgID"] = org
    path = config.ou_path_of(principal.account)
    if path:
        context["aws:PrincipalOrgPaths"] = [path]
    return context


def simulation(principal: Principal, check: Check, region: str, identity: list[dict[str, Any]]) -> dict[str, Any]:
    """One check as the evaluator takes it; `identity` is the principal's policies, read once per call."""
    context = _context(principal, region)
    if check.resource != "*" and check.account:
        # The account that owns the resource (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html#condition-keys-resourceaccount).
        context["aws:ResourceAccount"] = check.account
    context.update(check.context)
    sim: dict[str, Any] = {
        "request": {
            "principal": principal.arn,
            "action": check.action,
            "resource": {"resource": check.resource, "accountId": check.account},
            "contextVariables": {k: v for k, v in context.items() if v is not None},
        },
        "identityPolicies": identity,
        "serviceControlPolicies": [],
        "resourceControlPolicies": [],
    }
    if check.resource_policy is not None:
        sim["resourcePolicy"] = check.resource_policy
    if principal.session_policy:
        sim["sessionPolicy"] = _document(principal.session_policy)
    return sim


@dataclass
class Denial:
    principal: Principal
    check: Check
    decision: str


class LayerError(RuntimeError):
    """The layer could not judge a call (an action it has no resource map for, or a simulation
    the evaluator refused): a gap of the local stack, never an answer AWS would give."""


def judge_checks(principal: Principal, checks: list[Check], region: str) -> Denial | None:
    """The first check that is not allowed, or None. An administrator's checks without a resource
    policy are allowed without asking: its own policy allows everything."""
    todo = [c for c in checks if not (principal.administrator and c.resource_policy is None)]
    if not todo or judge is None or not config.iam_enforced:
        return None
    identity = principal.identity_policies()
    results = judge.decide([simulation(principal, c, region, identity) for c in todo])
    for check, result in zip(todo, results):
        if result["decision"] == "Invalid":
            raise LayerError(f"{check.action} on {check.resource}: {result['detail'][:600]}")
        if result["decision"] != "Allowed":
            return Denial(principal, check, result["decision"])
    return None


def denial_message(denial: Denial) -> str:
    why = (
        "with an explicit deny in a policy"
        if denial.decision == "ExplicitlyDenied"
        else f"because no policy allows the {denial.check.action} action"
    )
    return (
        f"User: {denial.principal.arn} is not authorized to perform: {denial.check.action} on resource: "
        f"{denial.check.resource} {why}"
    )


# The principal of the request being answered, for what a service does on the caller's behalf
# (EC2 using a KMS key at launch or copy).
_current = threading.local()


def current_principal(account: str) -> Principal:
    principal = getattr(_current, "principal", None)
    return principal if principal is not None else administrator(account)


class Gate:
    """WSGI middleware: judges every signed call before moto answers it."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        from . import iam_requests
        from .control import request_facts

        facts = request_facts(environ)
        if facts is None:
            return self.app(environ, start_response)
        principal = principal_for(facts.access_key)
        _current.principal = principal
        try:
            if judge is not None and config.iam_enforced:
                try:
                    checks = iam_requests.checks_for(facts.service, facts.action, facts.params, principal, facts.region)
                    denial = judge_checks(principal, checks, facts.region)
                except LayerError as error:
                    return _error(start_response, facts.protocol, 500, "InternalFailure", f"amiflow local stack: {error}")
                if denial is not None:
                    denials.append({"principal": principal.arn, "action": denial.check.action,
                                    "resource": denial.check.resource, "decision": denial.decision})
                    if facts.service == "s3":
                        # S3 answers a refused call 403 AccessDenied in its REST error document
                        # (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html).
                        return _error(start_response, "rest", 403, "AccessDenied", denial_message(denial))
                    if facts.service == "ec2":
                        return _error(start_response, "query", 403, "UnauthorizedOperation",
                                      "You are not authorized to perform this operation. " + denial_message(denial))
                    if facts.protocol == "query":
                        return _error(start_response, "sts", 403, "AccessDenied", denial_message(denial))
                    return _error(start_response, "json", 400, "AccessDeniedException", denial_message(denial))
            return self.app(environ, start_response)
        finally:
            _current.principal = None


# Every call the gate refused, for tests and for whoever debugs a run (GET /_amiflow/denials).
denials: list[dict[str, str]] = []


def _error(start_response: Callable, protocol: str, status: int, code: str, message: str) -> list[bytes]:
    from xml.sax.saxutils import escape

    reason = {400: "Bad Request", 403: "Forbidden", 500: "Internal Server Error"}.get(status, "Error")
    if protocol == "query":
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
        ).encode()
        content_type = "text/xml"
    elif protocol == "rest":
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message><RequestId>{uuid.uuid4()}</RequestId></Error>"
        ).encode()
        content_type = "application/xml"
    elif protocol == "sts":
        body = (
            f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            f"<Code>{code}</Code><Message>{escape(message)}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
        ).encode()
        content_type = "text/xml"
    else:
        body = json.dumps({"__type": code, "message": message, "Message": message}).encode()
        content_type = "application/x-amz-json-1.1"
    start_response(f"{status} {reason}", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def node_binary() -> str:
    return os.environ.get("AMIFLOW_NODE", "node")
