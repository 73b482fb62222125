"""Agents for integration tests: the real session client (agent.session.AgentSession) speaking
the real Dispatcher protocol to a real manager, driven by the real daemon (agent.daemon) with
fakes for what needs root (tasks, kernel, gossip, DNS, balancing): each assigned task goes
PREPARING -> STARTING -> RUNNING as the daemon reports it, and a test can make one fail or
complete, have it write logs, or stop a whole agent (its heartbeats stop, as when a host dies).

The agents run on an asyncio loop in a background thread so that synchronous tests can drive
ovctl subprocesses while the agents answer.

Each agent joins the cluster as a real one does (security.join.join with a worker token through a
manager's join listener) when it is added, so its node ID (the certificate's CN) is known at
once; give the pool the token (`AgentPool(join_token=..., join_addr=...)`) or each agent its
own (`add(..., join_token=..., join_addr=...)`, or ready `credentials=`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from agent.daemon import DaemonOptions
from agent.session import AgentSession
from osutil.hostport import next_port
from proto import objects_pb2 as pb
from security.credentials import NodeCredentials
from security.join import ManagerUnreachable, join
from tests.support.agent_fakes import Fakes


class ScriptedAgent:
    """One host: the real `AgentSession` and the real `AgentDaemon` (agent/daemon.py), with
    fakes for the executor, data plane, gossip, DNS, balancing and health checks
    (tests/support/agent_fakes.py). Tasks "run" in the fake executor until the test ends them
    (`finish`) or the manager has them stopped; everything the manager hears (PREPARING ->
    STARTING -> RUNNING, exits, SHUTDOWN, logs) is what the daemon decided and reported."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        managers: list[str],
        hostname: str,
        labels: dict[str, str] | None = None,
        role: int = pb.NODE_ROLE_WORKER,
        *,
        credentials: NodeCredentials,
        unavailable: dict[str, str] | None = None,
    ) -> None:
        self.loop = loop
        self.hostname = hostname
        self.session = AgentSession(
            managers,
            pb.NodeDescription(
                hostname=hostname, addr="198.51.100.1", unavailable=unavailable or {}
            ),
            pb.NodeSpec(labels=labels or {}, role=role),  # type: ignore[arg-type]
            credentials=credentials,
            backoff_max=0.5,
        )
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"ovnet-it-{hostname}-"))
        self.fakes = Fakes()
        self.daemon = self.fakes.daemon(
            self.session,
            self.state_dir,
            options=DaemonOptions(
                reconcile_interval=1.0, stop_timeout=1.0, log_interval=0.05, drain_delay=0.0
            ),
            prefix=f"it-{hostname}-",
        )
        self._runners: list[asyncio.Task[None]] = []

    @property
    def reported(self) -> dict[str, int]:
        """The highest state the manager took for each task this host knows."""
        return {tid: lo.reported for tid, lo in self.daemon.controller.local.items()}

    def start(self) -> None:
        def go() -> None:
            self._runners = [
                asyncio.ensure_future(self.session.run()),
                asyncio.ensure_future(self.daemon.run()),
            ]

        self.loop.call_soon_threadsafe(go)

    def stop(self) -> None:
        """The host dies: no goodbye, heartbeats just stop (its tasks stay in its executor, as
        after a power cut they would not; a `start` brings the host back and adopts them)."""

        async def halt() -> None:
            for runner in self._runners:
                runner.cancel()
            for runner in self._runners:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await runner
            self._runners = []

        asyncio.run_coroutine_threadsafe(halt(), self.loop).result(10)

    def finish(self, task_id: str, state: int, exit_code: int = 0) -> None:
        """Make a running task end (FAILED / COMPLETE) as its process would, and wait until
        the daemon has reported it."""
        if state not in (pb.TASK_STATE_FAILED, pb.TASK_STATE_COMPLETE):
            raise ValueError("a task ends FAILED or COMPLETE")
        code = 0 if state == pb.TASK_STATE_COMPLETE else (exit_code or 1)

        async def end() -> None:
            self.fakes.executor.exit(task_id, code)
            # Reported, or already forgotten: once the manager took the end it drops the task
            # from the assignment set and the daemon forgets it, possibly between two polls.
            while self.reported.get(task_id, pb.TASK_STATE_COMPLETE) < pb.TASK_STATE_COMPLETE:
                await asyncio.sleep(0.02)

        run_sync(self.loop, asyncio.wait_for(end(), 20))

    def publish(
        self, task_id: str, text: str, stream: str = "stdout", timestamp_ms: int | None = None
    ) -> None:
        """The task writes `text` (at `timestamp_ms`, default now) on `stream`; returns once
        the daemon has shipped it to a manager."""

        async def write() -> None:
            self.fakes.executor.add_log(task_id, text, stream, timestamp_ms)
            while task_id in self.fakes.executor.logs:
                await asyncio.sleep(0.02)

        run_sync(self.loop, asyncio.wait_for(write(), 20))

    @property
    def node_id(self) -> str:
        return self.session.node_id

    @property
    def credentials(self) -> NodeCredentials:
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

    def join(self, join_addr: str, token: str, timeout: float = 15.0) -> NodeCredentials:
        """Join as the agent does: retry while no manager answers, fail on a refusal."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                creds: NodeCredentials = run_sync(self.loop, join(join_addr, token))
                return creds
            except ManagerUnreachable:
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
        credentials: NodeCredentials | None = None,
        **kw: Any,
    ) -> ScriptedAgent:
        if credentials is None:
            token = join_token or self.join_token
            if not token:
                raise ValueError(
                    "an agent needs a join token: AgentPool(join_token=...) or "
                    "add(..., join_token=...), or credentials="
                )
            addr = join_addr or self.join_addr or next_port(managers[0])
            credentials = self.join(addr, token)
        agent = ScriptedAgent(self.loop, managers, hostname, credentials=credentials, **kw)
        self.agents.append(agent)
        agent.start()
        return agent

    def close(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.stop()

        async def drain() -> None:
            # Whatever an agent left behind (a daemon pass cut short, a session call) ends
            # here, on its own loop, rather than being destroyed pending when the loop stops.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(drain(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        for agent in self.agents:
            shutil.rmtree(agent.state_dir, ignore_errors=True)


def run_sync(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, loop)
    return fut.result(30)
