"""F12 end to end: a real Prometheus (Debian's `prometheus`) scrapes a 3-host dev cluster.

The dev cluster turns on --metrics-listen for its manager (on the bridge address) and every
agent (on its host's underlay address), and `ovctl dev status --format json` lists the URLs;
the test writes a prometheus.yml from that listing, starts /usr/bin/prometheus on a free
loopback port with its TSDB in a tmp dir (stopped by PID, even when a test fails), and asks it
through its HTTP API, as an operator's dashboard would:

- once every target is up, `sum(ovnet_manager_nodes{state="ready"})` is 3;
- after a service is created and scaled, a name resolved in a task's sandbox and an FDB entry
  deleted by hand (which the agent repairs within its reconcile interval), every metric of
  README's list has a value on every daemon that exports it, the counts that must have moved
  have moved.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ovctl.devcluster.procs import ManagedProcess, free_port
from tests.e2e.overlay import Overlay, TaskView, run, wait_for
from tests.support.cluster import E2ECluster

PROMETHEUS = "/usr/bin/prometheus"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        not os.access(PROMETHEUS, os.X_OK), reason="needs Debian's prometheus (install.sh)"
    ),
]

HERE = Path(__file__).parent
WHOAMI = [sys.executable, str(HERE.parent.parent / "scripts/whoami.py"), "8080"]
HOST = "h1"
MANAGER_METRICS = (
    "ovnet_manager_leader",
    "ovnet_manager_nodes",
    "ovnet_manager_tasks",
    "ovnet_scheduling_delay_seconds_count",
    "ovnet_store_txn_seconds_count",
)
AGENT_METRICS = (
    "ovnet_agent_reconcile_seconds_count",
    "ovnet_gossip_members",
    "ovnet_gossip_dropped_packets_total",
    "ovnet_dns_queries_total",
    "ovnet_dns_latency_seconds_count",
    "ovnet_lb_apply_seconds_count",
    "ovnet_dataplane_drift_repairs_total",
)


@pytest.fixture(scope="module")
def ov() -> Iterator[Overlay]:
    dev = E2ECluster(
        name_prefix=f"ovmt{os.getpid() % 100000}-",
        hosts=3,
        # Shared with test_mesh/test_gossip/test_doctor: modules run one after another.
        subnet="198.51.100.192/27",
        manager_args=["--heartbeat-period", "0.5", "--heartbeat-grace", "3"],
        die_with_parent=True,
    )
    dev.agent_args = ["--reconcile-interval", "1", "--stop-timeout", "2"]
    try:
        dev.up()
        ov = Overlay(dev)
        ov.ovctl("network", "create", "--subnet", "10.84.0.0/24", "metnet")
        yield ov
    finally:
        dev.down()


def dev_status(ov: Overlay) -> dict[str, Any]:
    """`ovctl dev status --format json`, as an operator would read it."""
    r = subprocess.run(
        [sys.executable, "-m", "ovctl", "dev", "status", "--prefix", ov.dev.prefix,
         "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def scrape_config(status: dict[str, Any]) -> dict[str, Any]:
    """prometheus.yml for the URLs the dev cluster lists: one job per kind of daemon."""

    def targets(urls: list[str]) -> list[dict[str, Any]]:
        parts = [urllib.parse.urlsplit(u) for u in urls]
        assert all(p.scheme == "http" and p.path == "/metrics" for p in parts), urls
        return [{"targets": [p.netloc for p in parts]}]

    manager = [status["manager"]["metrics_url"]]
    agents = [h["metrics_url"] for h in status["hosts"]]
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [
            {"job_name": "ovnet-manager", "static_configs": targets(manager)},
            {"job_name": "ovnet-agent", "static_configs": targets(agents)},
        ],
    }


class Prometheus:
    """The HTTP API of a running Prometheus."""

    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> dict[str, float]:
        """instance (or "" for an aggregate) -> value of an instant query."""
        result = self.get("/api/v1/query", query=promql)["result"]
        return {r["metric"].get("instance", ""): float(r["value"][1]) for r in result}

    def ready(self) -> bool:
        """/-/ready: the API answers 503 until the TSDB is open."""
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=5) as resp:
                return resp.status == 200
        except OSError:  # urllib's HTTPError and URLError are OSErrors
            return False

    def targets_up(self) -> list[str]:
        return [
            t["scrapeUrl"] for t in self.get("/api/v1/targets")["activeTargets"]
            if t["health"] == "up"
        ]  # fmt: skip


@pytest.fixture(scope="module")
def prom(ov: Overlay, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    status = dev_status(ov)
    urls = [status["manager"]["metrics_url"], *(h["metrics_url"] for h in status["hosts"])]
    assert all(urls) and len(urls) == 4, status
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(status)))
    port = free_port()
    proc = ManagedProcess(
        [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp / "prometheus.log",
    )
    proc.start()
    try:
        proc.wait_port("127.0.0.1", port, timeout=30)
        prometheus = Prometheus(f"http://127.0.0.1:{port}")
        wait_for("prometheus ready", prometheus.ready)
        wait_for("every target up", lambda: len(prometheus.targets_up()) == len(urls))
        yield prometheus
    except BaseException:
        print(f"--- prometheus log ---\n{proc.log_tail(60)}")
        raise
    finally:
        proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_prometheus_counts_the_ready_nodes(prom: Prometheus) -> None:
    got = wait_for(
        "3 ready nodes through PromQL",
        lambda: prom.query('sum(ovnet_manager_nodes{state="ready"})') == {"": 3.0} or None,
    )
    assert got
    assert list(prom.query("ovnet_manager_leader").values()) == [1.0]


def resolve_in(ov: Overlay, task: TaskView, name: str) -> str:
    code = (
        "from dnslib import DNSRecord, RCODE\n"
        f"q = DNSRecord.question({name!r}, 'A')\n"
        "r = DNSRecord.parse(q.send('127.0.0.11', 53, timeout=3))\n"
        "print(RCODE.get(r.header.rcode), len(r.rr))\n"
    )
    r = ov.in_sandbox(task, code)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def delete_an_fdb_entry(ov: Overlay, tasks: list[TaskView]) -> None:
    """Delete one of HOST's FDB entries of another host's task, by hand."""
    net_id = ov.network_id("metnet")
    fdb, _, _ = ov.expected_state(HOST, net_id, tasks)
    wait_for(f"{HOST}'s FDB", lambda: fdb <= ov.host_state(HOST, net_id)["fdb"] or None)
    names = ov.names(HOST)
    mac, dst = sorted(m for m in fdb if m[0] != "00:00:00:00:00:00")[0]
    ns = names.network_ns(net_id)
    run(["bridge", "-n", ns, "fdb", "del", mac, "dev", names.vxlan, "dst", dst])
    wait_for("the entry back", lambda: (mac, dst) in ov.host_state(HOST, net_id)["fdb"])


def test_every_metric_has_a_value_after_a_service_is_created_and_scaled(
    ov: Overlay, prom: Prometheus
) -> None:
    ov.ovctl(
        "service", "create", "-d", "--name", "metweb", "--replicas", "2",
        "--network", "metnet", "--", *WHOAMI,
    )  # fmt: skip
    ov.running("metweb", 2)
    ov.ovctl("service", "scale", "-d", "metweb=4")
    tasks = ov.running("metweb", 4)
    assert resolve_in(ov, tasks[0], "metweb") == "NOERROR 1"
    assert resolve_in(ov, tasks[0], "nosuch.metweb") == "NXDOMAIN 0"
    delete_an_fdb_entry(ov, tasks)
    status = dev_status(ov)
    manager = urllib.parse.urlsplit(status["manager"]["metrics_url"]).netloc
    agents = {urllib.parse.urlsplit(h["metrics_url"]).netloc: h["name"] for h in status["hosts"]}

    def everywhere() -> dict[str, dict[str, float]] | None:
        seen = {m: prom.query(f"sum by (instance) ({m})") for m in MANAGER_METRICS}
        seen |= {m: prom.query(f"sum by (instance) ({m})") for m in AGENT_METRICS}
        missing = [m for m in MANAGER_METRICS if set(seen[m]) != {manager}]
        missing += [m for m in AGENT_METRICS if set(seen[m]) != set(agents)]
        return None if missing else seen

    seen = wait_for("every metric on every daemon", everywhere, timeout=60)
    assert seen["ovnet_manager_leader"] == {manager: 1.0}
    repaired = next(addr for addr, name in agents.items() if name == HOST)

    def moved() -> bool:
        q = prom.query
        return (
            q('ovnet_manager_tasks{state="running"}') == {manager: 4.0}
            and q("ovnet_scheduling_delay_seconds_count")[manager] >= 4
            and q("ovnet_store_txn_seconds_count")[manager] > 0
            and q('sum(ovnet_dns_queries_total{rcode="NOERROR"})')[""] >= 1
            and q('sum(ovnet_dns_queries_total{rcode="NXDOMAIN"})')[""] >= 1
            and q("sum(ovnet_dns_latency_seconds_count)")[""] >= 2
            and all(v > 0 for v in q("ovnet_agent_reconcile_seconds_count").values())
            and all(v > 0 for v in q("ovnet_lb_apply_seconds_count").values())
            and q('ovnet_gossip_members{state="alive"}') == dict.fromkeys(agents, 3.0)
            and q('ovnet_dataplane_drift_repairs_total{kind="fdb"}').get(repaired, 0) >= 1
        )

    try:
        wait_for("the counts to move", moved, timeout=30)
    except AssertionError:
        # What Prometheus holds, metric by metric, says which one did not move.
        dump = {m: prom.query(m) for m in (*MANAGER_METRICS, *AGENT_METRICS)}
        raise AssertionError(json.dumps(dump, indent=1, sort_keys=True)) from None
    # Present on every agent although nothing was dropped: every reason is exported from 0.
    assert set(prom.query("ovnet_gossip_dropped_packets_total")) == set(agents)
    # Building, scaling and serving is no drift: the hosts nobody touched repaired nothing.
    repairs = prom.query("sum by (instance) (ovnet_dataplane_drift_repairs_total)")
    assert {a: n for a, n in repairs.items() if a != repaired} == dict.fromkeys(
        set(agents) - {repaired}, 0.0
    ), repairs
