"""Every test here boots user-mode-linux: skip the directory where it cannot boot.

Under CI=true a missing UML fails instead, as the etcd fixtures do: CI runs scripts/install.sh,
which installs user-mode-linux and kmod, so its absence there is a broken setup.
"""

from __future__ import annotations

import pytest

from bench import uml
from tests.support.beds import require


@pytest.fixture(autouse=True)
def _require_uml() -> None:
    require(uml.available(), "user-mode-linux cannot start here")
