"""A manager process: gRPC edge, leadership, and the leader's control loops.

RPC handlers are built from the service descriptors rather than written out one by one, so the
three rules every RPC follows live in one place:
- user errors (OvnetError) become their gRPC status with the message unchanged; anything else
  is a bug and is logged, and only then reported as INTERNAL;
- a follower forwards Control calls to the leader (ovctl can talk to any manager);
- a follower refuses Dispatcher calls with UNAVAILABLE naming the leader, so agents reconnect
  there (a session is long-lived state that belongs on the leader);
- on the control listener, the caller is who its client certificate says (CN = node ID,
  OU = role), and may call only the methods whose `roles` option names its role
  (manager/ca/authz.py); a removed node's certificate is refused.

Two listeners, because gRPC Python can require a client certificate or not ask for one, not
ask for one optionally: the control listener (`listen`) requires a certificate signed by the
cluster root, so a caller without one is refused in the TLS handshake; the join listener
(`join_listen`) asks for none, serves the chain [manager cert, root] so a joining node can pin
the root against its token, and answers only NodeCA.IssueNodeCertificate. Both serve this
manager's certificate through dynamic credentials, so renewing it needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message

from agent.tls import NodeCredentials
from manager.ca import authz, pki
from manager.ca import server as ca_server
from manager.ca.authz import Peer
from manager.ca.server import CAError, CertificateAuthority, credentials_problem
from manager.cluster import Cluster, ManagerConfig
from manager.controlapi import ControlAPI
from manager.dispatcher import Dispatcher
from manager.election import Election
from manager.errors import OvnetError, Unauthenticated, Unavailable
from manager.ingress import ensure_default_ingress
from manager.keymanager import GOSSIP, IPSEC, KeyManager
from manager.logbroker import LogBroker
from manager.reconciler import Reconciler
from manager.store import Batch, EtcdClient, EtcdTLS, Store
from proto import ca_pb2, control_pb2, control_pb2_grpc, dispatcher_pb2
from proto import control_pb2 as cpb

log = logging.getLogger(__name__)

# Every service a manager serves, with the module holding its descriptor.
SERVICES: tuple[tuple[str, Any], ...] = (
    ("Control", control_pb2),
    ("Dispatcher", dispatcher_pb2),
    ("NodeCA", ca_pb2),
)
# The only method the join listener serves: a caller there has no certificate yet.
JOIN_METHOD = "NodeCA.IssueNodeCertificate"
# Managers are named by their certificates' SAN, never by address (see manager/ca/pki.py).
MANAGER_CHANNEL_OPTIONS = [("grpc.ssl_target_name_override", pki.MANAGER_SAN)]
TLS_DIRNAME = "tls"


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def join_listen_default(listen: str) -> str:
    """The join listener's address when none is given: the control listener's port + 1."""
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + 1}"


def service_roles() -> dict[str, tuple[str, ...]]:
    """Roles of every served method; ValueError if one declares none (see authz)."""
    return authz.service_roles(m.DESCRIPTOR.services_by_name[n] for n, m in SERVICES)


@dataclass
class ServerOptions:
    listen: str = "127.0.0.1:4242"
    advertise: str = ""
    etcd: tuple[str, ...] = ("127.0.0.1:2379",)
    prefix: str = "/ovnet"
    manager_id: str = ""
    election_ttl: int = 3
    join_listen: str = ""  # default: join_listen_default(listen)
    state_dir: Path = Path("/var/lib/ovnet/manager")
    kek: bytes = b""
    cert_lifetime: dt.timedelta = pki.DEFAULT_CERT_LIFETIME
    key_rotation_interval: float = 43200.0
    etcd_tls: EtcdTLS | None = None
    # Without credentials in state_dir: join through an existing manager's join listener.
    join_token: str = ""
    join_addr: str = ""


class ServingCerts:
    """This manager's credentials as both listeners serve them and as it presents them to other
    managers. `update` swaps them: gRPC asks each listener's fetch callback at every handshake,
    and the callback hands over the new configuration once."""

    def __init__(self, creds: NodeCredentials) -> None:
        self.creds = creds
        self.generation = 0

    def update(self, creds: NodeCredentials) -> None:
        self.creds = creds
        self.generation += 1

    def _config(self, join: bool) -> Any:
        c = self.creds
        if join:
            # The root goes with the chain: a joining node reads it and checks its digest
            # against the token before it trusts anything.
            return grpc.ssl_server_certificate_configuration([(c.key_pem, c.cert_pem + c.root_pem)])
        return grpc.ssl_server_certificate_configuration(
            [(c.key_pem, c.cert_pem)], root_certificates=c.root_pem
        )

    def server_credentials(self, join: bool) -> grpc.ServerCredentials:
        served = [self.generation]

        def fetch() -> Any:
            if served[0] == self.generation:
                return None
            served[0] = self.generation
            return self._config(join)

        return grpc.dynamic_ssl_server_credentials(
            self._config(join), fetch, require_client_authentication=not join
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        c = self.creds
        return grpc.ssl_channel_credentials(c.root_pem, c.key_pem, c.cert_pem)


class Leadership:
    """What exists only while this manager leads."""

    def __init__(
        self,
        cluster: Cluster,
        keys: KeyManager,
        managers: Callable[[], list[str]],
        ca: CertificateAuthority | None = None,
    ) -> None:
        self.cluster = cluster
        self.keys = keys
        self.logs = LogBroker()
        self.reconciler = Reconciler(cluster, self.logs)
        self.dispatcher = Dispatcher(cluster, self.logs, self.reconciler.kick, managers, keys)
        self.control = ControlAPI(
            cluster,
            self.logs,
            self.reconciler.kick,
            gossip_status=self.dispatcher.gossip_status,
            ca=ca,
        )
        self.tasks = [
            asyncio.create_task(self.reconciler.run(), name="reconciler"),
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(keys.run(), name="keys"),
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
        # Before anything else: an RPC without declared roles is a reason not to start.
        self.roles = service_roles()
        self.join_listen = opts.join_listen or join_listen_default(opts.listen)
        self.etcd = EtcdClient(list(opts.etcd), tls=opts.etcd_tls)
        self.store = Store(self.etcd, opts.prefix)
        self.election = Election(
            self.etcd, self.store, opts.manager_id, opts.advertise or opts.listen, opts.election_ttl
        )
        self.leading: Leadership | None = None
        self.manager_addrs: dict[str, str] = {}
        # Nodes removed from the cluster: their certificates stay valid until they expire, so
        # every call is checked against this (fed by a watch on the tombstones).
        self.removed: set[str] = set()
        self.ca: CertificateAuthority | None = None
        self._peers: authz.PeerCache | None = None
        self.certs: ServingCerts | None = None
        self._leader_channel: tuple[str, int, grpc.aio.Channel] | None = None
        self._wants_peer: dict[tuple[type, str], bool] = {}
        self.server: grpc.aio.Server | None = None
        self.join_server: grpc.aio.Server | None = None
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    @property
    def tls_dir(self) -> Path:
        return self.opts.state_dir / TLS_DIRNAME

    async def start(self) -> None:
        """Unlock the CA, get this manager's certificate, then serve. CAError: cannot start
        (not initialized, wrong key-encryption key, join refused...)."""
        self.ca = await self._load_ca()
        self.certs = ServingCerts(await self._own_credentials(self.ca))
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            [self._handlers(name, module, join=False) for name, module in SERVICES]
        )
        self.port = self.server.add_secure_port(
            self.opts.listen, self.certs.server_credentials(join=False)
        )
        self.join_server = grpc.aio.server()
        self.join_server.add_generic_rpc_handlers(
            [self._handlers(name, module, join=True) for name, module in SERVICES]
        )
        self.join_server.add_secure_port(self.join_listen, self.certs.server_credentials(join=True))
        await self.server.start()
        await self.join_server.start()
        self._tasks = [
            asyncio.create_task(
                self.election.run(self._on_elected, self._on_deposed), name="election"
            ),
            asyncio.create_task(self._track_managers(), name="managers"),
            asyncio.create_task(self._track_removed(), name="removed"),
            asyncio.create_task(self._renew_own_certificate(), name="renew"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.leading is not None:
            await self.leading.stop()
            self.leading = None
        await self.election.resign()
        for server in (self.server, self.join_server):
            if server is not None:
                await server.stop(grace=1.0)
        if self._leader_channel is not None:
            await self._leader_channel[2].close()
        await self.etcd.close()

    async def _load_ca(self) -> CertificateAuthority:
        """The CA from etcd, waiting for etcd if it is not up yet (as the election does)."""
        while True:
            try:
                return await CertificateAuthority.load(
                    self.store, self.opts.kek, self.opts.cert_lifetime
                )
            except grpc.aio.AioRpcError as e:
                log.warning(
                    "reading the cluster CA from etcd failed (%s: %s); retrying",
                    e.code().name,
                    e.details(),
                )
                await asyncio.sleep(1.0)

    async def _own_credentials(self, ca: CertificateAuthority) -> NodeCredentials:
        """This manager's certificate: the one in the state dir if it is still good here; else
        one obtained by joining (with a join token), else one issued by its own CA."""
        try:
            creds = NodeCredentials.load(self.tls_dir)
            problem = "" if creds is None else credentials_problem(creds, ca.root, pki.utcnow())
            if creds is not None and not problem and creds.info.role != pki.ROLE_MANAGER:
                problem = f"it is a {creds.info.role} certificate"
        except pki.CertError as e:
            creds, problem = None, str(e)
        if creds is not None and not problem:
            return creds
        if problem:
            log.warning(
                "the certificate in %s cannot be used (%s): issuing a new one",
                self.tls_dir,
                problem,
            )
        elif self.opts.join_token:
            creds = await self._join(ca)
            creds.save(self.tls_dir)
            return creds
        creds = ca.self_issue(self.opts.manager_id)
        creds.save(self.tls_dir)
        return creds

    async def _join(self, ca: CertificateAuthority) -> NodeCredentials:
        from agent import tls as agent_tls

        addr = self.opts.join_addr
        if not addr:
            raise CAError("--join-token needs --join ADDR: an existing manager's join listener")
        delay = 0.5
        while True:
            try:
                nc = await agent_tls.join(addr, self.opts.join_token)
                break
            except agent_tls.JoinError as e:
                raise CAError(f"joining the cluster through {addr} failed: {e}") from None
            except agent_tls.ManagerUnreachable as e:
                log.warning("%s; retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if nc.role != pki.ROLE_MANAGER:
            raise CAError(
                f"the join token gave a {nc.role} certificate: a manager joins with the manager "
                "token (`ovctl cluster join-token manager`)"
            )
        if pki.digest(pki.load_cert(nc.root_pem)) != ca.digest:
            raise CAError(
                f"the manager at {addr} belongs to another cluster than the one in etcd under "
                f"{self.opts.prefix} (their root CAs differ)"
            )
        log.info("joined the cluster as manager node %s", nc.node_id)
        return nc

    async def _renew_own_certificate(self) -> None:
        """Re-issue this manager's certificate at a random 50-80 % of its life and serve the new
        one from the next handshake on (connections already open keep going)."""
        assert self.ca is not None and self.certs is not None
        while True:
            ci = self.certs.creds.info
            wait = (pki.renew_at(ci) - pki.utcnow()).total_seconds()
            await asyncio.sleep(max(0.0, wait))
            try:
                creds = self.ca.self_issue(ci.node_id)
                await asyncio.to_thread(creds.save, self.tls_dir)
            except Exception:
                log.exception("renewing this manager's certificate failed; retrying")
                await asyncio.sleep(5)
                continue
            self.certs.update(creds)
            new = creds.info
            log.info(
                "renewed this manager's certificate: serial %x, valid until %s",
                new.serial,
                new.not_after.isoformat(),
            )

    async def _on_elected(self, fence_revision: int) -> None:
        self.store.set_fence(self.election.leader_key, fence_revision)
        cluster = await Cluster.load(self.store, self.config)
        cluster.subscribe(self._note_removed)
        keys = KeyManager(
            self.store,
            subsystems=(GOSSIP, IPSEC),
            rotation_interval=self.opts.key_rotation_interval,
        )
        await keys.load()
        # Before serving: a service that publishes a port right after `swarm init`-like
        # startup finds the routing mesh there.
        async with cluster.lock:
            await ensure_default_ingress(cluster)
        self.leading = Leadership(cluster, keys, self.manager_list, self.ca)

    async def _on_deposed(self) -> None:
        self.store.set_fence(self.election.leader_key, -1)  # nothing can match: no writes
        if self.leading is not None:
            await self.leading.stop()
            self.leading = None

    def _note_removed(self, batch: Batch) -> None:
        """On the leader, a removal takes effect at commit, before the watch reports it."""
        n = len(ca_server.REMOVED_DIR)
        for parts, _ in batch.key_puts:
            if parts[:n] == ca_server.REMOVED_DIR and len(parts) == n + 1:
                self.removed.add(parts[n])

    async def _track_prefix(
        self, parts: tuple[str, ...], apply: Callable[[dict[str, bytes]], None]
    ) -> None:
        """Keep `apply(current key suffix -> value)` called with the contents under a prefix."""
        prefix = self.store.key(*parts, "")
        while True:
            try:
                rev, kvs = await self.etcd.get_prefix(prefix)
                current = {kv.key[len(prefix) :].decode(): kv.value for kv in kvs}
                apply(current)
                async for update in self.etcd.watch_prefix(prefix, rev + 1):
                    if update.resync:
                        current = {}
                    for ev in update.events:
                        name = ev.kv.key[len(prefix) :].decode()
                        if ev.kind == "put":
                            current[name] = ev.kv.value
                        else:
                            current.pop(name, None)
                    apply(current)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.5)

    async def _track_managers(self) -> None:
        """Keep the managers' advertised addresses, to forward to the leader and to tell agents
        where they can fail over to."""

        def apply(current: dict[str, bytes]) -> None:
            self.manager_addrs = {k: v.decode() for k, v in current.items()}

        await self._track_prefix(("managers",), apply)

    async def _track_removed(self) -> None:
        def apply(current: dict[str, bytes]) -> None:
            self.removed = set(current)

        await self._track_prefix(ca_server.REMOVED_DIR, apply)

    def manager_list(self) -> list[str]:
        return sorted(self.manager_addrs.values())

    def leader_addr(self) -> str:
        return self.manager_addrs.get(self.election.leader_id, "")

    # ------------------------------------------------------------------ routing

    def _not_leader(self) -> Unavailable:
        addr = self.leader_addr()
        where = f"the leader is at {addr}" if addr else "no leader is elected yet; retry shortly"
        return Unavailable(f"manager {self.opts.manager_id} is not the leader: {where}")

    def _target(self, service: str, name: str) -> Any:
        """The object serving this call here, or None: forward it to the leader."""
        if service == "NodeCA":
            return self.ca
        if service == "Dispatcher":
            if self.leading is None:
                raise self._not_leader()
            return self.leading.dispatcher
        if name == "GetClusterInfo":
            return self
        return self.leading.control if self.leading is not None else None

    async def _leader_stub(self) -> control_pb2_grpc.ControlStub:
        addr = self.leader_addr()
        if not addr or self.election.leader_id == self.opts.manager_id:
            raise self._not_leader()
        assert self.certs is not None
        gen = self.certs.generation
        if self._leader_channel is None or self._leader_channel[:2] != (addr, gen):
            if self._leader_channel is not None:
                await self._leader_channel[2].close()
            channel = grpc.aio.secure_channel(
                addr, self.certs.channel_credentials(), options=MANAGER_CHANNEL_OPTIONS
            )
            self._leader_channel = (addr, gen, channel)
        return control_pb2_grpc.ControlStub(self._leader_channel[2])

    async def get_cluster_info(self, _req: cpb.GetClusterInfoRequest) -> cpb.GetClusterInfoResponse:
        resp = cpb.GetClusterInfoResponse(leader_id=self.election.leader_id)
        for mid, addr in sorted(self.manager_addrs.items()):
            resp.managers.append(
                cpb.ManagerInfo(manager_id=mid, addr=addr, leader=mid == self.election.leader_id)
            )
        with contextlib.suppress(grpc.aio.AioRpcError):
            resp.etcd_revision = await self.etcd.revision()
        return resp

    # ------------------------------------------------------------------ authorization

    def _peer(self, context: grpc.aio.ServicerContext) -> Peer:
        if self.ca is None:
            raise Unavailable(f"manager {self.opts.manager_id} is starting; retry shortly")
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise Unauthenticated("no client certificate")
        if self._peers is None or self._peers.root is not self.ca.root:
            self._peers = authz.PeerCache(self.ca.root)
        return self._peers.peer(pems[0], pki.utcnow())

    def _authorize(self, peer: Peer, method: str, request: Any) -> None:
        """Check the caller against the method's roles and `request`'s node ID; an empty node
        ID on Register means the caller's own."""
        node_id = ""
        if isinstance(request, Message) and "node_id" in request.DESCRIPTOR.fields_by_name:
            if method == "Dispatcher.Register" and not request.node_id:  # type: ignore[attr-defined]
                request.node_id = peer.node_id  # type: ignore[attr-defined]
            node_id = request.node_id  # type: ignore[attr-defined]
        authz.authorize(peer, method, self.roles[method], self.removed, node_id)

    def _checked_stream(
        self, peer: Peer, method: str, requests: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        """A client stream whose every message is authorized like a unary request."""

        async def gen() -> AsyncIterator[Any]:
            async for m in requests:
                self._authorize(peer, method, m)
                yield m

        return gen()

    def _call(self, impl: Any, attr: str, request: Any, peer: Peer) -> Any:
        """impl.attr(request), with `peer=` for the bodies that take the caller."""
        key = (type(impl), attr)
        fn = getattr(impl, attr)
        wants = self._wants_peer.get(key)
        if wants is None:
            wants = self._wants_peer[key] = "peer" in inspect.signature(fn).parameters
        return fn(request, peer=peer) if wants else fn(request)

    # ------------------------------------------------------------------ handlers

    def _handlers(self, service: str, module: Any, *, join: bool) -> grpc.GenericRpcHandler:
        desc = module.DESCRIPTOR.services_by_name[service]
        handlers = {}
        for method in desc.methods:
            req_cls = message_factory.GetMessageClass(method.input_type)
            resp_cls = message_factory.GetMessageClass(method.output_type)
            full = f"{service}.{method.name}"
            if join and full != JOIN_METHOD:
                fn = self._join_refusal(full, method.server_streaming)
            else:
                # A client-streaming body gets the request iterator in place of a request, so
                # the unary wrapper serves it too.
                fn = self._make_handler(
                    service, method.name, method.server_streaming, method.client_streaming, join
                )
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

    def _join_refusal(self, method: str, server_streaming: bool) -> Any:
        message = (
            f"no client certificate: {self.join_listen} is the join listener, which serves only "
            f"{JOIN_METHOD}; call {method} on {self.opts.advertise or self.opts.listen} with this "
            "cluster's certificate (join the cluster first)"
        )

        async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def refuse_stream(
            _request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield None  # pragma: no cover (abort raises)

        return refuse_stream if server_streaming else refuse

    def _make_handler(
        self,
        service: str,
        name: str,
        server_streaming: bool,
        client_streaming: bool,
        join: bool,
    ) -> Any:
        attr = snake(name)
        full = f"{service}.{name}"
        anonymous = Peer(node_id="", role=authz.ANONYMOUS)

        def admit(request: Any, context: grpc.aio.ServicerContext) -> tuple[Peer, Any]:
            """The caller, and the request as the body gets it (client streams checked per
            message)."""
            if join:
                return anonymous, request
            peer = self._peer(context)
            if client_streaming:
                authz.authorize(peer, full, self.roles[full], self.removed)
                return peer, self._checked_stream(peer, full, request)
            self._authorize(peer, full, request)
            return peer, request

        async def fail(context: grpc.aio.ServicerContext, e: BaseException) -> None:
            if isinstance(e, OvnetError):
                await context.abort(e.code, e.message)
            if isinstance(e, grpc.aio.AioRpcError):
                await context.abort(e.code(), e.details() or "")
            log.exception("internal error in %s", full, exc_info=e)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}: {e!r}")

        if server_streaming:

            async def stream_handler(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    peer, request = admit(request, context)
                    impl = self._target(service, name)
                    if impl is None:
                        stub = await self._leader_stub()
                        async for item in getattr(stub, name)(request):
                            yield item
                        return
                    async for item in self._call(impl, attr, request, peer):
                        yield item
                except asyncio.CancelledError:
                    raise
                except BaseException as e:
                    await fail(context, e)

            return stream_handler

        async def unary_handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                peer, request = admit(request, context)
                impl = self._target(service, name)
                if impl is None:
                    stub = await self._leader_stub()
                    return await getattr(stub, name)(request, timeout=30)
                return await self._call(impl, attr, request, peer)
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                await fail(context, e)

        return unary_handler
