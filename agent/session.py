"""The agent's side of the Dispatcher: register, hold a session, heartbeat, report.

`Assignments` is the pure part: it folds the session's COMPLETE and INCREMENTAL messages into
the set of tasks, networks and services this node must run, detecting sequence gaps. The
`AgentSession` is the I/O around it: it keeps trying the managers it knows (moving to the leader
a follower names, with backoff), persists the node ID it was given, and hands every new
assignment set to a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from proto import dispatcher_pb2 as dpb
from proto import dispatcher_pb2_grpc
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

_LEADER_HINT = re.compile(r"the leader is at (\S+)")
_NO_ANSWER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class SequenceGap(Exception):
    """An incremental message does not follow the last one: the session must restart."""


@dataclass
class Assignments:
    tasks: dict[str, pb.Task] = field(default_factory=dict)
    networks: dict[str, pb.Network] = field(default_factory=dict)
    services: dict[str, pb.Service] = field(default_factory=dict)
    # One item, ID "gossip": the gossip keyring and seed peers.
    gossip: dict[str, dpb.GossipConfig] = field(default_factory=dict)
    # One item: this node itself (its ingress address is in its attachments).
    node: dict[str, pb.Node] = field(default_factory=dict)
    seq: int = 0

    def snapshot(self) -> dpb.AssignmentsMessage:
        """The whole set as one COMPLETE message: what the agent keeps on disk so that, restarted
        while no manager answers, it still knows what it runs (as swarmkit's worker keeps its
        task database)."""
        msg = dpb.AssignmentsMessage(type=dpb.ASSIGNMENTS_TYPE_COMPLETE, results_in=self.seq)
        for kind, table in self._tables().items():
            for obj in table.values():
                msg.changes.add(**{kind: obj})
        return msg

    def _tables(self) -> dict[str, dict[str, Any]]:
        return {
            "task": self.tasks,
            "network": self.networks,
            "service": self.services,
            "gossip": self.gossip,
            "node": self.node,
        }

    def apply(self, msg: dpb.AssignmentsMessage) -> None:
        tables = self._tables()
        if msg.type == dpb.ASSIGNMENTS_TYPE_COMPLETE:
            for t in tables.values():
                t.clear()
        elif msg.applies_to != self.seq:
            raise SequenceGap(f"got changes for sequence {msg.applies_to}, have {self.seq}")
        for change in msg.changes:
            kind = change.WhichOneof("item")
            if kind is None:
                continue
            obj = getattr(change, kind)
            table = tables[kind]
            if change.action == dpb.ASSIGNMENT_ACTION_REMOVE:
                table.pop(obj.meta.id, None)
            else:
                table[obj.meta.id] = obj
        self.seq = msg.results_in


OnAssignments = Callable[[Assignments], Awaitable[None]]


class AgentSession:
    def __init__(
        self,
        managers: Sequence[str],
        description: pb.NodeDescription,
        spec: pb.NodeSpec | None = None,
        *,
        state_dir: Path | None = None,
        on_assignments: OnAssignments | None = None,
        backoff_max: float = 5.0,
    ) -> None:
        self.managers = list(managers)
        self.description = description
        self.spec = spec or pb.NodeSpec()
        self.state_dir = state_dir
        self.on_assignments = on_assignments
        self.backoff_max = backoff_max
        self.node_id = self._load_node_id()
        self.session_id = ""
        self.assignments = Assignments()
        self.connected = asyncio.Event()
        # Session attempts in a row that no manager answered at all.
        self.failed_attempts = 0
        # What the heartbeat carries about this host's gossip view (for `ovctl node inspect`).
        self.gossip_status: Callable[[], pb.GossipStatus | None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: dispatcher_pb2_grpc.DispatcherStub | None = None

    def _load_node_id(self) -> str:
        if self.state_dir is None:
            return ""
        path = self.state_dir / "node_id"
        return path.read_text().strip() if path.exists() else ""

    def _save_node_id(self) -> None:
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.state_dir / "node_id.tmp"
            tmp.write_text(self.node_id + "\n")
            tmp.replace(self.state_dir / "node_id")

    async def run(self) -> None:
        """Stay connected to the leading manager forever (until cancelled)."""
        delay = 0.1
        i = 0
        while True:
            addr = self.managers[i % len(self.managers)]
            try:
                await self._session(addr)
                delay = 0.1
            except grpc.aio.AioRpcError as e:
                hint = _LEADER_HINT.search(e.details() or "")
                if hint and hint.group(1) not in self.managers:
                    self.managers.append(hint.group(1))
                if hint:
                    i = self.managers.index(hint.group(1))
                    delay = 0.05
                else:
                    i += 1
                if not hint and e.code() in _NO_ANSWER:
                    self.failed_attempts += 1
                else:
                    self.failed_attempts = 0  # a manager answered (even a refusal)
                if e.code() == grpc.StatusCode.NOT_FOUND and "not registered" in (
                    e.details() or ""
                ):
                    self.node_id = ""  # the node was removed: register afresh
                log.info("session with %s ended: %s %s", addr, e.code().name, e.details())
            except SequenceGap as e:
                log.warning("restarting session: %s", e)
            finally:
                self.connected.clear()
                await self._close()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.backoff_max)

    @property
    def unreachable(self) -> bool:
        """No session, and every known manager was tried without an answer: nobody but this
        agent can act for its tasks now (a manager that answers, even to refuse or to name
        the leader, is not unreachable)."""
        return not self.connected.is_set() and self.failed_attempts >= len(self.managers)

    async def _close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None

    async def _session(self, addr: str) -> None:
        self._channel = grpc.aio.insecure_channel(addr)
        self._stub = stub = dispatcher_pb2_grpc.DispatcherStub(self._channel)
        reg = await stub.Register(
            dpb.RegisterRequest(node_id=self.node_id, description=self.description, spec=self.spec),
            timeout=10,
        )
        if reg.node_id != self.node_id:
            self.node_id = reg.node_id
            self._save_node_id()
        call = stub.Session(dpb.SessionRequest(node_id=self.node_id, description=self.description))
        heartbeat: asyncio.Task[None] | None = None
        try:
            async for msg in call:
                if msg.managers:
                    self.managers = list(dict.fromkeys([addr, *msg.managers, *self.managers]))
                if msg.session_id != self.session_id or heartbeat is None:
                    self.session_id = msg.session_id
                    if heartbeat is not None:
                        heartbeat.cancel()
                    heartbeat = asyncio.create_task(self._heartbeat(msg.heartbeat_period_ms))
                self.assignments.apply(msg.assignments)
                self.connected.set()
                self.failed_attempts = 0
                if self.on_assignments is not None:
                    await self.on_assignments(self.assignments)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await heartbeat
            call.cancel()

    async def _heartbeat(self, period_ms: int) -> None:
        while True:
            await asyncio.sleep(period_ms / 1000 / 2)
            stub = self._stub
            if stub is None:
                return
            try:
                req = dpb.HeartbeatRequest(node_id=self.node_id, session_id=self.session_id)
                gossip = self.gossip_status() if self.gossip_status is not None else None
                if gossip is not None:
                    req.gossip.CopyFrom(gossip)
                resp = await stub.Heartbeat(req, timeout=period_ms / 1000)
                period_ms = resp.period_ms or period_ms
            except grpc.aio.AioRpcError as e:
                log.warning("heartbeat failed: %s %s", e.code().name, e.details())

    async def report(self, updates: Sequence[dpb.TaskStatusUpdate]) -> None:
        """Send task states; raises grpc.aio.AioRpcError when no session is up (the caller keeps
        the states and sends them again once `connected` is set)."""
        if self._stub is None:
            raise ConnectionError("no session with a manager")
        await self._stub.UpdateTaskStatus(
            dpb.UpdateTaskStatusRequest(
                node_id=self.node_id, session_id=self.session_id, updates=list(updates)
            ),
            timeout=10,
        )

    async def publish_logs(self, lines: Sequence[dpb.PublishLogsMessage]) -> None:
        if self._stub is None:
            raise ConnectionError("no session with a manager")
        msgs = []
        for line in lines:
            m = dpb.PublishLogsMessage()
            m.CopyFrom(line)
            m.node_id, m.session_id = self.node_id, self.session_id
            msgs.append(m)
        await self._stub.PublishLogs(iter(msgs), timeout=10)
