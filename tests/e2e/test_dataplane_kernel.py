"""The data plane on real kernels: two "hosts" (network namespaces) on an underlay bridge that
lives in a third namespace, so that nothing touches the root namespace. Each host runs its own
DataPlane (host_netns=...) with its own prefix; traffic between sandboxes crosses VXLAN.

Needs root; everything made carries the prefix ovt<pid>- and is removed even on failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from agent.dataplane.kernel import DataPlane
from agent.dataplane.ops import AddFdb, AddNeigh
from agent.model import (
    DesiredState,
    HostConfig,
    LocalEndpoint,
    Names,
    NetworkConfig,
    RemoteEndpoint,
    SandboxConfig,
    bridge_mac,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

PFX = f"ovt{os.getpid()}-"
UNDERLAY = f"{PFX}ul"
SERVER_NS = f"{PFX}srv"  # a machine on the underlay, for egress
HOSTS = {1: IPv4Address("198.51.100.241"), 2: IPv4Address("198.51.100.242")}
SERVER_IP = IPv4Address("198.51.100.250")
NET = NetworkConfig(
    id="netA",
    name="a",
    vni=4242,
    subnet=IPv4Network("10.77.0.0/24"),
    gateway=IPv4Address("10.77.0.1"),
)
INTERNAL = NetworkConfig(
    id="netI",
    name="i",
    vni=4243,
    subnet=IPv4Network("10.78.0.0/24"),
    gateway=IPv4Address("10.78.0.1"),
    internal=True,
)


def sh(*argv: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


def host_ns(i: int) -> str:
    return f"{PFX}h{i}"


def our_netns() -> list[str]:
    return (
        [n for n in os.listdir("/run/netns") if n.startswith(PFX)]
        if os.path.isdir("/run/netns")
        else []
    )


@pytest.fixture(scope="module")
def underlay() -> Iterator[None]:
    """ul (bridge br0) <- veth -> h1, h2, srv; addresses in 198.51.100.240/28."""
    try:
        sh("ip", "netns", "add", UNDERLAY)
        sh("ip", "-n", UNDERLAY, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", UNDERLAY, "link", "set", "br0", "up")
        members = [(host_ns(i), ip) for i, ip in HOSTS.items()] + [(SERVER_NS, SERVER_IP)]
        for k, (ns, ip) in enumerate(members):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "add", "ul0", "type", "veth", "peer", "name", f"p{k}",
               "netns", UNDERLAY)  # fmt: skip
            sh("ip", "-n", UNDERLAY, "link", "set", f"p{k}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/28", "dev", "ul0")
            sh("ip", "-n", ns, "link", "set", "ul0", "up")
        yield
    finally:
        for ns in our_netns():
            sh("ip", "netns", "del", ns, check=False)


@dataclass
class Host:
    dp: DataPlane
    cfg: HostConfig
    ns: str


_loop: list[asyncio.AbstractEventLoop] = []


def run(coro):  # type: ignore[no-untyped-def]
    """Run on the test's loop: DataPlane and its handles are made and used on one loop."""
    return _loop[0].run_until_complete(asyncio.wait_for(coro, 60))


@pytest.fixture
def hosts(underlay: None, tmp_path: Path) -> Iterator[dict[int, Host]]:
    loop = asyncio.new_event_loop()
    _loop[:] = [loop]
    made: dict[int, Host] = {}
    for i, vtep in HOSTS.items():
        cfg = HostConfig(
            vtep=vtep, names=Names(f"{PFX}{i}-"), etc_netns=tmp_path / f"etc-netns-{i}"
        )
        made[i] = Host(DataPlane(cfg, host_netns=host_ns(i)), cfg, host_ns(i))
    try:
        yield made
        for h in made.values():
            run(h.dp.remove_all())
        left = [n for n in our_netns() if n not in (UNDERLAY, SERVER_NS, *map(host_ns, HOSTS))]
        assert left == [], f"remove_all left behind: {left}"
    finally:
        for h in made.values():
            run(h.dp.close())
        loop.close()
        _loop.clear()
        for i in HOSTS:  # whatever a failed test left, without asking the code under test
            for n in our_netns():
                if n.startswith(f"{PFX}{i}-"):
                    sh("ip", "netns", "del", n, check=False)
            for link in ("ovgw0",):
                sh("ip", "-n", host_ns(i), "link", "del", link, check=False)
            sh("ip", "netns", "exec", host_ns(i), "nft", "delete", "table", "ip", "ovnet",
               check=False)  # fmt: skip


def addr(i: int) -> IPv4Address:
    return IPv4Address(f"10.77.0.{10 + i}")


def state_for(i: int, extra_sandboxes: tuple[SandboxConfig, ...] = ()) -> DesiredState:
    """Host i runs task t<i> on NET; the other host's task is its remote endpoint."""
    other = 3 - i
    sb = SandboxConfig(
        task_id=f"t{i}",
        endpoints=(LocalEndpoint(f"t{i}", NET.id, 0, IPv4Interface(f"{addr(i)}/24")),),
        egress=True,
        hostname=f"task{i}",
    )
    networks = {NET.id: NET}
    for s in extra_sandboxes:
        for ep in s.endpoints:
            if ep.network_id == INTERNAL.id:
                networks[INTERNAL.id] = INTERNAL
    return DesiredState(
        networks=networks,
        sandboxes={sb.task_id: sb, **{s.task_id: s for s in extra_sandboxes}},
        remotes={NET.id: frozenset({RemoteEndpoint(NET.id, addr(other), HOSTS[other])})},
    )


TCP_ECHO = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
s.sendall(b"hello"); print(s.recv(100).decode())
"""
TCP_SERVER = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(); print("ready", flush=True)
while True:
    c, peer = srv.accept(); c.sendall(c.recv(100) + b" from " + peer[0].encode()); c.close()
"""


def tcp_roundtrip(
    server_ns: str, client_ns: str, ip: IPv4Address, port: int = 7777, timeout: float = 3
) -> str:
    """Start a TCP echo server in server_ns, connect from client_ns; "" if unreachable
    (the images have no ping)."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "python3", "-c", TCP_SERVER, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        out = sh("ip", "netns", "exec", client_ns, "python3", "-c", TCP_ECHO, str(ip), str(port),
                 str(timeout), check=False)  # fmt: skip
        return out.stdout.strip() if out.returncode == 0 else ""
    finally:
        srv.kill()
        srv.wait()


def build(hosts: dict[int, Host]) -> None:
    for i, h in hosts.items():
        r = run(h.dp.reconcile(state_for(i)))
        assert r.ok, [str(f) for f in r.failures] + r.problems


def test_two_hosts_talk_over_vxlan_and_second_reconcile_is_noop(hosts: dict[int, Host]) -> None:
    build(hosts)
    sb1 = hosts[1].cfg.names.sandbox_ns("t1")
    sb2 = hosts[2].cfg.names.sandbox_ns("t2")
    assert hosts[1].dp.sandbox_path("t1") == f"/run/netns/{sb1}"
    assert tcp_roundtrip(sb2, sb1, addr(2)) == f"hello from {addr(1)}"
    assert tcp_roundtrip(sb1, sb2, addr(1)) == f"hello from {addr(2)}"
    # MTU and MAC as designed.
    link = sh("ip", "-n", sb1, "-o", "link", "show", "eth0").stdout
    assert "mtu 1450" in link and "02:42:0a:4d:00:0b" in link
    for i, h in hosts.items():
        r = run(h.dp.reconcile(state_for(i)))
        assert r.ok and r.ops == 0, [str(f) for f in r.failures]
    files = hosts[1].cfg.etc_netns / sb1
    assert (files / "resolv.conf").read_text().startswith("nameserver 127.0.0.11")
    assert f"{addr(1)}\ttask1" in (files / "hosts").read_text()


def test_drift_is_repaired(hosts: dict[int, Host]) -> None:
    build(hosts)
    h1 = hosts[1]
    nns = h1.cfg.names.network_ns(NET.id)
    sb1 = h1.cfg.names.sandbox_ns("t1")
    mac2 = "02:42:0a:4d:00:0c"
    # Delete the FDB entry and the neighbour of the remote task by hand.
    sh("ip", "netns", "exec", nns, "bridge", "fdb", "del", mac2, "dev", "ovvx0", "dst",
       str(HOSTS[2]))  # fmt: skip
    sh("ip", "-n", nns, "neigh", "del", str(addr(2)), "dev", "ovvx0")
    sb2 = hosts[2].cfg.names.sandbox_ns("t2")
    assert tcp_roundtrip(sb2, sb1, addr(2), timeout=0.5) == ""
    r = run(h1.dp.reconcile(state_for(1)))
    assert r.ok and r.ops == 2, [str(f) for f in r.failures]
    assert tcp_roundtrip(sb2, sb1, addr(2)) == f"hello from {addr(1)}"
    # Delete the task's veth (both ends go) and change an address: both come back.
    sh("ip", "-n", nns, "link", "del", h1.cfg.names.veth_outer("t1", 0))
    r = run(h1.dp.reconcile(state_for(1)))
    assert r.ok and r.ops >= 2, [str(f) for f in r.failures]
    assert tcp_roundtrip(sb2, sb1, addr(2)) == f"hello from {addr(1)}"
    sh("ip", "-n", sb1, "addr", "flush", "dev", "eth0")
    sh("ip", "-n", sb1, "addr", "add", "10.77.0.99/24", "dev", "eth0")
    r = run(h1.dp.reconcile(state_for(1)))
    assert r.ok and r.ops == 1
    assert tcp_roundtrip(sb2, sb1, addr(2)) == f"hello from {addr(1)}"
    assert run(h1.dp.reconcile(state_for(1))).ops == 0


def test_internal_network_has_no_default_route_and_egress_reaches_underlay(
    hosts: dict[int, Host],
) -> None:
    internal_only = SandboxConfig(
        task_id="ti",
        endpoints=(LocalEndpoint("ti", INTERNAL.id, 0, IPv4Interface("10.78.0.5/24")),),
        egress=True,
    )
    h1 = hosts[1]
    r = run(h1.dp.reconcile(state_for(1, (internal_only,))))
    assert r.ok, [str(f) for f in r.failures]
    sbi = h1.cfg.names.sandbox_ns("ti")
    assert sh("ip", "-n", sbi, "route", "show", "default").stdout.strip() == ""
    assert "gw0" not in sh("ip", "-n", sbi, "-o", "link").stdout
    # The egress task reaches a server on the underlay, masqueraded to the host's address.
    sb1 = h1.cfg.names.sandbox_ns("t1")
    assert "default via 172.18.0.1" in sh("ip", "-n", sb1, "route").stdout
    assert tcp_roundtrip(SERVER_NS, sb1, SERVER_IP, 7778) == f"hello from {HOSTS[1]}"
    # The internal task cannot.
    assert tcp_roundtrip(SERVER_NS, sbi, SERVER_IP, 7778, timeout=0.5) == ""


def test_the_gwbridge_keeps_its_mac_when_a_port_with_a_lower_one_joins(
    hosts: dict[int, Host],
) -> None:
    """Every sandbox routes through the gwbridge's address: its MAC must not follow its ports
    (an unset bridge MAC is the lowest port MAC, and a task's start would change it)."""
    h1 = hosts[1]
    assert run(h1.dp.reconcile(state_for(1))).ok
    gw, want = h1.cfg.names.gwbridge, bridge_mac(h1.cfg.vtep, None, h1.cfg.names.gwbridge)

    def mac() -> str:
        return str(json.loads(sh("ip", "-j", "-n", h1.ns, "link", "show", gw).stdout)[0]["address"])

    assert mac() == want
    sh("ip", "-n", h1.ns, "link", "add", "ovlow0", "address", "00:00:00:00:00:01", "type", "veth",
       "peer", "name", "ovlow1")  # fmt: skip
    try:
        sh("ip", "-n", h1.ns, "link", "set", "ovlow0", "master", gw, "up")
        assert mac() == want
    finally:
        sh("ip", "-n", h1.ns, "link", "del", "ovlow0", check=False)
    assert run(h1.dp.reconcile(state_for(1))).ops == 0


def test_scale_entries_and_remove_all(hosts: dict[int, Host]) -> None:
    """500 remote endpoints go in and out; remove_all leaves nothing with the prefix."""
    h1 = hosts[1]
    base = state_for(1)
    many = frozenset(
        RemoteEndpoint(NET.id, IPv4Address(f"10.77.{1 + k // 250}.{1 + k % 250}"), HOSTS[2])
        for k in range(500)
    )
    wide = NetworkConfig(
        id=NET.id, name="a", vni=NET.vni, subnet=IPv4Network("10.77.0.0/16"),
        gateway=NET.gateway,
    )  # fmt: skip
    sb = base.sandboxes["t1"]
    sb = SandboxConfig(
        task_id="t1",
        endpoints=(LocalEndpoint("t1", NET.id, 0, IPv4Interface(f"{addr(1)}/16")),),
        egress=False,
    )
    d = DesiredState(networks={NET.id: wide}, sandboxes={"t1": sb}, remotes={NET.id: many})
    r = run(h1.dp.reconcile(d))
    assert r.ok, [str(f) for f in r.failures[:5]]
    nns = h1.cfg.names.network_ns(NET.id)
    neigh = sh("ip", "-n", nns, "neigh", "show", "dev", "ovvx0").stdout.splitlines()
    assert len(neigh) == 500
    assert run(h1.dp.reconcile(d)).ops == 0
    fewer = DesiredState(
        networks={NET.id: wide}, sandboxes={"t1": sb}, remotes={NET.id: frozenset(list(many)[:3])}
    )
    r = run(h1.dp.reconcile(fewer))
    assert r.ok
    fdb = sh("ip", "netns", "exec", nns, "bridge", "fdb", "show", "dev", "ovvx0").stdout
    assert len([ln for ln in fdb.splitlines() if "dst" in ln]) == 4  # 3 MACs + zero MAC
    run(h1.dp.remove_all())
    assert not [n for n in our_netns() if n.startswith(f"{PFX}1-")]
    links = sh("ip", "-n", h1.ns, "-o", "link").stdout
    assert "ovgw0" not in links and "ovx" not in links and "ovg" not in links
    assert sh("ip", "netns", "exec", h1.ns, "nft", "list", "tables").stdout.strip() == ""
    assert not list(h1.cfg.etc_netns.glob(f"{PFX}*"))


def test_apply_reports_failures_with_owner(hosts: dict[int, Host]) -> None:
    build(hosts)
    h1 = hosts[1]
    bogus = [AddNeigh(ns=f"{PFX}1-n-missing", ip="10.0.0.1", mac="02:42:0a:00:00:01",
                      network_id="gone")]  # fmt: skip
    r = run(h1.dp.apply(bogus))
    assert not r.ok and "network gone" in str(r.failures[0])
    nns = h1.cfg.names.network_ns(NET.id)
    r = run(h1.dp.apply([AddFdb(ns=nns, mac="zz" * 0 + "02:42:0a:4d:00:63", dst="198.51.100.244",
                                network_id=NET.id)]))  # fmt: skip
    assert r.ok
