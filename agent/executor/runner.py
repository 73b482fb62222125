"""Start, watch, stop and re-adopt task processes, each under its own shim.

Every task has a directory ``<state_dir>/tasks/<task_id>/``:

    spec.json     what was started (argv, env, workdir, netns), written by the runner
    shim.json     shim and task PIDs with /proc start times, written by the shim once spawned
    exit.json     {"exit_code", "signal", "error", "start_failed", "finished_ms"}, by the shim
    output.log    the task's stdout and stderr, line by line with the time of each (Kubernetes'
                  CRI log format), appended by the shim from the task's pipes, so nothing is
                  lost while the agent is down (see shim.LineWriter, logs.LogTailer)
    shim.log      the shim's own stdout and stderr (a traceback, should it fail)
    stdout.log    what tasks of an older agent wrote directly (no longer written; still read)
    stderr.log
    log_offsets.json  how far the logs were published (logs.LogTailer)

The shim (shim.py) is the task's parent and lives in a session of its own, so the agent can be
killed and restarted without touching tasks. The runner learns that a shim ended through a pidfd
on the event loop, which works for shims it did not start itself (adopted after a restart), and
reads the exit from exit.json.

All methods must be called from the thread running the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.executor import shim
from agent.executor.api import ExitInfo, StartError
from osutil.files import atomic_write
from osutil.proc import pid_alive

__all__ = ["ExitInfo", "ProcessInfo", "Runner", "StartError", "build_env", "check_command"]

log = logging.getLogger(__name__)

SHIM_PATH = Path(shim.__file__).resolve()
SPEC_FILE = "spec.json"
# What a task gets when the agent has no PATH (e.g. started by a minimal init).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# How long the shim may take to report that the task is spawned (Python start is ~10-20 ms;
# this is for a machine under heavy load).
SHIM_REPORT_TIMEOUT_S = 15.0
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ProcessInfo:
    """What adopt() found for one task directory.

    running: the task (normally with its shim) is alive and now watched: its exit will be
    delivered through on_exit. Otherwise `exit` is how it ended while no runner watched (not
    delivered through on_exit), or None when the directory holds no started task (e.g. the
    agent died in the middle of start()).
    """

    task_id: str
    running: bool
    pid: int | None = None  # the task's PID (the command's, `ip netns exec` execs in place)
    shim_pid: int | None = None
    exit: ExitInfo | None = None


@dataclass
class _Watched:
    task_pid: int
    shim_pid: int | None  # None: the shim died and only the task itself is watched
    pidfd: int
    done: asyncio.Future[ExitInfo]
    popen: subprocess.Popen[bytes] | None = None
    started: float = field(default_factory=time.monotonic)


def _follow(src: asyncio.Future[ExitInfo], dst: asyncio.Future[ExitInfo]) -> None:
    if not dst.done():
        if src.cancelled():
            dst.cancel()
        else:
            dst.set_result(src.result())


def _alive(pid: object, start_time: object) -> bool:
    """The process `pid` runs and is the one that had `start_time` (a record without a start
    time proves nothing). A zombie that is our own child (a shim started by an earlier Runner
    in this process) is reaped, as init would have done for a real agent restart."""
    return isinstance(start_time, int) and pid_alive(pid, start_time, reap=True)


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def build_env(env: Sequence[str], agent_env: dict[str, str] | None = None) -> dict[str, str]:
    """The task's environment: a minimal base (the agent's PATH, HOME) plus its own "K=V"s.

    The agent's other variables (its config, credentials, PYTHON*) are not the task's business.
    """
    agent_env = os.environ if agent_env is None else agent_env  # type: ignore[assignment]
    assert agent_env is not None
    out = {
        "PATH": agent_env.get("PATH") or DEFAULT_PATH,
        "HOME": "/root" if os.geteuid() == 0 else agent_env.get("HOME", "/"),
    }
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key or "\0" in item:
            raise StartError(f"invalid environment entry {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def check_command(argv: Sequence[str], path: str) -> str:
    """Resolve the command as the task's PATH would; StartError with the reason if it can't
    run. The sandbox shares the host's filesystem (`ip netns exec` only swaps /etc/resolv.conf,
    /etc/hosts and /sys), so what is found here is what the exec will find."""
    if not argv or not argv[0]:
        raise StartError("no command given")
    cmd = argv[0]
    if "/" in cmd:
        if not os.path.exists(cmd):
            raise StartError(f"exec: {cmd!r}: no such file")
        if os.path.isdir(cmd) or not os.access(cmd, os.X_OK):
            raise StartError(f"exec: {cmd!r}: permission denied (not an executable file)")
        return cmd
    found = shutil.which(cmd, path=path)
    if found is None:
        raise StartError(f"exec: {cmd!r}: executable file not found in PATH ({path})")
    return found


class Runner:
    """Runs each task as ``ip netns exec <netns> <argv...>`` under a shim; see the module doc.
    With `enter_netns=False` the argv runs as given (podman, which joins the container to the
    sandbox itself, and must not run under `ip netns exec`: it remounts /sys, where podman
    finds the cgroups).

    `on_exit(task_id, info)` is called on the event loop, once, for every exit this runner
    observes while watching (including tasks it stops). Exits that happened while nothing
    watched are returned by adopt() instead.
    """

    def __init__(
        self,
        state_dir: Path,
        on_exit: Callable[[str, ExitInfo], None],
        *,
        python: str = sys.executable,
        netns_dir: Path = Path("/run/netns"),
        ip: str | None = None,
        enter_netns: bool = True,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.tasks_dir = self.state_dir / "tasks"
        self.on_exit = on_exit
        self.python = python
        self.netns_dir = Path(netns_dir)
        self.ip = ip or shutil.which("ip", path=f"{os.environ.get('PATH', '')}:{DEFAULT_PATH}")
        self.enter_netns = enter_netns
        self._watched: dict[str, _Watched] = {}
        self._starting: dict[str, asyncio.Future[int]] = {}

    # ------------------------------------------------------------------ queries

    def task_dir(self, task_id: str) -> Path:
        if not _TASK_ID.match(task_id):
            raise ValueError(f"invalid task ID {task_id!r}")
        return self.tasks_dir / task_id

    def task_ids(self) -> list[str]:
        """Task directories present (running or not), sorted."""
        try:
            return sorted(
                p.name for p in self.tasks_dir.iterdir() if p.is_dir() and _TASK_ID.match(p.name)
            )
        except FileNotFoundError:
            return []

    def running(self) -> dict[str, int]:
        """Task ID -> task PID for every task this runner watches."""
        return {tid: w.task_pid for tid, w in self._watched.items()}

    # ------------------------------------------------------------------ adopt

    def adopt(self) -> dict[str, ProcessInfo]:
        """Find the tasks in the state dir: watch the live ones again, report how the others
        ended. Call once at agent start, from the event loop (the watches use it)."""
        loop = asyncio.get_running_loop()
        found: dict[str, ProcessInfo] = {}
        for task_id in self.task_ids():
            found[task_id] = self._adopt_one(loop, task_id)
        return found

    def _adopt_one(self, loop: asyncio.AbstractEventLoop, task_id: str) -> ProcessInfo:
        w = self._watched.get(task_id)
        if w is not None:
            return ProcessInfo(task_id, True, w.task_pid, w.shim_pid)
        d = self.tasks_dir / task_id
        rec = _read_json(d / shim.SHIM_FILE)
        exit_rec = _read_json(d / shim.EXIT_FILE)
        if rec is None:
            exit_info = ExitInfo.from_record(exit_rec) if exit_rec is not None else None
            return ProcessInfo(task_id, False, exit=exit_info)
        shim_pid, task_pid = rec.get("shim_pid"), rec.get("task_pid")
        if not isinstance(task_pid, int) or not isinstance(shim_pid, int):
            return ProcessInfo(task_id, False, exit=ExitInfo.lost("unreadable shim.json"))
        if _alive(shim_pid, rec.get("shim_start")) and self._watch(
            loop, task_id, task_pid, shim_pid
        ):
            return ProcessInfo(task_id, True, task_pid, shim_pid)
        if exit_rec is not None:
            return ProcessInfo(task_id, False, task_pid, exit=ExitInfo.from_record(exit_rec))
        # The shim died without a record (killed with SIGKILL, say): the task may live on,
        # reparented to init. Watch it on its own; its exit status is lost either way.
        if _alive(task_pid, rec.get("task_start")) and self._watch(loop, task_id, task_pid, None):
            return ProcessInfo(task_id, True, task_pid, None)
        return ProcessInfo(task_id, False, task_pid, exit=ExitInfo.lost())

    def _watch(
        self,
        loop: asyncio.AbstractEventLoop,
        task_id: str,
        task_pid: int,
        shim_pid: int | None,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> bool:
        """Watch the shim (or, if it is gone, the task) through a pidfd; False if it's gone."""
        try:
            pidfd = os.pidfd_open(shim_pid if shim_pid is not None else task_pid)
        except ProcessLookupError:
            return False
        w = _Watched(task_pid, shim_pid, pidfd, loop.create_future(), popen)
        self._watched[task_id] = w
        loop.add_reader(pidfd, self._on_pidfd, task_id, w)
        return True

    def _on_pidfd(self, task_id: str, w: _Watched) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(w.pidfd)
        # Reap the shim if it is our child (started by this runner, or by an earlier runner
        # in this same process, as in tests); for an adopted shim, init does that.
        if w.popen is not None:
            w.popen.wait()  # it has exited: does not block
        else:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitid(os.P_PIDFD, w.pidfd, os.WEXITED | os.WNOHANG)
        os.close(w.pidfd)
        d = self.tasks_dir / task_id
        info: ExitInfo | None = None
        if w.shim_pid is not None:
            rec = _read_json(d / shim.EXIT_FILE)
            if rec is not None:
                info = ExitInfo.from_record(rec)
            else:
                srec = _read_json(d / shim.SHIM_FILE) or {}
                if _alive(w.task_pid, srec.get("task_start")) and self._watch(
                    loop, task_id, w.task_pid, None
                ):
                    log.warning("task %s: its shim died; watching the task alone", task_id)
                    # Whoever waits on the old watch follows the new one.
                    new = self._watched[task_id]
                    new.done.add_done_callback(lambda f: _follow(f, w.done))
                    return
        if info is None:
            info = ExitInfo.lost()
        if self._watched.get(task_id) is w:
            del self._watched[task_id]
        if not w.done.done():
            w.done.set_result(info)
        try:
            self.on_exit(task_id, info)
        except Exception:
            log.exception("on_exit callback failed for task %s", task_id)

    # ------------------------------------------------------------------ start

    def check(
        self, argv: Sequence[str], env: Sequence[str], workdir: str, netns: str
    ) -> dict[str, str]:
        """What can be checked before anything runs: iproute2, the namespace, the environment,
        the command and the working directory; StartError with the first reason it can't start,
        else the task's full environment."""
        if self.enter_netns:
            if self.ip is None:
                raise StartError("the 'ip' command (iproute2) is not installed on this host")
            self.check_netns(netns)
        full_env = build_env(env)
        check_command(argv, full_env["PATH"])
        if not os.path.isdir(workdir or "/"):
            raise StartError(f"working directory {workdir!r} does not exist")
        return full_env

    def check_netns(self, netns: str) -> None:
        """StartError unless `netns` names a network namespace under the netns directory."""
        if not netns or "/" in netns or not (self.netns_dir / netns).exists():
            raise StartError(f"network namespace {netns!r} does not exist")

    async def start(
        self, task_id: str, argv: Sequence[str], env: Sequence[str], workdir: str, netns: str
    ) -> int:
        """Start `argv` in the network namespace `netns` (a name under /run/netns) with the
        base environment plus `env` ("K=V") in `workdir` ("" = "/"). Returns the task's PID
        (the command's own: `ip netns exec` execs in place), once the shim has spawned it.

        Raises StartError when it can't start: namespace, working directory or executable
        missing (checked before anything runs) or the shim failing. An exec failure that only
        `ip netns exec` can see arrives as an exit with start_failed=True and the reason.
        Idempotent: a task that runs (or is being started) gives its PID. Starting a task
        whose directory holds an ended run starts it again (logs are appended to).
        """
        task_dir = self.task_dir(task_id)
        w = self._watched.get(task_id)
        if w is not None:
            return w.task_pid
        pending = self._starting.get(task_id)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        # A live shim we do not watch yet (start() before adopt()): take it over.
        if task_dir.is_dir() and self._adopt_one(loop, task_id).running:
            return self._watched[task_id].task_pid
        # The start runs as its own task: cancelling the caller must not leave a shim that
        # nobody watches (and a retry would then start a second one).
        job = asyncio.ensure_future(
            self._start(loop, task_id, task_dir, argv, env, workdir or "/", netns)
        )
        self._starting[task_id] = job

        def finished(j: asyncio.Future[int]) -> None:
            self._starting.pop(task_id, None)
            if not j.cancelled():
                j.exception()  # retrieved: the caller may have been cancelled meanwhile

        job.add_done_callback(finished)
        return await asyncio.shield(job)

    async def _start(
        self,
        loop: asyncio.AbstractEventLoop,
        task_id: str,
        task_dir: Path,
        argv: Sequence[str],
        env: Sequence[str],
        workdir: str,
        netns: str,
    ) -> int:
        full_env = self.check(argv, env, workdir, netns)
        task_dir.mkdir(parents=True, exist_ok=True)
        for name in (shim.SHIM_FILE, shim.EXIT_FILE):
            (task_dir / name).unlink(missing_ok=True)
        atomic_write(
            task_dir / SPEC_FILE,
            json.dumps({"argv": list(argv), "env": list(env), "workdir": workdir, "netns": netns}),
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        own = os.open(task_dir / shim.SHIM_LOG_FILE, flags, 0o640)
        r, wfd = os.pipe2(os.O_CLOEXEC)
        cmd = [self.python, "-I", "-S", str(SHIM_PATH), str(task_dir), str(wfd), "--"]
        if self.enter_netns:
            assert self.ip is not None  # checked
            cmd += [self.ip, "netns", "exec", netns]
        cmd += argv
        try:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=own,
                stderr=own,
                env=full_env,
                cwd=workdir,
                pass_fds=(wfd,),
                start_new_session=True,  # not in the agent's group/session: survives it
            )
        except OSError as e:
            os.close(r)
            raise StartError(f"cannot start the task's shim ({self.python}): {e}") from e
        finally:
            for fd in (own, wfd):
                os.close(fd)
        try:
            report = await asyncio.wait_for(_read_all(loop, r), SHIM_REPORT_TIMEOUT_S)
        except TimeoutError:
            popen.kill()  # the shim itself (own session: nothing else is signalled)
            popen.wait()
            raise StartError(
                f"the task's shim did not report within {SHIM_REPORT_TIMEOUT_S:.0f} s"
            ) from None
        finally:
            os.close(r)
        text = report.decode(errors="replace").strip()
        if text.startswith("ok "):
            task_pid = int(text[3:])
            self._watch(loop, task_id, task_pid, popen.pid, popen)
            return task_pid
        await loop.run_in_executor(None, popen.wait)
        if text.startswith("err "):
            raise StartError(text[4:])
        tail = _tail(task_dir / shim.SHIM_LOG_FILE)
        raise StartError(f"the task's shim failed (status {popen.returncode}): {tail}")

    # ------------------------------------------------------------------ stop

    async def stop(self, task_id: str, timeout: float = 10.0) -> ExitInfo | None:
        """SIGTERM to the task's process group (through its shim), SIGKILL to the group after
        `timeout` s; returns the exit once the task is gone (also delivered to on_exit).
        None if this runner does not watch the task (not running, or not adopted)."""
        pending = self._starting.get(task_id)
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        w = self._watched.get(task_id)
        if w is None:
            return None
        self._signal(w, signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(w.done), timeout)
        except TimeoutError:
            log.info("task %s did not stop within %.1f s: SIGKILL", task_id, timeout)
        w = self._watched.get(task_id, w)
        self._signal(w, signal.SIGKILL)
        return await asyncio.shield(w.done)

    def _signal(self, w: _Watched, sig: int) -> None:
        if w.done.done():
            return
        try:
            if w.shim_pid is None:
                # The shim died: the pidfd is the task's own. Signal the leader through it
                # (immune to PID reuse), then the rest of its group.
                signal.pidfd_send_signal(w.pidfd, sig)
                os.killpg(w.task_pid, sig)
            elif sig != signal.SIGKILL:
                # Through the shim's pidfd (immune to PID reuse); it forwards to the group.
                signal.pidfd_send_signal(w.pidfd, sig)
            else:
                # The shim is alive (its pidfd has not fired), so it has not reaped the task's
                # leader yet and the group ID still names the task's group.
                os.killpg(w.task_pid, sig)
        except ProcessLookupError:
            pass

    # ------------------------------------------------------------------ housekeeping

    def remove(self, task_id: str) -> None:
        """Delete the task's directory (logs included). Refuses while the task runs."""
        d = self.task_dir(task_id)
        if task_id in self._watched or task_id in self._starting:
            raise RuntimeError(f"task {task_id} is running; stop it first")
        rec = _read_json(d / shim.SHIM_FILE)
        if rec is not None and _alive(rec.get("shim_pid"), rec.get("shim_start")):
            raise RuntimeError(f"task {task_id} is running (not adopted); stop it first")
        shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        """Stop watching (tasks keep running; a new Runner can adopt them)."""
        loop = asyncio.get_running_loop()
        for w in self._watched.values():
            loop.remove_reader(w.pidfd)
            os.close(w.pidfd)
            if w.popen is not None:
                w.popen.returncode = -1  # detached on purpose: no "still running" warning
            if not w.done.done():
                w.done.cancel()
        self._watched.clear()


async def _read_all(loop: asyncio.AbstractEventLoop, fd: int) -> bytes:
    """Read the pipe until EOF without blocking the loop."""
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    eof: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if data:
            chunks.append(data)
        else:
            loop.remove_reader(fd)
            if not eof.done():
                eof.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await eof
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace").strip() or "(no output)"
    except OSError:
        return "(no output)"
