"""Attachments: a node's endpoints on attachable networks that no task owns.

A container someone else started (podman, containerd, Kubernetes) joins an attachable network
through the `ovnet-cni` plugin, which asks its node's agent, which asks the manager
(Dispatcher.Attach, swarmkit's AttachNetwork). The manager allocates the address and stores an
`Attachment` owned by the node; the agent builds the interface and gossips the endpoint, and
the plugin's DEL releases it (Dispatcher.Detach). A node may never say DEL (it died, it was
reinstalled), so the manager also releases a node's attachments itself: when the node is
removed (`ovctl node rm`, in the same transaction as the node) and once the node has been down
longer than `ManagerConfig.attachment_grace` (`reap`, a step of the reconciler's full pass).

What to refuse and what to release are decided by pure functions here (`check_request`,
`refuse_unattachable`, `detach_target`, `to_release`, `refuse_while_attached`); the I/O is at
the edge (`attach`, `detach`, `release`, `reap`), which keeps the allocator exactly in step
with etcd: an address is taken before the commit and given back if the commit fails, and given
back after a deletion only once etcd has accepted it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from manager.cluster import Cluster, new_id, now_ms
from manager.errors import FailedPrecondition, InvalidArgument, NotFound
from manager.state import ClusterState
from manager.store import Batch, Store
from manager.validation import check_name
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

# Linux interface names hold at most IFNAMSIZ - 1 = 15 bytes.
MAX_IFNAME = 15
# A container's default name: as many characters of its ID as `podman ps` shows.
SHORT_ID = 12


# ------------------------------------------------------------------ pure decisions


def require_node_id(node_id: str) -> None:
    """Attach and Detach speak for one node: the caller's (the gRPC edge checks it is)."""
    if not node_id:
        raise InvalidArgument("node_id is required: the ID of the node the container runs on")


def check_request(req: dpb.AttachRequest) -> None:
    """The fields an attach request must carry, and the names it may give, named when wrong."""
    if not req.container_id:
        raise InvalidArgument(
            "container_id is required: the runtime's ID of the container (CNI_CONTAINERID)"
        )
    if not req.ifname:
        raise InvalidArgument(
            "ifname is required: the interface to make in the container (CNI_IFNAME), e.g. eth0"
        )
    if len(req.ifname) > MAX_IFNAME or any(c in req.ifname for c in "/ \t\n:"):
        raise InvalidArgument(
            f"invalid ifname {req.ifname[:40]!r}: a Linux interface name has 1 to "
            f"{MAX_IFNAME} characters, without '/', ':' or blanks"
        )
    if req.name:
        check_name("attachment", req.name)
    for alias in req.aliases:
        check_name("alias", alias, dns=True)


def refuse_unattachable(net: pb.Network) -> None:
    """Containers join attachable networks only, and never the routing mesh's."""
    name = net.spec.name
    if net.spec.ingress:
        raise FailedPrecondition(
            f"network {name!r} is the ingress network: it carries the routing mesh and "
            "containers cannot join it; create an attachable network with "
            "`ovctl network create --attachable NAME`"
        )
    if not net.spec.attachable:
        raise FailedPrecondition(
            f"network {name!r} is not attachable: only service tasks can join it; create one "
            "with `ovctl network create --attachable NAME`"
        )


def new_attachment(
    req: dpb.AttachRequest, network_id: str, address: str, now: int
) -> pb.Attachment:
    """The object to store for `req`, holding `address` on the network."""
    return pb.Attachment(
        meta=pb.Meta(id=new_id(), created_at_ms=now, updated_at_ms=now),
        node_id=req.node_id,
        container_id=req.container_id,
        ifname=req.ifname,
        netns=req.netns,
        name=req.name or req.container_id[:SHORT_ID],
        network=pb.NetworkAttachment(
            network_id=network_id, addresses=[address], aliases=req.aliases
        ),
    )


def detach_target(state: ClusterState, req: dpb.DetachRequest) -> pb.Attachment | None:
    """The calling node's attachment the request names (None: there is none to release)."""
    require_node_id(req.node_id)
    if req.attachment_id:
        att = state.attachments.get(req.attachment_id)
        if att is not None and att.node_id != req.node_id:
            raise NotFound(
                f"attachment {req.attachment_id} is not one of node {req.node_id}'s: a node "
                "releases only its own attachments"
            )
        return att
    if not req.container_id or not req.ifname:
        raise InvalidArgument(
            "say which attachment to release: its attachment_id, or the container_id and "
            "ifname it was attached with"
        )
    return state.attachment_of(req.node_id, req.container_id, req.ifname)


def to_release(
    attachments: Iterable[pb.Attachment],
    nodes: Mapping[str, pb.Node],
    networks: Mapping[str, pb.Network],
    now: int,
    grace_s: float,
) -> list[tuple[pb.Attachment, str]]:
    """Attachments nobody will release, each with why (ordered by ID): their node is gone,
    or has been down longer than `grace_s` seconds at wall-clock `now` (ms), or their network
    is gone. A node down since a time not recorded (`since_ms` 0: marked down by a manager
    that did not record it) is not judged: only its removal releases its attachments."""
    out: list[tuple[pb.Attachment, str]] = []
    for att in sorted(attachments, key=lambda a: a.meta.id):
        node = nodes.get(att.node_id)
        if node is None:
            why = "its node is no longer in the cluster"
        elif att.network.network_id not in networks:
            why = "its network no longer exists"
        elif (
            node.status.state == pb.NODE_STATE_DOWN
            and node.status.since_ms
            and now - node.status.since_ms > grace_s * 1000
        ):
            down_s = (now - node.status.since_ms) // 1000
            why = (
                f"node {node.description.hostname} has been down for {down_s} s "
                f"(grace {grace_s:g} s)"
            )
        else:
            continue
        out.append((att, why))
    return out


def refuse_while_attached(net: pb.Network, state: ClusterState) -> None:
    """A network stays while containers are attached to it: their interfaces would lose
    their network under them, and only their nodes can remove those."""
    on_net = [a for a in state.attachments.values() if a.network.network_id == net.meta.id]
    if not on_net:
        return
    hosts = sorted({state.hostname(a.node_id) for a in on_net})
    raise FailedPrecondition(
        f"network {net.spec.name!r} has {len(on_net)} container attachment(s) on node(s) "
        f"{', '.join(hosts)}: remove the containers (podman rm / CNI DEL) first"
    )


# ------------------------------------------------------------------ edge


async def attach(cluster: Cluster, req: dpb.AttachRequest) -> dpb.AttachResponse:
    """Dispatcher.Attach: the node's attachment of (container ID, interface) on the network,
    made now or found (a repeated ADD gets the same attachment and address)."""
    async with cluster.lock:
        state = cluster.state
        require_node_id(req.node_id)
        if req.node_id not in state.nodes:
            raise NotFound(f"node {req.node_id!r} is not registered: register first")
        check_request(req)
        net: pb.Network = state.resolve("networks", req.network)
        refuse_unattachable(net)
        existing = state.attachment_of(req.node_id, req.container_id, req.ifname)
        if existing is not None:
            return _found(state, existing, net)
        (address,) = cluster.allocator.allocate_task([net.meta.id])
        att = new_attachment(req, net.meta.id, address, now_ms())
        try:
            await cluster.commit(Batch().create("attachments", att))
        except BaseException:
            cluster.allocator.release_attachments([att.network])
            raise
    log.info(
        "attached container %s (%s) of node %s to network %s at %s",
        att.container_id[:SHORT_ID],
        att.ifname,
        state.hostname(att.node_id),
        net.spec.name,
        address,
    )
    return dpb.AttachResponse(attachment=att, network=net)


def _found(state: ClusterState, att: pb.Attachment, net: pb.Network) -> dpb.AttachResponse:
    """A repeated request: the stored attachment, if it is on the network asked for."""
    if att.network.network_id != net.meta.id:
        held = state.networks.get(att.network.network_id)
        held_name = held.spec.name if held is not None else att.network.network_id
        raise FailedPrecondition(
            f"interface {att.ifname} of container {att.container_id[:SHORT_ID]} is already "
            f"attached to network {held_name!r}, not {net.spec.name!r}: detach it first "
            "(CNI DEL), or use another interface name"
        )
    return dpb.AttachResponse(attachment=att, network=net)


async def detach(cluster: Cluster, req: dpb.DetachRequest) -> dpb.DetachResponse:
    """Dispatcher.Detach: release the calling node's attachment; nothing to release is no
    error (a DEL may be repeated, or come for an ADD that never reached the manager)."""
    async with cluster.lock:
        att = detach_target(cluster.state, req)
        if att is None:
            return dpb.DetachResponse(released=False)
        await release(cluster, [att])
    log.info(
        "released attachment %s (container %s) of node %s",
        att.meta.id,
        att.container_id[:SHORT_ID],
        att.node_id,
    )
    return dpb.DetachResponse(released=True)


async def release(cluster: Cluster, attachments: Sequence[pb.Attachment]) -> None:
    """Delete `attachments` in transactions of at most Store.MAX_OPS operations, giving back
    each one's address once its deletion is stored. Callers hold `cluster.lock`."""
    for i in range(0, len(attachments), Store.MAX_OPS):
        chunk = attachments[i : i + Store.MAX_OPS]
        batch = Batch()
        for att in chunk:
            batch.delete("attachments", att.meta.id)
        await cluster.commit(batch)
        cluster.allocator.release_attachments(att.network for att in chunk)


async def reap(cluster: Cluster) -> int:
    """Release the attachments `to_release` names; how many. Callers hold `cluster.lock`."""
    state = cluster.state
    doomed = to_release(
        state.attachments.values(),
        state.nodes,
        state.networks,
        now_ms(),
        cluster.config.attachment_grace,
    )
    for att, why in doomed:
        log.warning(
            "releasing attachment %s (container %s, %s) of node %s: %s",
            att.meta.id,
            att.container_id[:SHORT_ID],
            ",".join(att.network.addresses),
            state.hostname(att.node_id),
            why,
        )
    await release(cluster, [att for att, _ in doomed])
    return len(doomed)
