"""Standalone tasks (`ovctl run`): what turns a spec into the record of one task on one node.

A standalone task is stored as a service (so that allocation, scheduling, the agents, DNS, logs
and removal need nothing new) whose spec carries `standalone`. Before it is created, this
module makes that spec say exactly what `docker run` means:

- one replica, on one node: the one asked for (hostname or ID), else the one the scheduler would
  pick now (least loaded among those that can run it), pinned there by a `node.id` constraint so
  that it is never moved elsewhere (a task of a node that is down waits for it);
- its name resolves to its own address (endpoint mode dnsrr, as a container's name on a
  user-defined network), on networks that were made `--attachable`;
- its ports are host-mode ports of that node (`-p 8081:80`), which the allocator keeps per node;
- no restart unless asked (Docker's `--restart no`).

Pure: it reads the cluster state and raises the API's errors; the control API commits.
"""

from __future__ import annotations

from manager.errors import FailedPrecondition, InvalidArgument, NotFound
from manager.scheduler import schedule, service_needs
from manager.state import ClusterState
from proto import objects_pb2 as pb

_PLACEHOLDER = "standalone-placement"


def prepare_standalone(spec: pb.ServiceSpec, state: ClusterState) -> None:
    """Check and complete a standalone task's spec in place (networks already resolved to
    IDs); raises InvalidArgument, NotFound or FailedPrecondition with what to do instead."""
    if spec.WhichOneof("mode") == "global":
        raise InvalidArgument("a standalone task (ovctl run) is one task: it cannot be global")
    if spec.replicated.replicas > 1:
        raise InvalidArgument("a standalone task (ovctl run) is one task: replicas must be 1")
    spec.replicated.replicas = 1
    for att in spec.networks:
        net = state.networks.get(att.target)
        if net is not None and not net.spec.attachable:
            raise FailedPrecondition(
                f"network {net.spec.name} is not attachable; create it with --attachable"
            )
    for port in spec.endpoint.ports:
        if port.publish_mode != pb.PUBLISH_MODE_HOST:
            raise InvalidArgument(
                f"a standalone task maps ports on its node (mode=host); target port "
                f"{port.target_port} asks for the routing mesh: use a service for that"
            )
    spec.endpoint.mode = pb.ENDPOINT_MODE_DNSRR
    if not spec.HasField("restart_policy"):
        spec.restart_policy.condition = pb.RESTART_CONDITION_NONE
    ref = spec.standalone.node_id
    if ref:
        try:
            node: pb.Node = state.resolve("nodes", ref)
        except NotFound:
            raise NotFound(f"node {ref!r} not found: see ovctl node ls") from None
        node_id = node.meta.id
    else:
        node_id = _least_loaded(spec, state)
    spec.standalone.node_id = node_id
    pin = f"node.id=={node_id}"
    if pin not in spec.placement.constraints:
        spec.placement.constraints.append(pin)


def listeners(report: pb.ListeningPorts | None) -> dict[tuple[int, int], str]:
    """(protocol, port) -> what holds it, from a node's report of its listening sockets: ports
    a mapping there would take from a program (the allocator refuses them, naming it)."""
    if report is None:
        return {}
    return {(p.protocol, p.port): p.holder or "a program" for p in report.ports}


def _least_loaded(spec: pb.ServiceSpec, state: ClusterState) -> str:
    """The node the scheduler would give the task now (its constraints and needs, the tasks
    already running); FailedPrecondition with the scheduler's reason when none can take it."""
    service = pb.Service(meta=pb.Meta(id=_PLACEHOLDER), spec=spec)
    task = pb.Task(meta=pb.Meta(id=_PLACEHOLDER), service_id=_PLACEHOLDER)
    running = [
        t
        for t in state.tasks.values()
        if t.desired_state <= pb.TASK_STATE_RUNNING
        and pb.TASK_STATE_ASSIGNED <= t.status.state <= pb.TASK_STATE_RUNNING
    ]
    needs = {_PLACEHOLDER: service_needs(service, state.networks)}
    result = schedule([task], list(state.nodes.values()), running, {_PLACEHOLDER: service}, needs)
    node_id = result.assignments.get(_PLACEHOLDER)
    if node_id is None:
        why = result.unschedulable.get(_PLACEHOLDER, "no node can take it")
        raise FailedPrecondition(f"no node for the task: {why}")
    return node_id
