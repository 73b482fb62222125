"""The standard gRPC health checking protocol and server reflection on the manager.

Load balancers, Kubernetes-style probes, `grpc_health_probe` and grpcurl speak
`grpc.health.v1.Health` and `grpc.reflection.v1alpha.ServerReflection`, not ovnet's own API,
so the manager serves both with the published implementations (grpcio-health-checking's
asyncio `HealthServicer`, grpcio-reflection's `enable_server_reflection`); this module only
decides what the statuses are and keeps them true.

What a status says is what a caller would get from this manager right now (`statuses`, pure):
- ``""`` (the whole server) and ``ovnet.v1.Control``: SERVING on the leader, and on a follower
  that knows the leader's address, since a follower forwards Control calls there; NOT_SERVING
  while no leader is known (the call would fail with UNAVAILABLE);
- ``ovnet.v1.Dispatcher``: SERVING on the leader only (a follower sends agents to the leader);
- ``ovnet.v1.NodeCA``: SERVING on every manager (each one runs the CA);
- everything NOT_SERVING when etcd does not answer (a write would fail, and leadership is about
  to lapse), and from the moment the manager begins to stop (`shutdown`).

How etcd's absence is noticed: every other etcd call of the manager waits for the channel to
be ready (up to its deadline), so none of them fails promptly enough to tell. `HealthReporter`
therefore asks etcd every `interval` seconds with the store's `EtcdClient.probe`: a
count-only, linearizable range read with a short deadline and no wait-for-ready, which also
fails when etcd has lost its quorum. Leadership changes re-evaluate at once (`kick`).

Where it answers (decided here, documented in README "Health checks and reflection"):
- the control listener (mutual TLS): Health and reflection. The TLS handshake still demands a
  certificate of this cluster (any role: admin, manager or worker); the per-RPC roles of
  manager/rpcedge.py cover ovnet's own services only, because these two carry nothing those
  roles protect: the status is one enum, and the schema is the public proto/ directory.
- the join listener (server TLS, no client certificate): Health only, so that a load balancer
  or probe that has no client certificate can still ask. It learns no more than whether this
  manager leads; reflection is not served there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from manager.rpcedge import SERVICES

log = logging.getLogger(__name__)

SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
OVERALL: str = health.OVERALL_HEALTH  # "": the server as a whole


def _full_name(service: str) -> str:
    """The fully-qualified name of one of ovnet's services, from its generated descriptor."""
    module = dict(SERVICES)[service]
    return str(module.DESCRIPTOR.services_by_name[service].full_name)


CONTROL = _full_name("Control")
DISPATCHER = _full_name("Dispatcher")
NODE_CA = _full_name("NodeCA")


@dataclass(frozen=True)
class Standing:
    """What this manager can serve depends on, sampled at one moment."""

    etcd_ok: bool
    # The leader's control loops run here: Control and the Dispatcher are served locally.
    leading: bool
    # On a follower, the leader's address Control calls are forwarded to ("": none known).
    forward_to: str = ""


def statuses(s: Standing) -> dict[str, int]:
    """The health status of the server ("") and of each ovnet service, for `s`."""
    if not s.etcd_ok:
        return dict.fromkeys((OVERALL, CONTROL, DISPATCHER, NODE_CA), NOT_SERVING)
    control = SERVING if s.leading or s.forward_to else NOT_SERVING
    return {
        OVERALL: control,
        CONTROL: control,
        DISPATCHER: SERVING if s.leading else NOT_SERVING,
        NODE_CA: SERVING,
    }


def status_name(status: int) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))


def reflected_services() -> list[str]:
    """Every service the control listener serves, as reflection lists them."""
    return [CONTROL, DISPATCHER, NODE_CA, health.SERVICE_NAME, reflection.SERVICE_NAME]


class HealthReporter:
    """The health servicer of both listeners, and the loop that keeps its statuses true."""

    def __init__(
        self,
        probe_etcd: Callable[[], Awaitable[str]],
        role: Callable[[], tuple[bool, str]],
        interval: float = 1.0,
    ) -> None:
        """`probe_etcd()` says why etcd cannot be used ("" when it answers); `role()` is
        (this manager leads, the leader's address a follower forwards to)."""
        self.servicer = health.aio.HealthServicer()
        self._probe_etcd = probe_etcd
        self._role = role
        self.interval = interval
        self.current: dict[str, int] = {}
        self._kick = asyncio.Event()

    def add_to(self, server: grpc.aio.Server, *, reflect: bool) -> None:
        """Serve Health on `server`, and reflection too when `reflect`."""
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        if reflect:
            reflection.enable_server_reflection(reflected_services(), server)

    def kick(self) -> None:
        """Something the statuses depend on changed (leadership): re-evaluate now."""
        self._kick.set()

    async def refresh(self) -> None:
        """Probe etcd, sample the role and publish the statuses that changed."""
        why = await self._probe_etcd()
        leading, forward_to = self._role()
        await self.publish(
            statuses(Standing(etcd_ok=not why, leading=leading, forward_to=forward_to)), why
        )

    async def publish(self, new: dict[str, int], why: str = "") -> None:
        """Set every status that differs from the current one (Watch streams see each change),
        and log the server's own transitions with their reason."""
        before = self.current.get(OVERALL)
        for service, status in new.items():
            if self.current.get(service) != status:
                await self.servicer.set(service, status)
                self.current[service] = status
        after = self.current.get(OVERALL)
        if before is not None and after != before:
            level = logging.INFO if after == SERVING else logging.WARNING
            log.log(level, "health: %s%s", status_name(after or 0), f" ({why})" if why else "")

    async def run(self) -> None:
        """Refresh every `interval` seconds, or at once when kicked; forever."""
        while True:
            self._kick.clear()
            try:
                await self.refresh()
            except Exception:  # a bug here must not take health reporting down for good
                log.exception("health: refreshing the statuses failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.interval)

    async def shutdown(self) -> None:
        """NOT_SERVING for good, before the listeners close: balancers stop sending first."""
        await self.servicer.enter_graceful_shutdown()
