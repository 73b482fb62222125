"""The manager's Prometheus metrics (`ovnet-manager --metrics-listen ADDR`), defined here once.

    ovnet_manager_leader              1 on the leading manager, 0 on a follower
    ovnet_manager_nodes{state}        nodes by state: ready, down, disconnected, unknown
    ovnet_manager_tasks{state}        tasks by state: new, pending, ... running, ... orphaned
    ovnet_store_txn_seconds           histogram: each etcd transaction the store commits
    ovnet_scheduling_delay_seconds    histogram: a task's creation to the manager recording it
                                      RUNNING (once per task)

The three gauges are computed at scrape time (`StateCollector`) from what the manager holds,
rather than kept up to date by every writer. Only the leader holds the cluster's state, so only
it exports nodes and tasks (every state, 0 included); a follower exports the leader gauge alone,
which is why `sum(ovnet_manager_nodes{state="ready"})` over all managers is the cluster's
count. The histograms are fed at two edges: `Store.on_txn` (manager/store) and
`Cluster.on_task_running` (manager/cluster.py: the commit that records an agent's RUNNING
report, through `Manager.task_running`).

Each manager has its own registry (no global one), so that tests can run several in one
process; nothing here is imported unless --metrics-listen is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from osutil import httpexport
from proto import objects_pb2 as pb

if TYPE_CHECKING:
    from manager.server import Manager
    from manager.state import ClusterState

PATH = "/metrics"
# etcd commits on loopback take ~1-5 ms; a slow disk or a remote cluster, tens to hundreds.
TXN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Created -> RUNNING: allocation, scheduling, the agent's sandbox and the process start (a
# fraction of a second), or an image pull or a constraint nobody meets (minutes).
SCHEDULING_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def _state_names(enum: Any, prefix: str) -> dict[int, str]:
    """Enum value -> lower-case label ("NODE_STATE_READY" -> "ready"): a bounded label set."""
    return {number: name.removeprefix(prefix).lower() for name, number in enum.items()}


NODE_STATES = _state_names(pb.NodeState, "NODE_STATE_")
TASK_STATES = _state_names(pb.TaskState, "TASK_STATE_")


def _by_state(name: str, doc: str, names: dict[int, str], states: list[int]) -> GaugeMetricFamily:
    counts = dict.fromkeys(names.values(), 0)
    for s in states:
        label = names.get(s)
        if label is not None:
            counts[label] += 1
    family = GaugeMetricFamily(name, doc, labels=["state"])
    for label, n in counts.items():
        family.add_metric([label], n)
    return family


class StateCollector(Collector):
    """The leader gauge, and nodes and tasks by state, read from the leader's state when this
    manager leads (`state()` None: it does not)."""

    def __init__(self, state: Callable[[], ClusterState | None]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state()
        yield GaugeMetricFamily(
            "ovnet_manager_leader",
            "1 if this manager leads the cluster (runs its control loops), else 0.",
            value=0 if state is None else 1,
        )
        if state is None:
            return
        yield _by_state(
            "ovnet_manager_nodes",
            "Nodes by state, as the leader holds them.",
            NODE_STATES,
            [n.status.state for n in list(state.nodes.values())],
        )
        yield _by_state(
            "ovnet_manager_tasks",
            "Tasks by state (finished ones kept as history included), as the leader holds them.",
            TASK_STATES,
            [t.status.state for t in list(state.tasks.values())],
        )


class ManagerMetrics:
    """One manager's registry, its two histograms and the state collector."""

    def __init__(
        self,
        state: Callable[[], ClusterState | None],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.store_txn = Histogram(
            "ovnet_store_txn_seconds",
            "Time of each etcd transaction the store commits (whether or not it applied).",
            buckets=TXN_BUCKETS,
            registry=self.registry,
        )
        self.scheduling_delay = Histogram(
            "ovnet_scheduling_delay_seconds",
            "Time from a task's creation to the manager recording it RUNNING, once per task.",
            buckets=SCHEDULING_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(StateCollector(state))

    def task_running(self, task: pb.Task, now_ms: int) -> None:
        """`task` was just recorded RUNNING at `now_ms` (wall clock, as its created_at_ms)."""
        created = task.meta.created_at_ms
        if created:
            self.scheduling_delay.observe(max(0.0, (now_ms - created) / 1000))

    def render(self) -> tuple[str, bytes]:
        return CONTENT_TYPE_PLAIN_0_0_4, generate_latest(self.registry)

    def bind(self, mgr: Manager) -> None:
        """Feed the histograms from `mgr`'s edges (its store, its dispatcher once it leads)."""
        mgr.store.on_txn = self.store_txn.observe
        mgr.task_running = self.task_running


def leader_state(mgr: Manager) -> ClusterState | None:
    """The cluster state `mgr` holds while it leads, else None."""
    leading = mgr.leading
    return leading.cluster.state if leading is not None else None


async def start(addr: str, mgr: Manager) -> asyncio.Server:
    """Metrics of `mgr` on http://ADDR/metrics. OSError when ADDR cannot be bound."""
    metrics = ManagerMetrics(lambda: leader_state(mgr))
    metrics.bind(mgr)
    return await httpexport.serve(addr, {PATH: metrics.render})
