"""ELBv2 target health as a load balancer sees a target come and go.

AWS (https://docs.aws.amazon.com/elasticloadbalancing/latest/application/target-group-health-checks.html,
https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_TargetHealth.html):
- A target just registered is `initial` (Elb.RegistrationInProgress, "Target registration is in
  progress") until it has passed the group's health checks, then `healthy`; one that fails them is
  `unhealthy` (Target.FailedHealthChecks).
- A target being deregistered is `draining` (Target.DeregistrationInProgress) for the group's
  deregistration delay, then `unused` (Target.NotRegistered).
- A stopped instance is `unused` (Target.InvalidState).
The layer's `initial` lasts `statusCheckDelaySeconds` (the delay of EC2's own status checks), and
a target is unhealthy when its instance's status checks are impaired (the `impaired` fault);
`draining` lasts as long.
moto 5.2.5 answers `healthy` the moment a target is registered, and `unused` the moment it is
deregistered.
"""

from __future__ import annotations

import time
from typing import Any

from moto.elbv2.models import FakeHealthStatus, FakeTargetGroup

from .state import config, faults

_original_register = FakeTargetGroup.register
_original_deregister = FakeTargetGroup.deregister
_original_health_for = FakeTargetGroup.health_for


def register(self: FakeTargetGroup, targets: list[dict[str, Any]]) -> None:
    _original_register(self, targets)
    since = self.__dict__.setdefault("amiflow_registered_at", {})
    draining = self.__dict__.setdefault("amiflow_draining_until", {})
    for target in targets:
        since[target["Id"]] = time.monotonic()
        draining.pop(target["Id"], None)


def deregister(self: FakeTargetGroup, targets: list[dict[str, Any]]) -> None:
    _original_deregister(self, targets)
    draining = self.__dict__.setdefault("amiflow_draining_until", {})
    for target in targets:
        draining[target["Id"]] = time.monotonic() + config.status_check_delay_seconds


def health_for(self: FakeTargetGroup, target: dict[str, Any], ec2_backend: Any) -> FakeHealthStatus:
    target_id = target["Id"]
    until = self.__dict__.get("amiflow_draining_until", {}).get(target_id)
    if target_id not in self.targets and until is not None and time.monotonic() < until:
        port = self.deregistered_targets.get(target_id, {}).get("Port", target.get("Port", self.port))
        return FakeHealthStatus(target_id, port, self.health_check_port, "draining",
                                "Target.DeregistrationInProgress", "Target deregistration is in progress")
    answer = _original_health_for(self, target, ec2_backend)
    if answer.status != "healthy":
        return answer
    registered = self.__dict__.get("amiflow_registered_at", {}).get(target_id)
    if registered is not None and time.monotonic() - registered < config.status_check_delay_seconds:
        return FakeHealthStatus(target_id, answer.port, self.health_check_port, "initial",
                                "Elb.RegistrationInProgress", "Target registration is in progress")
    if target_id.startswith("i-") and faults.impaired(target_id):
        return FakeHealthStatus(target_id, answer.port, self.health_check_port, "unhealthy",
                                "Target.FailedHealthChecks", "Health checks failed")
    return answer


def install() -> None:
    FakeTargetGroup.register = register
    FakeTargetGroup.deregister = deregister
    FakeTargetGroup.health_for = health_for
