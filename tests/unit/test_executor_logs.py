"""The log tailer: whole lines, bounded reads, offsets that only move on commit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.executor import logs
from agent.executor.logs import LogTailer, parse_offsets, split_lines


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


def test_parse_offsets() -> None:
    assert parse_offsets(None) == {"stdout": 0, "stderr": 0}
    assert parse_offsets("garbage") == {"stdout": 0, "stderr": 0}
    assert parse_offsets('{"stdout": 5, "stderr": -1}') == {"stdout": 5, "stderr": 0}


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
    assert json.loads((d / "log_offsets.json").read_text()) == {"stdout": 8, "stderr": 4}
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
