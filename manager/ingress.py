"""The ingress network of the routing mesh: which services publish on it, and who holds an
address there.

A port published in ingress mode is open on every host and load balanced over the ingress
network to the service's tasks wherever they run. That takes three kinds of allocation, all
made by the leader: the ingress network itself (one per cluster, made at first election as
`swarm init` does), an address on it for each task of a publishing service (appended after the
service's own networks), and an address on it for each node (`Node.attachments`), which is
where a host's routing mesh sends connections from.

The default network is made at most once per cluster: the transaction that creates an ingress
network also writes `{prefix}/ingress/created`, and a leader only makes the default one while
that key is absent. A user who removes the ingress network therefore keeps it removed.

The helpers here are pure (state in, decisions out) except `ensure_default_ingress`, the one
step that reads etcd.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from manager.allocator import Allocator
from manager.cluster import Cluster, new_id, now_ms
from manager.errors import FailedPrecondition, OvnetError
from manager.store import Batch
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_NAME = "ingress"
# Under the cluster's key prefix; the value is the ID of the first ingress network.
CREATED_KEY: tuple[str, ...] = ("ingress", "created")
_PROTOCOLS = {pb.PROTOCOL_TCP: "tcp", pb.PROTOCOL_UDP: "udp"}


def ingress_network(networks: Mapping[str, pb.Network]) -> pb.Network | None:
    """The cluster's ingress network (the control API admits only one)."""
    found = [n for n in networks.values() if n.spec.ingress]
    return min(found, key=lambda n: n.meta.id) if found else None


def ingress_ports(spec: pb.ServiceSpec) -> list[pb.PortConfig]:
    """Ports the spec publishes through the routing mesh. dnsrr services cannot (validation
    refuses the combination), so only VIP services count."""
    if spec.endpoint.mode != pb.ENDPOINT_MODE_VIP:
        return []
    return [p for p in spec.endpoint.ports if p.publish_mode == pb.PUBLISH_MODE_INGRESS]


def publishes_ingress(spec: pb.ServiceSpec) -> bool:
    return bool(ingress_ports(spec))


def port_label(port: pb.PortConfig) -> str:
    proto = _PROTOCOLS.get(port.protocol, str(port.protocol))
    if port.published_port:
        return f"port {port.published_port}/{proto}"
    return f"target port {port.target_port}/{proto}"


def require_ingress(spec: pb.ServiceSpec, networks: Mapping[str, pb.Network]) -> None:
    """Refuse a spec that publishes through a routing mesh that does not exist."""
    ports = ingress_ports(spec)
    if ports and ingress_network(networks) is None:
        raise FailedPrecondition(
            f"no ingress network to publish {port_label(ports[0])} on: create one with "
            "`ovctl network create --ingress ingress`"
        )


def node_attachment_changes(
    nodes: Iterable[pb.Node], ingress: pb.Network | None, allocator: Allocator
) -> tuple[list[pb.Node], list[pb.Node]]:
    """Nodes whose ingress attachment must change: (with a new address, with stale ones dropped).

    A node keeps one attachment on the current ingress network; attachments on any other
    network (a removed ingress network) are dropped. New addresses are taken from `allocator`
    here: the caller releases them (`release_attachments`) if its commit fails. A full network
    leaves the node without one; a later pass retries.
    """
    allocated: list[pb.Node] = []
    cleaned: list[pb.Node] = []
    for cur in nodes:
        wanted = ingress.meta.id if ingress is not None else None
        keep = [a for a in cur.attachments if a.network_id == wanted]
        stale = len(keep) != len(cur.attachments) or len(keep) > 1
        node = pb.Node()
        node.CopyFrom(cur)
        if stale:
            del node.attachments[:]
            node.attachments.extend(keep[:1])
        if ingress is not None and not node.attachments:
            try:
                (addr,) = allocator.allocate_task([ingress.meta.id])
            except OvnetError as e:
                log.warning("no ingress address for node %s: %s", cur.meta.id, e.message)
            else:
                node.attachments.append(
                    pb.NetworkAttachment(network_id=ingress.meta.id, addresses=[addr])
                )
                node.meta.updated_at_ms = now_ms()
                allocated.append(node)
                continue
        if stale:
            node.meta.updated_at_ms = now_ms()
            cleaned.append(node)
    return allocated, cleaned


async def ensure_default_ingress(cluster: Cluster) -> pb.Network | None:
    """Create the default ingress network unless the cluster has (or ever had) one.

    Runs when a manager starts leading, before it serves requests. Errors are logged, not
    raised: a cluster without a routing mesh still works, and the next leader tries again."""
    state = cluster.state
    existing = ingress_network(state.networks)
    marker = await cluster.store.etcd.get(cluster.store.key(*CREATED_KEY))
    if marker is not None:
        return existing
    if existing is not None:
        # Made before the marker existed: remember it, so its removal is respected.
        try:
            await cluster.commit(
                Batch().put_key(CREATED_KEY, existing.meta.id.encode(), must_be_new=True)
            )
        except OvnetError as e:
            log.warning("could not record the ingress network: %s", e.message)
        return existing
    if DEFAULT_NAME in state.names["networks"]:
        log.warning(
            "no default ingress network: the name %r is taken by a network that is not one",
            DEFAULT_NAME,
        )
        return None
    spec = pb.NetworkSpec(name=DEFAULT_NAME, ingress=True)
    net_id = new_id()
    try:
        alloc = cluster.allocator.allocate_network(net_id, spec)
    except OvnetError as e:
        log.warning("no default ingress network: %s", e.message)
        return None
    net = alloc.network(net_id, spec, now_ms())
    batch = (
        Batch()
        .create("networks", net)
        .claim_name("networks", DEFAULT_NAME, net_id)
        .put_key(CREATED_KEY, net_id.encode(), must_be_new=True)
    )
    try:
        await cluster.commit(batch)
    except BaseException as e:
        cluster.allocator.release_network(net)
        if isinstance(e, OvnetError):
            log.warning("no default ingress network: %s", e.message)
            return None
        raise
    log.info("created the default ingress network %s (%s)", net_id, alloc.subnet)
    return net
