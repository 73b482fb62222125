"""A manager process: its listeners, leadership, and the leader's control loops.

Two listeners, because gRPC Python can require a client certificate or not ask for one, not
ask for one optionally: the control listener (`listen`) requires a certificate signed by the
cluster root, so a caller without one is refused in the TLS handshake; the join listener
(`join_listen`) asks for none, serves the chain [manager cert, root] so a joining node can pin
the root against its token, and answers only NodeCA.IssueNodeCertificate (and the standard
gRPC health check, for balancers without a client certificate: manager/health.py, which also
adds server reflection to the control listener). Both serve this manager's certificate
(manager/identity.py) through dynamic credentials, so renewing it needs no restart. The
handlers themselves are built in manager/rpcedge.py; this module decides what serves each call:
- a follower forwards Control calls to the leader (ovctl can talk to any manager);
- a follower refuses Dispatcher calls with UNAVAILABLE naming the leader, so agents reconnect
  there (a session is long-lived state that belongs on the leader);
- the caller is who its client certificate says, and a removed node's certificate is refused
  (the tombstones are watched).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from manager.ca import authz
from manager.ca import server as ca_server
from manager.ca.authz import Peer
from manager.ca.server import CertificateAuthority
from manager.cluster import Cluster, ManagerConfig
from manager.controlapi import ControlAPI
from manager.dispatcher import Dispatcher
from manager.doctor import Doctor
from manager.election import Election
from manager.errors import Unauthenticated, Unavailable
from manager.health import HealthReporter
from manager.identity import ServingCerts, own_credentials, renew_forever
from manager.ingress import ensure_default_ingress
from manager.keymanager import GOSSIP, IPSEC, KeyManager
from manager.logbroker import LogBroker
from manager.reconciler import Reconciler
from manager.rpcedge import RpcEdge, service_roles
from manager.store import Batch, Store
from manager.store.etcd import EtcdClient, EtcdTLS
from manager.webui import server as webui
from osutil.hostport import next_port
from proto import control_pb2 as cpb
from proto import control_pb2_grpc
from proto import objects_pb2 as pb
from security import pki
from security.credentials import CERT_FILE, KEY_FILE, MANAGER_CHANNEL_OPTIONS, NodeCredentials

log = logging.getLogger(__name__)

TLS_DIRNAME = "tls"


@dataclass
class ServerOptions:
    listen: str = "127.0.0.1:4242"
    advertise: str = ""
    etcd: tuple[str, ...] = ("127.0.0.1:2379",)
    prefix: str = "/ovnet"
    manager_id: str = ""
    election_ttl: int = 3
    join_listen: str = ""  # default: the control listener's port + 1
    state_dir: Path = Path("/var/lib/ovnet/manager")
    kek: bytes = b""
    cert_lifetime: dt.timedelta = pki.DEFAULT_CERT_LIFETIME
    key_rotation_interval: float = 43200.0
    etcd_tls: EtcdTLS | None = None
    # Without credentials in state_dir: join through an existing manager's join listener.
    join_token: str = ""
    join_addr: str = ""
    # The web view's HTTPS listener (manager/webui); empty: no web view.
    ui_listen: str = ""


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
            ipsec_status=self.dispatcher.ipsec_status,
            listening_ports=self.dispatcher.listening_ports,
            programmed=self.dispatcher.programmed,
            ca=ca,
        )
        self.doctor = Doctor(cluster.state, self.dispatcher)
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
        self.join_listen = opts.join_listen or next_port(opts.listen)
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
        self.server: grpc.aio.Server | None = None
        self.join_server: grpc.aio.Server | None = None
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.edge = RpcEdge(self)
        self.health = HealthReporter(lambda: self.etcd.probe(timeout=1.0), self.health_role)
        self.ui: webui.WebUI | None = None
        # Each leader's cluster tells it of every task first recorded RUNNING (the metrics'
        # scheduling delay, manager/metrics.py); None: nobody asked.
        self.task_running: Callable[[pb.Task, int], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def public_addr(self) -> str:
        return self.opts.advertise or self.opts.listen

    @property
    def tls_dir(self) -> Path:
        return self.opts.state_dir / TLS_DIRNAME

    async def start(self) -> None:
        """Unlock the CA, get this manager's certificate, then serve. CAError: cannot start
        (not initialized, wrong key-encryption key, join refused...)."""
        self.ca = await self._load_ca()
        self.certs = ServingCerts(await self._own_credentials(self.ca))
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(self.edge.handlers(join=False))
        self.port = self.server.add_secure_port(
            self.opts.listen, self.certs.server_credentials(join=False)
        )
        self.join_server = grpc.aio.server()
        self.join_server.add_generic_rpc_handlers(self.edge.handlers(join=True))
        self.join_server.add_secure_port(self.join_listen, self.certs.server_credentials(join=True))
        self.health.add_to(self.server, reflect=True)
        self.health.add_to(self.join_server, reflect=False)
        await self.health.refresh()  # not the servicer's default SERVING before the first probe
        await self.server.start()
        await self.join_server.start()
        if self.opts.ui_listen:
            self.ui = webui.WebUI(
                self.opts.ui_listen,
                webui.advertise_host(self.opts.ui_listen, self.public_addr),
                (self.tls_dir / CERT_FILE, self.tls_dir / KEY_FILE),
                lambda: self.certs.creds.root_pem if self.certs else b"",
                self.ca,
                lambda: webui.manager_view(self),
            )
            await self.ui.start()
        self._tasks = [
            asyncio.create_task(
                self.election.run(self._on_elected, self._on_deposed), name="election"
            ),
            asyncio.create_task(self._track_managers(), name="managers"),
            asyncio.create_task(self._track_removed(), name="removed"),
            asyncio.create_task(renew_forever(self.ca, self.certs, self.tls_dir), name="renew"),
            asyncio.create_task(self.health.run(), name="health"),
        ]

    async def stop(self) -> None:
        await self.health.shutdown()
        if self.ui is not None:
            await self.ui.stop()
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

    def status_line(self) -> str:
        """One line for systemd's STATUS= (`systemctl status ovnet-manager`): this manager's
        role and, on the leader, how the cluster stands."""
        if self.leading is not None:
            state = self.leading.cluster.state
            ready = sum(n.status.state == pb.NODE_STATE_READY for n in state.nodes.values())
            running = sum(t.status.state == pb.TASK_STATE_RUNNING for t in state.tasks.values())
            return (
                f"leader, {ready} of {len(state.nodes)} nodes ready, "
                f"{len(state.services)} services, {running} tasks running"
            )
        leader = self.election.leader_id
        if not leader:
            return "no leader elected yet"
        return f"follower, leader {leader} at {self.leader_addr() or '?'}"

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
        o = self.opts
        return await own_credentials(
            self.tls_dir,
            ca,
            o.manager_id,
            join_token=o.join_token,
            join_addr=o.join_addr,
            prefix=o.prefix,
        )

    async def _on_elected(self, fence_revision: int) -> None:
        self.store.set_fence(self.election.leader_key, fence_revision)
        cluster = await Cluster.load(self.store, self.config)
        cluster.subscribe(self._note_removed)
        cluster.on_task_running = self.task_running
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
        self.health.kick()

    async def _on_deposed(self) -> None:
        self.store.set_fence(self.election.leader_key, -1)  # nothing can match: no writes
        if self.leading is not None:
            await self.leading.stop()
            self.leading = None
        self.health.kick()

    def _note_removed(self, batch: Batch) -> None:
        """On the leader, a removal takes effect at commit, before the watch reports it."""
        n = len(ca_server.REMOVED_DIR)
        for parts, _ in batch.key_puts:
            if parts[:n] == ca_server.REMOVED_DIR and len(parts) == n + 1:
                self.removed.add(parts[n])

    async def _track_managers(self) -> None:
        """Keep the managers' advertised addresses, to forward to the leader and to tell agents
        where they can fail over to."""

        def apply(current: dict[str, bytes]) -> None:
            self.manager_addrs = {k: v.decode() for k, v in current.items()}

        await self.etcd.mirror_prefix(self.store.key("managers", ""), apply)

    async def _track_removed(self) -> None:
        def apply(current: dict[str, bytes]) -> None:
            self.removed = set(current)

        await self.etcd.mirror_prefix(self.store.key(*ca_server.REMOVED_DIR, ""), apply)

    def manager_list(self) -> list[str]:
        return sorted(self.manager_addrs.values())

    def leader_addr(self) -> str:
        return self.manager_addrs.get(self.election.leader_id, "")

    def health_role(self) -> tuple[bool, str]:
        """(this manager leads, the leader's address a follower forwards Control calls to), as
        `target` and `leader_stub` decide them, for the health statuses."""
        leader = self.election.leader_id
        forward_to = self.leader_addr() if leader and leader != self.opts.manager_id else ""
        return self.leading is not None, forward_to

    # ------------------------------------------------------------------ routing

    def _not_leader(self) -> Unavailable:
        addr = self.leader_addr()
        where = f"the leader is at {addr}" if addr else "no leader is elected yet; retry shortly"
        return Unavailable(f"manager {self.opts.manager_id} is not the leader: {where}")

    def target(self, service: str, name: str) -> Any:
        """The object serving this call here, or None: forward it to the leader."""
        if service == "NodeCA":
            return self.ca
        if service == "Dispatcher":
            if self.leading is None:
                raise self._not_leader()
            return self.leading.doctor if name == "ReportDoctor" else self.leading.dispatcher
        if name == "GetClusterInfo":
            return self
        if name == "CreateUiToken" and self.leading is not None:
            return self.ui or webui.NoWebUI()
        if self.leading is None:
            return None
        return self.leading.doctor if name == "Doctor" else self.leading.control

    async def leader_stub(self) -> control_pb2_grpc.ControlStub:
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

    def peer(self, context: grpc.aio.ServicerContext) -> Peer:
        if self.ca is None:
            raise Unavailable(f"manager {self.opts.manager_id} is starting; retry shortly")
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise Unauthenticated("no client certificate")
        if self._peers is None or self._peers.root is not self.ca.root:
            self._peers = authz.PeerCache(self.ca.root)
        return self._peers.peer(pems[0], pki.utcnow())
