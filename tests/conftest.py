"""Shared fixtures: a real etcd (shared or private) and daemons started and reaped by PID.

Fixtures:
    etcd_server   session-wide etcd member, shared by every test that uses ``etcd``
    etcd          EtcdHandle on the shared member with a key prefix of the test's own
    etcd_fresh    a private EtcdServer for tests that stop, kill or restart etcd
    spawn_process start a ManagedProcess (log under tmp_path), reaped after the test

Without /usr/bin/etcd the etcd fixtures skip, except under CI=true, where they fail: CI
installs etcd (scripts/install.sh), so a missing binary there is a broken setup, not a
reason to test less.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from ovctl.devcluster.etcd import EtcdServer, etcd_available
from tests.support.etcd import EtcdHandle, key_prefix, remove_stale_workdirs
from tests.support.procs import ProcessSpawner

_serials = itertools.count()
_failed_key = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Remember whether setup or the test body failed, so teardowns can print the daemon logs
    # that explain it (pytest shows output captured at teardown only for failed tests).
    report: pytest.TestReport = yield
    if report.failed and report.when in ("setup", "call"):
        item.stash[_failed_key] = True
    return report


def pytest_sessionstart(session: pytest.Session) -> None:
    # A run killed with SIGKILL leaves its etcd data dirs (100+ MB each on /dev/shm): remove
    # those of runs that are gone before this one starts its own.
    remove_stale_workdirs()


def _test_failed(request: pytest.FixtureRequest) -> bool:
    return request.node.stash.get(_failed_key, False)


def _require_etcd() -> None:
    if etcd_available():
        return
    reason = "Debian's etcd-server and etcd-client (/usr/bin/etcd, /usr/bin/etcdctl) are missing"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; scripts/install.sh should have installed them")
    pytest.skip(f"{reason}; run scripts/install.sh as root")


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    _require_etcd()
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def etcd(etcd_server: EtcdServer, request: pytest.FixtureRequest) -> EtcdHandle:
    return EtcdHandle(etcd_server, key_prefix(request.node.nodeid, next(_serials)))


@pytest.fixture
def etcd_fresh(request: pytest.FixtureRequest) -> Iterator[EtcdServer]:
    _require_etcd()
    server = EtcdServer()
    try:
        server.start()
        yield server
        if _test_failed(request):
            print(f"--- etcd {server.name} log tail ---\n{server.log_tail()}")
    finally:
        server.close()


@pytest.fixture
def spawn_process(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessSpawner]:
    spawner = ProcessSpawner(tmp_path / "logs")
    try:
        yield spawner
    finally:
        spawner.stop_all()
        if _test_failed(request):
            for proc in spawner.processes:
                print(f"--- {' '.join(proc.argv)} (log {proc.log_path}) ---\n{proc.log_tail()}")
