"""The control endpoint under /_amiflow/, and the API-level faults it arms.

POST   /_amiflow/faults   one fault, or a list: {"kind": ..., ...} (see state.Faults.arm)
DELETE /_amiflow/faults   removes every fault
GET    /_amiflow/faults   the faults that fired so far
GET    /_amiflow/config   the layer's settings; POST changes them (state.Config.update)
GET    /_amiflow/events   every event the layer put on a bus
GET    /_amiflow/calls    every API call answered: principal, IAM action, count; DELETE forgets them
GET    /_amiflow/invocations  invocations of each project function; DELETE forgets them
GET    /_amiflow/durations    per function: invocations answered and the longest one, in seconds
POST   /_amiflow/billing-product  {"imageId", "code"}: marks an image as carrying a billing product
POST   /_amiflow/target-account   {"accountId", "externalId", "template"?}: deploys target-account.yaml
                                  (or the copy of it at "template") in that account
POST   /_amiflow/deploy   {"template"}: updates the functions' role policies from a copy of template.yaml
POST   /_amiflow/instance-type-offerings  {"region", "offerings": {az: [types]}}: the instance types a
                                  Region's AZs offer, where moto holds no data for it
GET    /_amiflow/denials  every call IAM refused (principal, action, resource, decision); DELETE forgets them
GET    /_amiflow/iam      how much judging there was: evaluator requests, simulations, seconds spent
POST   /_amiflow/fire-schedule    {"rule"}: a schedule rule's time has come (Scheduled Event to its targets)
GET    /_amiflow/health   200 once the stack serves
"""

from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs

from . import events, iam
from .state import calls, config, faults, invocations

# Actions the launcher adds (they need the templates, which the layer does not read).
hooks: dict[str, Callable[[dict], Any]] = {}


def _json(start_response: Callable, status: str, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def control(environ: dict[str, Any], start_response: Callable) -> list[bytes]:
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = json.loads(environ["wsgi.input"].read(length) or b"null") if length else None
    try:
        if path == "/_amiflow/health":
            return _json(start_response, "200 OK", {"ok": True})
        if path == "/_amiflow/faults" and method == "POST":
            for spec in body if isinstance(body, list) else [body]:
                faults.arm(spec)
            return _json(start_response, "200 OK", {"armed": body})
        if path == "/_amiflow/faults" and method == "DELETE":
            faults.reset()
            return _json(start_response, "200 OK", {"reset": True})
        if path == "/_amiflow/faults" and method == "GET":
            return _json(start_response, "200 OK", {"fired": faults.fired})
        if path == "/_amiflow/config" and method == "POST":
            config.update(body or {})
            return _json(start_response, "200 OK", config.as_dict())
        if path == "/_amiflow/config":
            return _json(start_response, "200 OK", config.as_dict())
        if path == "/_amiflow/billing-product" and method == "POST":
            from .sharing import find_image_anywhere

            ami = find_image_anywhere(body["imageId"])
            if ami is None:
                raise KeyError(f"no image {body['imageId']}")
            # As DescribeImages shows them: {ProductCodeId, ProductCodeType}.
            ami.product_codes = [{"ProductCodeId": body.get("code", "amiflow-billing-product"), "ProductCodeType": "marketplace"}]
            return _json(start_response, "200 OK", {"imageId": ami.id, "productCodes": ami.product_codes})
        if path == "/_amiflow/block-public-access" and method == "POST":
            from . import publicaccess

            # {"accountId", "region", "kind": image|snapshot, "state", "managedBy"?}: a declarative
            # policy's setting, or the account's own.
            return _json(start_response, "200 OK", publicaccess.set_setting(
                body["accountId"], body.get("region", config.region), body["kind"], body["state"], body.get("managedBy", "account")))
        if path == "/_amiflow/block-public-access" and method == "DELETE":
            from . import publicaccess

            publicaccess.reset()
            return _json(start_response, "200 OK", {"reset": True})
        if path == "/_amiflow/instance-type-offerings" and method == "POST":
            from . import instances

            # {"region", "offerings": {az: [instance types]}}: the offerings of a Region moto 5.2.5
            # holds no data for (the China and GovCloud Regions), as the test's world declares them.
            return _json(start_response, "200 OK", instances.declare_offerings(body.get("region", config.region), body["offerings"]))
        if path == "/_amiflow/fire-schedule" and method == "POST":
            account = body.get("account", "123456789012")
            return _json(start_response, "200 OK", events.fire_schedule(account, body.get("region", config.region), body["rule"]))
        if path == "/_amiflow/target-account" and method == "POST":
            return _json(start_response, "200 OK", hooks["target-account"](body or {}))
        if path == "/_amiflow/deploy" and method == "POST":
            return _json(start_response, "200 OK", hooks["deploy"](body or {}))
        if path == "/_amiflow/denials" and method == "DELETE":
            iam.denials.clear()
            return _json(start_response, "200 OK", {"reset": True})
        if path == "/_amiflow/denials":
            return _json(start_response, "200 OK", list(iam.denials))
        if path == "/_amiflow/iam":
            judge = iam.judge
            return _json(start_response, "200 OK", {
                "enforced": config.iam_enforced,
                "requests": judge.sequence if judge else 0,
                "simulations": judge.simulations if judge else 0,
                "seconds": round(judge.seconds, 3) if judge else 0,
                "denials": len(iam.denials),
            })
        if path == "/_amiflow/invocations" and method == "DELETE":
            invocations.reset()
            return _json(start_response, "200 OK", {"reset": True})
        if path == "/_amiflow/invocations":
            return _json(start_response, "200 OK", invocations.listed())
        if path == "/_amiflow/durations":
            return _json(start_response, "200 OK", invocations.timed())
        if path == "/_amiflow/calls" and method == "DELETE":
            calls.reset()
            return _json(start_response, "200 OK", {"reset": True})
        if path == "/_amiflow/calls":
            return _json(start_response, "200 OK", [
                {"principal": principal_of(key), "action": f"{service}:{action}", "count": count}
                for key, service, action, count in calls.listed()
            ])
        if path == "/_amiflow/events":
            return _json(start_response, "200 OK", [{"account": a, "bus": b, "event": e, "at": at}
                                                    for a, b, e, at in events.delivered])
    except (ValueError, TypeError, KeyError) as error:
        return _json(start_response, "400 Bad Request", {"error": str(error)})
    return _json(start_response, "404 Not Found", {"error": f"no {method} {path}"})


@dataclass
class RequestFacts:
    """What the layer needs to know of a signed API request."""

    action: str
    protocol: str  # "query" (EC2, STS, IAM), "json", or "rest" (S3)
    service: str  # the SigV4 signing name: ec2, kms, dynamodb, states, sts, ...
    region: str
    access_key: str
    params: dict[str, Any]


def _body(environ: dict[str, Any]) -> bytes:
    """The request body, left readable for the next reader."""
    cached = environ.get("amiflow.body")
    if cached is not None:
        return cached
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(raw)
    environ["amiflow.body"] = raw
    return raw


def _action(environ: dict[str, Any]) -> tuple[str | None, str]:
    """The API action of a request and its protocol family: ("RunInstances", "query") or
    ("CreateGrant", "json")."""
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return target.rsplit(".", 1)[-1], "json"
    if environ.get("REQUEST_METHOD") == "POST" and "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
        raw = _body(environ)
        action = parse_qs(raw.decode("utf-8", "replace")).get("Action", [None])[0]
        return action, "query"
    return None, ""


def s3_request(environ: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The S3 operation of a path-style REST request (the functions reach the stack at an IP
    address, where the SDKs address buckets by path) and its bucket, key and list prefix: S3's
    operations are told apart by method, path and subresource
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_Operations_Amazon_Simple_Storage_Service.html).
    None for an operation the layer does not name."""
    from urllib.parse import unquote

    method = environ.get("REQUEST_METHOD", "")
    path = unquote(environ.get("PATH_INFO", "")).lstrip("/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    bucket, _, key = path.partition("/")
    params: dict[str, Any] = {"Bucket": bucket}
    if not bucket:
        return ("ListBuckets" if method == "GET" else None), params
    if key:
        params["Key"] = key
        if set(query) - {"x-id"}:
            return None, params  # a subresource of an object (tagging, acl, uploads …)
        if method == "PUT":
            return ("CopyObject" if environ.get("HTTP_X_AMZ_COPY_SOURCE") else "PutObject"), params
        return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method), params
    if method == "GET" and query.get("list-type") == ["2"]:
        params["Prefix"] = query.get("prefix", [""])[0]
        return "ListObjectsV2", params
    if method == "GET" and not query:
        params["Prefix"] = ""
        return "ListObjects", params
    if method == "PUT" and not query:
        return "CreateBucket", params
    return None, params


def request_facts(environ: dict[str, Any]) -> RequestFacts | None:
    """The facts of a signed API call, or None for anything else (the control endpoint, unsigned
    or REST calls)."""
    cached = environ.get("amiflow.facts", False)
    if cached is not False:
        return cached
    facts = None
    action, protocol = _action(environ)
    header = environ.get("HTTP_AUTHORIZATION", "")
    if action is None and "Credential=" in header and "/s3/aws4_request" in header:
        scope = header.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        s3_action, s3_params = s3_request(environ)
        if len(scope) >= 4:
            # An operation the layer cannot name is still a signed call: IAM refuses to judge it.
            facts = RequestFacts(s3_action or "UnnamedOperation", "rest", "s3", scope[2], scope[0], s3_params)
            environ["amiflow.facts"] = facts
            return facts
    if action and "Credential=" in header:
        scope = header.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            raw = _body(environ)
            if protocol == "query":
                params: dict[str, Any] = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}
            else:
                try:
                    params = json.loads(raw or b"{}")
                except ValueError:
                    params = {}
            facts = RequestFacts(action, protocol, scope[3], scope[2], scope[0], params)
    environ["amiflow.facts"] = facts
    return facts


def _query_error(start_response: Callable, status: int, code: str, message: str) -> list[bytes]:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    reason = {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    start_response(f"{status} {reason}", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]


def _json_error(start_response: Callable, status: int, code: str, message: str) -> list[bytes]:
    body = json.dumps({"__type": code, "message": message}).encode()
    reason = {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    start_response(f"{status} {reason}", [("Content-Type", "application/x-amz-json-1.1"), ("Content-Length", str(len(body)))])
    return [body]


def principal_of(access_key: str) -> str:
    """function:<binary> for a function of the stack (each signs with its own key),
    role:<arn> for credentials from STS AssumeRole, else the key itself."""
    if access_key.startswith("function-"):
        return "function:" + access_key[len("function-"):]
    from moto.sts.models import sts_backends

    for account in list(sts_backends.keys()):
        for backend in list(sts_backends[account].values()):
            role = backend.get_assumed_role_from_access_key(access_key)
            if role is not None:
                return "role:" + role.role_arn
    return access_key


class FaultInjector:
    """WSGI middleware: the control endpoint, then throttling and server errors by action."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        if environ.get("PATH_INFO", "").startswith("/_amiflow/"):
            return control(environ, start_response)
        action, protocol = _action(environ)
        facts = request_facts(environ)
        if facts is not None:
            calls.record(facts.access_key, facts.service, facts.action)
        if action:
            error = _query_error if protocol == "query" else _json_error
            if faults.throttled(action):
                # EC2 answers RequestLimitExceeded with 503; JSON services ThrottlingException with 400.
                if protocol == "query":
                    return error(start_response, 503, "RequestLimitExceeded", "Request limit exceeded.")
                return error(start_response, 400, "ThrottlingException", "Rate exceeded")
            code = faults.api_error_for(action)
            if code:
                # A client error the service answers for this call (400), which no retry helps.
                return error(start_response, 400, code, f"{code} (injected by the local stack)")
            delay = faults.delay_for(action)
            if delay:
                # Latency: the call is answered, that much later (the server is threaded).
                time.sleep(delay)
            status = faults.server_error_for(action)
            if status:
                code = "InternalError" if protocol == "query" else "InternalFailure"
                if status == 503:
                    code = "Unavailable" if protocol == "query" else "ServiceUnavailable"
                return error(start_response, status, code, "An internal error has occurred")
        return self.app(environ, start_response)
