"""The log tailer: whole lines, bounded reads, offsets that only move on commit; the record
log the shim writes (CRI format, a time per line) and the raw files of older agents' tasks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent.executor import logs
from agent.executor.logs import (
    LogChunk,
    LogTailer,
    parse_offsets,
    parse_record,
    parse_time_ms,
    split_lines,
)
from agent.executor.shim import LineWriter

# 2026-12-04T21:55:02Z
T0_NS = 1_796_421_302 * 10**9
T0_MS = T0_NS // 10**6


def test_split_lines_keeps_partial_tail() -> None:
    assert split_lines(b"a\nb\npart", final=False, full=False) == ([b"a\n", b"b\n"], 4)
    assert split_lines(b"part", final=False, full=False) == ([], 0)
    assert split_lines(b"", final=True, full=False) == ([], 0)


def test_split_lines_final_flushes_tail() -> None:
    assert split_lines(b"a\npart", final=True, full=False) == ([b"a\n", b"part"], 6)


def test_split_lines_full_buffer_without_newline_goes_out_in_pieces() -> None:
    assert split_lines(b"xxxx", final=False, full=True) == ([b"xxxx"], 4)
    # With a newline in a full buffer, only whole lines go.
    assert split_lines(b"a\nxxx", final=False, full=True) == ([b"a\n"], 2)


def test_split_lines_keeps_carriage_returns_inside_lines() -> None:
    lines, used = split_lines(b"a\r\nb\n", final=False, full=False)
    assert lines == [b"a\r\n", b"b\n"] and used == 5
    # Only a newline ends a line: a progress bar's lone "\r" does not.
    assert split_lines(b"50%\r100%\nx", final=False, full=False) == ([b"50%\r100%\n"], 9)


def test_parse_offsets() -> None:
    assert parse_offsets(None) == {"stdout": 0, "stderr": 0, "log": 0}
    assert parse_offsets("garbage") == {"stdout": 0, "stderr": 0, "log": 0}
    assert parse_offsets('{"stdout": 5, "stderr": -1}') == {"stdout": 5, "stderr": 0, "log": 0}
    assert parse_offsets('{"log": 42}') == {"stdout": 0, "stderr": 0, "log": 42}


def _task(tmp_path: Path, task_id: str = "t1") -> Path:
    d = tmp_path / "tasks" / task_id
    d.mkdir(parents=True)
    return d


def test_read_commit_resume(tmp_path: Path) -> None:
    d = _task(tmp_path)
    (d / "stdout.log").write_bytes(b"one\ntwo\nthr")
    (d / "stderr.log").write_bytes(b"err\n")
    tailer = LogTailer(tmp_path)
    chunks = tailer.read_new("t1")
    assert [(c.stream, c.data) for c in chunks] == [
        ("stdout", b"one\n"),
        ("stdout", b"two\n"),
        ("stderr", b"err\n"),
    ]
    assert all(c.task_id == "t1" and c.timestamp_ms > 0 for c in chunks)
    # Not committed: the same lines again (at-least-once).
    assert [c.data for c in tailer.read_new("t1")] == [b"one\n", b"two\n", b"err\n"]
    tailer.commit("t1")
    assert json.loads((d / "log_offsets.json").read_text()) == {
        "stdout": 8,
        "stderr": 4,
        "log": 0,
    }
    assert tailer.read_new("t1") == []
    with (d / "stdout.log").open("ab") as f:
        f.write(b"ee\nfour\n")
    assert [c.data for c in tailer.read_new("t1")] == [b"three\n", b"four\n"]
    tailer.commit("t1")
    # A new agent resumes from the committed offsets.
    assert LogTailer(tmp_path).read_new("t1") == []


def test_uncommitted_lines_are_resent_after_restart(tmp_path: Path) -> None:
    d = _task(tmp_path)
    (d / "stdout.log").write_bytes(b"a\nb\n")
    first = LogTailer(tmp_path)
    first.read_new("t1")
    first.commit("t1")
    with (d / "stdout.log").open("ab") as f:
        f.write(b"c\n")
    assert [c.data for c in first.read_new("t1")] == [b"c\n"]
    # The agent dies before the manager acknowledged "c": it is sent again.
    assert [c.data for c in LogTailer(tmp_path).read_new("t1")] == [b"c\n"]


def test_exit_flushes_unterminated_last_line(tmp_path: Path) -> None:
    d = _task(tmp_path)
    (d / "stdout.log").write_bytes(b"done\nno newline")
    tailer = LogTailer(tmp_path)
    assert [c.data for c in tailer.read_new("t1")] == [b"done\n"]
    (d / "exit.json").write_text('{"exit_code": 0}')
    assert [c.data for c in tailer.read_new("t1")] == [b"done\n", b"no newline"]
    tailer.commit("t1")
    assert tailer.read_new("t1") == []


def test_reads_are_bounded_per_stream(tmp_path: Path) -> None:
    d = _task(tmp_path)
    line = b"x" * 99 + b"\n"
    (d / "stdout.log").write_bytes(line * 30)  # 3000 bytes
    (d / "stderr.log").write_bytes(b"y" * 2500)  # one line longer than the bound
    tailer = LogTailer(tmp_path, max_bytes=1000)
    total = b""
    pieces = []
    for _ in range(10):
        chunks = tailer.read_new("t1")
        if not chunks:
            break
        assert sum(len(c.data) for c in chunks if c.stream == "stdout") <= 1000
        total += b"".join(c.data for c in chunks if c.stream == "stdout")
        pieces += [c.data for c in chunks if c.stream == "stderr"]
        tailer.commit("t1")
    assert total == line * 30
    # The long line is not stuck: it goes out in bounded pieces (the tail waits for its end).
    assert pieces == [b"y" * 1000, b"y" * 1000]


def test_truncated_log_starts_over(tmp_path: Path) -> None:
    d = _task(tmp_path)
    (d / "stdout.log").write_bytes(b"a\nb\n")
    tailer = LogTailer(tmp_path)
    tailer.read_new("t1")
    tailer.commit("t1")
    (d / "stdout.log").write_bytes(b"c\n")
    assert [c.data for c in tailer.read_new("t1")] == [b"c\n"]


def test_quiet_logs_are_not_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _task(tmp_path)
    (d / "stdout.log").write_bytes(b"a\n")
    (d / "stderr.log").write_bytes(b"")
    tailer = LogTailer(tmp_path)
    assert [c.data for c in tailer.read_new("t1")] == [b"a\n"]
    tailer.commit("t1")
    opened: list[Any] = []

    def spy(path: Any, *args: Any) -> Any:
        opened.append(path)
        return open(path, *args)

    monkeypatch.setattr(logs, "open", spy, raising=False)
    assert tailer.read_new("t1") == []  # sizes equal the committed offsets: nothing opened
    assert opened == []
    with open(d / "stderr.log", "ab") as f:
        f.write(b"b\n")
    assert [c.data for c in tailer.read_new("t1")] == [b"b\n"]
    assert opened == [d / "stderr.log"]


def test_missing_task_gives_nothing(tmp_path: Path) -> None:
    tailer = LogTailer(tmp_path)
    assert tailer.read_new("nope") == []
    tailer.commit("nope")  # nothing to write, no directory created
    assert not (tmp_path / "tasks" / "nope").exists()


# ---------------------------------------------------------------------- the record log


def _records(*items: tuple[int, str, str, bytes]) -> bytes:
    """CRI records (ms offset from T0, stream, tag, content), as the shim writes them."""
    w = LineWriter()
    return b"".join(
        w.stamp(T0_NS + ms * 10**6) + f" {stream} {tag} ".encode() + content + b"\n"
        for ms, stream, tag, content in items
    )


def test_parse_time_ms() -> None:
    assert parse_time_ms(b"2026-12-04T21:55:02Z") == T0_MS
    assert parse_time_ms(b"2026-12-04T21:55:02.123999999Z") == T0_MS + 123  # truncated
    assert parse_time_ms(b"2026-12-04T22:55:02.5+01:00") == T0_MS + 500
    assert parse_time_ms(b"2026-12-04t21:55:02.000001z") == T0_MS
    assert parse_time_ms(b"1970-01-01T00:00:00Z") == 0
    for bad in (b"", b"2026-12-04", b"2026-12-04T25:00:00Z", b"yesterday, 10 am", b"\xff" * 20):
        assert parse_time_ms(bad) is None, bad


def test_parse_record() -> None:
    assert parse_record(b"2026-12-04T21:55:02.001Z stdout F hello world\n") == (
        "stdout",
        T0_MS + 1,
        True,
        b"hello world",
    )
    assert parse_record(b"2026-12-04T21:55:02Z stderr P  two  spaces\n") == (
        "stderr",
        T0_MS,
        False,
        b" two  spaces",
    )
    # An empty line, bytes that are not UTF-8, and a tag with more after ":" (CRI allows it).
    assert parse_record(b"2026-12-04T21:55:02Z stdout F \n") == ("stdout", T0_MS, True, b"")
    assert parse_record(b"2026-12-04T21:55:02Z stdout F \xff\xfe\r\n")[3] == b"\xff\xfe\r"  # type: ignore[index]
    assert parse_record(b"2026-12-04T21:55:02Z stdout F:x y\n") == ("stdout", T0_MS, True, b"y")
    for bad in (
        b"2026-12-04T21:55:02Z stdin F x\n",
        b"2026-12-04T21:55:02Z stdout X x\n",
        b"not-a-time stdout F x\n",
        b"2026-12-04T21:55:02Z stdout\n",
        b"plain output of an old task\n",
    ):
        assert parse_record(bad) is None, bad


def test_record_log_gives_each_line_its_own_time_in_written_order(tmp_path: Path) -> None:
    d = _task(tmp_path)
    (d / "output.log").write_bytes(
        _records(
            (0, "stdout", "F", b"a"),
            (1000, "stdout", "F", b"b"),
            (1000, "stderr", "F", b"c"),
            (1200, "stdout", "F", b""),
        )
    )
    tailer = LogTailer(tmp_path)
    chunks = tailer.read_new("t1")
    assert chunks == [
        LogChunk("t1", "stdout", T0_MS, b"a\n"),
        LogChunk("t1", "stdout", T0_MS + 1000, b"b\n"),
        LogChunk("t1", "stderr", T0_MS + 1000, b"c\n"),
        LogChunk("t1", "stdout", T0_MS + 1200, b"\n"),
    ]
    assert tailer.read_new("t1") == chunks  # not committed: again
    tailer.commit("t1")
    size = (d / "output.log").stat().st_size
    assert json.loads((d / "log_offsets.json").read_text())["log"] == size
    with (d / "output.log").open("ab") as f:
        f.write(_records((2000, "stderr", "F", b"d")))
    assert LogTailer(tmp_path).read_new("t1") == [LogChunk("t1", "stderr", T0_MS + 2000, b"d\n")]


def test_record_log_joins_pieces_of_a_long_line_read_together(tmp_path: Path) -> None:
    d = _task(tmp_path)
    (d / "output.log").write_bytes(
        _records(
            (0, "stdout", "P", b"x" * 10),
            (1, "stderr", "F", b"between"),
            (2, "stdout", "P", b"y" * 10),
            (3, "stdout", "F", b"end"),
            (4, "stderr", "P", b"no newline yet"),
        )
    )
    tailer = LogTailer(tmp_path)
    assert tailer.read_new("t1") == [
        LogChunk("t1", "stderr", T0_MS + 1, b"between\n"),
        # The line's time is when its end was read.
        LogChunk("t1", "stdout", T0_MS + 3, b"x" * 10 + b"y" * 10 + b"end\n"),
        # A piece whose end is not written yet goes as it is (no newline the task did not write).
        LogChunk("t1", "stderr", T0_MS + 4, b"no newline yet"),
    ]


def test_record_log_reads_whole_records_and_waits_for_a_torn_one(tmp_path: Path) -> None:
    d = _task(tmp_path)
    whole = _records((0, "stdout", "F", b"a" * 3000))
    torn = _records((5, "stdout", "F", b"torn"))[:-3]
    (d / "output.log").write_bytes(whole + torn)
    # A bound smaller than a record still reads at least one whole record.
    tailer = LogTailer(tmp_path, max_bytes=1000)
    assert [c.data for c in tailer.read_new("t1")] == [b"a" * 3000 + b"\n"]
    tailer.commit("t1")
    assert tailer.read_new("t1") == []  # the torn record waits for its end
    (d / "exit.json").write_text("{}")
    # The task is gone: what there is goes, as it is.
    (got,) = tailer.read_new("t1")
    assert got.stream == "stdout" and got.data == torn


def test_old_agents_raw_files_and_the_record_log_in_one_directory(tmp_path: Path) -> None:
    """A task directory of an older agent's run (raw files, stamped with their mtime) that a
    newer agent started again: both are read, the older output first."""
    d = _task(tmp_path)
    (d / "stdout.log").write_bytes(b"old out\n")
    (d / "stderr.log").write_bytes(b"old err\n")
    (d / "log_offsets.json").write_text('{"stdout": 0, "stderr": 0}')  # an old agent's file
    (d / "output.log").write_bytes(_records((0, "stdout", "F", b"new")))
    os.utime(d / "stdout.log", ns=(T0_NS - 10**9, T0_NS - 10**9))
    tailer = LogTailer(tmp_path)
    chunks = tailer.read_new("t1")
    assert [(c.stream, c.data) for c in chunks] == [
        ("stdout", b"old out\n"),
        ("stderr", b"old err\n"),
        ("stdout", b"new\n"),
    ]
    assert chunks[0].timestamp_ms == T0_MS - 1000 and chunks[2].timestamp_ms == T0_MS
    tailer.commit("t1")
    assert json.loads((d / "log_offsets.json").read_text()) == {
        "stdout": 8,
        "stderr": 8,
        "log": (d / "output.log").stat().st_size,
    }
    assert tailer.read_new("t1") == []


def test_the_shims_writer_and_the_tailer_agree(tmp_path: Path) -> None:
    """Whatever the task writes (long lines, binary, an unterminated end) comes back byte for
    byte, each stream in its order."""
    d = _task(tmp_path)
    w = LineWriter(max_line=64)
    out = b"line\n" + bytes(range(256)) + b"\n" + b"z" * 200 + b"\nlast, unterminated"
    err = b"e1\n\n\xc3\x28 not utf-8\n"
    log = b""
    for i in range(0, max(len(out), len(err)), 7):  # in small reads, interleaved
        log += w.feed(b"stdout", out[i : i + 7], T0_NS + i)
        log += w.feed(b"stderr", err[i : i + 7], T0_NS + i)
    log += w.close(b"stdout", T0_NS + 10**9) + w.close(b"stderr", T0_NS + 10**9)
    (d / "output.log").write_bytes(log)
    (d / "exit.json").write_text("{}")
    tailer = LogTailer(tmp_path)
    got: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    while chunks := tailer.read_new("t1"):
        for c in chunks:
            got[c.stream] += c.data
        tailer.commit("t1")
    assert got == {"stdout": out, "stderr": err}


def test_quiet_record_log_is_not_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _task(tmp_path)
    (d / "output.log").write_bytes(_records((0, "stdout", "F", b"a")))
    tailer = LogTailer(tmp_path)
    assert len(tailer.read_new("t1")) == 1
    tailer.commit("t1")
    opened: list[Any] = []

    def spy(path: Any, *args: Any) -> Any:
        opened.append(path)
        return open(path, *args)

    monkeypatch.setattr(logs, "open", spy, raising=False)
    assert tailer.read_new("t1") == [] and opened == []
