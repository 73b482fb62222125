"""The test helpers themselves: etcd command line, key prefixes, ports, and process reaping."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from ovctl.devcluster.etcd import etcd_argv
from ovctl.devcluster.procs import ManagedProcess, ProcessError, free_port, free_ports, port_accepts
from tests.support.etcd import key_prefix, stale_workdirs
from tests.support.wait import wait_for


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv[1:])


def test_etcd_argv_is_a_consistent_one_member_cluster() -> None:
    flags = _flags(etcd_argv("ovt1-0", Path("/d"), 2001, 2002))
    assert flags["name"] == "ovt1-0"
    assert flags["initial-cluster"] == "ovt1-0=http://127.0.0.1:2002"
    assert flags["listen-client-urls"] == flags["advertise-client-urls"] == "http://127.0.0.1:2001"
    assert flags["listen-peer-urls"] == flags["initial-advertise-peer-urls"]
    assert flags["log-level"] == "error"


def test_key_prefix_is_unique_per_test_and_run_and_safe() -> None:
    nodeid = "tests/x.py::test_a[param/with/slashes]"
    a, b = key_prefix(nodeid, 0, pid=7), key_prefix(nodeid, 1, pid=7)
    other = key_prefix("tests/x.py::test_b", 0, pid=7)
    assert len({a, b, other}) == 3
    for prefix in (a, b, other):
        assert prefix.startswith("/ovt7-") and prefix.endswith("/")
        assert prefix.count("/") == 2, "the test id's slashes must not leak into the prefix"


def test_stale_workdirs_are_only_ours_and_only_of_dead_runs() -> None:
    names = ["ovt100-0-abc", "ovt100-3-xyz", "ovt200-0-def", "ovtx-0-a", "other", "ovt300-"]
    assert stale_workdirs(names, alive=lambda pid: pid == 200) == ["ovt100-0-abc", "ovt100-3-xyz"]


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 <= p <= 65535 for p in ports)
    assert not port_accepts("127.0.0.1", free_port())


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('rea' + 'dy', flush=True); time.sleep(60)"
    )
    proc = ManagedProcess(_python(code), tmp_path / "p.log").start()
    # The log's first line echoes argv, so the marker is assembled at run time.
    wait_for("'ready' in the log", lambda: "ready" in proc.log_tail(), timeout=10, every=0.01)
    assert proc.stop(timeout=0.3) == -signal.SIGKILL
    assert not proc.running


def test_stop_is_graceful_when_the_process_honours_sigterm(tmp_path: Path) -> None:
    proc = ManagedProcess(_python("import time; time.sleep(60)"), tmp_path / "p.log").start()
    assert proc.stop() == -signal.SIGTERM


def test_wait_port_fails_early_with_the_log_tail(tmp_path: Path) -> None:
    proc = ManagedProcess(
        _python("import sys; print('config is broken: no --etcd given'); sys.exit(3)"),
        tmp_path / "p.log",
    ).start()
    started = time.monotonic()
    with pytest.raises(ProcessError, match=r"status 3(.|\n)*config is broken"):
        proc.wait_port("127.0.0.1", free_port(), timeout=30)
    assert time.monotonic() - started < 10


def test_wait_port_returns_once_listening_and_env_is_passed(tmp_path: Path) -> None:
    port = free_port()
    code = (
        "import os, socket, time; s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); "
        "print('token', os.environ['OVT_TOKEN'], flush=True); time.sleep(60)"
    )
    with ManagedProcess(_python(code), tmp_path / "p.log", env={"OVT_TOKEN": "abc"}) as proc:
        proc.start().wait_port("127.0.0.1", port, timeout=10)
        assert proc.running
        assert port_accepts("127.0.0.1", port)
    assert not proc.running
    assert "token abc" in proc.log_tail()


def test_restart_appends_to_the_same_log(tmp_path: Path) -> None:
    proc = ManagedProcess(_python("import os; print('pid', os.getpid())"), tmp_path / "p.log")
    pids = []
    for _ in range(2):
        proc.start()
        pids.append(proc.pid)
        assert proc.wait(timeout=10) == 0
    lines = proc.log_tail(100).splitlines()
    assert [line for line in lines if line.startswith("pid ")] == [f"pid {p}" for p in pids]


def test_wait_times_out_on_a_process_that_keeps_running(tmp_path: Path) -> None:
    with ManagedProcess(_python("import time; time.sleep(60)"), tmp_path / "p.log") as proc:
        proc.start()
        with pytest.raises(ProcessError, match=r"still running after 0\.1s"):
            proc.wait(timeout=0.1)


def test_process_started_from_a_short_lived_thread_outlives_it(tmp_path: Path) -> None:
    # asyncio.to_thread workers exit with their loop; the daemon must not die with them.
    code = "import time; print('rea' + 'dy', flush=True); time.sleep(60)"
    proc = ManagedProcess(_python(code), tmp_path / "p.log")

    def start_and_wait_until_running() -> None:
        # Once the child prints, setpriv has armed its death signal; only then may we exit.
        proc.start()
        wait_for("'ready' in the log", lambda: "ready" in proc.log_tail(), timeout=10, every=0.01)

    worker = threading.Thread(target=start_and_wait_until_running)
    worker.start()
    worker.join()
    time.sleep(0.3)
    try:
        assert proc.running
    finally:
        proc.stop()
