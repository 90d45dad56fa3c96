"""The fidelity layer: changes to the pinned moto's backends, made from the launcher, where moto
differs from what AWS documents and amiflow depends on it. Each module patches one area and
says which AWS behaviour it follows; local/README.md lists them with their tests."""

from . import capacity, consistency, control, copies, events, iam, images, instances, kms, kms_calls, maps, partition, publicaccess, stepfunctions, tagging, targets
from .control import FaultInjector
from .state import config, faults

__all__ = ["FaultInjector", "config", "faults", "iam", "install"]


def install() -> None:
    images.install()
    copies.install()
    instances.install()
    capacity.install()
    targets.install()
    events.install()
    kms.install()
    kms_calls.install()
    stepfunctions.install()
    maps.install()
    tagging.install()
    consistency.install()
    publicaccess.install()
    partition.install()
