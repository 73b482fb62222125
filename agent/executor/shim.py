"""The parent of one task: it outlives the agent, keeps its output and records how it ended.

The agent starts this file as a script (``python -I -S shim.py TASK_DIR STATUS_FD -- ARGV...``)
in a new session, with the task's environment and working directory, and ``shim.log`` (for
the shim's own complaints, a traceback say) as stdout and stderr. Run by path, with the
standard library and `osutil` only, it starts in ~10 ms and does not depend on the agent's
package (or its dependencies) being importable. It:

1. spawns ARGV (normally ``ip netns exec <sandbox> CMD...``, or an attached ``podman run``) in
   a process group of its own, so that a stop reaches everything the task forked, and nothing
   else, with a pipe as its stdout and another as its stderr;
2. writes ``shim.json`` (its own and the task's PID with /proc start times, to recognise PID
   reuse) and reports ``ok <pid>`` (or ``err <text>``) on STATUS_FD;
3. forwards SIGTERM/SIGINT/SIGHUP to the task's process group;
4. copies both pipes, line by line, into ``output.log``, each line stamped with the time the
   shim read its end (see `LineWriter`), so that the output is kept while the agent is down
   and each line has its own time;
5. once the task's leader exits, kills and reaps what is left of it (its process group, and,
   as a child subreaper, any orphan it left, even in another group or session: like a
   container's init exiting), reads the pipes to their end, writes ``exit.json`` atomically
   and exits.

``output.log`` is in Kubernetes' CRI container log format, one record a line::

    2026-12-04T21:55:02.123456789Z stdout F hello
    2026-12-04T21:55:02.123501234Z stderr P first 16 KiB of a longer line...

(RFC 3339 time in UTC with nanoseconds, the stream, F for a full line or P for a piece of one:
a line longer than MAX_LINE bytes is cut into P pieces ended by an F, and an unterminated last
line is a P; the content follows, bytes as the task wrote them, non-UTF-8 included.) One file
for both streams keeps their order as the shim read them, which two files cannot tell. Tasks
started by an older agent wrote ``stdout.log`` and ``stderr.log`` directly (the task's own
descriptors, no times): logs.LogTailer still reads those.

Because this process, not the agent, is the task's parent, the agent may die and come back:
the exit status and the output are on disk, and a new agent watches the shim through a pidfd.
(If the shim itself is killed with SIGKILL, the task's next write fails with EPIPE or SIGPIPE,
as a container's does when its shim dies.)

The pure helpers (exit descriptions, recognising ``ip netns exec``'s own failures, the line
writer) live here so that the shim needs nothing else of the agent; the runner and the log
tailer import them from this module. Of ovnet it imports only `osutil.proc` and `osutil.files`,
which import nothing but `os`: run by path, it puts the directory holding `osutil` (two levels
above this file's package) first on its path itself, as `-I` leaves the path without it.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from osutil.files import atomic_write
from osutil.proc import proc_start_time

SHIM_FILE = "shim.json"
EXIT_FILE = "exit.json"
LOG_FILE = "output.log"
# The shim's own stdout and stderr (the runner opens it): never the task's output.
SHIM_LOG_FILE = "shim.log"
# What tasks of older agents wrote directly; read by the log tailer, written no more.
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
# A line longer than this is cut into P records of this size (containerd's default
# max_container_log_line_size), so that neither the shim nor a reader holds a line unbounded.
MAX_LINE = 16 * 1024
# How much of the task's stderr is kept in memory to explain a failed start: the first bytes
# (`ip netns exec`) and the last (podman).
STDERR_KEPT = 4096
# After the task's leader exited and the rest was killed: how long the pipes may take to end
# (normally at once: nothing is left to hold them open).
DRAIN_S = 2.0

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


class LineWriter:
    """Cuts a task's output into CRI log records (see the module docstring).

    Pure (bytes in, bytes out, the time given), so that splitting, long lines and the last
    unterminated line are tested without processes. `feed` returns the records of every line
    that `data` completes, all stamped `now_ns`: the shim reads as soon as the task writes, so
    a line's time is when its end was read, within a scheduling delay of its write. What is
    left of a line waits for its end, up to `max_line` bytes: longer, it goes out in P pieces.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._rest: dict[bytes, bytes] = {}
        self._second = -1
        self._date = b""

    def stamp(self, now_ns: int) -> bytes:
        """RFC 3339 in UTC with nanoseconds, fixed width as CRI runtimes write it
        ("2026-12-04T21:55:02.123456789Z"); the part up to the second is formatted once a
        second, not per line."""
        second, nanos = divmod(now_ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return b"%s.%09dZ" % (self._date, nanos)

    def _cut(self, head: bytes, line: bytes) -> tuple[list[bytes], bytes]:
        """P records for `line` beyond its last `max_line` bytes (or fewer), and the rest."""
        out, i = [], 0
        while len(line) - i > self.max_line:
            out.append(head + b"P " + line[i : i + self.max_line] + b"\n")
            i += self.max_line
        return out, line[i:]

    def feed(self, stream: bytes, data: bytes, now_ns: int) -> bytes:
        """Records for what `data`, read from `stream` (b"stdout" or b"stderr"), completes."""
        *lines, rest = (self._rest.get(stream, b"") + data).split(b"\n")
        head = self.stamp(now_ns) + b" " + stream + b" "
        out: list[bytes] = []
        for line in lines:
            pieces, last = self._cut(head, line)
            out += pieces
            out.append(head + b"F " + last + b"\n")
        pieces, self._rest[stream] = self._cut(head, rest)
        out += pieces
        return b"".join(out)

    def close(self, stream: bytes, now_ns: int) -> bytes:
        """The stream ended: its unterminated last line, if any, as a P record (as containerd
        writes it: a reader adds no newline the task did not write)."""
        rest = self._rest.pop(stream, b"")
        return self.stamp(now_ns) + b" " + stream + b" P " + rest + b"\n" if rest else b""


class TaskOutput:
    """The task's stdout and stderr pipes, copied into its log as they are read, with the
    first and last STDERR_KEPT bytes of its stderr kept to explain a failed start."""

    def __init__(self, log_fd: int, out_r: int, err_r: int, max_line: int = MAX_LINE) -> None:
        self.log_fd = log_fd
        self.streams = {out_r: b"stdout", err_r: b"stderr"}
        self.writer = LineWriter(max_line)
        self.stderr_head = b""
        self.stderr_tail = b""
        for fd in self.streams:
            os.set_blocking(fd, False)

    def read(self, fd: int) -> bool:
        """Copy what pipe `fd` holds into the log; False (the pipe closed) at its end."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        stream = self.streams[fd]
        if not data:
            self._end(fd)
            return False
        if stream == b"stderr":
            if len(self.stderr_head) < STDERR_KEPT:
                self.stderr_head += data[: STDERR_KEPT - len(self.stderr_head)]
            self.stderr_tail = (self.stderr_tail + data)[-STDERR_KEPT:]
        self._write(self.writer.feed(stream, data, time.time_ns()))
        return True

    def _end(self, fd: int) -> None:
        stream = self.streams.pop(fd)
        _quietly(os.close, fd)
        self._write(self.writer.close(stream, time.time_ns()))

    def _write(self, records: bytes) -> None:
        """Append to the log. A failing write (a full disk) loses output, not the task: the
        shim must live on to reap it and record its exit."""
        view = memoryview(records)
        while view:
            try:
                view = view[os.write(self.log_fd, view) :]
            except OSError:
                return

    def drain(self, timeout: float) -> None:
        """Read the pipes to their end (the task is gone, so at once unless something outside
        its group and orphans still holds them: then for `timeout` s), then close the log."""
        poller = select.poll()
        for fd in self.streams:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while self.streams and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                if not self.read(fd):
                    poller.unregister(fd)
        for fd in list(self.streams):
            self._end(fd)
        _quietly(os.close, self.log_fd)


def _wake_on_sigchld() -> int:
    """A pipe that becomes readable when a child exits (or any handled signal arrives), so
    that one poll waits for the task's output and its end alike."""
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # a handler: the wakeup fd is written
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    return r


def _drain_wakeups(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except OSError:  # BlockingIOError: emptied
        pass


def _reap(task_pid: int) -> int | None:
    """Reap every child that has exited; the leader's wait status if it was among them."""
    found = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # pragma: no cover - the task is our child until reaped
            return 0 if found is None else found
        if pid == 0:
            return found
        if pid == task_pid:
            found = status


def _pump(task_pid: int, output: TaskOutput, wake_r: int) -> int:
    """Copy the task's output into its log until its leader exits; its wait status. Other
    children (orphans reparented to the subreaper) are reaped as they exit."""
    poller = select.poll()
    for fd in (*output.streams, wake_r):
        poller.register(fd, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd != wake_r:
                if not output.read(fd):
                    poller.unregister(fd)
                continue
            _drain_wakeups(wake_r)
            status = _reap(task_pid)
            if status is not None:
                return status


def _spawn(log_fd: int, argv: list[str]) -> tuple[TaskOutput, int]:
    """Start ARGV with a pipe as its stdout and another as its stderr; OSError if it can't."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        # posix_spawn reports exec failure as an exception (no fork-and-pipe dance) and is
        # fast. The task gets default dispositions for what Python ignores (SIGPIPE, SIGXFSZ)
        # and an empty signal mask, like any freshly exec'd program would expect.
        pid = os.posix_spawn(
            argv[0],
            argv,
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)],
            setpgroup=0,
            setsigmask=(),
            setsigdef=_DEFAULT_IN_TASK,
        )
    except OSError:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return TaskOutput(log_fd, out_r, err_r), pid


def _start_failed(task_dir: str, status_fd: int, error: str) -> int:
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
    wake_r = _wake_on_sigchld()
    _become_subreaper()

    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        log_fd = os.open(os.path.join(task_dir, LOG_FILE), flags, 0o640)
    except OSError as e:
        return _start_failed(task_dir, status_fd, f"cannot open the task's log: {e}")
    started = time.monotonic()
    try:
        output, task_pid = _spawn(log_fd, argv)
    except OSError as e:
        os.close(log_fd)
        return _start_failed(task_dir, status_fd, f"exec: {argv[0]!r}: {e.strerror}")

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

    status = _pump(task_pid, output, wake_r)
    elapsed = time.monotonic() - started
    _end_the_rest(task_pid)
    output.drain(DRAIN_S)
    # `ip netns exec` fails before the task writes anything: the start of its stderr.
    # podman may fail after a long pull, or a while after the start: its message ends it.
    podman = _is_podman(argv[0])
    head = output.stderr_tail if podman else output.stderr_head
    write_json_atomic(
        os.path.join(task_dir, EXIT_FILE), exit_record(status, elapsed, head, argv0=argv[0])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
