"""The fidelity layer: changes to the pinned moto's backends, made from the launcher, where moto
differs from what AWS documents and amiflow depends on it. Each module patches one area and
says which AWS behaviour it follows (local/README.md lists them)."""

from . import images


def install() -> None:
    images.install()
