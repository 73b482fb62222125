"""Ship what tasks write to their log files, whole lines at a time, at least once.

Tasks write straight into ``stdout.log``/``stderr.log`` in their directory (the shim hands them
the files), so output is kept while the agent is down. The tailer reads what lies beyond the
*committed* offsets, which it persists in ``log_offsets.json`` only when the caller says the
manager took the lines (`commit`). A publish that fails is simply read again on the next call,
and a restarted agent resumes where the manager's acknowledgements ended: at-least-once.

Usage (the controller's log loop)::

    chunks = tailer.read_new(task_id)
    if chunks:
        await session.publish_logs([dpb.PublishLogsMessage(task_id=c.task_id, stream=c.stream,
                                    timestamp_ms=c.timestamp_ms, data=c.data) for c in chunks])
        tailer.commit(task_id)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from agent.executor import shim

OFFSETS_FILE = "log_offsets.json"
STREAMS = (("stdout", shim.STDOUT_FILE), ("stderr", shim.STDERR_FILE))
DEFAULT_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class LogChunk:
    """One line (with its newline, unless it is a task's unterminated last line or a piece of
    a line longer than the read bound). timestamp_ms is when the file was last written, the
    closest to when the line was written that a file can tell."""

    task_id: str
    stream: str  # "stdout" | "stderr"
    timestamp_ms: int
    data: bytes


def split_lines(data: bytes, *, final: bool, full: bool) -> tuple[list[bytes], int]:
    """Cut `data` into whole lines; returns (lines, bytes consumed).

    An unterminated tail waits for the rest of its line, unless `final` (the writer is gone:
    nothing more will come) or `full` (the read bound was reached without a newline: a line
    longer than the bound goes out in pieces rather than block the stream forever).
    """
    end = data.rfind(b"\n") + 1
    if (end == 0 and full) or final:
        end = len(data)
    lines = data[:end].splitlines(keepends=True)
    return lines, end


def parse_offsets(text: str | None) -> dict[str, int]:
    """Committed offsets from the file's text; anything unreadable counts as nothing sent."""
    out = {name: 0 for name, _ in STREAMS}
    if not text:
        return out
    try:
        data = json.loads(text)
    except ValueError:
        return out
    if isinstance(data, dict):
        for name, _ in STREAMS:
            value = data.get(name)
            if isinstance(value, int) and value >= 0:
                out[name] = value
    return out


def _size(path: Path) -> int | None:
    """The file's size, None if there is no such file."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


class LogTailer:
    def __init__(self, state_dir: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.tasks_dir = Path(state_dir) / "tasks"
        self.max_bytes = max_bytes
        # Per task: offsets the last read_new reached, made permanent by commit().
        self._read_to: dict[str, dict[str, int]] = {}
        self._committed: dict[str, dict[str, int]] = {}

    def committed(self, task_id: str) -> dict[str, int]:
        """Stream -> byte offset up to which the manager has the output."""
        got = self._committed.get(task_id)
        if got is None:
            try:
                text: str | None = (self.tasks_dir / task_id / OFFSETS_FILE).read_text()
            except FileNotFoundError:
                text = None
            got = self._committed[task_id] = parse_offsets(text)
        return got

    def read_new(self, task_id: str) -> list[LogChunk]:
        """Lines written since the last commit (at most max_bytes per stream per call).

        Calling again without commit() returns the same lines (and maybe more). Once the task
        has exited (exit.json present), an unterminated last line is returned too.
        """
        d = self.tasks_dir / task_id
        committed = self.committed(task_id)
        reached = dict(committed)
        # A stat first: a quiet task's files (size == what was sent) are not opened at all,
        # and exit.json is looked for only when there is something to read. (It is looked for
        # before reading, so that a tail read as final was really the last of the output.)
        grown = [(s, name) for s, name in STREAMS if _size(d / name) not in (None, committed[s])]
        final = bool(grown) and (d / shim.EXIT_FILE).exists()
        chunks: list[LogChunk] = []
        for stream, filename in grown:
            try:
                f = open(d / filename, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                continue
            with f:
                st = os.fstat(f.fileno())
                offset = committed[stream]
                if st.st_size < offset:
                    offset = 0  # the file was replaced or truncated: it's all new
                f.seek(offset)
                data = f.read(self.max_bytes)
            lines, used = split_lines(data, final=final, full=len(data) >= self.max_bytes)
            ts = st.st_mtime_ns // 1_000_000
            chunks += [LogChunk(task_id, stream, ts, line) for line in lines]
            reached[stream] = offset + used
        self._read_to[task_id] = reached
        return chunks

    def commit(self, task_id: str) -> None:
        """The manager accepted what the last read_new returned: don't send it again."""
        reached = self._read_to.pop(task_id, None)
        if reached is None or reached == self.committed(task_id):
            return
        self._committed[task_id] = reached
        d = self.tasks_dir / task_id
        if d.is_dir():
            shim.write_json_atomic(str(d / OFFSETS_FILE), reached)

    def forget(self, task_id: str) -> None:
        """Drop what is cached for a task (call when its directory is removed)."""
        self._read_to.pop(task_id, None)
        self._committed.pop(task_id, None)
