"""The layer's configuration and injected faults, shared by its modules and set through the
control endpoint (`/_amiflow/`)."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Config:
    # How long a new image (CreateImage, CopyImage) stays pending; 0 is allowed.
    image_delay_seconds: float = 1.0
    # How long a new instance's status checks stay `initializing`.
    status_check_delay_seconds: float = 1.0
    # How long an instance whose volumes' KMS key it may not use stays pending before it terminates.
    kms_failure_delay_seconds: float = 0.5
    # account id -> {"organizationId": "o-…", "ouPath": "o-…/r-…/ou-…/"}
    organization: dict[str, dict[str, str]] = field(default_factory=dict)
    # The organization's management account and id, for organization ARNs.
    organization_id: str = "o-amiflow0001"
    management_account: str = "123456789012"
    # Whether every signed call is judged by IAM (layer/iam.py). Off only for a comparison run.
    iam_enforced: bool = True
    # How long a change takes to be seen everywhere (layer/consistency.py); 0: at once.
    eventual_consistency_seconds: float = 0.0
    # The partition of the stack's region (aws, aws-cn, aws-us-gov): every ARN the layer builds
    # names it, as AWS's do (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference-arns.html).
    partition: str = "aws"
    # The stack's region, where a control call names none.
    region: str = "us-east-1"

    def update(self, values: dict[str, Any]) -> None:
        names = {
            "imageDelaySeconds": "image_delay_seconds",
            "statusCheckDelaySeconds": "status_check_delay_seconds",
            "kmsFailureDelaySeconds": "kms_failure_delay_seconds",
            "organization": "organization",
            "organizationId": "organization_id",
            "managementAccount": "management_account",
            "iamEnforced": "iam_enforced",
            "eventualConsistencySeconds": "eventual_consistency_seconds",
        }
        for key, value in values.items():
            if key not in names:
                raise ValueError(f"unknown setting {key}; known: {sorted(names)}")
            setattr(self, names[key], value)

    def as_dict(self) -> dict[str, Any]:
        return {
            "imageDelaySeconds": self.image_delay_seconds,
            "statusCheckDelaySeconds": self.status_check_delay_seconds,
            "kmsFailureDelaySeconds": self.kms_failure_delay_seconds,
            "organization": self.organization,
            "organizationId": self.organization_id,
            "managementAccount": self.management_account,
            "iamEnforced": self.iam_enforced,
            "eventualConsistencySeconds": self.eventual_consistency_seconds,
        }

    def organization_arn(self) -> str:
        return f"arn:{self.partition}:organizations::{self.management_account}:organization/{self.organization_id}"

    def org_of(self, account: str) -> str | None:
        entry = self.organization.get(account)
        return entry.get("organizationId", self.organization_id) if entry else None

    def ou_path_of(self, account: str) -> str | None:
        entry = self.organization.get(account)
        return entry.get("ouPath") if entry else None


@dataclass
class _Budget:
    """How many more times a fault fires: a count, or a share of calls (forever)."""

    count: int | None = None
    share: float | None = None

    def fire(self) -> bool:
        if self.share is not None:
            return random.random() < self.share
        if self.count is None or self.count <= 0:
            return False
        self.count -= 1
        return True

    @staticmethod
    def parse(spec: dict[str, Any]) -> "_Budget":
        if "share" in spec:
            share = float(spec["share"])
            if not 0 <= share <= 1:
                raise ValueError("share must be between 0 and 1")
            return _Budget(share=share)
        return _Budget(count=int(spec.get("count", 1)))


class Faults:
    """Faults a test arms, each consumed as it fires."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.throttle: dict[str, _Budget] = {}
            self.server_error: dict[str, tuple[int, _Budget]] = {}
            self.api_error: dict[str, tuple[str, _Budget]] = {}
            self.delay: dict[str, tuple[float, _Budget]] = {}
            self.no_capacity: dict[str, _Budget] = {}
            self.fail_next_images = 0
            self.fail_named_images: dict[str, str] = {}
            self.fail_reason = "Server.InternalError: an internal error occurred while creating the image"
            self.drop_events = 0
            self.crash_functions: dict[str, _Budget] = {}
            self.impaired_instances: set[str] = set()
            self.impair_next_instances = 0
            self.kms_denied_accounts: set[str] = set()
            self.runtime_states: dict[str, _Budget] = {}
            self.fired: list[dict[str, Any]] = []

    def arm(self, spec: dict[str, Any]) -> None:
        """One fault: {"kind": ..., ...}. Raises ValueError naming what is wrong."""
        kind = spec.get("kind")
        with self.lock:
            if kind == "throttle":
                self.throttle[_action(spec)] = _Budget.parse(spec)
            elif kind == "server-error":
                self.server_error[_action(spec)] = (int(spec.get("status", 500)), _Budget.parse(spec))
            elif kind == "api-error":
                if not spec.get("code"):
                    raise ValueError("api-error needs code (the error code the call answers, e.g. InvalidSnapshot.InUse)")
                self.api_error[_action(spec)] = (str(spec["code"]), _Budget.parse(spec))
            elif kind == "delay":
                seconds = float(spec.get("seconds", 0))
                if not 0 < seconds <= 30:
                    raise ValueError("delay needs seconds, more than 0 and at most 30")
                self.delay[_action(spec)] = (seconds, _Budget.parse(spec))
            elif kind == "insufficient-capacity":
                if not spec.get("availabilityZone"):
                    raise ValueError("insufficient-capacity needs availabilityZone")
                self.no_capacity[spec["availabilityZone"]] = _Budget.parse(spec)
            elif kind == "fail-image":
                if spec.get("reason"):
                    self.fail_reason = spec["reason"]
                if spec.get("imageId"):
                    self.fail_named_images[spec["imageId"]] = self.fail_reason
                else:
                    self.fail_next_images += int(spec.get("count", 1))
            elif kind == "drop-event":
                self.drop_events += int(spec.get("count", 1))
            elif kind == "crash-after-side-effect":
                if not spec.get("function"):
                    raise ValueError("crash-after-side-effect needs function")
                self.crash_functions[spec["function"]] = _Budget.parse(spec)
            elif kind == "kms-denied":
                if not spec.get("accountId"):
                    raise ValueError("kms-denied needs accountId")
                self.kms_denied_accounts.add(str(spec["accountId"]))
            elif kind == "states-runtime":
                if not spec.get("state"):
                    raise ValueError("states-runtime needs state (the name of a Task state)")
                self.runtime_states[spec["state"]] = _Budget.parse(spec)
            elif kind == "impaired":
                if spec.get("instanceId"):
                    self.impaired_instances.add(spec["instanceId"])
                else:
                    self.impair_next_instances += int(spec.get("count", 1))
            else:
                raise ValueError(
                    f"unknown fault kind {kind!r}; known: throttle, server-error, api-error, delay, insufficient-capacity, "
                    "fail-image, drop-event, crash-after-side-effect, impaired, kms-denied, states-runtime"
                )

    def _record(self, kind: str, **what: Any) -> None:
        self.fired.append({"kind": kind, **what})

    def throttled(self, action: str) -> bool:
        with self.lock:
            budget = self.throttle.get(action)
            if budget and budget.fire():
                self._record("throttle", action=action)
                return True
            return False

    def server_error_for(self, action: str) -> int | None:
        with self.lock:
            entry = self.server_error.get(action)
            if entry and entry[1].fire():
                self._record("server-error", action=action, status=entry[0])
                return entry[0]
            return None

    def api_error_for(self, action: str) -> str | None:
        with self.lock:
            entry = self.api_error.get(action)
            if entry and entry[1].fire():
                self._record("api-error", action=action, code=entry[0])
                return entry[0]
            return None

    def delay_for(self, action: str) -> float:
        with self.lock:
            entry = self.delay.get(action)
            if entry and entry[1].fire():
                self._record("delay", action=action, seconds=entry[0])
                return entry[0]
            return 0.0

    def capacity_refused(self, az: str) -> bool:
        with self.lock:
            budget = self.no_capacity.get(az)
            if budget and budget.fire():
                self._record("insufficient-capacity", availabilityZone=az)
                return True
            return False

    def image_failure(self, image_id: str) -> str | None:
        with self.lock:
            if image_id in self.fail_named_images:
                self._record("fail-image", imageId=image_id)
                return self.fail_named_images.pop(image_id)
            if self.fail_next_images > 0:
                self.fail_next_images -= 1
                self._record("fail-image", imageId=image_id)
                return self.fail_reason
            return None

    def event_dropped(self, image_id: str, state: str) -> bool:
        with self.lock:
            if self.drop_events > 0:
                self.drop_events -= 1
                self._record("drop-event", imageId=image_id, state=state)
                return True
            return False

    def crashes(self, function: str) -> bool:
        with self.lock:
            budget = self.crash_functions.get(function)
            if budget and budget.fire():
                self._record("crash-after-side-effect", function=function)
                return True
            return False

    def runtime_error_in(self, state: str) -> bool:
        """True when the Task state `state` is to fail with States.Runtime this time."""
        with self.lock:
            budget = self.runtime_states.get(state)
            if budget and budget.fire():
                self._record("states-runtime", state=state)
                return True
            return False

    def kms_denied(self, account: str) -> bool:
        """True while the account may use no other account's KMS key (an explicit deny)."""
        with self.lock:
            if account in self.kms_denied_accounts:
                self._record("kms-denied", accountId=account)
                return True
            return False

    def claim_impairment(self, instance_id: str) -> None:
        """At launch: a pending `impaired` fault without an instance id takes this instance."""
        with self.lock:
            if self.impair_next_instances > 0:
                self.impair_next_instances -= 1
                self.impaired_instances.add(instance_id)
                self._record("impaired", instanceId=instance_id)

    def impaired(self, instance_id: str) -> bool:
        with self.lock:
            return instance_id in self.impaired_instances


def _action(spec: dict[str, Any]) -> str:
    action = spec.get("action")
    if not action:
        raise ValueError(f"{spec.get('kind')} needs action (an API action name such as RunInstances)")
    return action


config = Config()
faults = Faults()


class Calls:
    """Every API call the stack answered, by the access key that signed it and its SigV4 service:
    which principal called what, for the check of the calls against the templates' policies."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, str, str], int] = {}

    def record(self, access_key: str, service: str, action: str) -> None:
        with self.lock:
            key = (access_key, service, action)
            self.counts[key] = self.counts.get(key, 0) + 1

    def reset(self) -> None:
        with self.lock:
            self.counts = {}

    def listed(self) -> list[tuple[str, str, str, int]]:
        with self.lock:
            return [(*key, count) for key, count in sorted(self.counts.items())]


class Invocations:
    """Every invocation of a project function, whoever asked (Step Functions, EventBridge, a
    client), by function: what a run costs in Lambda requests (`make bench`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        # Seconds from hand-over to answer of each invocation that reached a process.
        self.durations: dict[str, list[float]] = {}

    def record(self, function: str) -> None:
        with self.lock:
            self.counts[function] = self.counts.get(function, 0) + 1

    def finished(self, function: str, seconds: float) -> None:
        with self.lock:
            self.durations.setdefault(function, []).append(seconds)

    def reset(self) -> None:
        with self.lock:
            self.counts = {}
            self.durations = {}

    def listed(self) -> dict[str, int]:
        with self.lock:
            return dict(sorted(self.counts.items()))

    def timed(self) -> dict[str, dict[str, float]]:
        """Per function: how many invocations were answered, and the longest (s)."""
        with self.lock:
            return {f: {"count": len(d), "max": max(d)} for f, d in sorted(self.durations.items())}


calls = Calls()
invocations = Invocations()
