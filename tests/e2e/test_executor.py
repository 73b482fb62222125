"""The executor's process layer on a real kernel: tasks in network namespaces under shims.

Each test makes its own namespaces (prefix ovt<pid>-) and state directory; the fixtures delete
the namespaces and kill, by PID (checked against /proc start times), every shim and task group
the state directory names, whatever the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.executor import ExitInfo, LogTailer, ProcessExecutor, Runner, StartError, TaskSpec, shim
from agent.executor.logs import parse_record
from osutil.proc import pid_alive, proc_start_time, proc_stat

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

PREFIX = f"ovt{os.getpid() % 100000}-"
REPO = Path(__file__).resolve().parents[2]
_serial = itertools.count()
T = TypeVar("T")


def arun(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def until(
    what: str, check: Callable[[], Any], timeout: float = 10.0, every: float = 0.01
) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def in_netns(pid: int, name: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == netns_inode(name)
    except FileNotFoundError:
        return False


def exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def group_members(pgid: int) -> list[int]:
    """PIDs (not zombies) whose process group is `pgid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getpgid(pid) != pgid:
                continue
        except ProcessLookupError:
            continue
        if pid_alive(pid):
            out.append(pid)
    return out


def kill_all(state_dir: Path) -> None:
    """Kill every shim and task group the state dir names (by PID, if still the same process)."""
    for rec_path in state_dir.glob("tasks/*/shim.json"):
        try:
            rec = json.loads(rec_path.read_text())
        except ValueError:
            continue
        if pid_alive(rec["shim_pid"], rec["shim_start"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec["shim_pid"], signal.SIGKILL)
        if pid_alive(rec["task_pid"], rec["task_start"]):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rec["task_pid"], signal.SIGKILL)
        # Shims started by this process are our children: reap them.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(rec["shim_pid"], os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                break
            time.sleep(0.01)


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    names: list[str] = []

    def make() -> str:
        name = f"{PREFIX}x{next(_serial)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        names.append(name)
        return name

    try:
        yield make
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    return make_netns()


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "state"
    try:
        yield d
    finally:
        kill_all(d)


class Exits:
    """on_exit callback that records deliveries."""

    def __init__(self) -> None:
        self.got: list[tuple[str, ExitInfo]] = []

    def __call__(self, task_id: str, info: ExitInfo) -> None:
        self.got.append((task_id, info))

    def of(self, task_id: str) -> list[ExitInfo]:
        return [i for t, i in self.got if t == task_id]


def read_logs(state_dir: Path, task_id: str, stream: str = "stdout") -> bytes:
    """What the task wrote to `stream` so far, from the records of its log."""
    try:
        data = (state_dir / "tasks" / task_id / shim.LOG_FILE).read_bytes()
    except FileNotFoundError:
        return b""
    out = b""
    for record in data.split(b"\n")[:-1]:
        parsed = parse_record(record)
        assert parsed is not None, record
        if parsed[0] == stream:
            out += parsed[3] + (b"\n" if parsed[2] else b"")
    return out


# ---------------------------------------------------------------------- running


def test_task_runs_in_its_netns_with_env_workdir_and_logs(
    state_dir: Path, netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = Path(f"/etc/netns/{netns}")
    etc.mkdir(parents=True)
    (etc / "resolv.conf").write_text("nameserver 127.0.0.11\noptions ndots:0\n")
    monkeypatch.setenv("OVT_AGENT_ONLY", "secret")
    workdir = tmp_path / "wd"
    workdir.mkdir()
    script = (
        'echo "foo=$FOO"; echo "agent=${OVT_AGENT_ONLY:-unset}"; pwd; cat /etc/resolv.conf; '
        "echo to-stderr >&2; exec sleep 100"
    )

    async def go() -> None:
        exits = Exits()
        runner = Runner(state_dir, exits)
        pid = await runner.start("t1", ["sh", "-c", script], ["FOO=bar baz"], str(workdir), netns)
        assert runner.running() == {"t1": pid}
        await until("the task in its namespace", lambda: in_netns(pid, netns))
        await until("exec of sleep", lambda: exe(pid).endswith("/sleep"))
        assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
        assert os.getpgid(pid) == pid  # its own process group
        assert os.getsid(pid) != os.getsid(0)  # not in the agent's session
        out = read_logs(state_dir, "t1").decode()
        assert out == (
            f"foo=bar baz\nagent=unset\n{workdir}\nnameserver 127.0.0.11\noptions ndots:0\n"
        )
        assert read_logs(state_dir, "t1", "stderr") == b"to-stderr\n"
        tailer = LogTailer(state_dir)
        chunks = tailer.read_new("t1")
        assert [(c.stream, c.data) for c in chunks][:2] == [
            ("stdout", b"foo=bar baz\n"),
            ("stdout", b"agent=unset\n"),
        ]
        assert ("stderr", b"to-stderr\n") in [(c.stream, c.data) for c in chunks]
        tailer.commit("t1")
        assert LogTailer(state_dir).read_new("t1") == []

        info = await runner.stop("t1", timeout=5)
        assert info == ExitInfo(None, 15, "killed by signal 15 (SIGTERM)")
        assert exits.got == [("t1", info)]
        assert runner.running() == {}
        assert await runner.stop("t1") is None  # no-op once gone

    arun(go())


def test_each_line_has_the_time_it_was_written(state_dir: Path, netns: str) -> None:
    """Read in one batch after the task ended, lines written a second apart still carry
    times a second apart (the shim's, per line; not the batch's or the file's)."""
    script = "echo a; sleep 1; echo b; echo c >&2; printf d"

    async def go() -> None:
        exits = Exits()
        runner = Runner(state_dir, exits)
        t0 = time.time()
        await runner.start("lines", ["sh", "-c", script], [], "/", netns)
        await until("exit", lambda: exits.of("lines"), timeout=10)
        chunks = LogTailer(state_dir).read_new("lines")
        assert [(c.stream, c.data) for c in chunks] == [
            ("stdout", b"a\n"),
            ("stdout", b"b\n"),
            ("stderr", b"c\n"),
            ("stdout", b"d"),
        ]
        a, b, c, d = (ch.timestamp_ms / 1000 for ch in chunks)
        assert t0 - 1 <= a < t0 + 1
        assert 0.9 <= b - a < 2 and b <= c <= d

    arun(go())


def test_exit_codes_and_signals(state_dir: Path, netns: str) -> None:
    async def go() -> None:
        exits = Exits()
        runner = Runner(state_dir, exits)
        cases = {
            "ok": ["true"],
            "three": ["sh", "-c", "exit 3"],
            "killed": ["sh", "-c", "kill -KILL $$"],
        }
        await asyncio.gather(*(runner.start(t, argv, [], "/", netns) for t, argv in cases.items()))
        await until("three exits", lambda: len(exits.got) == 3)
        got = dict(exits.got)
        assert got["ok"] == ExitInfo(0, None, "exit status 0") and got["ok"].ok
        assert got["three"] == ExitInfo(3, None, "exit status 3")
        assert got["killed"] == ExitInfo(None, 9, "killed by signal 9 (SIGKILL)")
        rec = json.loads((state_dir / "tasks/three/exit.json").read_text())
        assert rec["exit_code"] == 3 and rec["signal"] is None and rec["error"] == "exit status 3"
        assert runner.running() == {}
        assert runner.task_ids() == ["killed", "ok", "three"]
        runner.remove("ok")
        assert runner.task_ids() == ["killed", "three"]

    arun(go())


def test_leftover_processes_of_a_task_die_with_it(state_dir: Path, netns: str) -> None:
    # One child stays in the task's group, one escapes into a session of its own (a daemon):
    # when the leader exits, both end before the exit is reported.
    script = "sleep 100 & echo $!; setsid sleep 100 & echo $!; sleep 0.1; exit 0"

    async def go() -> None:
        exits = Exits()
        runner = Runner(state_dir, exits)
        pid = await runner.start("bg", ["sh", "-c", script], [], "/", netns)
        await until("exit", lambda: exits.of("bg"), timeout=10)
        assert exits.of("bg") == [ExitInfo(0, None, "exit status 0")]
        in_group, daemon = (int(p) for p in read_logs(state_dir, "bg").split())
        for child in (in_group, daemon):
            assert not exe(child).endswith("/sleep"), f"{child} outlived its task"
        assert group_members(pid) == []

    arun(go())


def test_stop_with_sigterm_reaches_the_whole_group(state_dir: Path, netns: str) -> None:
    async def go() -> None:
        runner = Runner(state_dir, Exits())
        pid = await runner.start(
            "grp", ["sh", "-c", "sleep 100 & sleep 100 & echo up; wait"], [], "/", netns
        )
        await until("children", lambda: b"up" in read_logs(state_dir, "grp"))
        assert len(group_members(pid)) == 3
        t0 = time.monotonic()
        info = await runner.stop("grp", timeout=5)
        assert time.monotonic() - t0 < 2
        assert info is not None and info.signal == signal.SIGTERM
        assert group_members(pid) == []

    arun(go())


def test_stop_escalates_to_sigkill(state_dir: Path, netns: str) -> None:
    script = 'trap "echo got-term" TERM; echo ready; while :; do sleep 0.05; done'

    async def go() -> None:
        exits = Exits()
        runner = Runner(state_dir, exits)
        pid = await runner.start("stubborn", ["sh", "-c", script], [], "/", netns)
        await until("trap set", lambda: b"ready" in read_logs(state_dir, "stubborn"))
        t0 = time.monotonic()
        info = await runner.stop("stubborn", timeout=0.5)
        took = time.monotonic() - t0
        assert info == ExitInfo(None, 9, "killed by signal 9 (SIGKILL)")
        assert 0.5 <= took < 3
        assert b"got-term" in read_logs(state_dir, "stubborn")  # TERM was delivered first
        assert exits.of("stubborn") == [info]
        assert group_members(pid) == []

    arun(go())


# ---------------------------------------------------------------------- start failures


def test_start_failures_are_clear(state_dir: Path, netns: str, tmp_path: Path) -> None:
    bad_interp = tmp_path / "bad-interp"
    bad_interp.write_text("#!/nonexistent/interpreter\n")
    bad_interp.chmod(0o755)

    async def go() -> None:
        exits = Exits()
        runner = Runner(state_dir, exits)
        with pytest.raises(StartError, match="'nosuchcmd': executable file not found in PATH"):
            await runner.start("a", ["nosuchcmd", "x"], [], "/", netns)
        with pytest.raises(StartError, match="'/no/such/file': no such file"):
            await runner.start("a", ["/no/such/file"], [], "/", netns)
        with pytest.raises(StartError, match="network namespace 'ovt-none' does not exist"):
            await runner.start("a", ["true"], [], "/", "ovt-none")
        with pytest.raises(StartError, match="working directory '/no/dir' does not exist"):
            await runner.start("a", ["true"], [], "/no/dir", netns)
        with pytest.raises(StartError, match="KEY=VALUE"):
            await runner.start("a", ["true"], ["JUNK"], "/", netns)
        assert runner.running() == {} and exits.got == []
        # Only the exec inside `ip netns exec` can tell: it arrives as an exit with the reason.
        await runner.start("b", [str(bad_interp)], [], "/", netns)
        await until("exit", lambda: exits.of("b"))
        (info,) = exits.of("b")
        assert info.start_failed
        assert info.error == f"exec: '{bad_interp}': No such file or directory"

    arun(go())


# ---------------------------------------------------------------------- idempotence, adoption


def test_start_is_idempotent(state_dir: Path, netns: str) -> None:
    async def go() -> None:
        runner = Runner(state_dir, Exits())
        pids = await asyncio.gather(
            *(runner.start("once", ["sleep", "100"], [], "/", netns) for _ in range(3))
        )
        assert len(set(pids)) == 1
        assert await runner.start("once", ["sleep", "100"], [], "/", netns) == pids[0]
        assert len(list((state_dir / "tasks").iterdir())) == 1
        with pytest.raises(RuntimeError, match="running"):
            runner.remove("once")
        # A second runner (no adopt() yet) takes the live task over instead of starting another.
        other = Runner(state_dir, Exits())
        assert await other.start("once", ["sleep", "100"], [], "/", netns) == pids[0]
        runner.close()
        assert (await other.stop("once", 5)) is not None

    arun(go())


AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from agent.executor import Runner

    async def main():
        runner = Runner(Path(sys.argv[1]), lambda t, i: None)
        pid = await runner.start("long", ["sleep", "100"], [], "/", sys.argv[2])
        print(pid, flush=True)
        await asyncio.sleep(100)

    asyncio.run(main())
    """
)


def test_task_survives_agent_sigkill_and_is_adopted(state_dir: Path, netns: str) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT_SCRIPT, str(state_dir), netns],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        pid = int(agent.stdout.readline())
    finally:
        agent.kill()
        agent.wait()
        if agent.stdout is not None:
            agent.stdout.close()
    rec = json.loads((state_dir / "tasks/long/shim.json").read_text())
    assert rec["task_pid"] == pid
    time.sleep(0.1)
    assert pid_alive(rec["shim_pid"], rec["shim_start"]), "the shim died with the agent"
    assert pid_alive(pid, rec["task_start"]), "the task died with the agent"

    async def go() -> None:
        exits = Exits()
        runner = Runner(state_dir, exits)
        found = runner.adopt()
        assert found["long"].running and found["long"].pid == pid
        assert found["long"].shim_pid == rec["shim_pid"]
        assert runner.running() == {"long": pid}
        assert await runner.start("long", ["sleep", "100"], [], "/", netns) == pid
        info = await runner.stop("long", 5)
        assert info == ExitInfo(None, 15, "killed by signal 15 (SIGTERM)")
        assert exits.got == [("long", info)]

    arun(go())


# Dropping a Runner without close() is the point here: its Popen of the live shim complains.
@pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")
def test_dropped_runner_then_adopt_in_same_process(state_dir: Path, netns: str) -> None:
    async def first() -> int:
        runner = Runner(state_dir, Exits())
        return await runner.start("long", ["sleep", "100"], [], "/", netns)

    pid = arun(first())  # the runner and its loop are gone; nothing stopped the task
    gc.collect()
    assert exe(pid).endswith("/sleep")

    async def second() -> None:
        exits = Exits()
        runner = Runner(state_dir, exits)
        assert runner.adopt()["long"].running
        os.kill(pid, signal.SIGUSR1)  # the task ends on its own: on_exit reports it
        await until("exit", lambda: exits.got)
        assert exits.got == [("long", ExitInfo(None, 10, "killed by signal 10 (SIGUSR1)"))]
        assert runner.running() == {}

    arun(second())


def test_exit_while_no_runner_is_reported_by_adopt(state_dir: Path, netns: str) -> None:
    async def first() -> None:
        runner = Runner(state_dir, Exits())
        await runner.start("quick", ["sh", "-c", "sleep 0.2; exit 7"], [], "/", netns)
        runner.close()

    arun(first())
    # The shim writes exit.json, then exits (a zombie here: this process is its parent).
    shim_pid = json.loads((state_dir / "tasks/quick/shim.json").read_text())["shim_pid"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = proc_stat(shim_pid)
        if st is None or st.state == "Z":
            break
        time.sleep(0.02)

    async def second() -> None:
        exits = Exits()
        runner = Runner(state_dir, exits)
        found = runner.adopt()
        assert not found["quick"].running
        assert found["quick"].exit == ExitInfo(7, None, "exit status 7")
        assert exits.got == []  # returned, not delivered
        assert runner.running() == {}
        runner.remove("quick")
        assert runner.task_ids() == []

    arun(second())


def test_shim_killed_task_still_watched_and_stoppable(state_dir: Path, netns: str) -> None:
    async def go() -> None:
        exits = Exits()
        runner = Runner(state_dir, exits)
        pid = await runner.start("orphan", ["sleep", "100"], [], "/", netns)
        rec = json.loads((state_dir / "tasks/orphan/shim.json").read_text())
        os.kill(rec["shim_pid"], signal.SIGKILL)
        await asyncio.sleep(0.2)
        assert runner.running() == {"orphan": pid}  # now watched without its shim
        info = await runner.stop("orphan", 5)
        assert info is not None and info.exit_code is None and "unknown" in info.error
        assert exits.got == [("orphan", info)]
        assert proc_start_time(pid) is None or not exe(pid).endswith("/sleep")

    arun(go())


# ---------------------------------------------------------------------- figures


def test_start_latency(state_dir: Path, netns: str) -> None:
    """Time from start() to the command running in its namespace (shim + ip netns exec)."""
    n = 20

    async def go() -> tuple[list[float], list[float]]:
        runner = Runner(state_dir, Exits())
        returned, running = [], []
        for i in range(n):
            t0 = time.perf_counter()
            pid = await runner.start(f"lat{i}", ["sleep", "100"], [], "/", netns)
            returned.append(time.perf_counter() - t0)
            await until(
                "sleep",
                lambda p=pid: exe(p).endswith("/sleep"),  # type: ignore[misc]
                timeout=5,
                every=0.0005,
            )
            running.append(time.perf_counter() - t0)
            assert in_netns(pid, netns)
        await asyncio.gather(*(runner.stop(f"lat{i}", 5) for i in range(n)))
        return returned, running

    returned, running = arun(go(), timeout=60)
    med = sorted(running)[n // 2] * 1000
    print(
        f"\nstart() returned: median {sorted(returned)[n // 2] * 1000:.1f} ms; "
        f"command running in netns: median {med:.1f} ms, max {max(running) * 1000:.1f} ms"
    )
    assert med < 500


# ---------------------------------------------------------------------- the executor seam


def test_process_executor_through_the_seam(state_dir: Path, netns: str) -> None:
    """What the daemon does with a task, through `Executor` only: prepare, start, wait for an
    exit, start again, shut down, adopt from a new executor, logs, remove."""

    async def first() -> int:
        ex = ProcessExecutor(state_dir)
        with pytest.raises(StartError, match="nosuchcmd"):
            await ex.prepare(TaskSpec("bad", ("nosuchcmd",), netns=netns))
        with pytest.raises(StartError, match="does not exist"):
            await ex.prepare(TaskSpec("bad", ("true",), netns=f"{PREFIX}missing"))
        await ex.prepare(TaskSpec("quick", ("sh", "-c", "echo hi; exit 4"), netns=netns))
        await ex.start("quick")
        assert await ex.wait("quick") == ExitInfo(4, None, "exit status 4")
        assert [c.data for c in ex.read_logs("quick")] == [b"hi\n"]
        ex.commit_logs("quick")
        await ex.start("quick")  # again, in place: a fresh wait
        assert await ex.wait("quick") == ExitInfo(4, None, "exit status 4")
        assert [c.data for c in ex.read_logs("quick")] == [b"hi\n"]

        await ex.prepare(TaskSpec("long", ("sleep", "100"), netns=netns))
        running = await ex.start("long")
        assert running.pid > 0 and (await ex.start("long")) == running  # idempotent
        with pytest.raises(RuntimeError):
            ex.remove("long")
        ex.close()  # the agent goes; the task stays
        return running.pid

    pid = arun(first())

    async def second() -> None:
        ex = ProcessExecutor(state_dir)
        found = ex.adopt()
        assert found["long"].running is not None and found["long"].running.pid == pid
        assert found["quick"].running is None
        assert found["quick"].exit == ExitInfo(4, None, "exit status 4")
        waiter = asyncio.ensure_future(ex.wait("long"))
        info = await ex.shutdown("long", 5.0)
        assert info == ExitInfo(None, 15, "killed by signal 15 (SIGTERM)")
        assert await waiter == info
        assert await ex.wait("never") is None
        for task_id in ex.tasks():
            ex.remove(task_id)
        assert ex.tasks() == []
        ex.close()

    arun(second())
