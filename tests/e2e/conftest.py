"""e2e hooks: a failing test's report carries the last lines of every live dev cluster's
daemon logs, because the module fixture removes the cluster (and its logs) right after."""

from __future__ import annotations

from collections.abc import Generator

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
