"""The executor seam: how the agent's daemon reaches a task runtime, and nothing more.

As swarmkit's `exec.Executor`/`Controller`, the daemon never knows how a task runs (a process
under a shim today, a podman container next): it hands the executor a `TaskSpec` and drives the
task's life through the `Executor` methods below. What it reads back is runtime-neutral: whether
a task runs, how it ended (`ExitInfo`), its new output (`LogChunk`). No PIDs of shims, no state
files, no process groups cross this line; the one number that does, `Running.pid`, is the task's
main process as the host sees it, reported to the manager for operators (a container has one
too), and never used by the daemon to act on the task.

Every method is called from the event loop's thread. Task IDs are the manager's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agent.executor.logs import LogChunk
from agent.executor.shim import describe_exit


class StartError(Exception):
    """The task could not be started; the message says why, for the task's status."""


@dataclass(frozen=True)
class TaskSpec:
    """What the executor needs to run one task: the manager's spec plus the sandbox to join."""

    task_id: str
    command: tuple[str, ...]
    env: tuple[str, ...] = ()  # "KEY=VALUE" items
    workdir: str = "/"
    netns: str = ""  # the name of the task's sandbox network namespace (under /run/netns)
    # An OCI image: the task runs as a container of it (empty command: the image's own).
    image: str = ""


@dataclass(frozen=True)
class Exec:
    """How to run a command inside a running task (its health check): the words to put before
    the command's argv, and the environment they need (None: the agent's own)."""

    prefix: tuple[str, ...]
    env: Mapping[str, str] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ExitInfo:
    """How a task ended. `error` is always human text ("exit status 3", "killed by signal 9
    (SIGKILL)", "exec: 'nosuchcmd': No such file or directory"); `start_failed` says the
    command never ran (the runtime could not exec it), which the controller reports as a start
    failure rather than an exit."""

    exit_code: int | None
    signal: int | None
    error: str
    start_failed: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.signal is None

    @classmethod
    def from_record(cls, rec: dict[str, object]) -> ExitInfo:
        """From a record read back from disk (any field may be missing or of a wrong type)."""
        code, sig = rec.get("exit_code"), rec.get("signal")
        code = code if isinstance(code, int) else None
        sig = sig if isinstance(sig, int) else None
        error = rec.get("error")
        return cls(
            exit_code=code,
            signal=sig,
            error=error if isinstance(error, str) and error else describe_exit(code, sig),
            start_failed=bool(rec.get("start_failed", False)),
        )

    @classmethod
    def lost(cls, why: str = "the task's shim died") -> ExitInfo:
        return cls(None, None, f"exit status unknown: {why}")


@dataclass(frozen=True)
class Running:
    """A task that runs: `pid` is its main process as the host sees it (0: unknown), for the
    RUNNING status only."""

    pid: int = 0


@dataclass(frozen=True)
class Adopted:
    """What `Executor.adopt` found of one task after an agent restart: running (and watched
    again: its exit will come through `wait`), or ended while no agent watched (`exit`, None
    when it never got as far as starting)."""

    task_id: str
    running: Running | None = None
    exit: ExitInfo | None = None


class Executor(Protocol):
    """The task runtime as the daemon sees it (see the module docstring)."""

    def adopt(self) -> dict[str, Adopted]:
        """Find the tasks an earlier agent left: watch the running ones again, say how the
        others ended. Called once, first, from the event loop."""
        ...

    async def prepare(self, spec: TaskSpec) -> None:
        """Check and set up what the task needs before it can start (its command, working
        directory, sandbox); raises StartError with the reason when it cannot run."""
        ...

    async def start(self, task_id: str) -> Running:
        """Start a prepared task; raises StartError. Idempotent: a task that runs is left be."""
        ...

    async def wait(self, task_id: str) -> ExitInfo | None:
        """How the task ended, once it has; None if the executor does not watch it (never
        started, or ended before adopt). Cancelled when the executor is closed."""
        ...

    async def shutdown(self, task_id: str, timeout: float) -> ExitInfo | None:
        """Stop the task gracefully (SIGTERM for a process), forcefully after `timeout` s;
        returns once it is gone (None if it was not running)."""
        ...

    async def terminate(self, task_id: str) -> ExitInfo | None:
        """Stop the task now, without grace."""
        ...

    def exec_in(self, task_id: str, netns_path: str) -> Exec:
        """How a command runs inside the task (`netns_path`: its sandbox's namespace file)."""
        ...

    def remove(self, task_id: str) -> None:
        """Delete what is left of an ended task (its files and logs). Raises RuntimeError
        while it runs, OSError when the host refuses."""
        ...

    def tasks(self) -> list[str]:
        """Every task the executor holds anything of (running or not), sorted."""
        ...

    def read_logs(self, task_id: str) -> list[LogChunk]:
        """Output the task wrote since the last `commit_logs` (empty: nothing new)."""
        ...

    def commit_logs(self, task_id: str) -> None:
        """The chunks last read were delivered: do not return them again."""
        ...

    def close(self) -> None:
        """Stop watching; tasks keep running (a new executor adopts them)."""
        ...
