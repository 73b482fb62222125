"""`LogShipper`: per-task polling backoff (quiet tasks are looked at less and less often),
reset by output and by `poke`, and a round that stops at the first batch no manager took."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agent.executor.logs import LogChunk
from agent.logship import LogShipper
from proto import dispatcher_pb2 as dpb
from tests.support.agent_fakes import FakeExecutor, FakeSession


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingExecutor(FakeExecutor):
    def __init__(self) -> None:
        super().__init__([])
        self.reads: list[tuple[float, str]] = []
        self.clock: Clock | None = None
        self.known: set[str] = set()  # task directories (the fake forgets a quiet task)

    def add_log(
        self, task_id: str, text: str, stream: str = "stdout", timestamp_ms: int | None = None
    ) -> None:
        self.known.add(task_id)
        super().add_log(task_id, text, stream, timestamp_ms)

    def tasks(self) -> list[str]:
        return sorted(self.known)

    def read_logs(self, task_id: str) -> list[LogChunk]:
        assert self.clock is not None
        self.reads.append((self.clock.now, task_id))
        return super().read_logs(task_id)


class FlakySession(FakeSession):
    def __init__(self) -> None:
        super().__init__()
        self.published: list[bytes] = []

    async def publish_logs(self, lines: Sequence[dpb.PublishLogsMessage]) -> None:
        if self.unreachable:
            raise ConnectionError("no manager")
        self.published += [m.data for m in lines]


def _shipper() -> tuple[LogShipper, CountingExecutor, FlakySession, Clock]:
    clock = Clock()
    ex, session = CountingExecutor(), FlakySession()
    ex.clock = clock
    return LogShipper(ex, session, interval=0.5, clock=clock), ex, session, clock


def _rounds(shipper: LogShipper, clock: Clock, until: float, step: float = 0.5) -> None:
    while clock.now < until - 1e-9:
        clock.now += step
        asyncio.run(shipper.ship_due())


def test_quiet_task_is_polled_less_and_less_output_resets() -> None:
    shipper, ex, session, clock = _shipper()
    ex.add_log("t1", "hello\n")
    asyncio.run(shipper.ship_due())  # a new task is due at once
    assert session.published == [b"hello\n"]
    _rounds(shipper, clock, 20.0)
    times = [t for t, _ in ex.reads]
    # 0 (output), then 0.5, 1 (quiet: 0.5 s), 2 (1 s), 4 (2 s), 8 (4 s), then every 5 s.
    assert times == [0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 13.0, 18.0], times
    assert 0.5 <= shipper._delay() <= 5.0
    ex.add_log("t1", "more\n")
    ex.reads.clear()
    _rounds(shipper, clock, 25.0)
    assert session.published == [b"hello\n", b"more\n"]
    assert [t for t, _ in ex.reads][:3] == [23.0, 23.0, 23.5]  # found at 23, then 0.5 s again


def test_poke_makes_a_task_due_within_the_interval() -> None:
    shipper, ex, session, clock = _shipper()
    ex.add_log("t1", "a\n")
    _rounds(shipper, clock, 30.0)
    ex.reads.clear()
    ex.add_log("t1", "last words")
    clock.now += 0.1
    shipper.poke("t1")  # it ended: its last lines must not wait for the backoff
    assert shipper._delay() == 0.5
    _rounds(shipper, clock, clock.now + 0.5)
    assert session.published[-1] == b"last words"


def test_round_stops_at_a_batch_nobody_took_and_retries_it() -> None:
    shipper, ex, session, clock = _shipper()
    ex.add_log("t1", "a\n")
    ex.add_log("t2", "b\n")
    session.unreachable = True
    asyncio.run(shipper.ship_due())
    assert [t for _, t in ex.reads] == ["t1"]  # t2 not tried: no manager takes anything
    session.unreachable = False
    _rounds(shipper, clock, 0.5)
    assert session.published == [b"a\n", b"b\n"]


def test_send_ships_everything_whatever_the_backoff() -> None:
    shipper, ex, session, clock = _shipper()
    ex.add_log("t1", "a\n")
    _rounds(shipper, clock, 30.0)
    ex.add_log("t1", "b\n")
    assert asyncio.run(shipper.send("t1"))  # the daemon's call before forgetting a task
    assert session.published == [b"a\n", b"b\n"]
