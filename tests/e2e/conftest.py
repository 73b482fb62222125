"""e2e hooks: a failing test's report carries the last lines of every live dev cluster's
daemon logs, because the module fixture removes the cluster (and its logs) right after; and a
scratch network namespace for the tests that need one."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Generator, Iterator

import pytest

from tests.support.cluster import E2ECluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and E2ECluster.live:
        tails = "\n".join(c.log_tails() for c in E2ECluster.live)
        report.sections.append(("ovnet daemon logs (last lines)", tails))


_serial = itertools.count()


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of the test's own, loopback up, deleted afterwards (modules that
    need several make their own)."""
    name = f"ovns{os.getpid() % 100000}-{next(_serial)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
