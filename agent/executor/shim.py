"""The parent of one task: it outlives the agent and records how the task ended.

The agent starts this file as a script (``python -I -S shim.py TASK_DIR STATUS_FD -- ARGV...``)
in a new session, with the task's environment, working directory and log files as stdin/out/err.
Run by path, with the standard library and `osutil` only, it starts in ~10 ms and does not
depend on the agent's package (or its dependencies) being importable. It:

1. spawns ARGV (normally ``ip netns exec <sandbox> CMD...``) in a process group of its own, so
   that a stop reaches everything the task forked, and nothing else;
2. writes ``shim.json`` (its own and the task's PID with /proc start times, to recognise PID
   reuse) and reports ``ok <pid>`` (or ``err <text>``) on STATUS_FD;
3. forwards SIGTERM/SIGINT/SIGHUP to the task's process group;
4. waits for the task, then kills and reaps what is left of it (its process group, and, as a
   child subreaper, any orphan it left, even in another group or session: like a container's
   init exiting), writes ``exit.json`` atomically and exits.

Because this process, not the agent, is the task's parent, the agent may die and come back:
the exit status is on disk, and a new agent watches the shim through a pidfd.

The pure helpers (exit descriptions, recognising ``ip netns exec``'s own failures) live here so
that the shim needs nothing else of the agent; the runner imports them from this module. Of
ovnet it imports only `osutil.proc` and `osutil.files`, which import nothing but `os`: run by
path, it puts the directory holding `osutil` (two levels above this file's package) first on
its path itself, as `-I` leaves the path without it.
"""

from __future__ import annotations

import os
import signal
import sys
import time

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from osutil.files import atomic_write
from osutil.proc import proc_start_time

SHIM_FILE = "shim.json"
EXIT_FILE = "exit.json"
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"

# An exit this soon after the start that looks like `ip netns exec` reporting its own failure
# is taken as "the command could not start"; later, the same text is the task's own business.
STARTUP_WINDOW_S = 2.0

# iproute2 (lib/exec.c): execvp failure -> 'exec of "CMD" failed: REASON' and _exit(1).
_EXEC_OF, _FAILED = b'exec of "', b'" failed: '
# ip/ipnetns.c: failures before the exec (namespace missing, mounts) -> exit 255.
_IP_NETNS_ERRORS = (
    b"Cannot open network namespace",
    b"setting the network namespace",
    b"unshare failed",
    b'"mount --make-rslave /" failed',
    b"mount --make-rslave",
    b"mount of /sys failed",
    b"Bind /etc/netns/",
    b"Failed to ",
)


# Python ignores SIGPIPE and SIGXFSZ, and the shim catches these three: the task must not
# inherit any of that.
_DEFAULT_IN_TASK = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(exit_code: int | None, signum: int | None) -> str:
    """Human text for how a process ended, as `ovctl` shows it in a task's status."""
    if signum is not None:
        return f"killed by signal {signum} ({signal_name(signum)})"
    if exit_code is None:
        return "exit status unknown"
    return f"exit status {exit_code}"


def ip_netns_exec_failure(exit_code: int | None, stderr_head: bytes) -> str | None:
    """If this exit is `ip netns exec` failing to run the command, say why; else None.

    `ip netns exec` execs the command in its own process, so an exec failure shows up only as
    an exit status (1, or 255 for namespace errors) and a message on the task's stderr. Both
    must match: a command that merely exits 1 is not a start failure.
    """
    first = stderr_head.split(b"\n", 1)[0].strip()
    if exit_code == 1 and first.startswith(_EXEC_OF) and _FAILED in first:
        cmd, _, why = first[len(_EXEC_OF) :].rpartition(_FAILED)
        return f"exec: {cmd.decode(errors='replace')!r}: {why.decode(errors='replace')}"
    if exit_code == 255 and first.startswith(_IP_NETNS_ERRORS):
        return "ip netns exec: " + first.decode(errors="replace")
    return None


def podman_failure(exit_code: int | None, stderr_head: bytes) -> str | None:
    """If this exit of `podman run` is podman's own failure, podman's message; else None.

    podman exits 125 when it fails itself (image not known, a bad option, a pull that failed),
    126 when the command in the image cannot be invoked and 127 when it is not there, and says
    why on stderr as "Error: ...". The container's own exit statuses pass through unchanged.
    """
    if exit_code not in (125, 126, 127):
        return None
    return podman_message(stderr_head.decode(errors="replace"))


def podman_message(stderr: str) -> str | None:
    """podman's own words on a failure ("podman: WHY"), from the last "Error: WHY" line of
    its stderr; None when it said none."""
    for line in reversed(stderr.split("\n")):
        if line.startswith("Error: "):
            return "podman: " + line[len("Error: ") :].strip()
    return None


def _is_podman(argv0: str) -> bool:
    return os.path.basename(argv0) == "podman"


def startup_failure(argv0: str, exit_code: int | None, stderr_head: bytes) -> str | None:
    """Why the task never ran, read from how its launcher (podman, or `ip netns exec`)
    failed; None when the exit is the task's own."""
    if _is_podman(argv0):
        return podman_failure(exit_code, stderr_head)
    return ip_netns_exec_failure(exit_code, stderr_head)


def exit_record(
    status: int,
    elapsed_s: float,
    stderr_head: bytes,
    *,
    now_ms: int | None = None,
    argv0: str = "ip",
) -> dict[str, object]:
    """The contents of exit.json for a wait status (pure, so it can be tested without a child)."""
    if os.WIFSIGNALED(status):
        code, sig = None, os.WTERMSIG(status)
    else:
        code, sig = os.WEXITSTATUS(status), None
    error = None
    if elapsed_s < STARTUP_WINDOW_S or _is_podman(argv0):
        error = startup_failure(argv0, code, stderr_head)
    return {
        "exit_code": code,
        "signal": sig,
        "error": error or describe_exit(code, sig),
        "start_failed": error is not None,
        "finished_ms": now_ms if now_ms is not None else int(time.time() * 1000),
    }


def write_json_atomic(path: str, data: object) -> None:
    """exit.json: readers see the old file or the whole new one. No fsync: the record must
    survive an agent crash, not a power cut, and fsync costs ms."""
    import json  # not at module level: the shim's start must stay fast (~4 ms with re)

    atomic_write(path, json.dumps(data))


def ints_json(data: dict[str, int | None]) -> str:
    """JSON for a flat record of integers, without importing json at the shim's start."""
    items = (f'"{k}": {"null" if v is None else int(v)}' for k, v in data.items())
    return "{" + ", ".join(items) + "}"


def _quietly(fn: object, *args: int) -> None:
    """Call fn(*args), ignoring OSError (a process already gone, a reader that left).
    (contextlib.suppress would do, at 1 ms of the shim's start.)"""
    try:  # noqa: SIM105
        fn(*args)  # type: ignore[operator]
    except OSError:
        pass


def _report(fd: int, text: str) -> None:
    # The agent may be gone by now (it died while starting us): the task runs on regardless.
    _quietly(os.write, fd, text.encode(errors="replace") + b"\n")  # type: ignore[arg-type]
    _quietly(os.close, fd)


def _become_subreaper() -> None:
    """Orphans of the task (daemons it forked, children of a dead leader) become the shim's
    children instead of init's, so that the shim can end and reap every one of them: when the
    shim exits, nothing of the task is left. ctypes costs ~3 ms of start time."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):  # pragma: no cover - not Linux, or no libc
        pass


def _wait_for(task_pid: int) -> int:
    """Reap children until the task's leader exits; its wait status."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # pragma: no cover - the task is our child until reaped
            return 0
        if pid == task_pid:
            return status


def _children() -> list[int]:
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _end_the_rest(task_pid: int, timeout: float = 5.0) -> None:
    """The task's leader is gone: like a container whose init exits, whatever it left running
    (its process group, and any orphan reparented to us) is killed and reaped."""
    _quietly(os.killpg, task_pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid == 0:
            for child in _children():  # our unreaped children: their PIDs are still theirs
                _quietly(os.kill, child, signal.SIGKILL)
            time.sleep(0.005)


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        print("usage: shim.py TASK_DIR STATUS_FD -- ARGV...", file=sys.stderr)
        return 2
    task_dir, status_fd, argv = args[0], int(args[1]), args[3:]
    os.set_inheritable(status_fd, False)

    task_pid = 0
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if task_pid:
            _quietly(os.killpg, task_pid, signum)
        else:
            pending.append(signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    _become_subreaper()

    try:
        stderr_start = os.fstat(2).st_size
    except OSError:
        stderr_start = 0
    started = time.monotonic()
    try:
        # posix_spawn reports exec failure as an exception (no fork-and-pipe dance) and is
        # fast. The task gets default dispositions for what Python ignores (SIGPIPE, SIGXFSZ)
        # and an empty signal mask, like any freshly exec'd program would expect.
        task_pid = os.posix_spawn(
            argv[0],
            argv,
            os.environ,
            setpgroup=0,
            setsigmask=(),
            setsigdef=_DEFAULT_IN_TASK,
        )
    except OSError as e:
        error = f"exec: {argv[0]!r}: {e.strerror}"
        write_json_atomic(
            os.path.join(task_dir, EXIT_FILE),
            {
                "exit_code": None,
                "signal": None,
                "error": error,
                "start_failed": True,
                "finished_ms": int(time.time() * 1000),
            },
        )
        _report(status_fd, "err " + error)
        return 1

    atomic_write(
        os.path.join(task_dir, SHIM_FILE),
        ints_json(
            {
                "shim_pid": os.getpid(),
                "shim_start": proc_start_time(os.getpid()),
                "task_pid": task_pid,
                "task_start": proc_start_time(task_pid),
                "started_ms": int(time.time() * 1000),
            }
        ),
    )
    _report(status_fd, f"ok {task_pid}")
    for signum in pending:
        forward(signum, None)

    status = _wait_for(task_pid)
    elapsed = time.monotonic() - started
    _end_the_rest(task_pid)

    # `ip netns exec` fails before the task writes anything: the start of this run's stderr.
    # podman may fail after a long pull, or a while after the start: its message ends it.
    podman = _is_podman(argv[0])
    head = b""
    if podman or elapsed < STARTUP_WINDOW_S:
        try:
            with open(os.path.join(task_dir, STDERR_FILE), "rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(stderr_start, end - 4096) if podman else stderr_start)
                head = f.read(4096)
        except OSError:
            pass
    write_json_atomic(
        os.path.join(task_dir, EXIT_FILE), exit_record(status, elapsed, head, argv0=argv[0])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
