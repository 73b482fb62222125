"""Fakes of every collaborator of the agent's daemon (agent/collaborators.py, and the executor
of agent/executor/api.py), so that the real `AgentDaemon` runs without root, a kernel, sockets
or task processes: in unit tests (tests/unit/test_daemon.py) and as the integration tests'
agents (tests/integration/agents.py).

Each fake does the least that keeps the daemon's contract: the data plane builds whatever is
asked at once, tasks run until a test ends them (`FakeExecutor.exit`) or the daemon stops them,
health verdicts are whatever a test sets. Those that matter for ordering record `events`:
(monotonic time, what, detail).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.collaborators import Session
from agent.daemon import AgentDaemon, DaemonOptions
from agent.dataplane.kernel import ApplyResult
from agent.dataplane.observed import Observed
from agent.dataplane.ops import Op
from agent.endpoints import EndpointRecord
from agent.executor.api import Adopted, Exec, ExitInfo, Running, StartError, TaskSpec
from agent.executor.logs import LogChunk
from agent.health import CheckConfig, HealthState
from agent.lb.drift import LbDrift
from agent.lb.plan import LbSpec
from agent.model import DesiredState, HostConfig, Names
from agent.session import Assignments
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

Events = list[tuple[float, str, Any]]


class FakeExecutor:
    """Tasks that run until the test (`exit`) or a stop ends them."""

    def __init__(self, events: Events, adopted: dict[str, Adopted] | None = None) -> None:
        self.events = events
        self.adopted = adopted or {}
        self.specs: dict[str, TaskSpec] = {}
        self.pids: dict[str, int] = {}
        self.exits: dict[str, asyncio.Future[ExitInfo]] = {}
        self.starts: list[str] = []
        self.removed: list[str] = []
        self.stop_timeouts: dict[str, float] = {}  # task ID -> the timeout its stop was given
        self.fail_start = ""
        self.closed = False
        self._pid = 100
        # Output a test gave a task (`add_log`), not yet committed by the daemon's shipper.
        self.logs: dict[str, list[LogChunk]] = {}

    def _event(self, what: str, task_id: str) -> None:
        self.events.append((time.monotonic(), what, task_id))

    def adopt(self) -> dict[str, Adopted]:
        """What `adopted` says (a restart of the agent's process), plus the tasks still running
        from an earlier run of a daemon with this executor (its host came back)."""
        for task_id, found in self.adopted.items():
            if found.running is not None:
                self.exits[task_id] = asyncio.get_running_loop().create_future()
        out = dict(self.adopted)
        for task_id, fut in self.exits.items():
            if not fut.done() and task_id not in out:
                out[task_id] = Adopted(task_id, running=Running(self.pids.get(task_id, 1)))
        return out

    async def prepare(self, spec: TaskSpec) -> None:
        if self.fail_start:
            raise StartError(self.fail_start)
        self.specs[spec.task_id] = spec

    async def start(self, task_id: str) -> Running:
        assert task_id in self.specs, "started without prepare"
        self._event("start", task_id)
        self.starts.append(task_id)
        self._pid += 1
        self.pids[task_id] = self._pid
        fut = self.exits.get(task_id)
        if fut is None or fut.done():
            self.exits[task_id] = asyncio.get_running_loop().create_future()
        return Running(self._pid)

    async def wait(self, task_id: str) -> ExitInfo | None:
        fut = self.exits.get(task_id)
        return None if fut is None else await asyncio.shield(fut)

    def exit(self, task_id: str, code: int | None = 0, sig: int | None = None) -> ExitInfo:
        error = f"killed by signal {sig}" if sig else f"exit status {code}"
        info = ExitInfo(code, sig, error)
        self.exits[task_id].set_result(info)
        return info

    def exec_in(self, task_id: str, netns_path: str) -> Exec:
        return Exec(("nsenter", f"--net={netns_path}", "--"))

    async def shutdown(self, task_id: str, timeout: float) -> ExitInfo | None:
        self._event("stop", task_id)
        self.stop_timeouts[task_id] = timeout
        fut = self.exits.get(task_id)
        if fut is None or fut.done():
            return None
        return self.exit(task_id, None, 15)

    async def terminate(self, task_id: str) -> ExitInfo | None:
        return await self.shutdown(task_id, 0)

    def remove(self, task_id: str) -> None:
        self._event("remove", task_id)
        self.removed.append(task_id)
        self.exits.pop(task_id, None)

    def tasks(self) -> list[str]:
        return sorted(set(self.exits) | set(self.logs))

    def add_log(
        self, task_id: str, text: str, stream: str = "stdout", timestamp_ms: int | None = None
    ) -> None:
        """The task wrote `text` (now, or at `timestamp_ms`: a line read late)."""
        ms = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        chunk = LogChunk(task_id, stream, ms, text.encode())
        self.logs.setdefault(task_id, []).append(chunk)

    def read_logs(self, task_id: str) -> list[LogChunk]:
        return list(self.logs.get(task_id, ()))

    def commit_logs(self, task_id: str) -> None:
        self.logs.pop(task_id, None)

    def close(self) -> None:
        self.closed = True


class FakeSession:
    def __init__(self) -> None:
        self.assignments = Assignments()
        self.node_id = "node1"
        self.unreachable = False
        self.on_assignments: Callable[[Assignments], Awaitable[None]] | None = None
        self.gossip_status: Callable[[], pb.GossipStatus | None] | None = None
        self.ipsec_status: Callable[[], pb.IpsecStatus | None] | None = None
        self.programmed: Callable[[], pb.ProgrammedView | None] | None = None
        self.on_doctor: (
            Callable[[dpb.DoctorCheck], Awaitable[tuple[list[pb.DriftRow], str]]] | None
        ) = None
        self.nudges = 0
        self.reports: list[dpb.TaskStatusUpdate] = []

    def nudge(self) -> None:
        self.nudges += 1

    async def report(self, updates: Sequence[dpb.TaskStatusUpdate]) -> None:
        self.reports.extend(updates)

    async def publish_logs(self, lines: Sequence[dpb.PublishLogsMessage]) -> None:
        pass

    async def attach(self, req: dpb.AttachRequest) -> dpb.AttachResponse:
        raise ConnectionError("no manager behind this fake session")

    async def detach(self, req: dpb.DetachRequest) -> dpb.DetachResponse:
        raise ConnectionError("no manager behind this fake session")

    def states(self, task_id: str) -> list[int]:
        return [u.status.state for u in self.reports if u.task_id == task_id]

    def last(self, task_id: str) -> pb.TaskStatus:
        return [u.status for u in self.reports if u.task_id == task_id][-1]


class FakeDataPlane:
    """Builds whatever is asked for, at once."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.gw_addresses: dict[str, str] = {}
        self.sandboxes: set[str] = set()
        # Ops a test says the kernel has drifted by (`ovctl doctor`); a reconcile repairs them
        # unless `heal` is off (a drift that outlives the periodic passes).
        self.drifted: list[Op] = []
        self.heal = True

    def sandbox_path(self, task_id: str) -> str:
        return f"/run/netns/test-{task_id}"

    async def reconcile(self, desired: DesiredState) -> ApplyResult:
        self.sandboxes = set(desired.sandboxes)
        self.events.append((time.monotonic(), "sandboxes", frozenset(self.sandboxes)))
        if self.heal:
            self.drifted = []
        return ApplyResult()

    async def drift(self, desired: DesiredState) -> tuple[Observed, list[Op]]:
        return Observed(), list(self.drifted)

    def ipsec_status(self) -> pb.IpsecStatus | None:
        return None

    async def close(self) -> None:
        pass


class FakeDiscovery:
    def __init__(self, events: Events) -> None:
        self.events = events
        self.on_change: Callable[[], None] | None = None
        # Gossip has synced (the daemon keeps the kernel's balancers until it has).
        self.synced = True
        self.announced: dict[str, bool] = {}  # task ID -> enabled
        self.left: bool | None = None
        # What this host announced comes back in its view, as the real one's does.
        self._own: list[EndpointRecord] = []

    async def configure(self, node_id: str, cfg: dpb.GossipConfig | None) -> None:
        pass

    def records(self, networks: Iterable[str]) -> list[EndpointRecord]:
        return list(self._own)

    def sync(
        self, networks: Iterable[str], records: Mapping[tuple[str, str], EndpointRecord]
    ) -> None:
        now = {r.task_id: r.enabled for r in records.values()}
        self._own = list(records.values())
        if now != self.announced:
            self.events.append((time.monotonic(), "announce", now))
        self.announced = now

    def status(self) -> pb.GossipStatus | None:
        return None

    def save(self) -> None:
        pass

    async def close(self, leave: bool = False) -> None:
        self.left = leave


class FakeResolver:
    def __init__(self) -> None:
        self._attached: set[str] = set()

    def update(self, records: Iterable[EndpointRecord], network_names: Mapping[str, str]) -> bool:
        return True

    def attached(self) -> set[str]:
        return set(self._attached)

    async def attach(self, key: str, netns: str, networks: frozenset[str]) -> None:
        self._attached.add(key)

    async def detach(self, key: str) -> None:
        self._attached.discard(key)

    async def close(self) -> None:
        pass


class FakeBalancer:
    def __init__(self) -> None:
        self.specs: dict[str, LbSpec] = {}
        # Per key, what a test says its table has drifted by; a replace after `invalidate`
        # repairs it.
        self.drifted: dict[str, list[LbDrift]] = {}
        self.invalid: set[str] = set()

    def keys(self) -> set[str]:
        return set(self.specs)

    async def drift(self, key: str) -> list[LbDrift]:
        return list(self.drifted.get(key, []))

    def invalidate(self, key: str) -> None:
        self.invalid.add(key)

    async def apply(self, key: str, netns: str | None, spec: LbSpec) -> None:
        self.specs[key] = spec
        if key in self.invalid:
            self.invalid.discard(key)
            self.drifted.pop(key, None)

    async def remove(self, key: str, netns: str | None, *, delete_table: bool = True) -> None:
        self.specs.pop(key, None)

    async def close(self) -> None:
        pass


class FakeHealth:
    """Verdicts are set by the test (`states`)."""

    def __init__(self) -> None:
        self.on_change: Callable[[str], None] = lambda _: None
        self.states: dict[str, HealthState] = {}
        self._watched: set[str] = set()

    def state(self, task_id: str) -> HealthState | None:
        return self.states.get(task_id)

    def watched(self) -> set[str]:
        return set(self._watched)

    def watch(
        self,
        task_id: str,
        config: CheckConfig,
        netns: str,
        addr: str,
        healthy_since: float = 0.0,
        via: Exec | None = None,
    ) -> None:
        if task_id not in self._watched and healthy_since:
            # As the real checker: a verdict carried over until the first check.
            self.states[task_id] = HealthState(
                config, started=0.0, health=pb.TASK_HEALTH_HEALTHY, healthy_since=healthy_since
            )
        self._watched.add(task_id)

    def unwatch(self, task_id: str) -> None:
        self._watched.discard(task_id)

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


@dataclass
class Fakes:
    """One of each fake, sharing one event list."""

    events: Events = field(default_factory=list)
    adopted: dict[str, Adopted] | None = None
    executor: FakeExecutor = field(init=False)
    dataplane: FakeDataPlane = field(init=False)
    discovery: FakeDiscovery = field(init=False)
    dns: FakeResolver = field(init=False)
    lb: FakeBalancer = field(init=False)
    health: FakeHealth = field(init=False)

    def __post_init__(self) -> None:
        self.executor = FakeExecutor(self.events, self.adopted)
        self.dataplane = FakeDataPlane(self.events)
        self.discovery = FakeDiscovery(self.events)
        self.dns = FakeResolver()
        self.lb = FakeBalancer()
        self.health = FakeHealth()

    def daemon(
        self,
        session: Session,
        state_dir: Path,
        *,
        options: DaemonOptions | None = None,
        clock: Callable[[], int] | None = None,
        prefix: str = "test-",
    ) -> AgentDaemon:
        """The real daemon with these fakes."""
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        return AgentDaemon(
            HostConfig(vtep=ipaddress.IPv4Address("198.51.100.1"), names=Names(prefix)),
            session,
            state_dir,
            executor=self.executor,
            dataplane=self.dataplane,
            discovery=self.discovery,
            dns=self.dns,
            lb=self.lb,
            health=self.health,
            options=options,
            **extra,
        )
