"""Child processes: free loopback ports, and daemons started, awaited and stopped by PID.

Tests and `ovctl dev` start real daemons (etcd, ovnet-manager, agents) and must never leave one
behind, nor touch a process they did not start. So every child is tracked by its own PID,
stopped with SIGTERM and then SIGKILL, and (for tests) started under ``setpriv --pdeathsig
KILL`` where available, so that it dies with the test run even if pytest itself is killed
before its finalizers run. `ovctl dev up` starts its daemons with ``die_with_parent=False``:
they must outlive the command that started them.

Processes known only by PID are checked with osutil.proc (PID and start time, so a reused PID
is never taken for ours).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from osutil.proc import pid_alive

LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return ``count`` distinct ports that were free on ``host`` a moment ago.

    All sockets are held open until every port is chosen, so the ports differ from each other;
    another process may still take one before the caller binds it, which on a test machine
    is rare enough to accept.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = LOOPBACK) -> int:
    """Return one port that was free on ``host`` a moment ago."""
    return free_ports(1, host)[0]


def free_port_pair(host: str = LOOPBACK) -> int:
    """A port P such that P and P + 1 were both free on ``host`` a moment ago: a manager's
    control listener and its join listener, which agents look for at the port + 1."""
    for _ in range(100):
        (port,) = free_ports(1, host)
        if port >= 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, port + 1))
        except OSError:
            continue
        return port
    raise OSError(f"no two consecutive free ports on {host}")


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file, or a note that it does not exist yet."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _pdeathsig_prefix() -> list[str]:
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


# The kernel sends the death signal when the *thread* that forked the child exits, not the
# process. Tests restart daemons from asyncio.to_thread workers, which exit when their event
# loop closes; so every child is forked by this one thread, which lives as long as the process.
_forker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="procs-forker")


class ProcessError(RuntimeError):
    """A managed process failed to start or to become ready; the message carries its log tail."""


class ManagedProcess:
    """A daemon started by a test, with its stdout and stderr appended to ``log_path``.

    ``env`` is added on top of the test process's environment (so a test only names what it
    changes). The process may be started again after ``stop()`` or ``kill()``; the log keeps
    every run, which is what one wants to read after a restart test fails.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path | str,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        die_with_parent: bool = True,
    ) -> None:
        """``die_with_parent=False`` leaves out the death signal: for daemons that must keep
        running after the process that started them exits (`ovctl dev up`)."""
        if not argv:
            raise ValueError("ManagedProcess needs a command line, got an empty argv")
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ProcessError(f"{self.argv[0]} has not been started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status of the last run, or None while it runs or before the first start."""
        return None if self._proc is None else self._proc.poll()

    def start(self) -> ManagedProcess:
        if self.running:
            raise ProcessError(f"{self.argv[0]} is already running as PID {self.pid}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = _forker.submit(
                subprocess.Popen,
                (_pdeathsig_prefix() if self.die_with_parent else []) + self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                # Its own session: a Ctrl-C aimed at pytest must not kill the daemon before the
                # fixture's teardown has had the chance to stop it in order.
                start_new_session=True,
            ).result()
        return self

    def wait_port(self, host: str, port: int, timeout: float = 15.0) -> None:
        """Wait until ``host:port`` accepts TCP connections; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise ProcessError(
                    f"{self.argv[0]} exited with status {self.returncode} before "
                    f"{host}:{port} accepted connections; log tail:\n{self.log_tail()}"
                )
            if port_accepts(host, port):
                return
            if time.monotonic() >= deadline:
                raise ProcessError(
                    f"{self.argv[0]} (PID {self.pid}) did not accept connections on "
                    f"{host}:{port} within {timeout:.1f}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for a process that is expected to exit by itself; return its exit status."""
        if self._proc is None:
            raise ProcessError(f"{self.argv[0]} has not been started")
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ProcessError(
                f"{self.argv[0]} (PID {self.pid}) still running after {timeout}s; "
                f"log tail:\n{self.log_tail()}"
            ) from None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; return the exit status."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait()
        return self._proc.returncode

    def kill(self) -> int | None:
        """SIGKILL at once, as a crash would; return the exit status."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._signal(signal.SIGKILL)
            self._proc.wait()
        return self._proc.returncode

    def log_tail(self, n: int = 40) -> str:
        return tail(self.log_path, n)

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        # It may exit between poll() and here; that is the outcome we wanted anyway.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, sig)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- Processes known only by PID (started by another process, or by the kernel's reparenting) --


def _reap(pid: int) -> None:
    # Our own children stay zombies until waited for; anyone else's are not ours to wait for.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def terminate_pids(
    procs: Mapping[int, int | None], grace: float = 5.0, sig: signal.Signals = signal.SIGTERM
) -> list[int]:
    """Stop processes named by PID -> start time (None: any): ``sig``, then SIGKILL after
    ``grace`` seconds. Returns the PIDs that were still alive and got signalled.

    A PID whose start time no longer matches is another process now and is left alone.
    """
    targets = {pid: st for pid, st in procs.items() if pid != os.getpid() and pid_alive(pid, st)}
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while True:
        for pid in targets:
            _reap(pid)
        alive = {pid: st for pid, st in targets.items() if pid_alive(pid, st)}
        if not alive:
            return list(targets)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(pid_alive(pid, st) for pid, st in alive.items()) and time.monotonic() < deadline:
        for pid in alive:
            _reap(pid)
        time.sleep(0.02)
    for pid in alive:
        _reap(pid)
    return list(targets)
