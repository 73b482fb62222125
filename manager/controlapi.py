"""The Control service: what `ovctl` calls.

Each write validates first, allocates in memory, commits one etcd transaction, and only then
becomes visible; if the commit fails the allocation is released, so a refused or failed request
leaves etcd and the allocator exactly as they were.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from manager import attachments
from manager.ca import server as ca_server
from manager.ca.server import CertificateAuthority
from manager.cluster import Cluster, new_id, now_ms
from manager.convergence import service_convergence
from manager.endpoints import network_endpoints
from manager.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from manager.ingress import (
    CREATED_KEY,
    ingress_network,
    ingress_ports,
    port_label,
    publishes_ingress,
)
from manager.logbroker import LogBroker
from manager.servicespec import resolve_service_spec, store_spec
from manager.standalone import listeners, prepare_standalone
from manager.state import ClusterState
from manager.store import Batch, Store
from manager.validation import check_labels, normalize_network_spec
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb

RUNNING = pb.TASK_STATE_RUNNING


def _filtered(objs: Iterable[Any], name_of: Callable[[Any], str], req: Any) -> list[Any]:
    """Objects whose name starts with any of `req.name_prefixes` (if given) and that carry every
    label of `req.labels` ("k" or "k=v"), ordered by name then ID."""
    prefixes = list(req.name_prefixes)

    def keep(obj: Any) -> bool:
        name = name_of(obj)
        if prefixes and not any(name.startswith(p) for p in prefixes):
            return False
        labels = obj.spec.labels
        for f in req.labels:
            key, sep, value = f.partition("=")
            if key not in labels or (sep and labels[key] != value):
                return False
        return True

    return sorted((o for o in objs if keep(o)), key=lambda o: (name_of(o), o.meta.id))


def _mesh_ports(svc: pb.Service) -> list[pb.PortConfig]:
    """The service's ingress-mode ports, with their published ports once allocated."""
    allocated = [p for p in svc.endpoint.ports if p.publish_mode == pb.PUBLISH_MODE_INGRESS]
    return allocated or ingress_ports(svc.spec)


class ControlAPI:
    """RPC bodies over a leading Cluster; the gRPC edge (server.py) maps errors to statuses."""

    def __init__(
        self,
        cluster: Cluster,
        logs: LogBroker,
        kick: Any,
        gossip_status: Callable[[str], pb.GossipStatus | None] | None = None,
        ca: CertificateAuthority | None = None,
        ipsec_status: Callable[[str], pb.IpsecStatus | None] | None = None,
        listening_ports: Callable[[str], pb.ListeningPorts | None] | None = None,
        programmed: Mapping[str, pb.ProgrammedView] | None = None,
    ) -> None:
        """`gossip_status(node_id)`, `ipsec_status(node_id)`, `listening_ports(node_id)`: the
        latest reports of a node's agent (the dispatcher keeps them in memory). `ca`: the
        cluster CA, for join tokens."""
        self.cluster = cluster
        self.state = cluster.state
        self.logs = logs
        self._kick = kick
        self._gossip_status = gossip_status or (lambda _node_id: None)
        self._ipsec_status = ipsec_status or (lambda _node_id: None)
        self._listening_ports = listening_ports or (lambda _node_id: None)
        # Node ID -> what its agent last said it programmed (the dispatcher's, kept current).
        self._programmed: Mapping[str, pb.ProgrammedView] = {} if programmed is None else programmed
        self.ca = ca

    # ------------------------------------------------------------------ networks

    async def create_network(self, req: cpb.CreateNetworkRequest) -> cpb.CreateNetworkResponse:
        spec = pb.NetworkSpec()
        spec.CopyFrom(req.spec)
        normalize_network_spec(spec)
        async with self.cluster.lock:
            existing = self.state.names["networks"].get(spec.name)
            if existing is not None:
                raise AlreadyExists(f"network {spec.name!r} already exists (ID {existing})")
            if spec.ingress:
                for other in self.state.networks.values():
                    if other.spec.ingress:
                        raise AlreadyExists(
                            f"an ingress network already exists: {other.spec.name!r}; "
                            "a cluster has only one"
                        )
            net_id = new_id()
            alloc = self.cluster.allocator.allocate_network(net_id, spec)
            net = alloc.network(net_id, spec, now_ms())
            batch = Batch().create("networks", net).claim_name("networks", spec.name, net_id)
            if spec.ingress:
                # The cluster has had an ingress network: leaders stop making the default one.
                batch.put_key(CREATED_KEY, net_id.encode())
            try:
                await self.cluster.commit(batch)
            except BaseException:
                self.cluster.allocator.release_network(net)
                raise
        if spec.ingress:
            self._kick(None)  # every node gets its address on it
        return cpb.CreateNetworkResponse(network=net, warnings=self._network_warnings(net))

    def _network_warnings(self, net: pb.Network) -> list[str]:
        """What will not work yet on a network just created: an encrypted one with no Ready
        node able to encrypt (each agent says at registration whether its kernel can)."""
        if not net.spec.encrypted:
            return []
        ready = [n for n in self.state.nodes.values() if n.status.state == pb.NODE_STATE_READY]
        if any("ipsec" not in n.description.unavailable for n in ready):
            return []
        reasons = sorted({n.description.unavailable["ipsec"] for n in ready})
        why = f" ({'; '.join(reasons)})" if reasons else " (no node is Ready)"
        return [
            f"no Ready node can encrypt{why}: tasks on network {net.spec.name!r} will fail "
            "until a node that can joins"
        ]

    async def get_network(self, req: cpb.GetNetworkRequest) -> cpb.GetNetworkResponse:
        net: pb.Network = self.state.resolve("networks", req.network_ref)
        return cpb.GetNetworkResponse(
            network=net,
            ipsec=ipsec_links(net, self.state, self._ipsec_status, now_ms()),
            endpoints=network_endpoints(net, self.state),
        )

    async def list_networks(self, req: cpb.ListNetworksRequest) -> cpb.ListNetworksResponse:
        nets = _filtered(self.state.networks.values(), lambda n: n.spec.name, req)
        return cpb.ListNetworksResponse(networks=nets)

    async def remove_network(self, req: cpb.RemoveNetworkRequest) -> cpb.RemoveNetworkResponse:
        async with self.cluster.lock:
            net: pb.Network = self.state.resolve("networks", req.network_ref)
            if net.spec.ingress:
                self._check_ingress_unused(net)
            users = sorted(
                s.spec.name
                for s in self.state.services.values()
                if any(a.target == net.meta.id for a in s.spec.networks)
            )
            if users:
                raise FailedPrecondition(
                    f"network {net.spec.name!r} is in use by service(s) {', '.join(users)}: "
                    "remove them or detach them from the network first"
                )
            # Finished tasks kept as history do not count: their addresses go with the
            # network (the ingress network outlives the services that stopped publishing).
            attached = [
                t
                for t in self.state.tasks.values()
                if t.status.state < pb.TASK_STATE_COMPLETE
                and any(a.network_id == net.meta.id for a in t.networks)
            ]
            if attached:
                raise FailedPrecondition(
                    f"network {net.spec.name!r} still has {len(attached)} task(s) attached "
                    "that are shutting down; retry in a moment"
                )
            attachments.refuse_while_attached(net, self.state)
            batch = Batch().delete("networks", net.meta.id).release_name("networks", net.spec.name)
            # Nodes' addresses on it go in the same transaction, as far as one holds them; the
            # reconciler drops any left over (attachments to a network that is gone).
            holders = [
                n
                for n in self.state.nodes.values()
                if any(a.network_id == net.meta.id for a in n.attachments)
            ]
            for cur in holders[: Store.MAX_OPS - len(batch)]:
                node = pb.Node()
                node.CopyFrom(cur)
                kept = [a for a in node.attachments if a.network_id != net.meta.id]
                del node.attachments[:]
                node.attachments.extend(kept)
                node.meta.updated_at_ms = now_ms()
                batch.update("nodes", node)
            await self.cluster.commit(batch)
            self.cluster.allocator.release_network(net)
        if net.spec.ingress:
            self._kick(None)
        return cpb.RemoveNetworkResponse()

    def _check_ingress_unused(self, net: pb.Network) -> None:
        publishing = sorted(
            (s.spec.name, port_label(_mesh_ports(s)[0]))
            for s in self.state.services.values()
            if publishes_ingress(s.spec)
        )
        if publishing:
            names = ", ".join(f"{name} ({port})" for name, port in publishing)
            raise FailedPrecondition(
                f"ingress network {net.spec.name!r} is in use: service(s) {names} publish "
                "ports in ingress mode; remove those services or their published ports "
                "(or publish them with mode=host) first"
            )

    # ------------------------------------------------------------------ services

    async def create_service(self, req: cpb.CreateServiceRequest) -> cpb.CreateServiceResponse:
        spec = pb.ServiceSpec()
        spec.CopyFrom(req.spec)
        async with self.cluster.lock:
            network_ids = resolve_service_spec(self.state, spec)
            existing = self.state.names["services"].get(spec.name)
            if existing is not None:
                standalone = self.state.services[existing].spec.HasField("standalone")
                what = "task" if standalone else "service"
                raise AlreadyExists(f"{what} {spec.name!r} already exists (ID {existing})")
            held: dict[tuple[int, int], str] = {}
            if spec.HasField("standalone"):
                prepare_standalone(spec, self.state)
                held = listeners(self._listening_ports(spec.standalone.node_id))
            svc_id = new_id()
            endpoint = self.cluster.allocator.allocate_service(
                svc_id, spec, network_ids, held_on_node=held
            )
            now = now_ms()
            svc = pb.Service(
                meta=pb.Meta(id=svc_id, created_at_ms=now, updated_at_ms=now),
                spec=spec,
                endpoint=endpoint,
                spec_version=1,
            )
            batch = Batch().create("services", svc).claim_name("services", spec.name, svc_id)
            try:
                await self.cluster.commit(batch)
            except BaseException:
                self.cluster.allocator.release_endpoint(svc_id, endpoint)
                raise
        self._kick(svc_id)
        return cpb.CreateServiceResponse(service=svc)

    async def get_service(self, req: cpb.GetServiceRequest) -> cpb.GetServiceResponse:
        svc = self.state.resolve("services", req.service_ref)
        ingress = ingress_network(self.state.networks)
        return cpb.GetServiceResponse(
            service=svc,
            convergence=service_convergence(
                svc,
                self.state.tasks.values(),
                self.state.nodes,
                self.state.attachments.values(),
                self._programmed,
                ingress.meta.id if ingress is not None else "",
            ),
        )

    async def list_services(self, req: cpb.ListServicesRequest) -> cpb.ListServicesResponse:
        resp = cpb.ListServicesResponse()
        svcs = _filtered(self.state.services.values(), lambda s: s.spec.name, req)
        for svc in svcs:
            tasks = self.state.service_tasks(svc.meta.id)
            running = sum(
                1 for t in tasks if t.desired_state == RUNNING and t.status.state == RUNNING
            )
            if svc.spec.WhichOneof("mode") == "global":
                desired = sum(1 for t in tasks if t.desired_state == RUNNING)
            else:
                desired = svc.spec.replicated.replicas
            resp.services.append(svc)
            resp.running_tasks[svc.meta.id] = running
            resp.desired_tasks[svc.meta.id] = desired
        return resp

    async def update_service(self, req: cpb.UpdateServiceRequest) -> cpb.UpdateServiceResponse:
        async with self.cluster.lock:
            cur: pb.Service = self.state.resolve("services", req.service_ref)
            if req.version != cur.meta.version:
                raise FailedPrecondition(
                    f"update out of sequence: service {cur.spec.name!r} is at version "
                    f"{cur.meta.version}, the update was based on version {req.version}; "
                    "read it again and retry"
                )
            if req.rollback:
                if req.HasField("spec"):
                    raise InvalidArgument("a rollback takes no spec: it puts the previous one back")
                svc = await store_spec(self.cluster, cur, None)
            else:
                svc = await store_spec(self.cluster, cur, self._checked_update(cur, req.spec))
        self._kick(svc.meta.id)
        return cpb.UpdateServiceResponse(service=svc)

    @staticmethod
    def _checked_update(cur: pb.Service, requested: pb.ServiceSpec) -> pb.ServiceSpec:
        """The requested spec, with what an update may not change refused."""
        spec = pb.ServiceSpec()
        spec.CopyFrom(requested)
        if spec.name != cur.spec.name:
            raise InvalidArgument(
                f"a service cannot be renamed ({cur.spec.name!r} -> {spec.name!r}): "
                "create a new service instead"
            )
        if spec.WhichOneof("mode") is None:
            spec.replicated.replicas = 1
        if spec.WhichOneof("mode") != cur.spec.WhichOneof("mode"):
            raise InvalidArgument(
                f"service {cur.spec.name!r} is {cur.spec.WhichOneof('mode')}; its mode "
                "cannot be changed"
            )
        if spec.standalone != cur.spec.standalone:
            raise InvalidArgument(
                f"{cur.spec.name!r} is a standalone task on its node: remove it and run a "
                "new one rather than move it or make it a service"
            )
        return spec

    async def remove_service(self, req: cpb.RemoveServiceRequest) -> cpb.RemoveServiceResponse:
        async with self.cluster.lock:
            svc: pb.Service = self.state.resolve("services", req.service_ref)
            batch = Batch().delete("services", svc.meta.id).release_name("services", svc.spec.name)
            await self.cluster.commit(batch)
            self.cluster.allocator.release_service(svc)
        self._kick(svc.meta.id)
        return cpb.RemoveServiceResponse()

    async def service_logs(self, req: cpb.ServiceLogsRequest) -> AsyncIterator[cpb.LogLine]:
        if req.since_ms < 0:
            raise InvalidArgument(
                f"since_ms {req.since_ms} is negative: give a Unix time in milliseconds, "
                "or 0 for all the lines kept"
            )
        svc: pb.Service = self.state.resolve("services", req.service_ref)
        since = req.since_ms
        # Subscribed before the kept lines are read: nothing published meanwhile is missed
        # (the loop is single-threaded: no line lands between the two).
        follower = None
        if req.follow:

            def of_service(line: cpb.LogLine) -> bool:
                # A line older than `since` may arrive late (an agent that was cut off): skip it.
                task = self.state.tasks.get(line.task_id)
                return (
                    task is not None
                    and task.service_id == svc.meta.id
                    and line.timestamp_ms >= since
                )

            follower = self.logs.follow(of_service)
        try:
            task_ids = {t.meta.id for t in self.state.service_tasks(svc.meta.id)}
            for line in self.logs.lines(task_ids, int(req.tail), since):
                yield line
            while follower is not None:
                yield await follower.queue.get()
        finally:
            if follower is not None:
                self.logs.unfollow(follower)

    # ------------------------------------------------------------------ tasks

    async def get_task(self, req: cpb.GetTaskRequest) -> cpb.GetTaskResponse:
        return cpb.GetTaskResponse(task=self.state.resolve("tasks", req.task_ref))

    async def list_tasks(self, req: cpb.ListTasksRequest) -> cpb.ListTasksResponse:
        tasks: Iterable[pb.Task]
        if req.service_refs:
            ids = [self.state.resolve("services", r).meta.id for r in req.service_refs]
            tasks = [t for i in ids for t in self.state.service_tasks(i)]
        else:
            tasks = self.state.tasks.values()
        if req.node_refs:
            nodes = {self.state.resolve("nodes", r).meta.id for r in req.node_refs}
            tasks = [t for t in tasks if t.node_id in nodes]
        if req.desired_states:
            wanted = set(req.desired_states)
            tasks = [t for t in tasks if t.desired_state in wanted]
        ordered = sorted(
            tasks, key=lambda t: (t.service_name, t.slot, t.node_id, -t.meta.created_at_ms)
        )
        return cpb.ListTasksResponse(tasks=ordered)

    # ------------------------------------------------------------------ nodes

    async def get_node(self, req: cpb.GetNodeRequest) -> cpb.GetNodeResponse:
        node: pb.Node = self.state.resolve("nodes", req.node_ref)
        return cpb.GetNodeResponse(
            node=node,
            gossip=self._gossip_status(node.meta.id),
            ipsec=self._ipsec_status(node.meta.id),
        )

    async def list_nodes(self, req: cpb.ListNodesRequest) -> cpb.ListNodesResponse:
        nodes = _filtered(self.state.nodes.values(), lambda n: n.description.hostname, req)
        return cpb.ListNodesResponse(nodes=nodes)

    async def update_node(self, req: cpb.UpdateNodeRequest) -> cpb.UpdateNodeResponse:
        check_labels("node", dict(req.spec.labels))
        async with self.cluster.lock:
            cur: pb.Node = self.state.resolve("nodes", req.node_ref)
            if req.version != cur.meta.version:
                raise FailedPrecondition(
                    f"update out of sequence: node {cur.description.hostname!r} is at version "
                    f"{cur.meta.version}, the update was based on version {req.version}; "
                    "read it again and retry"
                )
            node = pb.Node()
            node.CopyFrom(cur)
            node.spec.CopyFrom(req.spec)
            node.meta.updated_at_ms = now_ms()
            await self.cluster.commit(Batch().update("nodes", node))
        self._kick(None)
        return cpb.UpdateNodeResponse(node=node)

    async def remove_node(self, req: cpb.RemoveNodeRequest) -> cpb.RemoveNodeResponse:
        async with self.cluster.lock:
            node: pb.Node = self.state.resolve("nodes", req.node_ref)
            if node.status.state == pb.NODE_STATE_READY and not req.force:
                raise FailedPrecondition(
                    f"node {node.description.hostname!r} ({node.meta.id}) is not down and can't "
                    "be removed: stop its agent first, or use --force"
                )
            # The tombstone goes in the same transaction: from then on every manager refuses
            # the node's certificate, which would otherwise stay valid until it expires.
            batch = Batch().delete("nodes", node.meta.id)
            batch.put_key((*ca_server.REMOVED_DIR, node.meta.id), ca_server.tombstone_value())
            # Its attachments (CNI containers) go with it, as many as the transaction holds;
            # the reconciler's next full pass releases any left (their node is gone).
            held = self.state.node_attachments(node.meta.id)[: Store.MAX_OPS - len(batch)]
            for att in held:
                batch.delete("attachments", att.meta.id)
            await self.cluster.commit(batch)
            self.cluster.allocator.release_attachments(node.attachments)
            self.cluster.allocator.release_attachments(att.network for att in held)
        self._kick(None)
        return cpb.RemoveNodeResponse()

    # ------------------------------------------------------------------ cluster

    async def get_join_token(self, req: cpb.GetJoinTokenRequest) -> cpb.GetJoinTokenResponse:
        """The current join token of a role; with `rotate`, a new one replaces it first (one
        fenced etcd write), and the old one stops working at once on every manager."""
        ca_server.check_join_role(req.role)
        if self.ca is None:
            raise FailedPrecondition("this manager runs without a cluster CA: no join tokens")
        async with self.cluster.lock:
            toks = await self.ca.join_tokens()
            if req.rotate:
                toks = ca_server.rotated(toks, req.role, self.ca.digest)
                batch = Batch().put_key(ca_server.TOKENS_KEY, toks.SerializeToString())
                await self.cluster.commit(batch)
        token = getattr(toks, req.role)
        if not token:
            raise FailedPrecondition(
                f"the cluster has no {req.role} join token: rotate one with "
                f"`ovctl cluster join-token {req.role} --rotate`"
            )
        return cpb.GetJoinTokenResponse(role=req.role, token=token)


def ipsec_links(
    net: pb.Network,
    state: ClusterState,
    report: Callable[[str], pb.IpsecStatus | None],
    now_ms: int,
) -> list[cpb.IpsecLink]:
    """For an encrypted network, each host with a running task on it, on ESP from each other
    such host, as its agent last reported (see IpsecLink)."""
    if not net.spec.encrypted:
        return []
    on_net = sorted(
        {
            t.node_id
            for t in state.tasks.values()
            if t.status.state == pb.TASK_STATE_RUNNING
            and any(a.network_id == net.meta.id for a in t.networks)
        }
    )
    nodes = [state.nodes[n] for n in on_net if n in state.nodes]
    out: list[cpb.IpsecLink] = []
    for node in nodes:
        rep = report(node.meta.id)
        by_addr = {p.addr: p for p in rep.peers} if rep is not None else {}
        for peer in nodes:
            if peer is node:
                continue
            name = peer.description.hostname
            seen = by_addr.get(peer.description.addr)
            if seen is None:
                state_text = "no report"
            elif seen.silent_since_ms == 0:
                state_text = "ok"
            else:
                silent_s = max(0, now_ms - seen.silent_since_ms) // 1000
                state_text = f"no ESP from {name} for {silent_s} s"
            out.append(cpb.IpsecLink(node=node.description.hostname, peer=name, state=state_text))
    return out
