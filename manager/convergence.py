"""Whether a service's current spec is real everywhere: pure (state and agents' reports in).

`docker service create` waits until tasks run, and a request sent right after it returns can
still fail: another host's balancer has not heard of the new tasks yet. Here a service is
converged only when

- as many tasks as it wants are ready (RUNNING, and HEALTHY if it has a check: the agent sets
  `ready_ms`) at its current spec, and no task of an older spec is still meant to run; and
- every host concerned has programmed exactly the ready tasks (its agent's ProgrammedView):
  every Ready host that serves the routing mesh when the service publishes in ingress mode,
  and every Ready host with a task or an attachment on one of the service's other networks
  (its resolvers and balancers answer for the service there).

A host's report comes from the records its resolvers, balancers and FDB were built from in
one pass, so "programmed" means all three; it is observation the leader keeps in memory (the
dispatcher), which a new leader gathers again from the next heartbeats.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from manager.ingress import publishes_ingress
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb

RUNNING = pb.TASK_STATE_RUNNING
# Hosts named in `waiting` at most (the rest are counted).
MAX_NAMED = 5


def service_convergence(
    svc: pb.Service,
    tasks: Iterable[pb.Task],
    nodes: Mapping[str, pb.Node],
    attachments: Iterable[pb.Attachment],
    programmed: Mapping[str, pb.ProgrammedView],
    ingress_id: str = "",
) -> cpb.ServiceConvergence:
    """`tasks`: every task of the cluster (other services' tasks say which hosts are on the
    service's networks); `programmed`: each node's latest report; `ingress_id`: the ingress
    network's ID (its hosts are the mesh's, not the network's)."""
    tasks = list(tasks)
    own = [t for t in tasks if t.service_id == svc.meta.id and t.desired_state == RUNNING]
    ready = {t.meta.id for t in own if t.status.state == RUNNING and t.status.ready_ms > 0}
    current = [t for t in own if t.spec_version == svc.spec_version and t.meta.id in ready]
    wanted = svc.spec.replicated.replicas if svc.spec.WhichOneof("mode") != "global" else len(own)
    out = cpb.ServiceConvergence(tasks_ready=len(current), tasks_wanted=wanted)
    if len(current) < wanted:
        out.waiting.append(f"{len(current)} of {wanted} tasks ready")
    elif len(own) > len(current):
        out.waiting.append(f"{len(own) - len(current)} task(s) of an older spec still running")
    concerned = _concerned(svc, tasks, nodes, attachments, ingress_id)
    want_ids = sorted(ready)
    lagging: list[str] = []
    for node_id in sorted(concerned):
        view = programmed.get(node_id)
        got = _programmed_tasks(view, svc.meta.id) if view is not None else None
        host = nodes[node_id].description.hostname or node_id
        if got is None:
            lagging.append(f"{host}: no report yet")
        elif concerned[node_id] and view is not None and not view.mesh:
            lagging.append(f"{host}: routing mesh not up")
        elif got != want_ids:
            have = len(set(got) & ready)
            lagging.append(f"{host}: programmed {have} of {len(want_ids)} tasks")
    out.hosts_concerned = len(concerned)
    out.hosts_programmed = len(concerned) - len(lagging)
    out.waiting.extend(lagging[:MAX_NAMED])
    if len(lagging) > MAX_NAMED:
        out.waiting.append(f"and {len(lagging) - MAX_NAMED} more hosts")
    out.converged = not out.waiting
    return out


def _concerned(
    svc: pb.Service,
    tasks: list[pb.Task],
    nodes: Mapping[str, pb.Node],
    attachments: Iterable[pb.Attachment],
    ingress_id: str,
) -> dict[str, bool]:
    """Ready node ID -> whether it is concerned as a routing-mesh host (else as a host on one
    of the service's networks)."""
    ready_nodes = {n for n, node in nodes.items() if node.status.state == pb.NODE_STATE_READY}
    out: dict[str, bool] = {}
    if publishes_ingress(svc.spec):
        for n in ready_nodes:
            if "nftables" not in nodes[n].description.unavailable:
                out[n] = True
    nets = {a.network_id for t in tasks if t.service_id == svc.meta.id for a in t.networks}
    nets |= {v.network_id for v in svc.endpoint.virtual_ips}
    nets.discard(ingress_id)
    for t in tasks:
        on_nets = any(a.network_id in nets for a in t.networks)
        if on_nets and t.desired_state == RUNNING and t.node_id in ready_nodes:
            out.setdefault(t.node_id, False)
    for att in attachments:
        if att.node_id in ready_nodes and att.network.network_id in nets:
            out.setdefault(att.node_id, False)
    return out


def _programmed_tasks(view: pb.ProgrammedView, service_id: str) -> list[str]:
    for s in view.services:
        if s.service_id == service_id:
            return list(s.task_ids)
    return []
