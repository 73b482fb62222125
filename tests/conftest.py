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
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.etcd import EtcdHandle, EtcdServer, etcd_available, key_prefix
from tests.procs import LOOPBACK, ManagedProcess, free_port

__all__ = ["free_port"]

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


class ProcessSpawner:
    """Starts daemons for one test and stops every one of them when the test ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def __call__(
        self,
        argv: Sequence[str],
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        host: str = LOOPBACK,
        timeout: float = 15.0,
    ) -> ManagedProcess:
        """Start ``argv``; when ``port`` is given, return only once ``host:port`` accepts."""
        label = name or Path(argv[0]).name
        proc = ManagedProcess(argv, self.log_dir / f"{label}-{len(self.processes)}.log", env)
        self.processes.append(proc)
        proc.start()
        if port is not None:
            proc.wait_port(host, port, timeout)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


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
