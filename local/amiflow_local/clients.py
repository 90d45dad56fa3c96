"""The local stack's clients of itself (deploying the template, target accounts), made from one
boto3 session per Region. A new session reads each service's model from disk again for its first
client: in a test run, a fifth of a stack's CPU went to that."""

from __future__ import annotations

import threading
from typing import Any, Callable

import boto3

_sessions: dict[str, boto3.session.Session] = {}
# Sessions are not safe to share between threads while they make clients.
_lock = threading.Lock()


def client(service: str, endpoint: str, region: str, key: str = "local", secret: str = "local",
           token: str | None = None) -> Any:
    with _lock:
        session = _sessions.setdefault(region, boto3.session.Session(region_name=region))
        return session.client(service, endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                              aws_session_token=token)


def maker(endpoint: str, region: str, key: str = "local", secret: str = "local",
          token: str | None = None) -> Callable[[str], Any]:
    """Makes clients with these credentials."""
    return lambda service: client(service, endpoint, region, key, secret, token)
