"""The manager's log rings: lines of several tasks in the order of their own times, `since`
before `tail`, and followers that get only what matches."""

from __future__ import annotations

from manager.logbroker import LogBroker
from proto import control_pb2 as cpb


def _line(task: str, ms: int, data: str, stream: str = "stdout") -> cpb.LogLine:
    return cpb.LogLine(task_id=task, stream=stream, timestamp_ms=ms, data=data.encode())


def _texts(lines: object) -> list[str]:
    return [ln.data.decode() for ln in lines]  # type: ignore[attr-defined]


def _broker() -> LogBroker:
    broker = LogBroker()
    # Published per task (as agents ship them), written interleaved in time.
    for line in (
        _line("t1", 1000, "t1 a"),
        _line("t1", 3000, "t1 c", "stderr"),
        _line("t1", 3000, "t1 d"),  # the same millisecond: kept in the order written
        _line("t2", 2000, "t2 b"),
        _line("t2", 4000, "t2 e", "stderr"),
        _line("other", 2500, "not asked for"),
    ):
        broker.publish(line)
    return broker


def test_lines_of_several_tasks_in_the_order_of_their_times() -> None:
    assert _texts(_broker().lines({"t1", "t2"})) == ["t1 a", "t2 b", "t1 c", "t1 d", "t2 e"]


def test_since_keeps_lines_at_or_after_it() -> None:
    broker = _broker()
    assert _texts(broker.lines({"t1", "t2"}, since_ms=3000)) == ["t1 c", "t1 d", "t2 e"]
    assert _texts(broker.lines({"t1", "t2"}, since_ms=2001)) == ["t1 c", "t1 d", "t2 e"]
    assert _texts(broker.lines({"t1", "t2"}, since_ms=5000)) == []
    assert len(list(broker.lines({"t1", "t2"}, since_ms=0))) == 5  # 0: no bound


def test_since_first_then_tail() -> None:
    broker = _broker()
    # The last two of the lines since 1500 (tail alone would give the same here) ...
    assert _texts(broker.lines({"t1", "t2"}, tail=2, since_ms=1500)) == ["t1 d", "t2 e"]
    # ... and tail never brings back a line before since.
    assert _texts(broker.lines({"t1", "t2"}, tail=10, since_ms=2500)) == ["t1 c", "t1 d", "t2 e"]
    assert _texts(broker.lines({"t1", "t2"}, tail=1)) == ["t2 e"]


def test_a_follower_gets_only_what_matches() -> None:
    broker = _broker()
    follower = broker.follow(lambda ln: ln.task_id == "t1" and ln.timestamp_ms >= 3000)
    broker.publish(_line("t1", 2000, "late and old"))
    broker.publish(_line("t2", 5000, "another task"))
    broker.publish(_line("t1", 5000, "new"))
    assert follower.queue.qsize() == 1 and follower.queue.get_nowait().data == b"new"
    broker.unfollow(follower)
    broker.publish(_line("t1", 6000, "after"))
    assert follower.queue.empty()
