"""What each namespace's load-balancing table must hold, from the endpoint records: pure.

Three kinds of namespaces get a table (see agent/lb):

* a task's sandbox: each service VIP on the task's networks → the service's enabled tasks
  (DNAT of the task's own connections, as Swarm's per-container IPVS does);
* the host's ingress sandbox: each port published in ingress mode → the service's enabled tasks
  on the ingress network, anywhere in the cluster, masqueraded to this host's ingress address
  so that replies come back through here (the routing mesh);
* the host itself: each ingress-mode port → the ingress sandbox, and each host-mode port of a
  local task → that task, with the client's address kept (from the host's own tasks).

Everything comes from gossip records (which include this host's own), so the tables keep
following the tasks while every manager is down; the services of the assignment set only add
published ports that have no task at all yet, so that those fail fast instead of hanging.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping

from agent.endpoints import EndpointRecord
from agent.lb.plan import LbSpec, PortTarget
from proto import objects_pb2 as pb

# The interface of the ingress sandbox on the ingress network (its only overlay leg).
INGRESS_IF = "eth0"

_PROTO_NAMES = {pb.PROTOCOL_TCP: "tcp", pb.PROTOCOL_UDP: "udp"}


def vip_spec(records: Iterable[EndpointRecord], view: frozenset[str]) -> LbSpec:
    """A task sandbox's table: every VIP on the networks in `view` → its enabled backends.

    A VIP whose tasks are all disabled stays with no backend (connections are refused at once,
    not sent to a draining or unhealthy task)."""
    vips: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        if rec.network_id not in view or not rec.is_task or not rec.vip:
            continue
        backends = vips[rec.vip]
        if rec.enabled:
            backends.add(rec.ip)
    return LbSpec(vips={v: tuple(sorted(b)) for v, b in vips.items()}, hooks=frozenset({"output"}))


def published_ports(
    records: Iterable[EndpointRecord],
    services: Iterable[pb.Service],
    ingress_id: str,
) -> dict[tuple[str, int], PortTarget]:
    """Ingress-mode ports → (target port, enabled tasks' ingress addresses)."""
    targets: dict[tuple[str, int], int] = {}
    backends: dict[tuple[str, int], set[str]] = defaultdict(set)
    for svc in services:
        if svc.spec.endpoint.mode != pb.ENDPOINT_MODE_VIP:
            continue
        for port in svc.endpoint.ports:
            if port.publish_mode == pb.PUBLISH_MODE_INGRESS and port.published_port:
                key = (_PROTO_NAMES.get(port.protocol, "tcp"), port.published_port)
                targets.setdefault(key, port.target_port)
                backends.setdefault(key, set())
    for rec in records:
        if rec.network_id != ingress_id or not rec.is_task:
            continue
        for p in rec.ports:
            if p.mode != "ingress" or not p.published:
                continue
            key = (p.protocol, p.published)
            targets[key] = p.target  # a record is fresher than a kept service
            if rec.enabled:
                backends[key].add(rec.ip)
            else:
                backends.setdefault(key, set())
    return {k: PortTarget(targets[k], tuple(sorted(backends[k]))) for k in targets}


def ingress_spec(ports: Mapping[tuple[str, int], PortTarget]) -> LbSpec:
    """The ingress sandbox's table: published port → a task anywhere, masqueraded."""
    return LbSpec(
        ports=dict(ports),
        hooks=frozenset({"prerouting"}),
        masquerade_oif=INGRESS_IF,
    )


def host_spec(
    ingress_ports: Iterable[tuple[str, int]],
    ingress_gw: str | None,
    host_mode: Mapping[tuple[str, int], PortTarget],
) -> LbSpec:
    """The host's table: ingress ports → the ingress sandbox (same port), host-mode ports →
    the local tasks' gwbridge addresses. Only packets addressed to the host itself match."""
    ports: dict[tuple[str, int], PortTarget] = {}
    if ingress_gw is not None:
        for key in ingress_ports:
            ports[key] = PortTarget(key[1], (ingress_gw,))
    for key, target in host_mode.items():
        ports.setdefault(key, target)  # a port is published once, cluster-wide
    return LbSpec(ports=ports, hooks=frozenset({"prerouting", "output"}), local_only=True)


def host_mode_ports(
    tasks: Iterable[pb.Task],
    services: Mapping[str, pb.Service],
    serving: Collection[str],
    gw_addresses: Mapping[str, str],
) -> dict[tuple[str, int], PortTarget]:
    """Host-mode ports of the tasks running on this host → the gwbridge addresses of those
    `serving` (a task without one, on internal networks only, cannot be published).

    From the host's own tasks and their services (which the agent keeps while every manager
    is down), not from gossip records: a task on no overlay network at all (`ovctl run -p`)
    has no record, and its port must open all the same."""
    targets: dict[tuple[str, int], tuple[int, str]] = {}
    backends: dict[tuple[str, int], set[str]] = defaultdict(set)
    for task in tasks:
        svc = services.get(task.service_id)
        if svc is None:
            continue
        gw = gw_addresses.get(task.meta.id)
        for p in svc.endpoint.ports:
            if p.publish_mode != pb.PUBLISH_MODE_HOST or not p.published_port:
                continue
            key = (_PROTO_NAMES.get(p.protocol, "tcp"), p.published_port)
            targets[key] = (p.target_port, p.published_ip)
            backends.setdefault(key, set())
            if task.meta.id in serving and gw:
                backends[key].add(gw)
    return {
        k: PortTarget(targets[k][0], tuple(sorted(backends[k])), targets[k][1]) for k in targets
    }


def programmed_view(records: Iterable[EndpointRecord], mesh: bool) -> pb.ProgrammedView:
    """Per service, the tasks this host now resolves and balances to (its enabled records on
    every network it is on), for the manager to tell when a change is real here; `mesh`:
    the host's ingress sandbox serves the published ports."""
    tasks: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        if rec.is_task:
            backends = tasks[rec.service_id]
            if rec.enabled:
                backends.add(rec.task_id)
    return pb.ProgrammedView(
        services=[
            pb.ProgrammedService(service_id=sid, task_ids=sorted(ids))
            for sid, ids in sorted(tasks.items())
        ],
        mesh=mesh,
    )
