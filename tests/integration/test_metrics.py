"""The manager's Prometheus metrics on real managers, a real etcd and scripted agents
(manager/metrics.py): /metrics fetched over HTTP as a scraper does.

- The leader says ovnet_manager_leader 1 and counts the ready nodes; after a service is created
  and scaled, its tasks by state, and the histograms of store transactions and scheduling delay
  (one observation per task that ran) have values.
- A follower says 0 and exports no node or task counts (it holds no state), so a sum over every
  manager is the cluster's.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ovctl.devcluster.procs import free_port
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb
from tests.integration.agents import AgentPool
from tests.integration.conftest import ManagerCluster
from tests.support.etcd import EtcdHandle
from tests.support.procs import ProcessSpawner
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def metered(
    etcd: EtcdHandle, spawn_process: ProcessSpawner
) -> Iterator[tuple[ManagerCluster, str]]:
    """One manager with --metrics-listen on a free loopback port, and its metrics URL."""
    port = free_port()
    cluster = ManagerCluster(etcd, spawn_process, **{"metrics-listen": f"127.0.0.1:{port}"})
    cluster.add()
    cluster.wait_leader()
    try:
        yield cluster, f"http://127.0.0.1:{port}/metrics"
    finally:
        cluster.close()


def running(m: ManagerCluster, service: str) -> int:
    resp = m.stub().ListTasks(cpb.ListTasksRequest(service_refs=[service]), timeout=10)
    return sum(
        t.status.state == pb.TASK_STATE_RUNNING and t.desired_state == pb.TASK_STATE_RUNNING
        for t in resp.tasks
    )


def test_leader_metrics_after_a_service_is_created_and_scaled(
    metered: tuple[ManagerCluster, str], agents: AgentPool
) -> None:
    managers, url = metered
    assert get(scrape(url), "ovnet_manager_leader") == 1
    for i in range(3):
        agents.add(managers.addrs, f"mhost{i}")
    wait_for(
        "3 ready nodes in the metrics",
        lambda: get(scrape(url), "ovnet_manager_nodes", state="ready") == 3,
    )
    managers.ovctl("service", "create", "-d", "--name", "web", "--replicas", "2", "--", "true")
    wait_for("2 running", lambda: running(managers, "web") == 2)
    managers.ovctl("service", "scale", "-d", "web=4")
    wait_for("4 running", lambda: running(managers, "web") == 4)

    def settled() -> Samples | None:
        s = scrape(url)
        return s if get(s, "ovnet_manager_tasks", state="running") == 4 else None

    s = wait_for("4 running tasks in the metrics", settled)
    assert get(s, "ovnet_manager_nodes", state="down") == 0
    assert get(s, "ovnet_manager_tasks", state="pending") == 0
    txns = get(s, "ovnet_store_txn_seconds_count")
    assert txns is not None and txns > 0
    # Each of the 4 tasks once, however many reports (health, ready time) followed.
    assert get(s, "ovnet_scheduling_delay_seconds_count") == 4
    delay = get(s, "ovnet_scheduling_delay_seconds_sum")
    assert delay is not None and 0 < delay < 4 * 60


def test_a_follower_exports_its_role_only(metered: tuple[ManagerCluster, str]) -> None:
    managers, url = metered
    port = free_port()
    managers.flags["metrics-listen"] = f"127.0.0.1:{port}"
    managers.add()
    follower = f"http://127.0.0.1:{port}/metrics"
    wait_for("the follower's metrics", lambda: get(scrape(follower), "ovnet_manager_leader") == 0)
    s = scrape(follower)
    assert not [k for k in s if k[0].startswith(("ovnet_manager_nodes", "ovnet_manager_tasks"))]
    assert get(s, "ovnet_store_txn_seconds_count") == 0
    assert get(scrape(url), "ovnet_manager_leader") == 1
