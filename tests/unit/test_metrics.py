"""The Prometheus metrics of the manager (manager/metrics.py) and the agent (agent/metrics.py),
each with a registry of its own, read back the way Prometheus reads them (the text exposition
parsed with prometheus_client's parser); their edges (the store's transactions, the first
RUNNING of a task, the agent's passes, balancer applies, resolver answers, drift repairs); the
HTTP endpoint (osutil/httpexport.py); and the --metrics-listen flags.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from dnslib import QTYPE, DNSRecord
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent import main as agent_main
from agent import options as agent_options
from agent.dataplane.ops import AddFdb
from agent.dataplane.plan import plan
from agent.dataplane.repairs import KIND, KINDS, repairs
from agent.dns.meter import QueryMeter
from agent.dns.server import DnsServer, _Sandbox, _View
from agent.endpoints import EndpointRecord
from agent.gossip.events import DROP_REASONS
from agent.lb import balancer as balancer_mod
from agent.lb.plan import LbSpec
from agent.metrics import AgentMetrics, Sources
from agent.model import RemoteEndpoint
from manager import main as manager_main
from manager.cluster import Cluster, ManagerConfig
from manager.metrics import ManagerMetrics
from manager.state import ClusterState
from manager.store import Batch, Store
from osutil import httpexport
from ovctl.devcluster.procs import free_port
from proto import objects_pb2 as pb
from tests.support.agent_fakes import Fakes, FakeSession
from tests.unit.test_dataplane_plan import FULL, HOST, NAMES, converge
from tests.unit.test_store_txn import FakeKV, client

REPO = Path(__file__).resolve().parents[2]


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from the text Prometheus would scrape."""
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return samples(registry).get((name, tuple(sorted(labels.items()))))


# ---------------------------------------------------------------------- the HTTP endpoint


def test_the_endpoint_answers_get_and_head_of_its_paths_only() -> None:
    routes = {"/metrics": lambda: ("text/plain; version=0.0.4", b"x 1\n")}
    ok = httpexport.respond(b"GET /metrics?a=b HTTP/1.1\r\nHost: h\r\n\r\n", routes)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nx 1\n")
    assert b"Content-Length: 4\r\n" in ok and b"Content-Type: text/plain; version" in ok
    head = httpexport.respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", routes)
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    assert httpexport.respond(b"GET / HTTP/1.1\r\n\r\n", routes).startswith(b"HTTP/1.1 404")
    post = httpexport.respond(b"POST /metrics HTTP/1.1\r\n\r\n", routes)
    assert post.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in post
    assert httpexport.respond(b"\x16\x03\x01garbage", routes).startswith(b"HTTP/1.1 400")

    def broken() -> tuple[str, bytes]:
        raise RuntimeError("a collector bug")

    assert httpexport.respond(b"GET /m HTTP/1.0\r\n\r\n", {"/m": broken}).startswith(
        b"HTTP/1.1 500"
    )


def test_the_endpoint_serves_on_the_event_loop() -> None:
    port = free_port()

    async def go() -> bytes:
        server = await httpexport.serve(f"127.0.0.1:{port}", {"/metrics": lambda: ("t", b"ok")})
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await reader.read()
            writer.close()
            return data
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(go()).endswith(b"\r\n\r\nok")


# ---------------------------------------------------------------------- the manager


def node(nid: str, state: int) -> pb.Node:
    return pb.Node(meta=pb.Meta(id=nid), status=pb.NodeStatus(state=state))  # type: ignore[arg-type]


def task(tid: str, state: int, created_ms: int = 0) -> pb.Task:
    return pb.Task(
        meta=pb.Meta(id=tid, created_at_ms=created_ms),
        service_id="s1",
        node_id="n1",
        status=pb.TaskStatus(state=state),  # type: ignore[arg-type]
    )


def test_the_leader_exports_nodes_and_tasks_by_state_a_follower_only_its_role() -> None:
    state = ClusterState()
    batch = Batch()
    for i, s in enumerate((pb.NODE_STATE_READY, pb.NODE_STATE_READY, pb.NODE_STATE_DOWN)):
        batch.create("nodes", node(f"n{i}", s))
    batch.create("tasks", task("t1", pb.TASK_STATE_RUNNING))
    batch.create("tasks", task("t2", pb.TASK_STATE_RUNNING))
    batch.create("tasks", task("t3", pb.TASK_STATE_FAILED))
    state.apply(batch, 5)
    leading: list[ClusterState | None] = [state]
    reg = ManagerMetrics(lambda: leading[0], CollectorRegistry()).registry

    assert value(reg, "ovnet_manager_leader") == 1
    assert value(reg, "ovnet_manager_nodes", state="ready") == 2
    assert value(reg, "ovnet_manager_nodes", state="down") == 1
    assert value(reg, "ovnet_manager_nodes", state="disconnected") == 0
    assert value(reg, "ovnet_manager_tasks", state="running") == 2
    assert value(reg, "ovnet_manager_tasks", state="failed") == 1
    assert value(reg, "ovnet_manager_tasks", state="pending") == 0
    # Every label value comes from the enums: bounded, no IDs.
    labels = {dict(k[1]).get("state") for k in samples(reg) if k[0] == "ovnet_manager_tasks"}
    assert labels == {n.removeprefix("TASK_STATE_").lower() for n, _ in pb.TaskState.items()}

    leading[0] = None  # deposed: a follower holds no state
    assert value(reg, "ovnet_manager_leader") == 0
    assert not [k for k in samples(reg) if k[0].startswith("ovnet_manager_nodes")]


class FakeStore:
    """A store whose commits always succeed (revision 1, 2, ...)."""

    def __init__(self) -> None:
        self.rev = 0

    async def commit(self, batch: Batch) -> int:
        self.rev += 1
        return self.rev


def test_scheduling_delay_is_observed_once_per_task_at_its_first_running() -> None:
    metrics = ManagerMetrics(lambda: None, CollectorRegistry())
    cluster = Cluster(cast(Store, FakeStore()), ClusterState(), ManagerConfig())
    cluster.on_task_running = metrics.task_running
    created = int(time.time() * 1000) - 1500

    async def go() -> None:
        await cluster.commit(Batch().create("tasks", task("t1", pb.TASK_STATE_ASSIGNED, created)))
        await cluster.commit(Batch().update("tasks", task("t1", pb.TASK_STATE_STARTING, created)))
        await cluster.commit(Batch().update("tasks", task("t1", pb.TASK_STATE_RUNNING, created)))
        # The same state again (a health verdict), then the end: no second observation.
        await cluster.commit(Batch().update("tasks", task("t1", pb.TASK_STATE_RUNNING, created)))
        await cluster.commit(Batch().update("tasks", task("t1", pb.TASK_STATE_COMPLETE, created)))

    asyncio.run(go())
    reg = metrics.registry
    assert value(reg, "ovnet_scheduling_delay_seconds_count") == 1
    delay = value(reg, "ovnet_scheduling_delay_seconds_sum")
    assert delay is not None and 1.5 <= delay < 10
    assert value(reg, "ovnet_scheduling_delay_seconds_bucket", le="1.0") == 0
    assert value(reg, "ovnet_scheduling_delay_seconds_bucket", le="2.0") == 1


def test_store_transactions_are_timed_whether_or_not_they_apply() -> None:
    metrics = ManagerMetrics(lambda: None, CollectorRegistry())
    mgr = SimpleNamespace(store=Store(client(FakeKV(True, {})), "/p"), task_running=None)
    metrics.bind(cast(Any, mgr))
    assert mgr.task_running == metrics.task_running
    net = pb.Network(meta=pb.Meta(id="n1"), spec=pb.NetworkSpec(name="n1"))
    asyncio.run(mgr.store.commit(Batch().create("networks", net)))
    mgr.store.etcd = client(FakeKV(False, {}))
    with pytest.raises(Exception, match="changed by someone else"):
        asyncio.run(mgr.store.commit(Batch().create("networks", net)))
    assert value(metrics.registry, "ovnet_store_txn_seconds_count") == 2


def test_manager_metrics_listen_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert manager_main.parse_args([]).metrics_listen == ""
    assert manager_main.main(["--metrics-listen", "nope"]) == 1
    assert "error: --metrics-listen: 'nope' is not HOST:PORT" in capsys.readouterr().err
    mgr = cast(Any, SimpleNamespace(store=SimpleNamespace(on_txn=None), task_running=None))
    assert asyncio.run(manager_main.start_metrics("", mgr)) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(manager_main.UsageError, match=f"--metrics-listen {addr}: cannot"):
            asyncio.run(manager_main.start_metrics(addr, mgr))


# ---------------------------------------------------------------------- the agent


def test_the_dns_meter_counts_rcodes_and_a_cumulative_histogram() -> None:
    meter = QueryMeter((0.001, 0.01))
    meter.record(0, 0.0005)
    meter.record(0, 0.001)  # on a bound: counted in it (le)
    meter.record(3, 0.5)
    meter.record(12, 0.002)
    assert meter.by_rcode() == {
        "NOERROR": 2, "FORMERR": 0, "SERVFAIL": 0, "NXDOMAIN": 1, "NOTIMP": 0, "REFUSED": 0,
        "RCODE12": 1,
    }  # fmt: skip
    assert meter.cumulative() == [(0.001, 2), (0.01, 3), (float("inf"), 4)]
    assert meter.total == pytest.approx(0.5035)


def test_resolver_answers_are_metered_on_the_udp_path() -> None:
    """The real UDP reader on a loopback socket (no namespace): an answer from the table and
    an NXDOMAIN, each counted once with its latency."""
    dns = DnsServer([])
    rec = EndpointRecord(
        "n1", "10.0.0.2/24", "02:42:0a:00:00:02", "198.51.100.11", "node1", "t1",
        "web.1.t1", "s1", "web", 1, vip="10.0.0.5",
    )  # fmt: skip
    dns.update([rec], {"n1": "front"})
    metrics = AgentMetrics(CollectorRegistry())
    dns.meter = metrics.dns
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        srv.bind(("127.0.0.1", 0))
        srv.setblocking(False)
        sb = _Sandbox("t9", "", _View(frozenset({"n1"})), srv)
        for name in ("web", "nosuch"):
            cli.sendto(DNSRecord.question(name, "A").pack(), srv.getsockname())
        time.sleep(0.05)
        dns._udp_readable(sb)
        cli.settimeout(1)
        replies = [DNSRecord.parse(cli.recv(512)) for _ in range(2)]
    finally:
        srv.close()
        cli.close()
    assert [r.header.rcode for r in replies] == [0, 3]
    assert replies[0].rr[0].rtype == QTYPE.A
    reg = metrics.registry
    assert value(reg, "ovnet_dns_queries_total", rcode="NOERROR") == 1
    assert value(reg, "ovnet_dns_queries_total", rcode="NXDOMAIN") == 1
    assert value(reg, "ovnet_dns_latency_seconds_count") == 2
    assert value(reg, "ovnet_dns_latency_seconds_bucket", le="0.1") == 2


def gossip_status() -> pb.GossipStatus:
    st = pb.GossipStatus()
    for i, state in enumerate(("alive", "alive", "suspect", "dead")):
        st.members.add(node_id=f"n{i}", addr="198.51.100.1:7946", state=state)
    st.dropped["auth"] = 3
    st.dropped["replay"] = 1
    return st


def test_gossip_lb_and_repairs_are_read_at_scrape_time() -> None:
    metrics = AgentMetrics(CollectorRegistry())
    reg = metrics.registry
    # Before the parts are attached: every series exists, at 0.
    assert value(reg, "ovnet_gossip_members", state="alive") == 0
    assert value(reg, "ovnet_gossip_dropped_packets_total", reason="malformed") == 0
    assert value(reg, "ovnet_dataplane_drift_repairs_total", kind="fdb") == 0
    assert value(reg, "ovnet_dns_queries_total", rcode="NOERROR") == 0

    dataplane = SimpleNamespace(repairs={"fdb": 2, "link": 1})
    lb = SimpleNamespace(stats=SimpleNamespace(fallbacks=4))
    discovery = SimpleNamespace(status=gossip_status)
    metrics.collector.sources = Sources(*(cast(Any, x) for x in (dataplane, lb, discovery)))
    assert value(reg, "ovnet_gossip_members", state="alive") == 2
    assert value(reg, "ovnet_gossip_members", state="suspect") == 1
    assert value(reg, "ovnet_gossip_members", state="left") == 0
    assert value(reg, "ovnet_gossip_dropped_packets_total", reason="auth") == 3
    assert value(reg, "ovnet_gossip_dropped_packets_total", reason="too_large") == 0
    assert value(reg, "ovnet_dataplane_drift_repairs_total", kind="fdb") == 2
    assert value(reg, "ovnet_dataplane_drift_repairs_total", kind="link") == 1
    assert value(reg, "ovnet_dataplane_drift_repairs_total", kind="lb") == 4
    assert value(reg, "ovnet_dataplane_drift_repairs_total", kind="neigh") == 0


def test_every_gossip_drop_reason_is_a_known_label() -> None:
    used = set()
    for path in (REPO / "agent" / "gossip").glob("*.py"):
        used |= set(re.findall(r'drop\(\s*"([a-z_]+)"', path.read_text()))
        used |= set(re.findall(r'drop\(\s*"([a-z_]+)" if', path.read_text()))
        used |= set(re.findall(r'else "([a-z_]+)"\)', path.read_text()))
    assert used and used <= set(DROP_REASONS), used - set(DROP_REASONS)


def test_drift_repairs_are_ops_the_settled_state_needs_too() -> None:
    """FULL applied and settled; then an FDB entry is deleted by hand while a new remote
    endpoint arrives: only the deleted entry's op is a repair, not the new endpoint's."""
    _, settled_obs = converge(FULL)
    ns = NAMES.network_ns("net1")
    entry = sorted(e for e in settled_obs.networks[ns].fdb if e[0] != "00:00:00:00:00:00")[0]
    drifted = replace(
        settled_obs,
        networks={
            **settled_obs.networks,
            ns: replace(settled_obs.networks[ns], fdb=settled_obs.networks[ns].fdb - {entry}),
        },
    )
    new = RemoteEndpoint("net1", IPv4Address("10.1.1.77"), IPv4Address("198.51.100.21"))
    wanted = replace(FULL, remotes={**FULL.remotes, "net1": FULL.remotes["net1"] | {new}})
    todo = plan(HOST, wanted, drifted)
    before = plan(HOST, FULL, drifted)
    assert sorted(type(op).__name__ for op in todo) == ["AddFdb", "AddFdb", "AddNeigh"]
    assert repairs(todo, before, []) == {"fdb": 1}
    assert repairs(todo, before, [op for op in todo if isinstance(op, AddFdb)]) == {}
    assert repairs(plan(HOST, FULL, settled_obs), before, []) == {}  # nothing to do
    assert set(KIND.values()) == set(KINDS)


class FakeNft:
    def __init__(self, netns: str | None, *, backend: str = "auto") -> None:
        self.scripts: list[str] = []

    async def arun(self, script: str) -> str:
        self.scripts.append(script)
        return ""

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_balancer_applies_that_change_the_kernel_are_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(balancer_mod, "Nft", FakeNft)
    metrics = AgentMetrics(CollectorRegistry())
    lb = balancer_mod.LoadBalancer("t")
    lb.on_apply = metrics.lb_apply_seconds.observe
    spec = LbSpec(vips={"10.0.0.5": ("10.0.0.2",)})

    async def go() -> None:
        await lb.apply("host", None, spec)  # a full replace
        await lb.apply("host", None, spec)  # nothing to change: not counted
        await lb.apply("host", None, LbSpec(vips={"10.0.0.5": ("10.0.0.2", "10.0.0.3")}))

    asyncio.run(go())
    assert value(metrics.registry, "ovnet_lb_apply_seconds_count") == 2
    assert lb.stats.noops == 1


def test_wiring_feeds_the_metrics_and_each_pass_is_timed(tmp_path: Path) -> None:
    from agent.daemon import DaemonOptions
    from agent.model import HostConfig, Names
    from agent.wiring import Services, build_daemon

    metrics = AgentMetrics(CollectorRegistry())

    async def wired() -> None:
        daemon = build_daemon(
            HostConfig(vtep=IPv4Address("198.51.100.1"), names=Names("zz-")),
            FakeSession(),
            tmp_path,
            Services(gossip_port=7946, dns_upstreams=[]),
            DaemonOptions(),
            metrics=metrics,
        )
        assert daemon.on_pass == metrics.reconcile_seconds.observe
        assert cast(Any, daemon.dns).meter is metrics.dns
        assert cast(Any, daemon.lb).on_apply == metrics.lb_apply_seconds.observe
        assert metrics.collector.sources is not None
        assert metrics.collector.sources.dataplane is daemon.dataplane

    asyncio.run(wired())

    async def passes() -> None:
        session = FakeSession()
        daemon = Fakes().daemon(session, tmp_path / "d")
        daemon.on_pass = metrics.reconcile_seconds.observe
        runner = asyncio.create_task(daemon.run())
        assert session.on_assignments is not None
        await session.on_assignments(session.assignments)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if daemon.passed.is_set():
                break
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(passes())
    assert (value(metrics.registry, "ovnet_agent_reconcile_seconds_count") or 0) >= 1


def test_agent_metrics_listen_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_options.parse_args([]).metrics_listen == ""
    args = agent_options.parse_args(["--metrics-listen", "198.51.100.11:9464"])
    assert args.metrics_listen == "198.51.100.11:9464"
    with pytest.raises(SystemExit) as e:
        agent_options.parse_args(["--metrics-listen", "9464"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --metrics-listen: '9464' is not HOST:PORT" in err, err
    assert asyncio.run(agent_main._metrics("")) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(agent_main.UsageError, match=f"--metrics-listen {addr}: cannot"):
            asyncio.run(agent_main._metrics(addr))
