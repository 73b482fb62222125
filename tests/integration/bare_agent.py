"""A bare Dispatcher client for integration tests: no agent code, only what the manager sees
of an agent. It joins with the worker token (a worker certificate; `ManagerCluster.join()`),
registers with a gossip port, holds a session (keeping what it assigns), heartbeats with a
gossip report, and makes single Dispatcher calls as its node (`call`). Stopping it (`close`)
is a host dying: its heartbeats stop and the manager marks it down after the grace.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from proto import dispatcher_pb2 as dpb
from proto import dispatcher_pb2_grpc
from proto import objects_pb2 as pb
from security.credentials import MANAGER_CHANNEL_OPTIONS, NodeCredentials

GOSSIP_PORT = 7946


class BareAgent:
    """Register, keep a session open (moving to whichever manager serves it), heartbeat every
    `period` seconds with `report`, and remember the latest GossipConfig received and every
    item the session currently assigns (`items`)."""

    def __init__(
        self,
        managers: list[str],
        creds: NodeCredentials,
        hostname: str,
        ip: str,
        period: float = 0.15,
    ) -> None:
        self.managers = managers
        self.creds = creds
        self.ip = ip
        self.period = period
        self.report: pb.GossipStatus | None = None
        self.gossip: dpb.GossipConfig | None = None
        self.configs_received = 0
        # (assignment kind, object ID) -> the object, as the session's messages leave it.
        self.items: dict[tuple[str, str], Any] = {}
        self.session_id = ""
        self._stop = threading.Event()
        self._call: Any = None
        desc = pb.NodeDescription(hostname=hostname, addr=ip, gossip_port=GOSSIP_PORT)
        self.node_id = self._rpc(
            lambda stub: stub.Register(dpb.RegisterRequest(description=desc), timeout=5)
        ).node_id
        assert self.node_id == creds.node_id  # the node is the certificate's CN
        self._threads = [
            threading.Thread(target=self._session_loop, daemon=True),
            threading.Thread(target=self._heartbeat_loop, daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def addr(self) -> str:
        return f"{self.ip}:{GOSSIP_PORT}"

    def _channel(self, manager: str) -> grpc.Channel:
        return grpc.secure_channel(
            manager, self.creds.channel_credentials(), options=MANAGER_CHANNEL_OPTIONS
        )

    def _rpc(self, call: Callable[[dispatcher_pb2_grpc.DispatcherStub], Any]) -> Any:
        """One unary call, to the first manager that serves it."""
        deadline = time.monotonic() + 15
        while True:
            for m in self.managers:
                with self._channel(m) as ch:
                    try:
                        return call(dispatcher_pb2_grpc.DispatcherStub(ch))
                    except grpc.RpcError:
                        pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no manager of {self.managers} served the call")
            time.sleep(0.1)

    def _session_loop(self) -> None:
        while not self._stop.is_set():
            for m in self.managers:
                if self._stop.is_set():
                    return
                with self._channel(m) as ch, contextlib.suppress(grpc.RpcError):
                    stub = dispatcher_pb2_grpc.DispatcherStub(ch)
                    self._call = stub.Session(dpb.SessionRequest(node_id=self.node_id))
                    for msg in self._call:
                        self.session_id = msg.session_id
                        self._apply(msg.assignments)
                time.sleep(0.05)

    def _apply(self, assignments: dpb.AssignmentsMessage) -> None:
        complete = assignments.type == dpb.ASSIGNMENTS_TYPE_COMPLETE
        items = {} if complete else dict(self.items)
        for change in assignments.changes:
            kind = change.WhichOneof("item")
            if kind is None:
                continue
            obj = getattr(change, kind)
            if change.action == dpb.ASSIGNMENT_ACTION_REMOVE:
                items.pop((kind, obj.meta.id), None)
            else:
                items[(kind, obj.meta.id)] = obj
            if kind == "gossip":
                self.gossip = change.gossip
                self.configs_received += 1
        self.items = items

    def ids(self, kind: str) -> set[str]:
        """IDs of the items of one kind ("network", "attachment", ...) assigned now."""
        return {obj_id for k, obj_id in self.items if k == kind}

    def call(self, method: str, request: Message, manager: str | None = None) -> Any:
        """One unary Dispatcher call as this node, to `manager` (default: the first); a
        refusal is raised (grpc.RpcError), not retried."""
        with self._channel(manager or self.managers[0]) as ch:
            return getattr(dispatcher_pb2_grpc.DispatcherStub(ch), method)(request, timeout=10)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.period):
            if not self.session_id:
                continue
            req = dpb.HeartbeatRequest(node_id=self.node_id, session_id=self.session_id)
            if self.report is not None:
                req.gossip.CopyFrom(self.report)
            for m in self.managers:
                with self._channel(m) as ch, contextlib.suppress(grpc.RpcError):
                    dispatcher_pb2_grpc.DispatcherStub(ch).Heartbeat(req, timeout=2)
                    break

    def seeds(self) -> set[tuple[str, str]]:
        g = self.gossip
        return {(p.node_id, p.addr) for p in g.seeds} if g is not None else set()

    def key(self) -> bytes:
        assert self.gossip is not None and self.gossip.keys
        return bytes(self.gossip.keys[0])

    def close(self) -> None:
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
        for t in self._threads:
            t.join(5)
