"""Ship what tasks write to their logs, whole lines at a time, each with its own time, at least
once.

A task's shim writes its stdout and stderr into ``output.log`` in the task's directory, one
line a record with the time the shim read it (Kubernetes' CRI log format; shim.LineWriter), so
output is kept while the agent is down and every line carries its own time. Tasks started by
an older agent wrote ``stdout.log``/``stderr.log`` themselves, with no times: those are still
read (a restarted agent must ship what its predecessor's tasks wrote), every line stamped with
the file's mtime, the closest to when it was written that a file can tell.

The tailer reads what lies beyond the *committed* offsets, which it persists in
``log_offsets.json`` only when the caller says the manager took the lines (`commit`). A publish
that fails is simply read again on the next call, and a restarted agent resumes where the
manager's acknowledgements ended: at-least-once.

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
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.executor import shim

OFFSETS_FILE = "log_offsets.json"
# Offset keys and files: the legacy files of older agents' tasks first (they hold older
# output than the record log of a later run in the same directory), then the record log.
LEGACY = (("stdout", shim.STDOUT_FILE), ("stderr", shim.STDERR_FILE))
RECORDS = ("log", shim.LOG_FILE)
SOURCES = (*LEGACY, RECORDS)
DEFAULT_MAX_BYTES = 64 * 1024
# A read of the record log takes at least one whole record: MAX_LINE bytes of content, the
# time, the stream and the tag.
RECORD_BOUND = shim.MAX_LINE + 128
_STREAMS = {b"stdout": "stdout", b"stderr": "stderr"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class LogChunk:
    """One line (with its newline, unless it is a task's unterminated last line or a piece of
    a line longer than the bound). timestamp_ms is when the shim read the line's end; for the
    files of an older agent's tasks, when the file was last written."""

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
    # Only "\n" ends a line (bytes.splitlines would cut at a lone "\r" too: progress bars,
    # binary output, and a record's content).
    *lines, last = data[:end].split(b"\n")
    return [line + b"\n" for line in lines] + ([last] if last else []), end


def parse_time_ms(text: bytes) -> int | None:
    """Unix milliseconds of an RFC 3339 date and time (any fraction, "Z" or an offset); None
    if it is not one. A time without a zone is taken as UTC."""
    if len(text) < 19 or text[10:11] not in (b"T", b"t"):
        return None
    try:
        when = datetime.fromisoformat(text.decode("ascii").upper())  # RFC 3339 allows t, z
    except (UnicodeDecodeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _MS


def parse_record(record: bytes) -> tuple[str, int, bool, bytes] | None:
    """(stream, timestamp_ms, full, content) of one CRI record, with or without its newline;
    None if it is not one. `full`: the content is a whole line (tag F), else a piece (P)."""
    parts = record.removesuffix(b"\n").split(b" ", 3)
    if len(parts) != 4:
        return None
    stamp, stream, tags, content = parts
    tag = tags.split(b":", 1)[0]  # the CRI allows more tags after ":"
    name = _STREAMS.get(stream)
    ms = parse_time_ms(stamp)
    if name is None or tag not in (b"F", b"P") or ms is None:
        return None
    return name, ms, tag == b"F", content


def records_to_chunks(task_id: str, records: list[bytes], fallback_ms: int) -> list[LogChunk]:
    """Chunks of the whole records read: each F record a line (its content and a newline);
    P pieces joined to the record that ends their line when it was read with them (a long
    line goes out whole, up to a read's size), else sent as they are, after the read's lines.
    A line that is not a record (a torn write) is sent as it is, on stdout, at `fallback_ms`."""
    chunks: list[LogChunk] = []
    pieces: dict[str, tuple[list[bytes], int]] = {}
    for record in records:
        parsed = parse_record(record) if record.endswith(b"\n") else None
        if parsed is None:
            chunks.append(LogChunk(task_id, "stdout", fallback_ms, record))
            continue
        stream, ms, full, content = parsed
        before = pieces.pop(stream, ([], ms))[0]
        if not full:
            pieces[stream] = ([*before, content], ms)
            continue
        chunks.append(LogChunk(task_id, stream, ms, b"".join([*before, content, b"\n"])))
    chunks += [LogChunk(task_id, s, ms, b"".join(parts)) for s, (parts, ms) in pieces.items()]
    return chunks


def parse_offsets(text: str | None) -> dict[str, int]:
    """Committed offsets from the file's text; anything unreadable counts as nothing sent."""
    out = {name: 0 for name, _ in SOURCES}
    if not text:
        return out
    try:
        data = json.loads(text)
    except ValueError:
        return out
    if isinstance(data, dict):
        for name, _ in SOURCES:
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


def _read_from(path: Path, offset: int, size: int) -> tuple[bytes, int, int] | None:
    """Up to `size` bytes of the file from `offset` (from 0 if the file is now shorter: it was
    replaced or truncated, so it is all new); (data, the offset used, mtime in ms)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None
    with f:
        st = os.fstat(f.fileno())
        if st.st_size < offset:
            offset = 0
        f.seek(offset)
        return f.read(size), offset, st.st_mtime_ns // 1_000_000


class LogTailer:
    def __init__(self, state_dir: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.tasks_dir = Path(state_dir) / "tasks"
        self.max_bytes = max_bytes
        # Per task: offsets the last read_new reached, made permanent by commit().
        self._read_to: dict[str, dict[str, int]] = {}
        self._committed: dict[str, dict[str, int]] = {}

    def committed(self, task_id: str) -> dict[str, int]:
        """Source ("stdout", "stderr": legacy files; "log": the record log) -> byte offset up
        to which the manager has the output."""
        got = self._committed.get(task_id)
        if got is None:
            try:
                text: str | None = (self.tasks_dir / task_id / OFFSETS_FILE).read_text()
            except FileNotFoundError:
                text = None
            got = self._committed[task_id] = parse_offsets(text)
        return got

    def read_new(self, task_id: str) -> list[LogChunk]:
        """Lines written since the last commit (at most max_bytes per file per call, and at
        least one whole record of the record log), in the order they were written.

        Calling again without commit() returns the same lines (and maybe more). Once the task
        has exited (exit.json present), an unterminated last line is returned too.
        """
        d = self.tasks_dir / task_id
        committed = self.committed(task_id)
        reached = dict(committed)
        # A stat first: a quiet task's files (size == what was sent) are not opened at all,
        # and exit.json is looked for only when there is something to read. (It is looked for
        # before reading, so that a tail read as final was really the last of the output.)
        grown = [(k, name) for k, name in SOURCES if _size(d / name) not in (None, committed[k])]
        final = bool(grown) and (d / shim.EXIT_FILE).exists()
        chunks: list[LogChunk] = []
        for key, filename in grown:
            bound = max(self.max_bytes, RECORD_BOUND) if key == RECORDS[0] else self.max_bytes
            got = _read_from(d / filename, committed[key], bound)
            if got is None:
                continue
            data, offset, mtime_ms = got
            lines, used = split_lines(data, final=final, full=len(data) >= bound)
            if key == RECORDS[0]:
                chunks += records_to_chunks(task_id, lines, mtime_ms)
            else:
                chunks += [LogChunk(task_id, key, mtime_ms, line) for line in lines]
            reached[key] = offset + used
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
