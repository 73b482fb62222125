"""Agent sessions: registration, assignments, task status, heartbeats, node liveness.

An agent's session stream first carries its complete assignment set (tasks placed on the node
and not finished, the networks and services they need, one GossipConfig: the gossip keyring
and a few seed peers, and the node itself), then only differences. A node holding an address on
the ingress network also gets that network and every service publishing a port in ingress mode,
task or no task: the routing mesh opens each published port on every host. Every node also gets
its attachments (containers joined through the CNI plugin, manager/attachments.py) and every
attachable network, attached or not: its agent offers each to the container runtime (a CNI
network config per network, so `podman network ls` lists them). Where endpoints
live is not the manager's to say: agents learn that from each other by gossip, which keeps
working while every manager is down. The dispatcher does not track events to build those
differences: after any commit it recomputes each session's set and diffs it against what that
session was last sent (by object version), which is cheap at this scale and cannot drift.

Heartbeats are kept in memory only (writing each one to etcd would cost a write per node per
period); a node's state is written when it changes: READY when a session opens, DOWN when
heartbeats stop for `heartbeat_grace` periods, each with the time it changed (`since_ms`: the
attachment reaper releases the attachments of a node down longer than its grace).
Heartbeats may carry the agent's gossip status; the latest one per node is kept in memory too,
for `ovctl node inspect`.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from manager import attachments
from manager.cluster import Cluster, new_id, now_ms
from manager.errors import InvalidArgument, NotFound
from manager.ingress import ingress_network, node_attachment_changes, publishes_ingress
from manager.keymanager import GOSSIP, IPSEC, KeyManager
from manager.logbroker import LogBroker
from manager.state import task_name
from manager.store import Batch, Store
from proto import control_pb2 as cpb
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass(frozen=True)
class _Shared:
    """Items every node may get whatever runs on it (see `Dispatcher._shared_items`)."""

    mesh_services: list[str] = field(default_factory=list)
    attachable: list[str] = field(default_factory=list)


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
    "gossip": "gossip",
    "nodes": "node",
    "ipsec": "ipsec",
    "attachments": "attachment",
}
# Kinds whose commits may change some session's set (gossip seeds follow nodes' state and
# addresses).
_WATCHED = {"tasks", "networks", "services", "nodes", "attachments"}

GOSSIP_KEY: Key = ("gossip", "gossip")
IPSEC_KEY: Key = ("ipsec", "ipsec")
# Seeds per node: enough that a join survives a few dead seeds, few enough that the
# GossipConfig stays small and each node is a seed of only ~this many others.
SEED_COUNT = 5


def gossip_addr(node: pb.Node) -> str:
    """The node's gossip endpoint as "ip:port" ("[ip]:port" for IPv6)."""
    host = node.description.addr
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{node.description.gossip_port}"


@functools.lru_cache(maxsize=65536)
def ring_position(node_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(node_id.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class SeedRing:
    """Every node that can serve as a gossip seed, placed on a hash ring by node ID.

    A node's seeds are the next SEED_COUNT nodes after its own position on the ring. That is
    deterministic (the same cluster state gives the same seeds, so they do not churn from one
    round to the next), spreads the join load (each node is a seed of about SEED_COUNT others,
    where "the first five by ID" would make five nodes everybody's seeds), changes little when
    a node comes or goes (only the few nodes just before it on the ring see a new seed), and
    keeps the seed graph connected: following "next on the ring" visits every node.
    """

    positions: tuple[int, ...] = ()
    peers: tuple[tuple[str, str], ...] = ()  # (node ID, "ip:port"), in ring order

    @classmethod
    def build(cls, nodes: Iterable[pb.Node]) -> SeedRing:
        """Nodes that are not down and have announced an address and a gossip port."""
        placed = sorted(
            (ring_position(n.meta.id), n.meta.id, gossip_addr(n))
            for n in nodes
            if n.status.state != pb.NODE_STATE_DOWN
            and n.description.addr
            and n.description.gossip_port
        )
        return cls(tuple(p for p, _, _ in placed), tuple((i, a) for _, i, a in placed))

    def seeds(self, node_id: str, count: int = SEED_COUNT) -> list[dpb.GossipPeer]:
        """Up to `count` seeds for `node_id`, never itself."""
        n = len(self.peers)
        start = bisect.bisect_right(self.positions, ring_position(node_id))
        out: list[dpb.GossipPeer] = []
        for i in range(n):
            peer_id, addr = self.peers[(start + i) % n]
            if peer_id == node_id:
                continue
            out.append(dpb.GossipPeer(node_id=peer_id, addr=addr))
            if len(out) == count:
                break
        return out


def gossip_config(keys: Sequence[bytes], seeds: Sequence[dpb.GossipPeer]) -> dpb.GossipConfig:
    """A session's gossip item, versioned by a digest of its content (the session diff compares
    versions, and this item has no etcd revision): it is sent again only when it changes."""
    msg = dpb.GossipConfig(meta=pb.Meta(id=GOSSIP_KEY[1]), keys=keys, seeds=seeds)
    msg.meta.version = _content_version(msg)
    return msg


def _content_version(msg: Message) -> int:
    """A digest of the message as its version (63 bits: the field is a uint64 compared for
    equality only), for items that have no etcd revision."""
    digest = hashlib.blake2b(msg.SerializeToString(deterministic=True), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def ipsec_config(ring: pb.Keyring) -> dpb.IpsecConfig:
    """A session's IPsec item (the whole keyring: agents need each key's tag), versioned by a
    digest of its content like `gossip_config`."""
    msg = dpb.IpsecConfig(meta=pb.Meta(id=IPSEC_KEY[1]), keys=ring.keys)
    msg.meta.version = _content_version(msg)
    return msg


class Dispatcher:
    def __init__(
        self,
        cluster: Cluster,
        logs: LogBroker,
        kick: Callable[[str | None], None],
        managers: Callable[[], list[str]],
        keys: KeyManager,
    ) -> None:
        self.cluster = cluster
        self.state = cluster.state
        self.logs = logs
        self._kick = kick
        self._managers = managers
        self.keys = keys
        self.period_ms = cluster.config.heartbeat_period_ms
        self.sessions: dict[str, _Session] = {}
        # A new leader gives every node a full grace period before judging it.
        start = time.monotonic()
        self.last_seen: dict[str, float] = {n: start for n in self.state.nodes}
        # Each node's latest gossip report: observation, kept in memory only (a write per
        # heartbeat would be the cost of storing it); a new leader starts without any.
        self.gossip: dict[str, pb.GossipStatus] = {}
        # The same for IPsec reports (agents with encrypted networks).
        self.ipsec: dict[str, pb.IpsecStatus] = {}
        self.listening: dict[str, pb.ListeningPorts] = {}
        # What each node has programmed (manager/convergence.py judges services by it).
        self.programmed: dict[str, pb.ProgrammedView] = {}
        self._dirty = asyncio.Event()
        # (state revision, what every node may get: IDs of services publishing through the
        # routing mesh, IDs of attachable networks)
        self._shared: tuple[int, _Shared] = (-1, _Shared())
        cluster.subscribe(self._on_commit)
        keys.subscribe(self._dirty.set)

    # ------------------------------------------------------------------ assignment sets

    def _on_commit(self, batch: Batch) -> None:
        for kind, obj_id in batch.deletes:
            if kind == "nodes":
                self.gossip.pop(obj_id, None)
                self.ipsec.pop(obj_id, None)
                self.listening.pop(obj_id, None)
                self.programmed.pop(obj_id, None)
        if any(k in _WATCHED for k, _ in batch.puts) or any(
            k in _WATCHED for k, _ in batch.deletes
        ):
            self._dirty.set()

    def _shared_items(self) -> _Shared:
        """Services publishing in ingress mode and attachable networks, recomputed once per
        state revision rather than once per session."""
        rev, shared = self._shared
        if rev != self.state.revision:
            shared = _Shared(
                mesh_services=sorted(
                    sid for sid, svc in self.state.services.items() if publishes_ingress(svc.spec)
                ),
                attachable=sorted(
                    nid
                    for nid, net in self.state.networks.items()
                    if net.spec.attachable and not net.spec.ingress
                ),
            )
            self._shared = (self.state.revision, shared)
        return shared

    def assignment_set(self, node_id: str, ring: SeedRing | None = None) -> dict[Key, Message]:
        """Tasks on the node, the services and networks they use, the gossip keys and
        seeds (`ring`: built once per round for every session), the IPsec keyring (every node
        gets it: a task on an encrypted network can land anywhere), the node itself, and with an
        ingress address the ingress network and every service publishing on it; the node's
        attachments and every attachable network."""
        if ring is None:
            ring = SeedRing.build(self.state.nodes.values())
        items: dict[Key, Message] = {
            GOSSIP_KEY: gossip_config(self.keys.keys(GOSSIP), ring.seeds(node_id)),
            IPSEC_KEY: ipsec_config(self.keys.keyring(IPSEC)),
        }
        shared = self._shared_items()
        me = self.state.nodes.get(node_id)
        if me is not None:
            items[("nodes", node_id)] = me
            mesh = False
            for att in me.attachments:
                net = self.state.networks.get(att.network_id)
                if net is not None:
                    items[("networks", net.meta.id)] = net
                    mesh = mesh or net.spec.ingress
            if mesh:
                for sid in shared.mesh_services:
                    items[("services", sid)] = self.state.services[sid]
            for nid in shared.attachable:
                items[("networks", nid)] = self.state.networks[nid]
            for attachment in self.state.node_attachments(node_id):
                items[("attachments", attachment.meta.id)] = attachment
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
        return items

    def _diff(
        self, sess: _Session, complete: bool, ring: SeedRing | None = None
    ) -> dpb.SessionMessage | None:
        current = self.assignment_set(sess.node_id, ring)
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
                ring = SeedRing.build(self.state.nodes.values())
                for sess in list(self.sessions.values()):
                    msg = self._diff(sess, complete=False, ring=ring)
                    if msg is not None:
                        sess.queue.put_nowait(msg)
        finally:
            monitor.cancel()
            for sess in self.sessions.values():
                sess.queue.put_nowait(None)

    async def _monitor(self) -> None:
        """Mark READY nodes without a heartbeat for `heartbeat_grace` periods DOWN.

        Time this manager's own event loop stood still is not held against a node: heartbeats
        that arrived meanwhile wait unread, and judging before reading them would mark a live
        node down (and replace its tasks) for the manager's stall. When a tick comes later
        than due, every deadline moves by the delay (`_forgive`)."""
        grace = self.period_ms / 1000 * self.cluster.config.heartbeat_grace
        tick = self.period_ms / 2000
        due = time.monotonic() + tick
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            late = now - due
            due = now + tick
            if late > tick:
                _forgive(self.last_seen, late, now)
                log.warning(
                    "dispatcher ran %.2f s late (event loop blocked): heartbeat deadlines "
                    "moved by as much",
                    late,
                )
                continue
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
                now = time.monotonic()
                for cur in stale:
                    node = self.state.nodes.get(cur.meta.id)
                    if node is None or node.status.state != pb.NODE_STATE_READY:
                        continue
                    if now - self.last_seen.get(node.meta.id, now) <= grace:
                        continue  # a session opened or a beat came while waiting for the lock
                    down = pb.Node()
                    down.CopyFrom(node)
                    down.status.state = pb.NODE_STATE_DOWN
                    down.status.message = "heartbeat failure"
                    down.status.since_ms = now_ms()
                    batch.update("nodes", down)
                    sess = self.sessions.pop(node.meta.id, None)
                    if sess is not None:
                        sess.queue.put_nowait(None)
                    log.warning(
                        "node %s (%s) sent no heartbeat for %.2f s (grace %.2f s): marked down",
                        node.meta.id,
                        node.description.hostname,
                        now - self.last_seen[node.meta.id],
                        grace,
                    )
                if len(batch):
                    await self.cluster.commit(batch)
            self._kick(None)

    # ------------------------------------------------------------------ RPC bodies

    async def register(self, req: dpb.RegisterRequest) -> dpb.RegisterResponse:
        """Create the node, or update its description. A node's ID is assigned when its
        certificate is issued (it is the certificate's CN, which the gRPC edge checks or fills
        in as `req.node_id`), so a new node is created under that ID; only a caller without
        one (tests driving the dispatcher directly) gets a fresh ID here."""
        if not req.description.hostname:
            raise InvalidArgument("registration needs the node's hostname")
        async with self.cluster.lock:
            node_id = req.node_id or new_id()
            cur = self.state.nodes.get(node_id)
            now = now_ms()
            if cur is None:
                node = pb.Node(
                    meta=pb.Meta(id=node_id, created_at_ms=now, updated_at_ms=now),
                    spec=req.spec,
                    description=req.description,
                    status=pb.NodeStatus(
                        state=pb.NODE_STATE_UNKNOWN, message="registered", since_ms=now
                    ),
                )
                # Its ingress address comes with it (the reconciler retries if none is free).
                allocator = self.cluster.allocator
                (attached, _) = node_attachment_changes(
                    [node], ingress_network(self.state.networks), allocator
                )
                if attached:
                    node = attached[0]
                try:
                    await self.cluster.commit(Batch().create("nodes", node))
                except BaseException:
                    allocator.release_attachments(node.attachments)
                    raise
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
            now = now_ms()
            if node.status.state != pb.NODE_STATE_READY or not node.status.since_ms:
                node.status.since_ms = now
            node.status.state = pb.NODE_STATE_READY
            node.status.message = ""
            node.status.last_heartbeat_ms = now
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
        if req.HasField("gossip"):
            self.gossip[req.node_id] = req.gossip
        if req.HasField("ipsec"):
            self.ipsec[req.node_id] = req.ipsec
        if req.HasField("listening"):
            self.listening[req.node_id] = req.listening
        if req.HasField("programmed"):
            self.programmed[req.node_id] = req.programmed
        return dpb.HeartbeatResponse(period_ms=self.period_ms)

    def gossip_status(self, node_id: str) -> pb.GossipStatus | None:
        """The node's latest gossip report to this leader, if any."""
        return self.gossip.get(node_id)

    def ipsec_status(self, node_id: str) -> pb.IpsecStatus | None:
        """The node's latest IPsec report to this leader, if any."""
        return self.ipsec.get(node_id)

    def listening_ports(self, node_id: str) -> pb.ListeningPorts | None:
        """The ports programs listen on at the node, as its agent last said, if it did."""
        return self.listening.get(node_id)

    async def update_task_status(
        self, req: dpb.UpdateTaskStatusRequest
    ) -> dpb.UpdateTaskStatusResponse:
        """Store what agents observed. States only move forward, but a report in the same
        state is news when anything else changed: a running task's health verdict and the
        time it became ready arrive that way, and rolling updates wait on them. A report
        without a timestamp that differs from the stored status in nothing else is a repeat
        (a resend after reconnecting), not a change."""
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
                status = pb.TaskStatus()
                status.CopyFrom(upd.status)
                if not status.timestamp_ms:
                    status.timestamp_ms = cur.status.timestamp_ms
                if status == cur.status:
                    continue
                if not upd.status.timestamp_ms:
                    status.timestamp_ms = now_ms()
                task = pb.Task()
                task.CopyFrom(cur)
                task.status.CopyFrom(status)
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

    async def attach(self, req: dpb.AttachRequest) -> dpb.AttachResponse:
        """An endpoint of the calling node on an attachable network (manager/attachments.py);
        the commit wakes the push loop, which sends it to the node's session."""
        return await attachments.attach(self.cluster, req)

    async def detach(self, req: dpb.DetachRequest) -> dpb.DetachResponse:
        """Release one of the calling node's attachments (manager/attachments.py)."""
        return await attachments.detach(self.cluster, req)

    async def publish_logs(
        self, messages: AsyncIterator[dpb.PublishLogsMessage]
    ) -> dpb.PublishLogsResponse:
        async for m in messages:
            self._check_session(m.node_id, m.session_id)
            task = self.state.tasks.get(m.task_id)
            if task is None:
                continue
            self.logs.publish(
                cpb.LogLine(
                    task_id=m.task_id,
                    task_name=task_name(task),
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
        "gossip": dpb.GossipConfig,
        "nodes": pb.Node,
        "attachments": pb.Attachment,
    }[kind]()
    obj.meta.id = obj_id  # type: ignore[attr-defined]
    return obj


def _forgive(last_seen: dict[str, float], delay: float, now: float) -> None:
    """Move every node's last heartbeat `delay` seconds later (never past `now`): time the
    manager could not read heartbeats does not count against a node."""
    for node_id, seen in last_seen.items():
        last_seen[node_id] = min(now, seen + delay)
