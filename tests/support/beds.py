"""What the test beds (tests/uml, tests/nodes) do when theirs cannot start here."""

from __future__ import annotations

import os

import pytest


def require(reason: str | None, what: str) -> None:
    """Nothing when ``reason`` is None. Else skip, saying why; under CI=true fail instead: CI
    runs scripts/install.sh, which provides every bed, so a missing one there is a broken
    setup, not a reason to test less."""
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}: {reason}; scripts/install.sh should have provided it")
    pytest.skip(f"{what}: {reason}; run scripts/install.sh as root")
