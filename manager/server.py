"""A manager process: gRPC edge, leadership, and the leader's control loops.

RPC handlers are built from the service descriptors rather than written out one by one, so the
three rules every RPC follows live in one place:
- user errors (OvnetError) become their gRPC status with the message unchanged; anything else
  is a bug and is logged, and only then reported as INTERNAL;
- a follower forwards Control calls to the leader (ovctl can talk to any manager);
- a follower refuses Dispatcher calls with UNAVAILABLE naming the leader, so agents reconnect
  there (a session is long-lived state that belongs on the leader).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory

from manager.cluster import Cluster, ManagerConfig
from manager.controlapi import ControlAPI
from manager.dispatcher import Dispatcher
from manager.election import Election
from manager.errors import OvnetError, Unavailable
from manager.ingress import ensure_default_ingress
from manager.keymanager import KeyManager
from manager.logbroker import LogBroker
from manager.reconciler import Reconciler
from manager.store import EtcdClient, Store
from proto import control_pb2, control_pb2_grpc, dispatcher_pb2
from proto import control_pb2 as cpb

log = logging.getLogger(__name__)


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass
class ServerOptions:
    listen: str = "127.0.0.1:4242"
    advertise: str = ""
    etcd: tuple[str, ...] = ("127.0.0.1:2379",)
    prefix: str = "/ovnet"
    manager_id: str = ""
    election_ttl: int = 3


class Leadership:
    """What exists only while this manager leads."""

    def __init__(
        self, cluster: Cluster, keys: KeyManager, managers: Callable[[], list[str]]
    ) -> None:
        self.cluster = cluster
        self.keys = keys
        self.logs = LogBroker()
        self.reconciler = Reconciler(cluster, self.logs)
        self.dispatcher = Dispatcher(cluster, self.logs, self.reconciler.kick, managers, keys)
        self.control = ControlAPI(
            cluster, self.logs, self.reconciler.kick, gossip_status=self.dispatcher.gossip_status
        )
        self.tasks = [
            asyncio.create_task(self.reconciler.run(), name="reconciler"),
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
        ]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


class Manager:
    def __init__(self, opts: ServerOptions, config: ManagerConfig) -> None:
        self.opts = opts
        self.config = config
        self.etcd = EtcdClient(list(opts.etcd))
        self.store = Store(self.etcd, opts.prefix)
        self.election = Election(
            self.etcd, self.store, opts.manager_id, opts.advertise or opts.listen, opts.election_ttl
        )
        self.leading: Leadership | None = None
        self.manager_addrs: dict[str, str] = {}
        self._leader_channel: tuple[str, grpc.aio.Channel] | None = None
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            [
                self._handlers("Control", control_pb2, self._control_target),
                self._handlers("Dispatcher", dispatcher_pb2, self._dispatcher_target),
            ]
        )
        self.port = self.server.add_insecure_port(opts.listen)
        self._election_task: asyncio.Task[None] | None = None
        self._peers_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.server.start()
        self._election_task = asyncio.create_task(
            self.election.run(self._on_elected, self._on_deposed), name="election"
        )
        self._peers_task = asyncio.create_task(self._track_managers(), name="managers")

    async def stop(self) -> None:
        if self._election_task is not None:
            self._election_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._election_task
        if self._peers_task is not None:
            self._peers_task.cancel()
        if self.leading is not None:
            await self.leading.stop()
            self.leading = None
        await self.election.resign()
        await self.server.stop(grace=1.0)
        if self._leader_channel is not None:
            await self._leader_channel[1].close()
        await self.etcd.close()

    async def _on_elected(self, fence_revision: int) -> None:
        self.store.set_fence(self.election.leader_key, fence_revision)
        cluster = await Cluster.load(self.store, self.config)
        keys = KeyManager(self.store)
        await keys.load()
        # Before serving: a service that publishes a port right after `swarm init`-like
        # startup finds the routing mesh there.
        async with cluster.lock:
            await ensure_default_ingress(cluster)
        self.leading = Leadership(cluster, keys, self.manager_list)

    async def _on_deposed(self) -> None:
        self.store.set_fence(self.election.leader_key, -1)  # nothing can match: no writes
        if self.leading is not None:
            await self.leading.stop()
            self.leading = None

    async def _track_managers(self) -> None:
        """Keep the managers' advertised addresses, to forward to the leader and to tell agents
        where they can fail over to."""
        prefix = self.store.key("managers", "")
        while True:
            try:
                rev, kvs = await self.etcd.get_prefix(prefix)
                self.manager_addrs = {
                    kv.key[len(prefix) :].decode(): kv.value.decode() for kv in kvs
                }
                async for update in self.etcd.watch_prefix(prefix, rev + 1):
                    if update.resync:
                        self.manager_addrs = {}
                    for ev in update.events:
                        mid = ev.kv.key[len(prefix) :].decode()
                        if ev.kind == "put":
                            self.manager_addrs[mid] = ev.kv.value.decode()
                        else:
                            self.manager_addrs.pop(mid, None)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.5)

    def manager_list(self) -> list[str]:
        return sorted(self.manager_addrs.values())

    def leader_addr(self) -> str:
        return self.manager_addrs.get(self.election.leader_id, "")

    # ------------------------------------------------------------------ routing

    def _not_leader(self) -> Unavailable:
        addr = self.leader_addr()
        where = f"the leader is at {addr}" if addr else "no leader is elected yet; retry shortly"
        return Unavailable(f"manager {self.opts.manager_id} is not the leader: {where}")

    def _control_target(self) -> Any:
        return self.leading.control if self.leading is not None else None

    def _dispatcher_target(self) -> Any:
        if self.leading is None:
            raise self._not_leader()
        return self.leading.dispatcher

    async def _leader_stub(self) -> control_pb2_grpc.ControlStub:
        addr = self.leader_addr()
        if not addr or self.election.leader_id == self.opts.manager_id:
            raise self._not_leader()
        if self._leader_channel is None or self._leader_channel[0] != addr:
            if self._leader_channel is not None:
                await self._leader_channel[1].close()
            self._leader_channel = (addr, grpc.aio.insecure_channel(addr))
        return control_pb2_grpc.ControlStub(self._leader_channel[1])

    async def get_cluster_info(self, _req: cpb.GetClusterInfoRequest) -> cpb.GetClusterInfoResponse:
        resp = cpb.GetClusterInfoResponse(leader_id=self.election.leader_id)
        for mid, addr in sorted(self.manager_addrs.items()):
            resp.managers.append(
                cpb.ManagerInfo(manager_id=mid, addr=addr, leader=mid == self.election.leader_id)
            )
        with contextlib.suppress(grpc.aio.AioRpcError):
            resp.etcd_revision = await self.etcd.revision()
        return resp

    def _handlers(
        self, service: str, module: Any, target: Callable[[], Any]
    ) -> grpc.GenericRpcHandler:
        desc = module.DESCRIPTOR.services_by_name[service]
        handlers = {}
        for method in desc.methods:
            req_cls = message_factory.GetMessageClass(method.input_type)
            resp_cls = message_factory.GetMessageClass(method.output_type)
            # A client-streaming body gets the request iterator in place of a request, so the
            # unary wrapper serves it too.
            fn = self._make_handler(service, method.name, target, method.server_streaming)
            kw = {
                "request_deserializer": req_cls.FromString,
                "response_serializer": resp_cls.SerializeToString,
            }
            if method.server_streaming:
                handlers[method.name] = grpc.unary_stream_rpc_method_handler(fn, **kw)
            elif method.client_streaming:
                handlers[method.name] = grpc.stream_unary_rpc_method_handler(fn, **kw)
            else:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(fn, **kw)
        return grpc.method_handlers_generic_handler(f"ovnet.v1.{service}", handlers)

    def _make_handler(
        self,
        service: str,
        name: str,
        target: Callable[[], Any],
        server_streaming: bool,
    ) -> Any:
        attr = snake(name)

        def resolve() -> Any:
            """The object serving this call here, or None: forward it to the leader."""
            if service == "Control" and name == "GetClusterInfo":
                return self
            return target()

        async def fail(context: grpc.aio.ServicerContext, e: BaseException) -> None:
            if isinstance(e, OvnetError):
                await context.abort(e.code, e.message)
            if isinstance(e, grpc.aio.AioRpcError):
                await context.abort(e.code(), e.details() or "")
            log.exception("internal error in %s.%s", service, name, exc_info=e)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}: {e!r}")

        if server_streaming:

            async def stream_handler(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    impl = resolve()
                    if impl is None:
                        stub = await self._leader_stub()
                        async for item in getattr(stub, name)(request):
                            yield item
                        return
                    async for item in getattr(impl, attr)(request):
                        yield item
                except asyncio.CancelledError:
                    raise
                except BaseException as e:
                    await fail(context, e)

            return stream_handler

        async def unary_handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                impl = resolve()
                if impl is None:
                    stub = await self._leader_stub()
                    return await getattr(stub, name)(request, timeout=30)
                return await getattr(impl, attr)(request)
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                await fail(context, e)

        return unary_handler
