"""Fixtures the end-to-end tests share: a source instance worth migrating, a key its owner lets
amiflow share, and the organization map of the cross-account accounts."""

from __future__ import annotations

import uuid

import pytest
from amiflow_local.seed import seed

from accounts import A, B, C, ORG_ID, SHAREABLE


@pytest.fixture
def world(ec2, request):
    """A running source instance in us-east-1a (tags, two volumes, an Elastic IP), named after the
    test module that asked for it."""
    prefix = request.module.__name__.removeprefix("test_").replace("_", "-")
    return seed(ec2, "us-east-1", name=f"{prefix}-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def cmk(stack):
    """A customer managed key of A, tagged `amiflow:shareable=true` by its owner."""
    return stack.client("kms").create_key(Description="CMK-A", Tags=SHAREABLE)["KeyMetadata"]["Arn"]


@pytest.fixture
def organization(stack):
    """A, B and C in one organization, each in its own OU (B in the apps OU)."""
    stack.control("config", {"organization": {
        A: {"organizationId": ORG_ID, "ouPath": f"{ORG_ID}/r-root/ou-root-platform/"},
        B: {"organizationId": ORG_ID, "ouPath": f"{ORG_ID}/r-root/ou-root-appsaaaa/"},
        C: {"organizationId": ORG_ID, "ouPath": f"{ORG_ID}/r-root/ou-root-sandboxx/"},
    }})
    yield
    stack.control("config", {"organization": {}})
