"""Every test here boots user-mode-linux: skip the directory where it cannot boot.

Under CI=true a missing UML fails instead, as the etcd fixtures do: CI runs scripts/install.sh,
which installs user-mode-linux and kmod, so its absence there is a broken setup.
"""

from __future__ import annotations

import os

import pytest

from bench import uml


@pytest.fixture(autouse=True)
def _require_uml() -> None:
    reason = uml.available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; scripts/install.sh should have installed it")
    pytest.skip(f"{reason}; run scripts/install.sh as root")
