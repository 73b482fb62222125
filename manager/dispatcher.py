"""Agent sessions: registration, assignments, task status, heartbeats, node liveness.

An agent's session stream first carries its complete assignment set (tasks placed on the node
and not finished, plus the networks and services they need), then only differences. The
dispatcher does not track events to build those differences: after any commit it recomputes each
session's set and diffs it against what that session was last sent (by object version), which
is cheap at this scale and cannot drift.

Heartbeats are kept in memory only (writing each one to etcd would cost a write per node per
period); a node's state is written when it changes: READY when a session opens, DOWN when
heartbeats stop for `heartbeat_grace` periods.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from manager.cluster import Cluster, new_id, now_ms
from manager.errors import InvalidArgument, NotFound
from manager.logbroker import LogBroker
from manager.store import Batch, Store
from proto import control_pb2 as cpb
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass
class _Session:
    session_id: str
    node_id: str
    queue: asyncio.Queue[dpb.SessionMessage | None] = field(default_factory=asyncio.Queue)
    sent: dict[Key, int] = field(default_factory=dict)
    seq: int = 0


# Kinds a session carries and the assignment field each goes in.
_ITEM_FIELD = {
    "tasks": "task",
    "networks": "network",
    "services": "service",
    "endpoints": "endpoints",
}
# Kinds whose commits may change some session's set (endpoints follow nodes' state and address).
_WATCHED = {"tasks", "networks", "services", "nodes"}

EndpointIndex = dict[str, dpb.NetworkEndpoints]


def endpoint_index(state: Any) -> EndpointIndex:
    """Per network ID, every task address that hosts on the network should be able to reach.

    A task counts from the moment it is assigned (its address is allocated and its host will
    build it shortly: programming the others early avoids a window where it is unreachable)
    until it finishes or is told to stop; tasks on nodes that are down or have no underlay
    address are left out, so traffic is not sent into a dead host. Every session gets the same
    message for a network (built once per round); each agent skips its own VTEP.
    """
    lists: dict[str, list[dpb.NetworkEndpoint]] = {}
    for task in state.tasks.values():
        if not pb.TASK_STATE_ASSIGNED <= task.status.state <= pb.TASK_STATE_RUNNING:
            continue
        if task.desired_state > pb.TASK_STATE_RUNNING or not task.networks:
            continue
        node = state.nodes.get(task.node_id)
        if node is None or node.status.state == pb.NODE_STATE_DOWN or not node.description.addr:
            continue
        for att in task.networks:
            for addr in att.addresses:
                lists.setdefault(att.network_id, []).append(
                    dpb.NetworkEndpoint(
                        task_id=task.meta.id,
                        service_id=task.service_id,
                        service_name=task.service_name,
                        slot=task.slot,
                        node_id=task.node_id,
                        vtep=node.description.addr,
                        addr=addr,
                    )
                )
    index: EndpointIndex = {}
    for net_id, eps in lists.items():
        eps.sort(key=lambda e: (e.addr, e.task_id))
        index[net_id] = network_endpoints(net_id, eps)
    return index


def network_endpoints(
    network_id: str, endpoints: list[dpb.NetworkEndpoint]
) -> dpb.NetworkEndpoints:
    """The message for one network, versioned by a digest of its content (the session diff
    compares versions, and this item has no etcd revision)."""
    msg = dpb.NetworkEndpoints(meta=pb.Meta(id=network_id), endpoints=endpoints)
    digest = hashlib.blake2b(msg.SerializeToString(deterministic=True), digest_size=8).digest()
    msg.meta.version = int.from_bytes(digest, "big") >> 1
    return msg


class Dispatcher:
    def __init__(
        self,
        cluster: Cluster,
        logs: LogBroker,
        kick: Callable[[str | None], None],
        managers: Callable[[], list[str]],
    ) -> None:
        self.cluster = cluster
        self.state = cluster.state
        self.logs = logs
        self._kick = kick
        self._managers = managers
        self.period_ms = cluster.config.heartbeat_period_ms
        self.sessions: dict[str, _Session] = {}
        # A new leader gives every node a full grace period before judging it.
        start = time.monotonic()
        self.last_seen: dict[str, float] = {n: start for n in self.state.nodes}
        self._dirty = asyncio.Event()
        cluster.subscribe(self._on_commit)

    # ------------------------------------------------------------------ assignment sets

    def _on_commit(self, batch: Batch) -> None:
        if any(k in _WATCHED for k, _ in batch.puts) or any(
            k in _WATCHED for k, _ in batch.deletes
        ):
            self._dirty.set()

    def assignment_set(
        self, node_id: str, endpoints: EndpointIndex | None = None
    ) -> dict[Key, Message]:
        """Tasks on the node, the services and networks they use, and for each of those
        networks its endpoints."""
        if endpoints is None:
            endpoints = endpoint_index(self.state)
        items: dict[Key, Message] = {}
        for task in self.state.node_tasks(node_id):
            if task.status.state < pb.TASK_STATE_ASSIGNED:
                continue
            finished = task.status.state >= pb.TASK_STATE_COMPLETE
            if finished and task.desired_state > pb.TASK_STATE_RUNNING:
                continue
            items[("tasks", task.meta.id)] = task
            svc = self.state.services.get(task.service_id)
            if svc is not None:
                items[("services", svc.meta.id)] = svc
            for att in task.networks:
                net = self.state.networks.get(att.network_id)
                if net is not None:
                    items[("networks", net.meta.id)] = net
                    eps = endpoints.get(net.meta.id) or network_endpoints(net.meta.id, [])
                    items[("endpoints", net.meta.id)] = eps
        return items

    def _diff(
        self, sess: _Session, complete: bool, endpoints: EndpointIndex | None = None
    ) -> dpb.SessionMessage | None:
        current = self.assignment_set(sess.node_id, endpoints)
        changes = []
        for key, obj in current.items():
            version = obj.meta.version  # type: ignore[attr-defined]
            if complete or sess.sent.get(key) != version:
                changes.append(_assignment(key[0], obj, dpb.ASSIGNMENT_ACTION_UPDATE))
        if not complete:
            for key in sess.sent.keys() - current.keys():
                stub = _stub(key)
                changes.append(_assignment(key[0], stub, dpb.ASSIGNMENT_ACTION_REMOVE))
        if not changes and not complete:
            return None
        sess.sent = {k: v.meta.version for k, v in current.items()}  # type: ignore[attr-defined]
        msg = dpb.SessionMessage(
            session_id=sess.session_id,
            node_id=sess.node_id,
            heartbeat_period_ms=self.period_ms,
            managers=self._managers(),
            assignments=dpb.AssignmentsMessage(
                type=dpb.ASSIGNMENTS_TYPE_COMPLETE
                if complete
                else dpb.ASSIGNMENTS_TYPE_INCREMENTAL,
                changes=changes,
                applies_to=sess.seq,
                results_in=sess.seq + 1,
            ),
        )
        sess.seq += 1
        return msg

    async def run(self) -> None:
        """Push differences to sessions (batched: a burst of commits makes one message) and
        watch heartbeats."""
        monitor = asyncio.create_task(self._monitor())
        try:
            while True:
                await self._dirty.wait()
                await asyncio.sleep(0.02)
                self._dirty.clear()
                index = endpoint_index(self.state)
                for sess in list(self.sessions.values()):
                    msg = self._diff(sess, complete=False, endpoints=index)
                    if msg is not None:
                        sess.queue.put_nowait(msg)
        finally:
            monitor.cancel()
            for sess in self.sessions.values():
                sess.queue.put_nowait(None)

    async def _monitor(self) -> None:
        grace = self.period_ms / 1000 * self.cluster.config.heartbeat_grace
        while True:
            await asyncio.sleep(self.period_ms / 2000)
            now = time.monotonic()
            stale = [
                n
                for n in self.state.nodes.values()
                if n.status.state == pb.NODE_STATE_READY
                and now - self.last_seen.setdefault(n.meta.id, now) > grace
            ]
            if not stale:
                continue
            async with self.cluster.lock:
                batch = Batch()
                for cur in stale:
                    node = self.state.nodes.get(cur.meta.id)
                    if node is None or node.status.state != pb.NODE_STATE_READY:
                        continue
                    down = pb.Node()
                    down.CopyFrom(node)
                    down.status.state = pb.NODE_STATE_DOWN
                    down.status.message = "heartbeat failure"
                    batch.update("nodes", down)
                    sess = self.sessions.pop(node.meta.id, None)
                    if sess is not None:
                        sess.queue.put_nowait(None)
                    log.warning(
                        "node %s (%s) missed heartbeats: marked down",
                        node.meta.id,
                        node.description.hostname,
                    )
                if len(batch):
                    await self.cluster.commit(batch)
            self._kick(None)

    # ------------------------------------------------------------------ RPC bodies

    async def register(self, req: dpb.RegisterRequest) -> dpb.RegisterResponse:
        if not req.description.hostname:
            raise InvalidArgument("registration needs the node's hostname")
        async with self.cluster.lock:
            cur = self.state.nodes.get(req.node_id) if req.node_id else None
            now = now_ms()
            if cur is None:
                node = pb.Node(
                    meta=pb.Meta(id=new_id(), created_at_ms=now, updated_at_ms=now),
                    spec=req.spec,
                    description=req.description,
                    status=pb.NodeStatus(state=pb.NODE_STATE_UNKNOWN, message="registered"),
                )
                await self.cluster.commit(Batch().create("nodes", node))
            else:
                node = pb.Node()
                node.CopyFrom(cur)
                node.description.CopyFrom(req.description)
                node.meta.updated_at_ms = now
                await self.cluster.commit(Batch().update("nodes", node))
        return dpb.RegisterResponse(node_id=node.meta.id, heartbeat_period_ms=self.period_ms)

    async def session(self, req: dpb.SessionRequest) -> AsyncIterator[dpb.SessionMessage]:
        async with self.cluster.lock:
            cur = self.state.nodes.get(req.node_id)
            if cur is None:
                raise NotFound(f"node {req.node_id!r} is not registered: register first")
            node = pb.Node()
            node.CopyFrom(cur)
            if req.description.hostname:
                node.description.CopyFrom(req.description)
            node.status.state = pb.NODE_STATE_READY
            node.status.message = ""
            node.status.last_heartbeat_ms = now_ms()
            await self.cluster.commit(Batch().update("nodes", node))
            old = self.sessions.get(node.meta.id)
            if old is not None:
                old.queue.put_nowait(None)
            sess = _Session(session_id=new_id(), node_id=node.meta.id)
            self.sessions[node.meta.id] = sess
            self.last_seen[node.meta.id] = time.monotonic()
            first = self._diff(sess, complete=True)
        self._kick(None)
        try:
            if first is not None:
                yield first
            while True:
                msg = await sess.queue.get()
                if msg is None:
                    return
                yield msg
        finally:
            if self.sessions.get(sess.node_id) is sess:
                del self.sessions[sess.node_id]

    def _check_session(self, node_id: str, session_id: str) -> None:
        sess = self.sessions.get(node_id)
        if sess is None or sess.session_id != session_id:
            raise NotFound("session expired or unknown: open a new session")

    async def heartbeat(self, req: dpb.HeartbeatRequest) -> dpb.HeartbeatResponse:
        self._check_session(req.node_id, req.session_id)
        self.last_seen[req.node_id] = time.monotonic()
        return dpb.HeartbeatResponse(period_ms=self.period_ms)

    async def update_task_status(
        self, req: dpb.UpdateTaskStatusRequest
    ) -> dpb.UpdateTaskStatusResponse:
        self._check_session(req.node_id, req.session_id)
        self.last_seen[req.node_id] = time.monotonic()
        async with self.cluster.lock:
            changed: list[pb.Task] = []
            for upd in req.updates:
                cur = self.state.tasks.get(upd.task_id)
                if cur is None or cur.node_id != req.node_id:
                    continue  # removed meanwhile, or not this node's: nothing to record
                if upd.status.state < cur.status.state or upd.status.state < pb.TASK_STATE_ACCEPTED:
                    continue  # states only move forward; agents report from ACCEPTED on
                if upd.status.state == cur.status.state and upd.status == cur.status:
                    continue
                task = pb.Task()
                task.CopyFrom(cur)
                task.status.CopyFrom(upd.status)
                if not task.status.timestamp_ms:
                    task.status.timestamp_ms = now_ms()
                task.meta.updated_at_ms = now_ms()
                changed.append(task)
            for i in range(0, len(changed), Store.MAX_OPS):
                batch = Batch()
                for task in changed[i : i + Store.MAX_OPS]:
                    batch.update("tasks", task)
                await self.cluster.commit(batch)
        for sid in {t.service_id for t in changed}:
            self._kick(sid)
        return dpb.UpdateTaskStatusResponse()

    async def publish_logs(
        self, messages: AsyncIterator[dpb.PublishLogsMessage]
    ) -> dpb.PublishLogsResponse:
        async for m in messages:
            self._check_session(m.node_id, m.session_id)
            task = self.state.tasks.get(m.task_id)
            if task is None:
                continue
            name = f"{task.service_name}.{task.slot or task.node_id}.{task.meta.id}"
            self.logs.publish(
                cpb.LogLine(
                    task_id=m.task_id,
                    task_name=name,
                    node_id=m.node_id,
                    stream=m.stream,
                    timestamp_ms=m.timestamp_ms or now_ms(),
                    data=m.data,
                )
            )
        return dpb.PublishLogsResponse()


def _assignment(kind: str, obj: Any, action: Any) -> dpb.Assignment:
    a = dpb.Assignment(action=action)
    getattr(a, _ITEM_FIELD[kind]).CopyFrom(obj)
    return a


def _stub(key: Key) -> Message:
    """A REMOVE carries only the ID of what is gone."""
    kind, obj_id = key
    obj = {
        "tasks": pb.Task,
        "networks": pb.Network,
        "services": pb.Service,
        "endpoints": dpb.NetworkEndpoints,
    }[kind]()
    obj.meta.id = obj_id  # type: ignore[attr-defined]
    return obj
