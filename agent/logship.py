"""Shipping the tasks' output to the manager, at least once and in order.

A line is marked sent (`Executor.commit_logs`) only once a manager took it, so lines written
while every manager was unreachable go out later; a task's leftovers are removed only after
its last lines went (`send` returning True).

Polling backs off per task: a task whose output has not grown is looked at again after
`interval`, then twice that, up to `max_interval` (10 x interval: 5 s by default), so that a
host full of quiet tasks does not wake up and look at every log file twice a second. Output
resets the task to `interval`, and so does `poke` (the daemon calls it when a task starts or
ends: its first and its last lines go out within `interval`). The loop itself sleeps until the
earliest task is due, `interval` at least. Whatever the backoff, a task's last lines are sent
before it is forgotten: the daemon calls `send` itself right before removing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from agent.collaborators import Session
from agent.executor.api import Executor
from osutil.backoff import Backoff
from proto import dispatcher_pb2 as dpb

log = logging.getLogger(__name__)


@dataclass
class _Poll:
    """When a task's logs are next looked at, and how long the wait grows while quiet."""

    due: float
    backoff: Backoff


class LogShipper:
    def __init__(
        self,
        executor: Executor,
        session: Session,
        interval: float = 0.5,
        max_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.executor = executor
        self.session = session
        self.interval = interval
        self.max_interval = 10 * interval if max_interval is None else max_interval
        self.clock = clock
        self._lock = asyncio.Lock()
        self._polls: dict[str, _Poll] = {}
        self._poked = asyncio.Event()

    def poke(self, task_id: str) -> None:
        """The task started or ended: look at its logs within `interval` again."""
        self._polls[task_id] = self._fresh(self.clock() + self.interval)
        self._poked.set()

    def _fresh(self, due: float) -> _Poll:
        return _Poll(due, Backoff(self.interval, self.max_interval))

    async def run(self) -> None:
        """Send the new output of every task that is due, until cancelled."""
        delay = self.interval  # the first round finds the tasks an earlier agent left
        while True:
            self._poked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), delay)
            try:
                await self.ship_due()
            except OSError:
                log.exception("reading task logs failed (retrying)")
            delay = self._delay()

    def _delay(self) -> float:
        """Until the earliest task is due: `interval` at least (the loop's old period), and
        `max_interval` at most (tasks nobody poked about are found by then)."""
        due = min((p.due for p in self._polls.values()), default=float("inf"))
        return min(max(due - self.clock(), self.interval), self.max_interval)

    async def ship_due(self) -> None:
        """One round: every task that is due (and every new one) once, in the executor's
        order; stop at the first one no manager took (the next round retries it)."""
        now = self.clock()
        tasks = self.executor.tasks()
        for gone in self._polls.keys() - set(tasks):
            del self._polls[gone]
        for task_id in tasks:
            poll = self._polls.get(task_id)
            if poll is None:
                poll = self._polls[task_id] = self._fresh(now)
            if poll.due > now:
                continue
            async with self._lock:
                ok, sent = await self._send_locked(task_id)
            if not ok:
                break
            if sent:
                poll.backoff.reset()
            poll.due = self.clock() + (self.interval if sent else poll.backoff.next())

    async def send(self, task_id: str) -> bool:
        """Send what the task wrote since the last accepted batch; False if no manager took it.
        One sender at a time, or the timer and a task's removal would send the same lines."""
        async with self._lock:
            ok, _ = await self._send_locked(task_id)
            return ok

    async def _send_locked(self, task_id: str) -> tuple[bool, bool]:
        """(every new line went, any line went)."""
        sent = False
        while chunks := self.executor.read_logs(task_id):
            try:
                await self.session.publish_logs(
                    [
                        dpb.PublishLogsMessage(
                            task_id=c.task_id,
                            stream=c.stream,
                            timestamp_ms=c.timestamp_ms,
                            data=c.data,
                        )
                        for c in chunks
                    ]
                )
            except (grpc.aio.AioRpcError, ConnectionError):
                return False, sent
            self.executor.commit_logs(task_id)
            sent = True
        return True, sent
