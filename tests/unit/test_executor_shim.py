"""Pure parts of the executor's shim and runner: exit descriptions, `ip netns exec` failures,
environments and command checks (no root, no processes beyond this one)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.executor import shim
from agent.executor.runner import ExitInfo, StartError, build_env, check_command
from osutil.proc import proc_start_time


def _exited(code: int) -> int:
    return code << 8  # a wait status as waitpid reports a normal exit


def _killed(sig: int) -> int:
    return sig


def test_describe_exit() -> None:
    assert shim.describe_exit(0, None) == "exit status 0"
    assert shim.describe_exit(3, None) == "exit status 3"
    assert shim.describe_exit(None, 9) == "killed by signal 9 (SIGKILL)"
    assert shim.describe_exit(None, 15) == "killed by signal 15 (SIGTERM)"
    assert shim.describe_exit(None, 77) == "killed by signal 77 (signal 77)"
    assert shim.describe_exit(None, None) == "exit status unknown"


def test_exit_record_from_wait_status() -> None:
    rec = shim.exit_record(_exited(3), 5.0, b"", now_ms=42)
    assert rec == {
        "exit_code": 3,
        "signal": None,
        "error": "exit status 3",
        "start_failed": False,
        "finished_ms": 42,
    }
    rec = shim.exit_record(_killed(signal.SIGKILL), 0.1, b"", now_ms=1)
    assert (rec["exit_code"], rec["signal"]) == (None, 9)
    assert rec["error"] == "killed by signal 9 (SIGKILL)"


def test_exec_failure_of_ip_netns_exec_is_recognised() -> None:
    head = b'exec of "nosuchcmd" failed: No such file or directory\n'
    assert shim.ip_netns_exec_failure(1, head) == "exec: 'nosuchcmd': No such file or directory"
    rec = shim.exit_record(_exited(1), 0.01, head, now_ms=0)
    assert rec["start_failed"] is True
    assert rec["error"] == "exec: 'nosuchcmd': No such file or directory"
    assert rec["exit_code"] == 1


def test_namespace_errors_are_recognised() -> None:
    head = b'Cannot open network namespace "x": No such file or directory\n'
    assert shim.ip_netns_exec_failure(255, head) == (
        'ip netns exec: Cannot open network namespace "x": No such file or directory'
    )


@pytest.mark.parametrize(
    ("code", "head", "elapsed"),
    [
        (1, b"some error of the program\n", 0.01),  # exit 1, but not ip's message
        (3, b'exec of "x" failed: No such file or directory\n', 0.01),  # wrong status
        (255, b"task output\n", 0.01),
        (1, b'exec of "x" failed: No such file or directory\n', 60.0),  # long after start
    ],
)
def test_ordinary_failures_are_not_start_failures(code: int, head: bytes, elapsed: float) -> None:
    rec = shim.exit_record(_exited(code), elapsed, head, now_ms=0)
    assert rec["start_failed"] is False
    assert rec["error"] == f"exit status {code}"


def test_exit_info_from_record() -> None:
    assert ExitInfo.from_record({"exit_code": 0, "signal": None, "error": "exit status 0"}).ok
    info = ExitInfo.from_record({"exit_code": None, "signal": 9})
    assert info == ExitInfo(None, 9, "killed by signal 9 (SIGKILL)")
    assert not info.ok
    assert ExitInfo.from_record({"exit_code": "junk"}).error == "exit status unknown"
    assert ExitInfo.lost().error.startswith("exit status unknown")


def test_proc_start_time_identifies_this_process() -> None:
    mine = proc_start_time(os.getpid())
    assert isinstance(mine, int) and mine > 0
    assert proc_start_time(os.getpid()) == mine
    assert proc_start_time(2**22 + 12345) is None  # above pid_max: never exists


def test_shim_runs_by_path_with_light_imports(tmp_path: Path) -> None:
    """Started as the runner starts it (`python -I -S shim.py`), the shim finds `osutil` on
    its own and imports nothing heavy before the task runs (its start is the task's)."""
    r, w = os.pipe()
    python = [sys.executable, "-I", "-S", "-X", "importtime"]
    proc = subprocess.run(
        [*python, shim.__file__, str(tmp_path), str(w), "--", "/bin/true"],
        pass_fds=(w,),
        capture_output=True,
        timeout=30,
    )
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read().decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert report.startswith("ok ")
    assert json.loads((tmp_path / shim.EXIT_FILE).read_text())["exit_code"] == 0
    rec = json.loads((tmp_path / shim.SHIM_FILE).read_text())
    assert rec["task_pid"] == int(report[3:]) and isinstance(rec["task_start"], int)
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert {"osutil.proc", "osutil.files"} <= imported
    # (json comes only once the task has ended, to write exit.json.)
    assert not imported & {"typing", "pathlib", "contextlib"}


def test_write_json_atomic_replaces(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    shim.write_json_atomic(str(p), {"a": 1})
    shim.write_json_atomic(str(p), {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]


def test_build_env_is_minimal_plus_task_entries() -> None:
    agent = {"PATH": "/a:/b", "HOME": "/home/agent", "SECRET": "x"}
    env = build_env(["FOO=bar", "EMPTY=", "WITH=eq=sign", "PATH=/c"], agent)
    assert env["FOO"] == "bar" and env["EMPTY"] == "" and env["WITH"] == "eq=sign"
    assert env["PATH"] == "/c"
    assert "SECRET" not in env
    assert set(build_env([], agent)) == {"PATH", "HOME"}
    assert build_env([], {})["PATH"].startswith("/usr/local/sbin")
    with pytest.raises(StartError, match="KEY=VALUE"):
        build_env(["NOEQUALS"], agent)


def test_check_command(tmp_path: Path) -> None:
    assert check_command(["sh", "-c", "true"], "/usr/bin:/bin").endswith("/sh")
    with pytest.raises(StartError, match="'nosuchcmd': executable file not found in PATH"):
        check_command(["nosuchcmd"], "/usr/bin:/bin")
    with pytest.raises(StartError, match="no such file"):
        check_command([str(tmp_path / "missing")], "/usr/bin")
    plain = tmp_path / "plain"
    plain.write_text("data")
    plain.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(StartError, match="permission denied"):  # no x bit: not even root
        check_command([str(plain)], "/usr/bin")
    with pytest.raises(StartError, match="permission denied"):
        check_command([str(tmp_path)], "/usr/bin")  # a directory
    with pytest.raises(StartError, match="no command"):
        check_command([], "/usr/bin")


def test_ints_json_is_json() -> None:
    rec = {"shim_pid": 12, "shim_start": None, "task_pid": 13}
    assert json.loads(shim.ints_json(rec)) == rec
    assert json.loads(shim.ints_json({})) == {}
