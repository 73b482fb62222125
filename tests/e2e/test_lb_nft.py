"""The load balancer on a real kernel: our libnftables binding inside network namespaces,
real TCP/UDP traffic through VIP and published-port DNAT, masquerade, reject of targets
without backends, and LoadBalancer restarts.

Needs root; every namespace carries the prefix ovt<pid>-lb and is removed even on failure.
Addresses: 10.x and 198.51.100.224/28, only inside our namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from agent.lb.balancer import LoadBalancer
from agent.lb.nft import NetnsGone, Nft, NftError
from agent.lb.plan import LbSpec, LbState, PortTarget, render_full, render_update
from osutil.netns import run_in_netns

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

PFX = f"ovt{os.getpid()}-lb"
TABLE = "ovnet-lb"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=20)


def nsh(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


class Namespaces:
    """Makes namespaces with our prefix; deletes every one of them at the end."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def add(self, suffix: str) -> str:
        name = f"{PFX}{suffix}"
        sh("ip", "netns", "add", name)
        self.made.append(name)
        nsh(name, "ip", "link", "set", "lo", "up")
        return name

    def delete(self, name: str) -> None:
        if name in self.made:
            self.made.remove(name)
        sh("ip", "netns", "del", name, check=False)

    def cleanup(self) -> None:
        for name in reversed(self.made):
            sh("ip", "netns", "del", name, check=False)
        self.made.clear()


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.cleanup()


class TcpServers:
    """Tiny TCP servers in a namespace: each answers "LOCAL|PEER" and closes."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []

    def start(self, ns: str, addr: str, port: int) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(128)
            return s

        s: socket.socket = run_in_netns(ns, make)
        self.socks.append(s)
        t = threading.Thread(target=self._serve, args=(s, addr), daemon=True)
        t.start()
        self.threads.append(t)

    @staticmethod
    def _serve(s: socket.socket, addr: str) -> None:
        while True:
            try:
                conn, peer = s.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(f"{addr}|{peer[0]}".encode())

    def stop(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self.threads:
            t.join(timeout=2)


@pytest.fixture
def servers() -> Iterator[TcpServers]:
    srv = TcpServers()
    try:
        yield srv
    finally:
        srv.stop()


def tcp_ask(ns: str, addr: str, port: int, timeout: float = 3.0) -> str:
    s: socket.socket = run_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    with s:
        s.settimeout(timeout)
        s.connect((addr, port))
        data = b""
        while chunk := s.recv(100):
            data += chunk
        return data.decode()


def udp_refused(ns: str, addr: str, port: int) -> bool:
    """True when a datagram to addr:port fails at once: the ICMP port unreachable arrives
    (ECONNREFUSED), or, for a packet rejected on this host's own output path, the send
    itself fails (EPERM: the kernel reports the drop to the sender)."""
    s: socket.socket = run_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with s:
        s.settimeout(2.0)
        s.connect((addr, port))
        try:
            s.send(b"x")
            s.recv(100)
        except (ConnectionRefusedError, PermissionError):
            return True
        except TimeoutError:
            return False
        return False


def nft_json(ns: str, table: str = TABLE) -> list[dict[str, Any]]:
    out = nsh(ns, "nft", "-j", "list", "table", "ip", table).stdout
    return [x for x in json.loads(out)["nftables"] if "metainfo" not in x]


def kernel_maps(ns: str) -> dict[str, dict[int, str]]:
    """numgen maps of our table as the kernel has them: name -> index -> backend."""
    out: dict[str, dict[int, str]] = {}
    for obj in nft_json(ns):
        m = obj.get("map")
        if m and m["name"].startswith(("v_", "p_")):
            out[m["name"]] = {int(k): v for k, v in m.get("elem", [])}
    return out


def kernel_moduli(ns: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for obj in nft_json(ns):
        r = obj.get("rule")
        if r and r["chain"].startswith(("v_", "p_")):
            text = json.dumps(r["expr"])
            mods = [e["numgen"]["mod"] for e in _walk(r["expr"]) if "numgen" in e]
            assert len(mods) == 1, text
            out[r["chain"]] = mods[0]
    return out


def _walk(x: Any) -> Iterator[dict[str, Any]]:
    if isinstance(x, dict):
        yield x
        for v in x.values():
            yield from _walk(v)
    elif isinstance(x, list):
        for v in x:
            yield from _walk(v)


def expected_maps(state: LbState) -> dict[str, dict[int, str]]:
    out = {f"v_{v.replace('.', '_')}": dict(enumerate(s)) for v, s in state.vips if s}
    out |= {f"p_{k[0]}_{k[1]}": dict(enumerate(p.backends)) for k, p in state.ports if p.backends}
    return out


def kernel_set(ns: str, name: str) -> list[Any]:
    for obj in nft_json(ns):
        s = obj.get("set")
        if s and s["name"] == name:
            return list(s.get("elem", []))
    raise AssertionError(f"no set {name}")


# --------------------------------------------------------------------------------------------
# (1) scripts through the binding, checked against the kernel's listing


def test_binding_acts_in_the_target_namespace(netns: Namespaces) -> None:
    ns = netns.add("bind")
    with Nft(ns, backend="lib") as nft:
        nft.run("table ip ovt_probe {}")
        assert "ovt_probe" in nsh(ns, "nft", "list", "tables").stdout
        assert "ovt_probe" not in sh("nft", "list", "tables").stdout
        assert "table ip ovt_probe" in nft.run("list tables")
        with pytest.raises(NftError, match=r"(?i)no such file|does not exist"):
            nft.run("delete table ip ovt_nonexistent")
        # The context pins the namespace; once its name is gone (or names another namespace)
        # we refuse to act blindly.
        netns.delete(ns)
        assert not nft.alive()
        with pytest.raises(NetnsGone):
            nft.run("list tables")
        netns.add("bind")
        assert not nft.alive()
        with pytest.raises(NetnsGone):
            nft.run("list tables")
        netns.delete(ns)
    with pytest.raises(NetnsGone):
        Nft(ns)


@pytest.mark.parametrize("backend", ["lib", "process"])
def test_full_and_updates_leave_exactly_the_expected_maps(netns: Namespaces, backend: str) -> None:
    ns = netns.add(f"maps{backend[0]}")
    rng = random.Random(7)
    pool = [f"10.{i // 200}.{i % 200}.{i % 7 + 1}" for i in range(400)]
    hooks = frozenset({"prerouting", "output"})

    def spec() -> LbSpec:
        vips = {
            v: tuple(rng.sample(pool, rng.choice([0, 1, 3, 40])))
            for v in rng.sample(["10.200.0.1", "10.200.0.2", "10.200.0.3"], rng.randint(0, 3))
        }
        ports = {
            k: PortTarget(rng.choice([80, 81]), tuple(rng.sample(pool, rng.choice([0, 2, 30]))))
            for k in rng.sample([("tcp", 8080), ("udp", 53), ("tcp", 443)], rng.randint(0, 3))
        }
        return LbSpec(vips=vips, ports=ports, hooks=hooks, local_only=True)

    with Nft(ns, backend=backend) as nft:
        script, state = render_full(TABLE, spec())
        nft.run(script)
        assert kernel_maps(ns) == expected_maps(state)
        for _ in range(25):
            s = spec()
            # Mostly small steps from the current state: add/remove one backend here and there.
            if rng.random() < 0.6 and state.vips:
                vips = state.vip_map()
                v = rng.choice(list(vips))
                b = list(vips[v])
                if b and rng.random() < 0.5:
                    b.remove(rng.choice(b))
                else:
                    b.append(rng.choice(pool))
                vips[v] = tuple(b)
                s = LbSpec(vips=vips, ports=state.port_map(), hooks=hooks, local_only=True)
            script, state = render_update(TABLE, state, s)
            if script:
                nft.run(script)
            assert kernel_maps(ns) == expected_maps(state)
            assert kernel_moduli(ns) == {k: len(v) for k, v in expected_maps(state).items()}
            dead_vips = {v for v, b in state.vips if not b}
            assert set(kernel_set(ns, "dead_vips")) == dead_vips


# --------------------------------------------------------------------------------------------
# (2) sandbox kind: VIP DNAT on hook output, real connections


def _sandbox(netns: Namespaces, servers: TcpServers) -> tuple[str, list[str]]:
    ns = netns.add("sbx")
    backends = ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    # A veth pair inside the namespace gives the VIP's subnet a route (the output hook runs
    # after routing); the backends are local addresses. (No dummy module in this kernel.)
    nsh(ns, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    nsh(ns, "ip", "addr", "add", "10.77.0.1/24", "dev", "d0")
    for b in backends:
        nsh(ns, "ip", "addr", "add", f"{b}/32", "dev", "d0")
    nsh(ns, "ip", "link", "set", "d1", "up")
    nsh(ns, "ip", "link", "set", "d0", "up")
    for b in backends:
        servers.start(ns, b, 80)
    return ns, backends


def test_vip_spreads_connections_and_fails_fast_without_backends(
    netns: Namespaces, servers: TcpServers
) -> None:
    ns, backends = _sandbox(netns, servers)
    vip = "10.77.0.100"

    async def scenario() -> None:
        lb = LoadBalancer(TABLE)
        try:
            await lb.apply("sbx", ns, LbSpec(vips={vip: tuple(backends)}))
            hits = Counter(tcp_ask(ns, vip, 80).split("|")[0] for _ in range(300))
            assert set(hits) == set(backends), hits
            assert min(hits.values()) > 50, hits  # random: ~100 each

            await lb.apply("sbx", ns, LbSpec(vips={vip: (backends[0], backends[2])}))
            assert lb.stats.updates == 1
            hits = Counter(tcp_ask(ns, vip, 80).split("|")[0] for _ in range(200))
            assert set(hits) == {backends[0], backends[2]}, hits

            # Any port of the VIP, like Swarm's: nothing listens on 81, so the backend refuses.
            with pytest.raises(ConnectionRefusedError):
                tcp_ask(ns, vip, 81)

            await lb.apply("sbx", ns, LbSpec(vips={vip: ()}))
            t0 = time.monotonic()
            for _ in range(5):
                with pytest.raises(ConnectionRefusedError):
                    tcp_ask(ns, vip, 80)
            assert time.monotonic() - t0 < 1.0
            assert udp_refused(ns, vip, 53)

            await lb.apply("sbx", ns, LbSpec(vips={vip: (backends[1],)}))
            assert {tcp_ask(ns, vip, 80).split("|")[0] for _ in range(20)} == {backends[1]}
            assert lb.last_apply_ms["sbx"] < 1000
        finally:
            await lb.close()

    asyncio.run(scenario())


# --------------------------------------------------------------------------------------------
# (3) ingress sandbox (prerouting + masquerade) and host kind (local only, both hooks)


def _ingress_topology(netns: Namespaces) -> tuple[str, str, str]:
    """client C (198.51.100.225) -- I (198.51.100.226; eth0 10.78.0.2) -- backend B
    (10.78.0.3, no route back to the client: replies work only through masquerade)."""
    c, i, b = netns.add("c"), netns.add("i"), netns.add("b")
    sh("ip", "link", "add", f"{PFX}x", "netns", c, "type", "veth", "peer", "name", "i1",
       "netns", i)  # fmt: skip
    nsh(c, "ip", "link", "set", f"{PFX}x", "name", "c0")
    sh("ip", "link", "add", f"{PFX}y", "netns", i, "type", "veth", "peer", "name", "b0",
       "netns", b)  # fmt: skip
    nsh(i, "ip", "link", "set", f"{PFX}y", "name", "eth0")
    for ns, dev, addr in (
        (c, "c0", "198.51.100.225/28"),
        (i, "i1", "198.51.100.226/28"),
        (i, "eth0", "10.78.0.2/24"),
        (b, "b0", "10.78.0.3/24"),
    ):
        nsh(ns, "ip", "addr", "add", addr, "dev", dev)
        nsh(ns, "ip", "link", "set", dev, "up")
    nsh(i, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return c, i, b


def test_ingress_publishes_port_with_masquerade(netns: Namespaces, servers: TcpServers) -> None:
    c, i, b = _ingress_topology(netns)
    servers.start(b, "10.78.0.3", 80)
    host_ip = "198.51.100.226"

    async def scenario() -> None:
        lb = LoadBalancer(TABLE)
        try:
            ingress = LbSpec(
                ports={
                    ("tcp", 8080): PortTarget(80, ("10.78.0.3",)),
                    ("tcp", 8081): PortTarget(80, ()),
                    ("udp", 5353): PortTarget(53, ()),
                },
                hooks=frozenset({"prerouting"}),
                masquerade_oif="eth0",
            )
            await lb.apply("ingress", i, ingress)
            # The backend sees the ingress sandbox's address, and the client gets the reply.
            assert tcp_ask(c, host_ip, 8080) == "10.78.0.3|10.78.0.2"
            t0 = time.monotonic()
            with pytest.raises(ConnectionRefusedError):
                tcp_ask(c, host_ip, 8081)
            assert time.monotonic() - t0 < 1.0
            assert udp_refused(c, host_ip, 5353)

            # Host kind in the same namespace (own table): local destinations only, and from
            # a client on the host itself too (hook output).
            host = LoadBalancer("ovnet-host")
            try:
                await host.apply(
                    "host",
                    i,
                    LbSpec(
                        ports={("tcp", 9090): PortTarget(80, ("10.78.0.3",))},
                        hooks=frozenset({"prerouting", "output"}),
                        local_only=True,
                    ),
                )
                assert tcp_ask(c, host_ip, 9090) == "10.78.0.3|10.78.0.2"
                assert tcp_ask(i, host_ip, 9090) == "10.78.0.3|10.78.0.2"
                await host.remove("host", i)
                assert host.keys() == set()
                with pytest.raises(ConnectionRefusedError):
                    tcp_ask(c, host_ip, 9090)
            finally:
                await host.close()

            # Without the masquerade the backend cannot answer: proves the reply path.
            await lb.apply("ingress", i, LbSpec(ports=ingress.ports, hooks=ingress.hooks))
            with pytest.raises((TimeoutError, OSError)):
                tcp_ask(c, host_ip, 8080, timeout=1.0)
        finally:
            await lb.close()

    asyncio.run(scenario())


# --------------------------------------------------------------------------------------------
# (4) restarts, fallback, vanished namespaces


def test_restart_adopts_table_and_fallback_repairs_tampering(netns: Namespaces) -> None:
    ns = netns.add("rst")
    a = LbSpec(vips={"10.79.0.1": ("10.79.1.1", "10.79.1.2"), "10.79.0.2": ()})
    b = LbSpec(vips={"10.79.0.1": ("10.79.1.3",), "10.79.0.3": ("10.79.1.4", "10.79.1.5")})

    async def scenario() -> None:
        lb1 = LoadBalancer(TABLE)
        await lb1.apply("k", ns, a)
        await lb1.close()
        # close() leaves the table serving.
        assert kernel_maps(ns) == {"v_10_79_0_1": {0: "10.79.1.1", 1: "10.79.1.2"}}

        lb2 = LoadBalancer(TABLE)
        try:
            await lb2.apply("k", ns, b)
            assert lb2.stats.full == 1 and lb2.stats.updates == 0
            state = lb2.state("k")
            assert state is not None
            assert kernel_maps(ns) == expected_maps(state)
            assert kernel_set(ns, "dead_vips") == []

            # Someone deletes one of our maps: the next update fails in nft, and the
            # balancer repairs the table with one full replace.
            nsh(ns, "nft", "delete", "element", "ip", TABLE, "vips", "{ 10.79.0.3 }")
            nsh(ns, "nft", "flush", "chain", "ip", TABLE, "v_10_79_0_3")
            nsh(ns, "nft", "delete", "chain", "ip", TABLE, "v_10_79_0_3")
            nsh(ns, "nft", "delete", "map", "ip", TABLE, "v_10_79_0_3")
            c = LbSpec(vips={"10.79.0.1": ("10.79.1.3",), "10.79.0.3": ("10.79.1.4",)})
            await lb2.apply("k", ns, c)
            assert lb2.stats.fallbacks == 1 and lb2.stats.full == 2
            state = lb2.state("k")
            assert state is not None
            assert kernel_maps(ns) == expected_maps(state)
            assert expected_maps(state)["v_10_79_0_3"] == {0: "10.79.1.4"}

            # Same name, new namespace (a sandbox recreated): a fresh context, a full replace.
            netns.delete(ns)
            assert netns.add("rst") == ns
            await lb2.apply("k", ns, c)
            assert lb2.stats.full == 3
            assert kernel_maps(ns) == expected_maps(state)

            # The sandbox goes away: apply and remove are quiet, the key is forgotten.
            netns.delete(ns)
            await lb2.apply("k", ns, a)
            assert lb2.keys() == set() and lb2.stats.gone == 1
            await lb2.remove("k", ns)
            await lb2.apply("never", f"{PFX}nonexistent", a)
            assert lb2.keys() == set()
        finally:
            await lb2.close()

    asyncio.run(scenario())


def test_remove_deletes_table_also_for_unknown_key(netns: Namespaces) -> None:
    ns = netns.add("rm")
    spec = LbSpec(vips={"10.79.0.1": ("10.79.1.1",)})

    async def scenario() -> None:
        lb = LoadBalancer(TABLE)
        await lb.apply("k", ns, spec)
        await lb.close()
        lb2 = LoadBalancer(TABLE)
        try:
            await lb2.remove("k", ns)  # a previous agent's leftover
            assert TABLE not in nsh(ns, "nft", "list", "tables").stdout
            await lb2.remove("k", ns)  # nothing left: still fine
            await lb2.apply("k", ns, spec)
            assert lb2.keys() == {"k"}
            await lb2.remove("k", ns, delete_table=False)
            assert lb2.keys() == set()
            assert TABLE in nsh(ns, "nft", "list", "tables").stdout
        finally:
            await lb2.close()

    asyncio.run(scenario())
