"""The web view's data: a plain JSON-able dict built from the leader's in-memory state.

Pure (no I/O, no clock): the server calls `build` at most once per coalescing period and sends
the whole snapshot; at this scale a full snapshot is simpler and more robust than diffs (a
page that missed an event is right again at the next one).
"""

from __future__ import annotations

from typing import Any, Protocol

from proto import objects_pb2 as pb

# How the page colours a task: its state's name, lowercased, is grouped into these classes.
STATE_CLASS = {
    "running": "running",
    "new": "starting",
    "pending": "starting",
    "assigned": "starting",
    "accepted": "starting",
    "preparing": "starting",
    "starting": "starting",
    "failed": "failed",
    "rejected": "failed",
    "orphaned": "failed",
    "complete": "shutdown",
    "shutdown": "shutdown",
    "remove": "shutdown",
}


class StateView(Protocol):
    """What `build` reads: manager.state.ClusterState fits."""

    revision: int

    @property
    def nodes(self) -> dict[str, pb.Node]: ...

    @property
    def services(self) -> dict[str, pb.Service]: ...

    @property
    def tasks(self) -> dict[str, pb.Task]: ...

    @property
    def networks(self) -> dict[str, pb.Network]: ...


def _enum(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def task_state(value: int) -> str:
    return _enum(pb.TaskState, value, "TASK_STATE_")


def _node(n: pb.Node) -> dict[str, Any]:
    return {
        "id": n.meta.id,
        "hostname": n.description.hostname or n.meta.id,
        "role": _enum(pb.NodeRole, n.spec.role, "NODE_ROLE_"),
        "state": _enum(pb.NodeState, n.status.state, "NODE_STATE_"),
        "availability": _enum(pb.NodeAvailability, n.spec.availability, "NODE_AVAILABILITY_"),
        "addr": n.description.addr,
    }


def _task(t: pb.Task) -> dict[str, Any]:
    state = task_state(t.status.state)
    what = t.spec.image or " ".join(t.spec.command)
    return {
        "id": t.meta.id,
        "name": f"{t.service_name}.{t.slot or t.node_id[:12]}",
        "service_id": t.service_id,
        "service": t.service_name,
        "slot": t.slot,
        "node_id": t.node_id,
        "state": state,
        "class": STATE_CLASS.get(state, "starting"),
        "desired": task_state(t.desired_state),
        # Wanted to run, or not stopped yet: what the page shows unless asked for history.
        "current": t.desired_state <= pb.TASK_STATE_RUNNING
        or t.status.state <= pb.TASK_STATE_RUNNING,
        "what": what[:80],
        "message": (t.status.err or t.status.message)[:200],
    }


def _port(p: pb.PortConfig) -> str:
    proto = "udp" if p.protocol == pb.PROTOCOL_UDP else "tcp"
    mode = " (host)" if p.publish_mode == pb.PUBLISH_MODE_HOST else ""
    return f"{p.published_port}:{p.target_port}/{proto}{mode}"


def _service(s: pb.Service, networks: dict[str, pb.Network]) -> dict[str, Any]:
    spec = s.spec
    ports = s.endpoint.ports if s.endpoint.ports else spec.endpoint.ports
    nets = []
    for a in spec.networks:
        net = networks.get(a.target)
        nets.append(net.spec.name if net is not None else a.target)
    return {
        "id": s.meta.id,
        "name": spec.name,
        "mode": "global" if spec.HasField("global") else "replicated",
        "replicas": spec.replicated.replicas if spec.HasField("replicated") else None,
        "ports": [_port(p) for p in ports if p.published_port],
        "networks": nets,
    }


def _network(n: pb.Network) -> dict[str, Any]:
    return {
        "id": n.meta.id,
        "name": n.spec.name,
        "subnet": n.subnet or n.spec.subnet,
        "encrypted": n.spec.encrypted,
        "ingress": n.spec.ingress,
        "attachable": n.spec.attachable,
    }


def build(
    state: StateView, *, manager_id: str, leader: bool, leader_addr: str = ""
) -> dict[str, Any]:
    """The snapshot the page renders: nodes (sorted by hostname), tasks (by service, slot),
    services and networks (by name)."""
    nodes = sorted(state.nodes.values(), key=lambda n: (n.description.hostname, n.meta.id))
    tasks = sorted(state.tasks.values(), key=lambda t: (t.service_name, t.slot, t.meta.id))
    services = sorted(state.services.values(), key=lambda s: s.spec.name)
    networks = sorted(state.networks.values(), key=lambda n: n.spec.name)
    return {
        "manager": manager_id,
        "leader": leader,
        "leader_addr": leader_addr,
        "revision": state.revision,
        "nodes": [_node(n) for n in nodes],
        "tasks": [_task(t) for t in tasks],
        "services": [_service(s, state.networks) for s in services],
        "networks": [_network(n) for n in networks],
    }


def not_leading(manager_id: str, leader_addr: str) -> dict[str, Any]:
    """What a follower sends: no cluster data (it holds none), and where the leader is."""
    return {
        "manager": manager_id,
        "leader": False,
        "leader_addr": leader_addr,
        "revision": 0,
        "nodes": [],
        "tasks": [],
        "services": [],
        "networks": [],
    }
