"""Pure parts of the executor's shim and runner: exit descriptions, `ip netns exec` failures,
environments and command checks, the line writer of the task's log (no root); and the shim run
by path as the runner runs it, with small tasks of its own."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
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


# ---------------------------------------------------------------------- the task's log

T0 = 1_796_421_302 * 10**9  # 2026-12-04T21:55:02Z


def test_line_writer_stamps_each_line_when_its_end_is_read() -> None:
    w = shim.LineWriter()
    assert w.stamp(T0 + 123_456_789) == b"2026-12-04T21:55:02.123456789Z"
    assert w.stamp(T0 + 10**9 + 5) == b"2026-12-04T21:55:03.000000005Z"
    assert w.feed(b"stdout", b"a\nb\npart", T0) == (
        b"2026-12-04T21:55:02.000000000Z stdout F a\n2026-12-04T21:55:02.000000000Z stdout F b\n"
    )
    # The rest of "part" comes later: the line has the time of its end.
    assert w.feed(b"stdout", b"ial\n\n", T0 + 7) == (
        b"2026-12-04T21:55:02.000000007Z stdout F partial\n"
        b"2026-12-04T21:55:02.000000007Z stdout F \n"
    )
    assert w.feed(b"stdout", b"", T0) == b""


def test_line_writer_keeps_streams_apart_and_in_the_order_read() -> None:
    w = shim.LineWriter()
    got = w.feed(b"stdout", b"out1\nout", T0)
    got += w.feed(b"stderr", b"err1\n", T0 + 1)
    got += w.feed(b"stdout", b"2\n", T0 + 2)  # stderr's line came between: it stays there
    assert [line.split(b" ", 1)[1] for line in got.splitlines()] == [
        b"stdout F out1",
        b"stderr F err1",
        b"stdout F out2",
    ]


def test_line_writer_cuts_long_lines_into_pieces() -> None:
    w = shim.LineWriter(max_line=4)
    assert w.feed(b"stdout", b"1234\n", T0).endswith(b" stdout F 1234\n")  # at the bound: whole
    got = w.feed(b"stdout", b"abcdefghij", T0)
    assert [r.split(b" ", 1)[1] for r in got.splitlines()] == [b"stdout P abcd", b"stdout P efgh"]
    got = w.feed(b"stdout", b"k\n", T0)
    assert got.split(b" ", 1)[1] == b"stdout F ijk\n"
    # Binary output passes through unchanged (only \n ends a line).
    got = w.feed(b"stderr", b"\xff\r\x00\n", T0)
    assert got.split(b" ", 1)[1] == b"stderr F \xff\r\x00\n"


def test_line_writer_ends_an_unterminated_last_line_as_a_piece() -> None:
    w = shim.LineWriter()
    assert w.feed(b"stderr", b"done\nno newline", T0).count(b"\n") == 1
    assert w.close(b"stderr", T0 + 1) == b"2026-12-04T21:55:02.000000001Z stderr P no newline\n"
    assert w.close(b"stderr", T0 + 2) == b""  # nothing left
    assert w.close(b"stdout", T0 + 2) == b""  # never written to


def _run_shim(task_dir: Path, *argv: str, timeout: float = 30) -> tuple[str, float]:
    """The shim as the runner starts it; (its report, seconds until it exited)."""
    r, w = os.pipe()
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-I", "-S", shim.__file__, str(task_dir), str(w), "--", *argv],
        pass_fds=(w,),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read().decode()
    assert proc.returncode in (0, 1), proc.stderr.decode()
    assert proc.stdout == b"" and proc.stderr == b"", "the task's output is not the shim's"
    return report, time.monotonic() - t0


def _log(task_dir: Path) -> list[tuple[float, bytes, bytes, bytes]]:
    """(seconds, stream, tag, content) of every record in the task's log."""
    out = []
    for record in (task_dir / shim.LOG_FILE).read_bytes().split(b"\n")[:-1]:
        stamp, stream, tag, content = record.split(b" ", 3)
        assert stamp.endswith(b"Z") and len(stamp) == 30, stamp
        secs = time.mktime(time.strptime(stamp[:19].decode(), "%Y-%m-%dT%H:%M:%S"))
        out.append((secs - time.timezone + int(stamp[20:29]) / 1e9, stream, tag, content))
    return out


def test_shim_writes_every_line_with_its_own_time(tmp_path: Path) -> None:
    script = "echo a; sleep 0.5; echo b; echo c >&2; printf 'no newline'; exit 4"
    report, _ = _run_shim(tmp_path, "/bin/sh", "-c", script)
    assert report.startswith("ok ")
    records = _log(tmp_path)
    assert [(s, t, c) for _, s, t, c in records] == [
        (b"stdout", b"F", b"a"),
        (b"stdout", b"F", b"b"),
        (b"stderr", b"F", b"c"),
        (b"stdout", b"P", b"no newline"),
    ]
    times = [t for t, *_ in records]
    assert times == sorted(times)
    assert times[1] - times[0] >= 0.45, "a and b were written 0.5 s apart"
    assert abs(times[0] - time.time()) < 60
    assert json.loads((tmp_path / shim.EXIT_FILE).read_text())["exit_code"] == 4


def test_shim_keeps_long_and_binary_lines_and_appends_runs(tmp_path: Path) -> None:
    script = "head -c 40000 /dev/zero | tr '\\0' x; echo; printf '\\377\\r\\n'"
    _run_shim(tmp_path, "/bin/sh", "-c", script)
    records = _log(tmp_path)
    assert [(t, len(c)) for _, _, t, c in records] == [
        (b"P", shim.MAX_LINE),
        (b"P", shim.MAX_LINE),
        (b"F", 40000 - 2 * shim.MAX_LINE),
        (b"F", 2),
    ]
    assert records[-1][3] == b"\xff\r"
    _run_shim(tmp_path, "/bin/echo", "again")  # a second run appends
    assert _log(tmp_path)[-1][1:] == (b"stdout", b"F", b"again")


def test_shim_ends_what_holds_the_pipes_and_reads_them_to_the_end(tmp_path: Path) -> None:
    """A grandchild in the background keeps the task's stdout open: the shim kills it with
    the rest of the task once the leader exits, and still gets all that was written."""
    script = "(sleep 60; echo never) & (setsid sleep 60 &); for i in 1 2 3; do echo $i; done"
    report, took = _run_shim(tmp_path, "/bin/sh", "-c", script)
    assert report.startswith("ok ") and took < 10
    assert [c for *_, c in _log(tmp_path)] == [b"1", b"2", b"3"]


def test_shim_explains_a_failed_start_from_the_tasks_stderr(tmp_path: Path) -> None:
    # As `ip netns exec` fails: its message first on stderr, exit 1, at once.
    failing = "echo 'exec of \"nosuchcmd\" failed: No such file or directory' >&2; exit 1"
    _run_shim(tmp_path, "/bin/sh", "-c", failing)
    rec = json.loads((tmp_path / shim.EXIT_FILE).read_text())
    assert rec["start_failed"] and rec["error"] == "exec: 'nosuchcmd': No such file or directory"
    # podman's message is its last words, however much came before.
    podman = tmp_path / "bin" / "podman"
    podman.parent.mkdir()
    podman.write_text(
        "#!/bin/sh\nyes pulling | head -n 2000 >&2\n"
        "echo 'Error: x: image not known' >&2\nexit 125\n"
    )
    podman.chmod(0o755)
    _run_shim(tmp_path, str(podman), "run")
    rec = json.loads((tmp_path / shim.EXIT_FILE).read_text())
    assert rec["start_failed"] and rec["error"] == "podman: x: image not known"


def test_shim_reports_an_exec_failure(tmp_path: Path) -> None:
    report, _ = _run_shim(tmp_path, str(tmp_path / "missing"))
    assert report.startswith("err exec: ") and "No such file" in report
    assert json.loads((tmp_path / shim.EXIT_FILE).read_text())["start_failed"] is True
