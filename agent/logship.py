"""Shipping the tasks' output to the manager, at least once and in order.

A line is marked sent (`Executor.commit_logs`) only once a manager took it, so lines written
while every manager was unreachable go out later; a task's leftovers are removed only after
its last lines went (`send` returning True).
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from agent.collaborators import Session
from agent.executor.api import Executor
from proto import dispatcher_pb2 as dpb

log = logging.getLogger(__name__)


class LogShipper:
    def __init__(self, executor: Executor, session: Session, interval: float = 0.5) -> None:
        self.executor = executor
        self.session = session
        self.interval = interval
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """Send the new output of every task, every `interval` s, until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                for task_id in self.executor.tasks():
                    if not await self.send(task_id):
                        break
            except OSError:
                log.exception("reading task logs failed (retrying)")

    async def send(self, task_id: str) -> bool:
        """Send what the task wrote since the last accepted batch; False if no manager took it.
        One sender at a time, or the timer and a task's removal would send the same lines."""
        async with self._lock:
            return await self._send_locked(task_id)

    async def _send_locked(self, task_id: str) -> bool:
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
                return False
            self.executor.commit_logs(task_id)
        return True
