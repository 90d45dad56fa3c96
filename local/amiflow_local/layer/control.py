"""The control endpoint under /_amiflow/, and the API-level faults it arms.

POST   /_amiflow/faults   one fault, or a list: {"kind": ..., ...} (see state.Faults.arm)
DELETE /_amiflow/faults   removes every fault
GET    /_amiflow/faults   the faults that fired so far
GET    /_amiflow/config   the layer's settings; POST changes them (state.Config.update)
GET    /_amiflow/events   every event the layer put on a bus
GET    /_amiflow/calls    every API call answered: principal, IAM action, count; DELETE forgets them
POST   /_amiflow/billing-product  {"imageId", "code"}: marks an image as carrying a billing product
POST   /_amiflow/target-account   {"accountId", "externalId"}: deploys target-account.yaml in that account
POST   /_amiflow/fire-schedule    {"rule"}: a schedule rule's time has come (Scheduled Event to its targets)
GET    /_amiflow/health   200 once the stack serves
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any, Callable
from urllib.parse import parse_qs

from . import events
from .state import calls, config, faults

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
        if path == "/_amiflow/fire-schedule" and method == "POST":
            account = body.get("account", "123456789012")
            return _json(start_response, "200 OK", events.fire_schedule(account, body.get("region", "us-east-1"), body["rule"]))
        if path == "/_amiflow/target-account" and method == "POST":
            return _json(start_response, "200 OK", hooks["target-account"](body or {}))
        if path == "/_amiflow/calls" and method == "DELETE":
            calls.reset()
            return _json(start_response, "200 OK", {"reset": True})
        if path == "/_amiflow/calls":
            return _json(start_response, "200 OK", [
                {"principal": principal_of(key), "action": f"{service}:{action}", "count": count}
                for key, service, action, count in calls.listed()
            ])
        if path == "/_amiflow/events":
            return _json(start_response, "200 OK", [{"account": a, "bus": b, "event": e} for a, b, e in events.delivered])
    except (ValueError, TypeError, KeyError) as error:
        return _json(start_response, "400 Bad Request", {"error": str(error)})
    return _json(start_response, "404 Not Found", {"error": f"no {method} {path}"})


def _action(environ: dict[str, Any]) -> tuple[str | None, str]:
    """The API action of a request and its protocol family: ("RunInstances", "query") or
    ("CreateGrant", "json")."""
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return target.rsplit(".", 1)[-1], "json"
    if environ.get("REQUEST_METHOD") == "POST" and "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        action = parse_qs(raw.decode("utf-8", "replace")).get("Action", [None])[0]
        return action, "query"
    return None, ""


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


def _signer(environ: dict[str, Any]) -> tuple[str, str] | None:
    """The access key and SigV4 service of a signed request (Authorization or presigned query)."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" not in header:
        return None
    scope = header.split("Credential=", 1)[1].split(",", 1)[0].split("/")
    return (scope[0], scope[3]) if len(scope) >= 4 else None


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
        signer = _signer(environ)
        if action and signer:
            calls.record(signer[0], signer[1], action)
        if action:
            error = _query_error if protocol == "query" else _json_error
            if faults.throttled(action):
                # EC2 answers RequestLimitExceeded with 503; JSON services ThrottlingException with 400.
                if protocol == "query":
                    return error(start_response, 503, "RequestLimitExceeded", "Request limit exceeded.")
                return error(start_response, 400, "ThrottlingException", "Rate exceeded")
            status = faults.server_error_for(action)
            if status:
                code = "InternalError" if protocol == "query" else "InternalFailure"
                if status == 503:
                    code = "Unavailable" if protocol == "query" else "ServiceUnavailable"
                return error(start_response, status, code, "An internal error has occurred")
        return self.app(environ, start_response)
