"""F4 end to end: service discovery and load balancing on three netns hosts.

A real etcd, manager and three agents (DevCluster); tasks are `whoami.py` HTTP servers that
answer with the replica's own address and the client's address as they saw it. Names are
asked of the embedded resolver from inside task sandboxes; traffic goes to service VIPs from a
client task, and to published ports on every host's underlay address from a client namespace
on the underlay. The upstream resolver is `fakedns.py` in a client namespace of the test's own.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.model import INGRESS_SANDBOX
from tests.e2e.overlay import Overlay, TaskView, run, wait_for
from tests.support.cluster import E2ECluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

HERE = Path(__file__).parent
WHOAMI = [sys.executable, str(HERE.parent.parent / "scripts/whoami.py"), "8080"]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(1e9)"]
HEALTHY = ["--health-tcp", "8080", "--health-interval", "0.3s", "--health-retries", "2"]


@pytest.fixture(scope="module")
def ov() -> Iterator[Overlay]:
    dev = E2ECluster(
        name_prefix=f"ovm{os.getpid() % 100000}-",
        hosts=3,
        # Shared with test_gossip/test_devcluster: modules of one run go one after another.
        subnet="198.51.100.192/27",
        manager_args=["--heartbeat-period", "0.5", "--heartbeat-grace", "3"],
        die_with_parent=True,
    )
    upstream = dev.plan.client("dns", 0).addr
    dev.agent_args = [
        "--reconcile-interval", "1", "--stop-timeout", "2", "--drain-delay", "2",
        "--dns-upstream", f"{upstream}:53",
    ]  # fmt: skip
    fake: subprocess.Popen[bytes] | None = None
    try:
        dev.up()
        client = dev.add_client("dns")
        assert client.addr == upstream
        fake = subprocess.Popen(
            ["ip", "netns", "exec", client.netns, sys.executable, str(HERE / "fakedns.py"),
             client.addr, "53"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        ov = Overlay(dev)
        ov.ovctl("network", "create", "--subnet", "10.81.0.0/24", "appnet")
        ov.ovctl("network", "create", "--subnet", "10.82.0.0/24", "othernet")
        yield ov
    finally:
        if fake is not None:
            fake.kill()
            fake.wait()
        dev.down()


# ---------------------------------------------------------------- helpers


def create(ov: Overlay, name: str, replicas: int, *extra: str, cmd: list[str] = WHOAMI) -> None:
    ov.ovctl(
        "service", "create", "-d", "--name", name, "--replicas", str(replicas), *extra, "--", *cmd
    )  # fmt: skip


def on_host(ov: Overlay, name: str, host: str, network: str) -> TaskView:
    """A one-task service pinned to `host` (a client inside the overlay)."""
    if ov.ovctl("service", "inspect", name, check=False).returncode != 0:
        create(
            ov, name, 1, "--network", network, "--constraint", f"node.hostname=={host}",
            cmd=SLEEPER,
        )  # fmt: skip
    return ov.running(name, 1)[0]


def web(ov: Overlay) -> list[TaskView]:
    """web: 3 replicas on appnet with the alias www (made by the first test that needs it)."""
    if ov.ovctl("service", "inspect", "web", check=False).returncode != 0:
        create(ov, "web", 3, "--network", "appnet,alias=www", *HEALTHY)
    return ov.running("web", 3)


def pub(ov: Overlay) -> list[TaskView]:
    """pub: 3 replicas on appnet, port 18080 published through the routing mesh."""
    if ov.ovctl("service", "inspect", "pub", check=False).returncode != 0:
        create(ov, "pub", 3, "--network", "appnet", "--publish", "18080:8080", *HEALTHY)
    return ov.running("pub", 3)


def dns(ov: Overlay, task: TaskView, name: str, qtype: str = "A", tcp: bool = False) -> Any:
    """(rcode, sorted answers) from the task's resolver at 127.0.0.11."""
    code = (
        "import json\n"
        "from dnslib import DNSRecord, RCODE\n"
        f"q = DNSRecord.question({name!r}, {qtype!r})\n"
        f"r = DNSRecord.parse(q.send('127.0.0.11', 53, tcp={tcp!r}, timeout=3))\n"
        "print(json.dumps([RCODE.get(r.header.rcode), sorted(str(a.rdata) for a in r.rr)]))\n"
    )
    r = ov.in_sandbox(task, code)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def vip(ov: Overlay, service: str, network: str) -> str:
    svc = ov.json("service", "inspect", service)[0]
    net_id = ov.network_id(network)
    for v in svc["endpoint"]["virtual_ips"]:
        if v["network_id"] == net_id:
            return str(v["addr"]).split("/")[0]
    raise AssertionError(f"{service} has no VIP on {network}: {svc['endpoint']}")


def load(ov: Overlay, where: list[str], host: str, port: int, n: int) -> dict[str, Any]:
    """`n` requests from inside a namespace (argv prefix `where`)."""
    out = run(
        [*where, sys.executable, str(HERE / "loadclient.py"), "count", host, str(port), str(n)],
        timeout=120,
    )
    return json.loads(out)  # type: ignore[no-any-return]


def sandbox_argv(ov: Overlay, task: TaskView) -> list[str]:
    return ["ip", "netns", "exec", ov.sandbox(task)]


def client_argv(ov: Overlay, name: str) -> list[str]:
    clients = ov.dev.clients
    c = clients.get(name) or ov.dev.add_client(name)
    return ["ip", "netns", "exec", c.netns]


class Loop:
    """A request loop in the background until stopped; its tally at the end."""

    def __init__(self, where: list[str], host: str, port: int) -> None:
        self.stop_file = Path(tempfile.mkdtemp(prefix="ovm-loop-")) / "stop"
        self.proc = subprocess.Popen(
            [*where, sys.executable, str(HERE / "loadclient.py"), "loop", host, str(port),
             str(self.stop_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def finish(self) -> dict[str, Any]:
        self.stop_file.touch()
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        self.stop_file.unlink()
        self.stop_file.parent.rmdir()
        return json.loads(out)  # type: ignore[no-any-return]


def task_ips(ov: Overlay, service: str, network: str) -> set[str]:
    net_id = ov.network_id(network)
    return {
        t.ips[net_id]
        for t in ov.tasks(service)
        if t.desired == "TASK_STATE_RUNNING" and net_id in t.ips
    }


def settled(ov: Overlay, task: TaskView, service: str, network: str) -> bool:
    """`tasks.SERVICE` from the task's resolver equals the running replicas."""
    want = task_ips(ov, service, network)
    return bool(want) and dns(ov, task, f"tasks.{service}") == ["NOERROR", sorted(want)]


# ---------------------------------------------------------------- tests


def test_names_resolve_across_hosts_scoped_to_networks(ov: Overlay) -> None:
    tasks = web(ov)
    assert sorted(t.host for t in tasks) == ["h1", "h2", "h3"]
    app = ov.network_id("appnet")
    ips = sorted(t.ips[app] for t in tasks)
    the_vip = vip(ov, "web", "appnet")
    loner = on_host(ov, "loner", "h1", "othernet")
    for src in tasks:  # every host's resolver answers for every host's tasks
        wait_for(f"tasks.web from {src.host}", functools.partial(settled, ov, src, "web", "appnet"))
        assert dns(ov, src, "web") == ["NOERROR", [the_vip]]
        assert dns(ov, src, "www") == ["NOERROR", [the_vip]]
        assert dns(ov, src, "web.appnet") == ["NOERROR", [the_vip]]
        assert dns(ov, src, "tasks.web", tcp=True) == ["NOERROR", ips]
    h1 = next(t for t in tasks if t.host == "h1")
    other = next(t for t in tasks if t.host == "h3")
    full = f"web.{other.slot}.{other.id}"
    assert dns(ov, h1, f"web.{other.slot}") == ["NOERROR", [other.ips[app]]]
    assert dns(ov, h1, full) == ["NOERROR", [other.ips[app]]]
    rev = ".".join(reversed(other.ips[app].split("."))) + ".in-addr.arpa"
    assert dns(ov, h1, rev, "PTR") == ["NOERROR", [full + "."]]
    assert dns(ov, h1, "web", "AAAA") == ["NOERROR", []]
    # Not ours: forwarded to the upstream the agents were given, which knows ext.example.
    assert dns(ov, h1, "ext.example") == ["NOERROR", ["198.51.100.77"]]
    assert dns(ov, h1, "nothing.example")[0] == "NXDOMAIN"
    # A task on another network does not see web at all.
    assert dns(ov, loner, "web")[0] == "NXDOMAIN"
    assert dns(ov, loner, "tasks.web")[0] == "NXDOMAIN"
    # glibc through the sandbox's resolv.conf.
    out = run(["ip", "netns", "exec", ov.sandbox(h1), "getent", "hosts", "web"])
    assert out.split()[0] == the_vip


def test_vip_spreads_over_every_replica(ov: Overlay) -> None:
    tasks = web(ov)
    app = ov.network_id("appnet")
    cli = on_host(ov, "cli", "h1", "appnet")
    the_vip = vip(ov, "web", "appnet")
    got = load(ov, sandbox_argv(ov, cli), the_vip, 8080, 300)
    print(f"\nVIP: {got['answers']}")
    assert got["failures"] == 0, got["errors"]
    assert set(got["answers"]) == {t.ips[app] for t in tasks}
    assert min(got["answers"].values()) >= 30, got["answers"]
    # The VIP keeps the client's own address (no SNAT inside the overlay).
    assert set(got["peers"]) == {cli.ips[app]}


def test_published_port_answers_on_every_host(ov: Overlay) -> None:
    tasks = pub(ov)
    where = client_argv(ov, "outside")
    ingress_ips: set[str] = set()
    for t in tasks:
        ingress_ips |= {ip for nid, ip in t.ips.items() if nid != ov.network_id("appnet")}
    assert len(ingress_ips) == 3, "every task has an ingress address"
    for host in ov.dev.hosts:
        addr = ov.dev.host_addr(host)
        wait_for(
            f"published port on {host}",
            lambda a=addr: load(ov, where, a, 18080, 3)["failures"] == 0,  # type: ignore[misc]
        )
        got = load(ov, where, addr, 18080, 300)
        print(f"\ningress via {host}: {got['answers']}")
        assert got["failures"] == 0, got["errors"]
        assert set(got["answers"]) == ingress_ips
        assert min(got["answers"].values()) >= 30, got["answers"]
        # On the host itself too, at 127.0.0.1 as at its own address (as in Swarm).
        for local_addr in ("127.0.0.1", addr):
            got = load(ov, ov.dev.nsenter_argv(host, []), local_addr, 18080, 60)
            assert got["failures"] == 0, (host, local_addr, got["errors"])
            assert set(got["answers"]) == ingress_ips, (host, local_addr, got["answers"])


def test_host_mode_keeps_the_client_address(ov: Overlay) -> None:
    create(
        ov, "hm", 1, "--network", "appnet", "--publish", "published=19090,target=8080,mode=host",
        "--constraint", "node.hostname==h2", *HEALTHY,
    )  # fmt: skip
    ov.running("hm", 1)
    where = client_argv(ov, "outside")
    me = ov.dev.clients["outside"].addr
    addr = ov.dev.host_addr("h2")
    wait_for("host-mode port", lambda: load(ov, where, addr, 19090, 1)["failures"] == 0)
    got = load(ov, where, addr, 19090, 20)
    assert got["failures"] == 0, got["errors"]
    assert set(got["peers"]) == {me}, "the task sees the client's own address"
    # Only the host running the task publishes it.
    assert load(ov, where, ov.dev.host_addr("h1"), 19090, 1)["failures"] == 1
    ov.ovctl("service", "rm", "hm")


def test_no_request_fails_during_scaling_and_a_rolling_update(ov: Overlay) -> None:
    pub(ov)
    cli = on_host(ov, "cli", "h1", "appnet")
    the_vip = vip(ov, "pub", "appnet")
    wait_for(
        "VIP of pub", lambda: load(ov, sandbox_argv(ov, cli), the_vip, 8080, 3)["failures"] == 0
    )
    via_vip = Loop(sandbox_argv(ov, cli), the_vip, 8080)
    via_mesh = Loop(client_argv(ov, "outside"), ov.dev.host_addr("h1"), 18080)
    try:
        ov.ovctl("service", "scale", "-d", "pub=1")
        ov.running("pub", 1)
        time.sleep(2)
        ov.ovctl("service", "scale", "-d", "pub=3")
        ov.running("pub", 3)
        time.sleep(2)
        ov.ovctl(
            "service", "update", "-d", "--env-add", "VERSION=2", "--update-parallelism", "1",
            "--update-delay", "0.5s", "pub",
        )  # fmt: skip

        def updated() -> bool:
            ts = [
                t
                for t in ov.json("service", "ps", "pub")
                if t["desired_state"] == "TASK_STATE_RUNNING"
            ]
            version = ov.json("service", "inspect", "pub")[0]["spec_version"]
            return len(ts) == 3 and all(
                t["status"]["state"] == "TASK_STATE_RUNNING" and t["spec_version"] == version
                for t in ts
            )

        wait_for("rolling update done", updated, timeout=90)
        time.sleep(2)
        # start-first: each slot's new task runs beside the old one until it is ready.
        ov.ovctl(
            "service", "update", "-d", "--env-add", "VERSION=3", "--update-order", "start-first",
            "pub",
        )  # fmt: skip
        running_counts = []

        def completed() -> bool:
            ts = ov.json("service", "ps", "pub")
            running_counts.append(
                sum(
                    t["desired_state"] == "TASK_STATE_RUNNING"
                    and t["status"]["state"] == "TASK_STATE_RUNNING"
                    for t in ts
                )
            )
            state = ov.json("service", "inspect", "pub")[0]["update_status"]["state"]
            return bool(state == "COMPLETED")

        wait_for("start-first update completed", completed, timeout=90)
        time.sleep(2)
    finally:
        vip_tally = via_vip.finish()
        mesh_tally = via_mesh.finish()
    print(f"\nduring scale and update: VIP {vip_tally}\nmesh {mesh_tally}")
    print(f"running tasks during the start-first update: {running_counts}")
    assert min(running_counts) >= 3 and max(running_counts) > 3, running_counts
    assert vip_tally["requests"] > 100 and mesh_tally["requests"] > 100
    assert vip_tally["failures"] == 0, vip_tally["errors"]
    assert mesh_tally["failures"] == 0, (mesh_tally["errors"], conntrack(ov, "h1", mesh_tally))


def conntrack(ov: Overlay, host: str, tally: dict[str, Any]) -> dict[str, list[str]]:
    """The conntrack entries of the failed requests' ports in the host and its ingress
    sandbox (which backend each went to), to tell a black-holed backend from a lost SYN."""
    ports = {e.rsplit(" ", 1)[-1] for e in tally["errors"] if " from port " in e}
    names = ov.names(host)
    out = {}
    for ns in (ov.dev.host_ns(host), names.sandbox_ns(INGRESS_SANDBOX)):
        text = run(["ip", "netns", "exec", ns, "cat", "/proc/net/nf_conntrack"], check=False)
        out[ns] = [ln for ln in text.splitlines() if any(f"sport={p} " in ln for p in ports)]
    return out


def test_a_dead_hosts_tasks_leave_dns_and_the_balancers(ov: Overlay) -> None:
    tasks = web(ov)
    app = ov.network_id("appnet")
    cli = on_host(ov, "cli", "h1", "appnet")
    dead = next(t for t in tasks if t.host == "h3")
    ov.dev.stop_host("h3")
    try:
        t0 = time.monotonic()
        wait_for(
            "h3's task gone from DNS",
            lambda: dead.ips[app] not in dns(ov, cli, "tasks.web")[1],
            timeout=20,
            every=0.1,
        )
        print(f"\nh3's task gone from DNS on h1 after {time.monotonic() - t0:.2f} s")
        got = load(ov, sandbox_argv(ov, cli), vip(ov, "web", "appnet"), 8080, 100)
        assert got["failures"] == 0, got["errors"]
        assert dead.ips[app] not in got["answers"]
    finally:
        ov.dev.start_host("h3")

