"""pytest plugin for `make peer-test`: installs the fidelity layer in moto's own test process, as
the local stack does, with images that settle at once (moto's tests expect no pending phase;
what the delay changes is the layer's own business, tested in local/tests).

moto's tests launch from its example AMI ids without loading them (MOTO_EC2_LOAD_DEFAULT_AMIS is
false in tests/__init__.py), which works only because moto never checks an image id; AWS does, and
so does the layer. The plugin loads them, as the stack's seed does."""

from __future__ import annotations

import os


def pytest_configure(config) -> None:  # noqa: ARG001 - pytest's hook signature
    from amiflow_local import layer

    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "true"

    layer.install()
    layer.config.image_delay_seconds = 0
    layer.config.status_check_delay_seconds = 0
