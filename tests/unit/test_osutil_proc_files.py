"""osutil.proc and osutil.files: what the task shim and every state file rely on."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from osutil.files import atomic_write
from osutil.proc import ProcStat, pid_alive, proc_start_time, proc_stat


def test_proc_stat_of_this_process() -> None:
    st = proc_stat(os.getpid())
    assert st is not None and st.state in "RS" and st.start_time > 0
    assert st == (st.state, st.start_time) and tuple(st) == (st[0], st[1])
    assert isinstance(st, ProcStat) and proc_start_time(os.getpid()) == st.start_time
    assert proc_stat(2**22 + 12345) is None  # above pid_max: never exists


def test_pid_alive_checks_identity_and_zombies() -> None:
    me, start = os.getpid(), proc_start_time(os.getpid())
    assert pid_alive(me) and pid_alive(me, start)
    assert not pid_alive(me, (start or 0) + 1)  # a reused PID is not the same process
    for junk in (None, "12", -1, 0, True):
        assert not pid_alive(junk)
    assert not pid_alive(me, "junk")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while (st := proc_stat(child.pid)) is not None and st.state != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not pid_alive(child.pid)  # a zombie is dead ...
    assert not pid_alive(child.pid, reap=True)  # ... and reaped on request
    assert proc_stat(child.pid) is None
    child.returncode = 0  # reaped above


def test_atomic_write_modes_and_dirs(tmp_path: Path) -> None:
    p = tmp_path / "a" / "b.json"
    with pytest.raises(FileNotFoundError):
        atomic_write(p, "x")
    atomic_write(p, "one", mkdir=True)
    atomic_write(str(p), b"two", mode=0o600, durable=True)
    assert p.read_bytes() == b"two" and stat.S_IMODE(p.stat().st_mode) == 0o600
    assert [q.name for q in p.parent.iterdir()] == ["b.json"]  # no temporary left


def test_atomic_write_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    atomic_write("rel.txt", "x", durable=True)
    assert (tmp_path / "rel.txt").read_text() == "x"
