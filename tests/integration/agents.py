"""Agents for integration tests: the real session client (agent.session.AgentSession) speaking
the real Dispatcher protocol to a real manager, with a scripted executor in place of F2's
sandboxes: each assigned task is reported ACCEPTED -> RUNNING, and a test can make one fail or
complete, or stop a whole agent (its heartbeats stop, as when a host dies).

The agents run on an asyncio loop in a background thread so that synchronous tests can drive
ovctl subprocesses while the agents answer.

Each agent joins the cluster as a real one does (agent.tls.join with a worker token through a
manager's join listener) when it is added, so its node ID (the certificate's CN) is known at
once; give the pool the token (`AgentPool(join_token=..., join_addr=...)`) or each agent its
own (`add(..., join_token=..., join_addr=...)`, or ready `credentials=`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from agent import tls
from agent.session import AgentSession, Assignments
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb


class ScriptedAgent:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        managers: list[str],
        hostname: str,
        labels: dict[str, str] | None = None,
        role: int = pb.NODE_ROLE_WORKER,
        *,
        credentials: tls.NodeCredentials,
    ) -> None:
        self.loop = loop
        self.hostname = hostname
        self.session = AgentSession(
            managers,
            pb.NodeDescription(hostname=hostname, addr="198.51.100.1"),
            pb.NodeSpec(labels=labels or {}, role=role),  # type: ignore[arg-type]
            credentials=credentials,
            on_assignments=self._on_assignments,
            backoff_max=0.5,
        )
        self.reported: dict[str, int] = {}
        self._runner: asyncio.Task[None] | None = None

    async def _on_assignments(self, a: Assignments) -> None:
        updates = []
        for task in a.tasks.values():
            tid = task.meta.id
            if task.desired_state > pb.TASK_STATE_RUNNING:
                if self.reported.get(tid, 0) < pb.TASK_STATE_COMPLETE:
                    updates.append(self._status(tid, pb.TASK_STATE_SHUTDOWN, "shut down"))
            elif tid not in self.reported:
                updates.append(self._status(tid, pb.TASK_STATE_RUNNING, "started"))
        if updates:
            with contextlib.suppress(Exception):
                await self.session.report(updates)

    def _status(
        self, task_id: str, state: int, msg: str, exit_code: int = 0
    ) -> dpb.TaskStatusUpdate:
        self.reported[task_id] = state
        return dpb.TaskStatusUpdate(
            task_id=task_id,
            status=pb.TaskStatus(
                state=state,  # type: ignore[arg-type]
                message=msg,
                exit_code=exit_code,
                timestamp_ms=int(time.time() * 1000),
            ),
        )

    def start(self) -> None:
        def go() -> None:
            self._runner = asyncio.ensure_future(self.session.run())

        self.loop.call_soon_threadsafe(go)

    def stop(self) -> None:
        """The host dies: no goodbye, heartbeats just stop."""

        async def halt() -> None:
            if self._runner is not None:
                self._runner.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._runner
            self._runner = None

        asyncio.run_coroutine_threadsafe(halt(), self.loop).result(10)

    def finish(self, task_id: str, state: int, exit_code: int = 0) -> None:
        """Make a running task end (FAILED / COMPLETE) as its process would."""

        async def send() -> None:
            await self.session.report([self._status(task_id, state, "exited", exit_code)])

        asyncio.run_coroutine_threadsafe(send(), self.loop).result(10)

    def publish(self, task_id: str, text: str) -> None:
        async def send() -> None:
            await self.session.publish_logs(
                [dpb.PublishLogsMessage(task_id=task_id, stream="stdout", data=text.encode())]
            )

        asyncio.run_coroutine_threadsafe(send(), self.loop).result(10)

    @property
    def node_id(self) -> str:
        return self.session.node_id

    @property
    def credentials(self) -> tls.NodeCredentials:
        """The current (possibly renewed) identity, e.g. to start this host again."""
        return self.session.credentials

    @property
    def task_ids(self) -> set[str]:
        return set(self.session.assignments.tasks)


class AgentPool:
    """Owns the background loop and every agent a test starts; stops them all at the end.
    `join_token`/`join_addr`: what agents join with unless `add` is given its own (the join
    address defaults to the first manager's port + 1)."""

    def __init__(self, join_token: str | None = None, join_addr: str | None = None) -> None:
        self.join_token = join_token
        self.join_addr = join_addr
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.agents: list[ScriptedAgent] = []

    def join(self, join_addr: str, token: str, timeout: float = 15.0) -> tls.NodeCredentials:
        """Join as the agent does: retry while no manager answers, fail on a refusal."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                creds: tls.NodeCredentials = run_sync(self.loop, tls.join(join_addr, token))
                return creds
            except tls.ManagerUnreachable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def add(
        self,
        managers: list[str],
        hostname: str,
        *,
        join_token: str | None = None,
        join_addr: str | None = None,
        credentials: tls.NodeCredentials | None = None,
        **kw: Any,
    ) -> ScriptedAgent:
        if credentials is None:
            token = join_token or self.join_token
            if not token:
                raise ValueError(
                    "an agent needs a join token: AgentPool(join_token=...) or "
                    "add(..., join_token=...), or credentials="
                )
            addr = join_addr or self.join_addr or tls.join_addr(managers[0])
            credentials = self.join(addr, token)
        agent = ScriptedAgent(self.loop, managers, hostname, credentials=credentials, **kw)
        self.agents.append(agent)
        agent.start()
        return agent

    def close(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def wait_for(pred: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def run_sync(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, loop)
    return fut.result(30)
