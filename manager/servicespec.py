"""Giving a stored service a new spec: one path for `service update`, `service rollback` and
the orchestrator's rollback on failure, so that all three validate against the cluster,
reallocate the endpoint, version the spec and keep the previous one the same way.

Versions: a spec that changes what tasks run takes `highest_spec_version + 1` (never a number
used before, even after a rollback put an older one back), and starts an update (UPDATING);
a rollback puts the previous spec *and its version* back, so tasks still running from it are
current again and stay.
"""

from __future__ import annotations

from typing import Any

from manager import updater
from manager.cluster import Cluster, now_ms
from manager.errors import FailedPrecondition, InvalidArgument, NotFound
from manager.ingress import publishes_ingress, require_ingress
from manager.scheduler import parse_constraints
from manager.state import ClusterState
from manager.store import Batch
from manager.validation import check_service_spec
from proto import objects_pb2 as pb


def task_spec_of(spec: pb.ServiceSpec) -> tuple[Any, ...]:
    """What a running task is made from: a change here means tasks must be replaced. That
    includes its health check (copied into the task) and whether the service publishes through
    the routing mesh (its tasks then hold an address on the ingress network); which ports it
    publishes is not, as agents read those from the service."""
    return (
        spec.image,
        tuple(spec.command),
        tuple(spec.env),
        spec.workdir,
        tuple((n.target, tuple(n.aliases)) for n in spec.networks),
        spec.health_check.SerializeToString(deterministic=True),
        publishes_ingress(spec),
        spec.stop_grace_period_ms,
    )


def resolve_service_spec(state: ClusterState, spec: pb.ServiceSpec) -> list[str]:
    """Validate against cluster state; rewrite network targets to IDs (stored specs never
    depend on names, which can be reused). Returns the attached network IDs."""
    check_service_spec(spec)
    parse_constraints(list(spec.placement.constraints))
    ids = []
    for att in spec.networks:
        try:
            net: pb.Network = state.resolve("networks", att.target)
        except NotFound:
            raise NotFound(
                f"network {att.target!r} not found: create it with "
                f"'ovctl network create {att.target}' first"
            ) from None
        if net.spec.ingress:
            raise InvalidArgument(
                f"network {net.spec.name!r} is the ingress network; services reach it by "
                "publishing ports, not by attaching to it"
            )
        att.target = net.meta.id
        ids.append(net.meta.id)
    if len(set(ids)) != len(ids):
        raise InvalidArgument("the same network is attached more than once")
    require_ingress(spec, state.networks)
    return ids


def respecified(cur: pb.Service, spec: pb.ServiceSpec, now: int) -> pb.Service:
    """`cur` with `spec` (already resolved), the old one kept as previous_spec. A change of what
    tasks run, or any change to a paused update, starts an update."""
    svc = pb.Service()
    svc.CopyFrom(cur)
    svc.spec.CopyFrom(spec)
    svc.previous_spec.CopyFrom(cur.spec)
    svc.previous_spec_version = cur.spec_version
    highest = max(cur.highest_spec_version, cur.spec_version)
    if task_spec_of(spec) != task_spec_of(cur.spec):
        svc.spec_version = svc.highest_spec_version = highest + 1
    elif cur.update_status.state not in updater.PAUSED:
        return svc
    svc.update_status.CopyFrom(
        pb.UpdateStatus(
            state=pb.UpdateStatus.UPDATING, started_at_ms=now, message="update in progress"
        )
    )
    return svc


async def store_spec(
    cluster: Cluster,
    cur: pb.Service,
    spec: pb.ServiceSpec | None,
    status: pb.UpdateStatus | None = None,
) -> pb.Service:
    """Commit `spec` as the service's new one (None: roll back to previous_spec), with
    `status` if given. The caller holds `cluster.lock`; on any failure nothing is stored and
    the allocator is as before."""
    now = now_ms()
    if spec is None:
        if not cur.HasField("previous_spec"):
            raise FailedPrecondition(
                f"service {cur.spec.name!r} has no previous spec to roll back to (it was "
                "never updated, or was rolled back already)"
            )
        svc = updater.rolled_back(cur)
        svc.update_status.CopyFrom(
            pb.UpdateStatus(
                state=pb.UpdateStatus.ROLLBACK_STARTED,
                started_at_ms=now,
                message="manually requested rollback",
            )
        )
    else:
        svc = respecified(cur, spec, now)
    if status is not None:
        svc.update_status.CopyFrom(status)
    network_ids = resolve_service_spec(cluster.state, svc.spec)
    endpoint = cluster.allocator.reallocate_service(cur, svc.spec, network_ids)
    svc.endpoint.CopyFrom(endpoint)
    svc.meta.updated_at_ms = now
    try:
        await cluster.commit(Batch().update("services", svc))
    except BaseException:
        # Undo: drop the new endpoint and take back exactly what is still stored.
        cluster.allocator.release_endpoint(svc.meta.id, endpoint)
        cluster.allocator.restore([], [cur], [])
        raise
    return svc
