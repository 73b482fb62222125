"""The agent's Prometheus metrics (`ovnet-agent --metrics-listen ADDR`), defined here once.

    ovnet_agent_reconcile_seconds               histogram: one pass of the agent's loop
                                                (agent/daemon.py: observe, data plane, DNS,
                                                balancers, tasks, report)
    ovnet_lb_apply_seconds                      histogram: one balancer table change sent to
                                                nftables (agent/lb/balancer.py; applies that
                                                found nothing to change are not counted)
    ovnet_dns_queries_total{rcode}              answers of the embedded resolver by rcode
                                                (NOERROR, NXDOMAIN, SERVFAIL, ...)
    ovnet_dns_latency_seconds                   histogram: query read -> answer sent (a
                                                forwarded name's upstream included)
    ovnet_gossip_members{state}                 gossip members as this agent sees them, itself
                                                included: alive, suspect, dead, left
    ovnet_gossip_dropped_packets_total{reason}  gossip packets rejected: malformed, auth,
                                                replay, misdirected, loop, too_large
    ovnet_dataplane_drift_repairs_total{kind}   kernel objects the agent had made, found
                                                missing or changed and put back (see
                                                agent/dataplane/repairs.py): netns, link,
                                                address, route, fdb, neigh, files, nft, sysctl;
                                                lb: a balancer table nft refused to update
                                                (changed behind the agent's back), replaced

Every label value comes from a fixed set, and every series of those sets is exported from 0,
so that a rate() or an alert has a series before the first event. The two histograms of the
loop and the balancers are the metrics library's; everything else is read at scrape time
(`AgentCollector`) from counters the parts keep anyway (the gossip core's stats, the balancer's,
the data plane's repairs) or from the resolver's own meter (agent/dns/meter.py: the query path
must stay cheap). One registry per agent (no global one), so that tests can run several in one
process; nothing here is imported unless --metrics-listen is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent.dataplane.repairs import KINDS
from agent.dns.meter import QueryMeter
from agent.gossip.events import DROP_REASONS
from agent.gossip.membership import ALIVE, DEAD, LEFT, SUSPECT
from osutil import httpexport

if TYPE_CHECKING:
    from agent.collaborators import Discovery
    from agent.daemon import AgentDaemon
    from agent.dataplane.kernel import DataPlane
    from agent.dns.server import DnsServer
    from agent.lb.balancer import LoadBalancer

PATH = "/metrics"
MEMBER_STATES = (ALIVE, SUSPECT, DEAD, LEFT)
LB_KIND = "lb"
# A pass on an idle host takes about a millisecond; one that builds sandboxes, tens to hundreds.
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# One nft transaction in a namespace: a few ms (the libnftables binding); a full replace of a
# large table, tens.
LB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# A cached local answer takes microseconds, a computed one ~20 µs, a forwarded one the upstream.
DNS_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


@dataclass
class Sources:
    """The parts whose counters the collector reads (agent/wiring.py hands the real ones)."""

    dataplane: DataPlane
    lb: LoadBalancer
    discovery: Discovery


class AgentCollector(Collector):
    """The metrics read at scrape time: gossip members and drops, DNS answers, repairs."""

    def __init__(self, dns: QueryMeter) -> None:
        self.dns = dns
        self.sources: Sources | None = None

    def collect(self) -> Iterator[Metric]:
        yield from self._dns()
        yield from self._gossip()
        yield self._repairs()

    def _dns(self) -> Iterator[Metric]:
        queries = CounterMetricFamily(
            "ovnet_dns_queries", "Answers of the embedded resolver, by rcode.", labels=["rcode"]
        )
        for rcode, n in self.dns.by_rcode().items():
            queries.add_metric([rcode], n)
        yield queries
        buckets = self.dns.cumulative()
        yield HistogramMetricFamily(
            "ovnet_dns_latency_seconds",
            "Time from reading a query to sending its answer (a forwarded one's upstream "
            "included).",
            buckets=[(_le(bound), n) for bound, n in buckets],
            sum_value=self.dns.total,
        )

    def _gossip(self) -> Iterator[Metric]:
        status = self.sources.discovery.status() if self.sources is not None else None
        members = dict.fromkeys(MEMBER_STATES, 0)
        dropped = dict.fromkeys(DROP_REASONS, 0)
        if status is not None:
            for m in status.members:
                if m.state in members:
                    members[m.state] += 1
            for reason, n in status.dropped.items():
                if reason in dropped:
                    dropped[reason] = n
        family = GaugeMetricFamily(
            "ovnet_gossip_members",
            "Gossip members by state, as this agent sees them (itself included).",
            labels=["state"],
        )
        for state, n in members.items():
            family.add_metric([state], n)
        yield family
        drops = CounterMetricFamily(
            "ovnet_gossip_dropped_packets", "Gossip packets rejected, by reason.", labels=["reason"]
        )
        for reason, n in dropped.items():
            drops.add_metric([reason], n)
        yield drops

    def _repairs(self) -> Metric:
        counts = dict.fromkeys((*KINDS, LB_KIND), 0)
        if self.sources is not None:
            for kind, n in self.sources.dataplane.repairs.items():
                counts[kind] = counts.get(kind, 0) + n
            counts[LB_KIND] = self.sources.lb.stats.fallbacks
        family = CounterMetricFamily(
            "ovnet_dataplane_drift_repairs",
            "Kernel objects the agent had made, found missing or changed and put back, by kind.",
            labels=["kind"],
        )
        for kind, n in counts.items():
            family.add_metric([kind], n)
        return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class AgentMetrics:
    """One agent's registry: the two histograms, the resolver's meter and the collector."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconcile_seconds = Histogram(
            "ovnet_agent_reconcile_seconds",
            "Time of one pass of the agent's loop (observe, data plane, DNS, balancers, tasks).",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.lb_apply_seconds = Histogram(
            "ovnet_lb_apply_seconds",
            "Time of one balancer table change sent to nftables.",
            buckets=LB_BUCKETS,
            registry=self.registry,
        )
        self.dns = QueryMeter(DNS_BUCKETS)
        self.collector = AgentCollector(self.dns)
        self.registry.register(self.collector)
        self.server: asyncio.Server | None = None

    def attach(
        self,
        daemon: AgentDaemon,
        *,
        dataplane: DataPlane,
        lb: LoadBalancer,
        dns: DnsServer,
        discovery: Discovery,
    ) -> None:
        """Feed the metrics from the daemon's parts (agent/wiring.py, with the real ones)."""
        daemon.on_pass = self.reconcile_seconds.observe
        lb.on_apply = self.lb_apply_seconds.observe
        dns.meter = self.dns
        self.collector.sources = Sources(dataplane, lb, discovery)

    def render(self) -> tuple[str, bytes]:
        return CONTENT_TYPE_PLAIN_0_0_4, generate_latest(self.registry)

    async def serve(self, addr: str) -> asyncio.Server:
        """http://ADDR/metrics. OSError when ADDR cannot be bound."""
        self.server = await httpexport.serve(addr, {PATH: self.render})
        return self.server
