"""Building the agent's daemon with its real collaborators.

`AgentDaemon` is handed everything it works with (see agent/daemon.py); this is the one place
that chooses the real ones: the process and container executors, the netlink data plane,
gossip discovery, the embedded resolver, nftables balancing and the health monitor. Tests
build the daemon with fakes instead (tests/unit/test_daemon.py). The imports are inside the
function so that `ovnet-agent --help` does not load netlink, nftables, gossip crypto and the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.model import HostConfig

if TYPE_CHECKING:
    from agent.collaborators import Session
    from agent.daemon import AgentDaemon, DaemonOptions
    from agent.executor.container import Podman
    from agent.gossip import GossipTuning
    from agent.metrics import AgentMetrics


@dataclass(frozen=True)
class Services:
    """Settings of the daemon's network services (the command line's --gossip-*, --dns-*)."""

    gossip_port: int
    gossip_tuning: GossipTuning | None = None
    # None: the host's resolvers; []: no forwarding at all.
    dns_upstreams: list[tuple[str, int]] | None = None
    dns_ttl: int = 2
    # The CNI plugin's socket ("": none) and where conflists go ("": nowhere).
    cni_socket: str = ""
    cni_conf_dir: str = ""


def build_daemon(
    host: HostConfig,
    session: Session,
    state_dir: Path,
    services: Services,
    options: DaemonOptions,
    podman: Podman | None = None,
    metrics: AgentMetrics | None = None,
) -> AgentDaemon:
    """The daemon with its real collaborators, feeding `metrics` if given. Call it from the
    running event loop."""
    from agent.daemon import AgentDaemon
    from agent.dataplane.kernel import DataPlane
    from agent.discovery import Discovery
    from agent.dns.server import DnsServer
    from agent.executor import ContainerExecutor, ExecutorRouter, Podman, ProcessExecutor
    from agent.health import HealthMonitor
    from agent.lb.balancer import LoadBalancer

    upstreams = services.dns_upstreams
    cni = None
    if services.cni_socket:
        from agent.cni.server import CniServer
        from agent.desiredstate import network_config

        cni = CniServer(
            services.cni_socket,
            session,
            state_dir,
            mtu_of=lambda net: host.network_mtu(network_config(net)),
        )
    conflists = None
    if services.cni_socket and services.cni_conf_dir:
        from agent.cni.conflists import ConflistWriter

        conflists = ConflistWriter(Path(services.cni_conf_dir), services.cni_socket)
    dataplane = DataPlane(host)
    # The daemon connects their change callbacks to its own wake-up.
    discovery = Discovery(str(host.vtep), services.gossip_port, state_dir, services.gossip_tuning)
    dns = DnsServer(
        DnsServer.host_upstreams() if upstreams is None else upstreams, ttl=services.dns_ttl
    )
    lb = LoadBalancer(host.names.lb_table)
    daemon = AgentDaemon(
        host,
        session,
        state_dir,
        executor=ExecutorRouter(
            ProcessExecutor(state_dir),
            ContainerExecutor(state_dir, podman or Podman(), host.names.prefix),
        ),
        dataplane=dataplane,
        discovery=discovery,
        dns=dns,
        lb=lb,
        health=HealthMonitor(lambda _: None),
        options=options,
        cni=cni,
        conflists=conflists,
    )
    if metrics is not None:
        metrics.attach(daemon, dataplane=dataplane, lb=lb, dns=dns, discovery=discovery)
    return daemon
