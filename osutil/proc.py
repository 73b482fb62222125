"""Process identity and liveness from /proc.

A PID alone may be reused by the time a later command acts on it; the pair (PID, start time)
names one process for good, so state files record both and every liveness check compares both.
A zombie is dead: it only waits for its parent to reap it.
"""

from __future__ import annotations

import os

# Only `os` is imported (not typing, not contextlib): the task shim imports this module on its
# start path, where every import is milliseconds before the task runs.


class ProcStat(tuple[str, int]):
    """(state, start_time): state is one letter (R, S, D, Z zombie, X dead, ...), start_time
    is in clock ticks since boot (field 22 of /proc/PID/stat). A tuple, as a NamedTuple would
    be, without importing typing."""

    __slots__ = ()

    def __new__(cls, state: str, start_time: int) -> ProcStat:
        return tuple.__new__(cls, (state, start_time))

    @property
    def state(self) -> str:
        return self[0]

    @property
    def start_time(self) -> int:
        return self[1]


def _stat_fields(pid: int, thread: int | None = None) -> list[bytes] | None:
    """Fields 3.. of /proc/PID/stat, or of /proc/PID/task/THREAD/stat (index 0 is field 3, the
    state), or None if no such process or thread."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        with open(path, "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(b")") + 2 :].split()


def proc_stat(pid: int) -> ProcStat | None:
    """State and start time of ``pid``, or None if there is no such process."""
    fields = _stat_fields(pid)
    return None if fields is None else ProcStat(fields[0].decode(), int(fields[19]))


def proc_cpu_ticks(pid: int, *, children: bool = False, thread: int | None = None) -> int | None:
    """CPU time ``pid`` has used so far, user + system (fields 14 and 15, in clock ticks:
    os.sysconf("SC_CLK_TCK") per second), or None if there is no such process.
    ``children=True`` adds what its children that it waited for used (fields 16 and 17);
    ``thread``: only that thread's time (/proc/PID/stat counts every thread)."""
    fields = _stat_fields(pid, thread)
    if fields is None:
        return None
    return sum(int(f) for f in fields[11 : 15 if children else 13])


def proc_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if there is no such process."""
    st = proc_stat(pid)
    return st.start_time if st else None


def pid_alive(pid: object, start_time: object = None, *, reap: bool = False) -> bool:
    """Whether ``pid`` runs (a zombie does not count) and, if ``start_time`` is given, is the
    process that started then rather than a later one that got the same PID.

    ``reap=True`` also reaps a zombie that is our own child (a shim started by an earlier
    runner in this process), as init would have done after a real restart. Arguments read back
    from a JSON state file may have any type: anything but a positive int is not alive.
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if start_time is not None and not isinstance(start_time, int):
        return False
    st = proc_stat(pid)
    if st is None or (start_time is not None and st.start_time != start_time):
        return False
    if st.state in ("Z", "X"):
        if reap:
            try:  # noqa: SIM105 - contextlib.suppress would cost the shim's start an import
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        return False
    return True
