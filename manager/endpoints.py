"""Who holds an address on a network: what `ovctl network inspect` lists under Endpoints, as
`docker network inspect` lists Containers and Peers.

Four kinds of holders, all from the stored state (where an endpoint really lives and whether it
is healthy travels by gossip among agents; the manager shows what it allocated): service tasks
("task"), standalone tasks of `ovctl run` ("standalone"), containers joined through the CNI
plugin ("attachment") and nodes' own addresses on the ingress network ("node"). Pure.
"""

from __future__ import annotations

from manager.state import ClusterState, task_name
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb


def state_word(state: int) -> str:
    """TASK_STATE_RUNNING -> "running", the word `ovctl` prints for a state (ovctl's
    `enum_word`, which the manager cannot import)."""
    try:
        name = pb.TaskState.Name(state)  # type: ignore[arg-type]
    except ValueError:
        return str(state)
    return name.removeprefix("TASK_STATE_").lower().replace("_", "-")


def network_endpoints(net: pb.Network, state: ClusterState) -> list[cpb.NetworkEndpoint]:
    """Every address held on `net`: tasks not finished yet, attachments, nodes; ordered by
    (node hostname, kind, name)."""
    net_id = net.meta.id
    out: list[cpb.NetworkEndpoint] = []

    def add(
        kind: str,
        obj_id: str,
        name: str,
        node_id: str,
        att: pb.NetworkAttachment,
        word: str = "",
    ) -> None:
        for addr in att.addresses:
            out.append(
                cpb.NetworkEndpoint(
                    kind=kind,
                    id=obj_id,
                    name=name,
                    node_id=node_id,
                    node=state.hostname(node_id) if node_id else "",
                    address=addr,
                    state=word,
                )
            )

    for task in state.tasks.values():
        if task.status.state >= pb.TASK_STATE_COMPLETE:
            continue
        svc = state.services.get(task.service_id)
        standalone = svc is not None and svc.spec.HasField("standalone")
        kind, name = ("standalone", task.service_name) if standalone else ("task", task_name(task))
        for att in task.networks:
            if att.network_id == net_id:
                add(kind, task.meta.id, name, task.node_id, att, state_word(task.status.state))
    for attachment in state.attachments.values():
        if attachment.network.network_id == net_id:
            add(
                "attachment",
                attachment.meta.id,
                attachment.name,
                attachment.node_id,
                attachment.network,
            )
    for node in state.nodes.values():
        for att in node.attachments:
            if att.network_id == net_id:
                add("node", node.meta.id, node.description.hostname, node.meta.id, att)
    out.sort(key=lambda e: (e.node, e.kind, e.name, e.address))
    return out
