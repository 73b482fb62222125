"""The embedded resolver on real namespaces: DnsServer runs in the test's event loop and serves
127.0.0.11:53 in two sandboxes (network namespaces) with different views; clients are real
processes inside those namespaces (a Python/dnslib client, and glibc's getent).

Forwarding goes to a small upstream server the test runs itself, in a third namespace of its
own (DnsServer's upstream_netns), never to the machine's resolver.

Needs root; everything made carries the prefix ovt<pid>-d and is removed even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from agent.dns.server import DnsServer
from agent.endpoints import EndpointRecord, PortRecord
from agent.netns import socket_in_netns

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

T = TypeVar("T")
PFX = f"ovt{os.getpid()}-d"
NS1, NS2, NS_UP = f"{PFX}1", f"{PFX}2", f"{PFX}up"
UP_ADDR = ("127.0.0.53", 5353)  # the fake upstream, on loopback inside NS_UP
N1, N2 = "netfront", "netback"
NAMES = {N1: "front", N2: "back"}


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=20)


def rec(net: str, ip: str, task: str, vip: str = "", enabled: bool = True) -> EndpointRecord:
    svc, slot, tid = task.split(".")
    return EndpointRecord(
        network_id=net,
        addr=f"{ip}/24",
        mac="02:42:0a:00:00:01",
        vtep="198.51.100.225",
        node_id="n1",
        task_id=tid,
        task_name=task,
        service_id=f"{svc}-id",
        service_name=svc,
        slot=int(slot),
        vip=vip,
        aliases=("www",) if svc == "web" else (),
        enabled=enabled,
        ports=(PortRecord("http", "tcp", 80),) if svc == "web" else (),
    )


RECORDS = [
    rec(N1, "10.0.1.5", "web.1.t1", vip="10.0.1.2"),
    rec(N1, "10.0.1.6", "web.2.t2", vip="10.0.1.2"),
    rec(N2, "10.0.2.5", "web.1.t1", vip="10.0.2.2"),
    rec(N2, "10.0.2.6", "web.2.t2", vip="10.0.2.2"),
    rec(N2, "10.0.2.10", "db.1.d1"),
    rec(N2, "10.0.2.11", "db.2.d2"),
    rec(N2, "10.0.2.12", "db.3.d3", enabled=False),
]

# A DNS client run inside a namespace: argv[1] is a JSON list of [proto, name, type] (or
# ["junk", hex]); TCP queries share one connection. Prints one JSON result per query.
CLIENT = r"""
import json, socket, sys
from dnslib import DNSRecord, QTYPE, RCODE
ops = json.loads(sys.argv[1])
tcp = None
out = []
for op in ops:
    try:
        if op[0] == "junk":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(bytes.fromhex(op[1]), ("127.0.0.11", 53))
            s.close()
            out.append({"sent": True})
            continue
        q = DNSRecord.question(op[1], op[2])
        if op[0] == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            s.sendto(q.pack(), ("127.0.0.11", 53))
            data = s.recv(65535)
            s.close()
        else:
            if tcp is None:
                tcp = socket.create_connection(("127.0.0.11", 53), timeout=3)
            p = q.pack()
            tcp.sendall(len(p).to_bytes(2, "big") + p)
            n = int.from_bytes(tcp.recv(2, socket.MSG_WAITALL), "big")
            data = tcp.recv(n, socket.MSG_WAITALL)
        r = DNSRecord.parse(data)
        h = r.header
        out.append({
            "id_ok": h.id == q.header.id,
            "rcode": RCODE[h.rcode],
            "aa": h.aa, "qr": h.qr, "ra": h.ra, "rd": h.rd, "tc": h.tc,
            "an": [[QTYPE[rr.rtype], str(rr.rdata)] for rr in r.rr],
            "ar": [[QTYPE[rr.rtype], str(rr.rdata)] for rr in r.ar],
        })
    except Exception as e:
        out.append({"error": type(e).__name__})
print(json.dumps(out))
"""


def our_netns() -> list[str]:
    return [n for n in os.listdir("/run/netns") if n.startswith(PFX)]


@pytest.fixture(scope="module")
def namespaces() -> Iterator[None]:
    try:
        for ns in (NS1, NS2, NS_UP):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # A sandbox has an address on its network; glibc's getaddrinfo (AI_ADDRCONFIG)
        # returns no IPv4 answer at all in a namespace with loopback only.
        # (No dummy module in this kernel: a veth pair kept inside the namespace.)
        sh("ip", "-n", NS2, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        sh("ip", "-n", NS2, "addr", "add", "10.0.2.99/24", "dev", "eth0")
        sh("ip", "-n", NS2, "link", "set", "eth1", "up")
        sh("ip", "-n", NS2, "link", "set", "eth0", "up")
        yield
    finally:
        for ns in (NS1, NS2, NS_UP):
            sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
    assert our_netns() == []


class FakeUpstream:
    """A resolver in NS_UP: example.test and big.test have answers, slow.test never gets
    one, anything else is NXDOMAIN. UDP and TCP, from two threads with blocking sockets."""

    def __init__(self) -> None:
        self.udp = socket_in_netns(f"/run/netns/{NS_UP}", socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(UP_ADDR)
        self.tcp = socket_in_netns(f"/run/netns/{NS_UP}", socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(UP_ADDR)
        self.tcp.listen(8)
        self.seen: list[tuple[str, int]] = []  # (name, ID as received)
        self.threads = [
            threading.Thread(target=self._serve_udp, daemon=True),
            threading.Thread(target=self._serve_tcp, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def answer(self, data: bytes) -> bytes | None:
        q = DNSRecord.parse(data)
        name = str(q.q.qname).rstrip(".")
        self.seen.append((name, q.header.id))
        if name == "slow.test":
            return None
        r = q.reply(aa=0)
        if name == "example.test":
            r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("198.51.100.77"), ttl=30))
        elif name == "big.test":
            for i in range(60):
                r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(f"198.51.100.{i}"), ttl=30))
        else:
            r.header.rcode = RCODE.NXDOMAIN
        return bytes(r.pack())

    def _serve_udp(self) -> None:
        while True:
            try:
                data, addr = self.udp.recvfrom(4096)
            except OSError:
                return
            if not data:  # shut down
                return
            resp = self.answer(data)
            if resp is not None:
                if len(resp) > 512:
                    r = DNSRecord.parse(resp)
                    r.rr = []
                    r.header.tc = 1
                    resp = bytes(r.pack())
                self.udp.sendto(resp, addr)

    def _serve_tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                n = int.from_bytes(conn.recv(2, socket.MSG_WAITALL), "big")
                resp = self.answer(conn.recv(n, socket.MSG_WAITALL))
                if resp is not None:
                    conn.sendall(len(resp).to_bytes(2, "big") + resp)

    def close(self) -> None:
        for s in (self.udp, self.tcp):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture(scope="module")
def upstream(namespaces: None) -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    try:
        yield up
    finally:
        up.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return loop.run_until_complete(asyncio.wait_for(coro, 60))


@pytest.fixture
def server(loop: asyncio.AbstractEventLoop, upstream: FakeUpstream) -> Iterator[DnsServer]:
    srv = DnsServer([UP_ADDR], forward_timeout=0.6, upstream_netns=f"/run/netns/{NS_UP}")
    srv.update(RECORDS, NAMES)
    try:
        run(loop, srv.attach("s1", f"/run/netns/{NS1}", frozenset({N1})))
        run(loop, srv.attach("s2", f"/run/netns/{NS2}", frozenset({N2})))
        yield srv
    finally:
        run(loop, srv.close())


async def query(ns: str, *ops: list[str]) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        ns,
        sys.executable,
        "-c",
        CLIENT,
        json.dumps(list(ops)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)  # type: ignore[no-any-return]


def q(loop: asyncio.AbstractEventLoop, ns: str, *ops: list[str]) -> list[dict[str, Any]]:
    return run(loop, query(ns, *ops))


def a(res: dict[str, Any]) -> list[str]:
    assert res.get("rcode") == "NOERROR", res
    assert res["id_ok"]
    return sorted(v for t, v in res["an"] if t == "A")


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_local_names_per_view(
    loop: asyncio.AbstractEventLoop, server: DnsServer, proto: str
) -> None:
    r1 = q(
        loop,
        NS1,
        [proto, "web", "A"],
        [proto, "tasks.web", "A"],
        [proto, "www", "A"],
        [proto, "web.2", "A"],
        [proto, "db", "A"],
        [proto, "web", "AAAA"],
        [proto, "5.1.0.10.in-addr.arpa", "PTR"],
        [proto, "_http._tcp.web", "SRV"],
    )
    web, tasks, www, web2, db, aaaa, ptr, srv = r1
    assert a(web) == ["10.0.1.2"]
    assert (web["qr"], web["aa"], web["ra"], web["rd"]) == (1, 1, 1, 1)
    assert a(tasks) == ["10.0.1.5", "10.0.1.6"]
    assert a(www) == ["10.0.1.2"]
    assert a(web2) == ["10.0.1.6"]
    assert db["rcode"] == "NXDOMAIN"  # db lives on back only: forwarded, and upstream says so
    assert aaaa["rcode"] == "NOERROR" and aaaa["an"] == []
    assert ptr["an"] == [["PTR", "web.1.t1."]]
    assert srv["an"] == [["SRV", "0 0 80 web."]]
    assert srv["ar"] == [["A", "10.0.1.2"]]
    r2 = q(loop, NS2, [proto, "web", "A"], [proto, "db", "A"], [proto, "web.front", "A"])
    assert a(r2[0]) == ["10.0.2.2"]
    assert a(r2[1]) == ["10.0.2.10", "10.0.2.11"]  # db.3 is disabled
    assert r2[2]["rcode"] == "NXDOMAIN"  # front is not in s2's view


def test_forwarding_udp_and_tcp(
    loop: asyncio.AbstractEventLoop, server: DnsServer, upstream: FakeUpstream
) -> None:
    before = len(upstream.seen)
    res = q(
        loop,
        NS1,
        ["udp", "example.test", "A"],
        ["tcp", "example.test", "A"],
        ["udp", "nosuch.test", "A"],
        ["tcp", "nosuch.test", "A"],
    )
    assert a(res[0]) == ["198.51.100.77"] and a(res[1]) == ["198.51.100.77"]
    assert res[0]["aa"] == 0  # the upstream's answer, passed through
    assert res[2]["rcode"] == "NXDOMAIN" and res[2]["id_ok"]
    assert res[3]["rcode"] == "NXDOMAIN" and res[3]["id_ok"]
    assert [n for n, _ in upstream.seen[before:]] == ["example.test"] * 2 + ["nosuch.test"] * 2
    assert server.stats["forwarded"] >= 4


def test_truncated_upstream_answer_reaches_the_client_over_tcp(
    loop: asyncio.AbstractEventLoop, server: DnsServer
) -> None:
    udp, tcp = q(loop, NS2, ["udp", "big.test", "A"], ["tcp", "big.test", "A"])
    assert udp["tc"] == 1 and udp["an"] == []
    assert len(a(tcp)) == 60


def test_upstream_timeout_gives_servfail(
    loop: asyncio.AbstractEventLoop, server: DnsServer
) -> None:
    t0 = time.monotonic()
    udp, tcp = q(loop, NS1, ["udp", "slow.test", "A"], ["tcp", "slow.test", "A"])
    took = time.monotonic() - t0
    assert udp["rcode"] == "SERVFAIL" and udp["id_ok"]
    assert tcp["rcode"] == "SERVFAIL"
    assert took < 2.5  # two timeouts of 0.6 s plus process start, not the client's 3 s
    assert server.stats["servfail"] >= 2 and server.stats["upstream_timeouts"] >= 2


def test_nxdomain_without_upstreams(loop: asyncio.AbstractEventLoop, namespaces: None) -> None:
    srv = DnsServer()
    srv.update(RECORDS, NAMES)
    try:
        run(loop, srv.attach("s1", f"/run/netns/{NS1}", frozenset({N1})))
        res = q(loop, NS1, ["udp", "example.test", "A"], ["tcp", "db", "A"], ["udp", "web", "A"])
        assert res[0]["rcode"] == "NXDOMAIN" and res[1]["rcode"] == "NXDOMAIN"
        assert a(res[2]) == ["10.0.1.2"]
        assert srv.stats["forwarded"] == 0 and srv.stats["nxdomain"] == 2
    finally:
        run(loop, srv.close())


def test_update_invalidates_cached_answers(
    loop: asyncio.AbstractEventLoop, server: DnsServer
) -> None:
    assert a(q(loop, NS1, ["udp", "web", "A"], ["udp", "web", "A"])[1]) == ["10.0.1.2"]
    assert server.stats["cache_hits"] >= 1
    assert server.update(list(RECORDS), dict(NAMES)) is False  # same input: nothing to do
    moved = [
        rec(N1, "10.0.1.5", "web.1.t1", vip="10.0.1.3"),
        rec(N1, "10.0.1.9", "web.2.t9", vip="10.0.1.3"),
        *RECORDS[2:],
    ]
    assert server.update(moved, NAMES) is True
    web, tasks = q(loop, NS1, ["udp", "web", "A"], ["udp", "tasks.web", "A"])
    assert a(web) == ["10.0.1.3"]
    assert a(tasks) == ["10.0.1.5", "10.0.1.9"]


def test_reattach_with_another_view_and_detach(
    loop: asyncio.AbstractEventLoop, server: DnsServer
) -> None:
    run(loop, server.attach("s1", f"/run/netns/{NS1}", frozenset({N1})))  # idempotent
    assert server.attached() == {"s1", "s2"}
    run(loop, server.attach("s1", f"/run/netns/{NS1}", frozenset({N1, N2})))
    (web,) = q(loop, NS1, ["udp", "web", "A"])
    assert a(web) == ["10.0.1.2", "10.0.2.2"]
    run(loop, server.detach("s1"))
    run(loop, server.detach("s1"))
    assert server.attached() == {"s2"}
    (gone,) = q(loop, NS1, ["udp", "web", "A"])
    assert "error" in gone
    assert a(q(loop, NS2, ["udp", "web", "A"])[0]) == ["10.0.2.2"]


def test_dnsrr_answers_rotate_between_queries(
    loop: asyncio.AbstractEventLoop, server: DnsServer
) -> None:
    res = q(loop, NS2, *[["udp", "db", "A"] for _ in range(24)])
    orders = {tuple(v for _, v in r["an"]) for r in res}
    assert {o[0] for o in orders} == {"10.0.2.10", "10.0.2.11"}


def test_malformed_packets_are_dropped_and_serving_goes_on(
    loop: asyncio.AbstractEventLoop, server: DnsServer
) -> None:
    res = q(
        loop,
        NS1,
        ["junk", "00"],
        ["junk", "1234" + "ff" * 40],
        ["udp", "web", "A"],
    )
    assert a(res[2]) == ["10.0.1.2"]
    assert server.stats["malformed"] >= 2


def test_getent_resolves_service_names_through_glibc(
    loop: asyncio.AbstractEventLoop, server: DnsServer
) -> None:
    os.makedirs(f"/etc/netns/{NS2}", exist_ok=True)
    with open(f"/etc/netns/{NS2}/resolv.conf", "w") as f:
        f.write("nameserver 127.0.0.11\noptions timeout:1 attempts:1\n")
    try:

        async def getent(name: str) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                "ip",
                "netns",
                "exec",
                NS2,
                "getent",
                "ahostsv4",
                name,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            return proc.returncode or 0, out.decode()

        rc, out = run(loop, getent("web"))
        assert rc == 0 and out.split()[0] == "10.0.2.2", out
        rc, out = run(loop, getent("tasks.db"))
        assert rc == 0
        assert {line.split()[0] for line in out.splitlines()} == {"10.0.2.10", "10.0.2.11"}
        rc, out = run(loop, getent("nosuch"))
        assert rc == 2  # key not found
    finally:
        shutil.rmtree(f"/etc/netns/{NS2}", ignore_errors=True)


def test_tcp_connections_are_bounded_and_idle_ones_closed(
    loop: asyncio.AbstractEventLoop, server: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.dns.server as dns_server

    monkeypatch.setattr(dns_server, "TCP_MAX_CONNS", 2)
    monkeypatch.setattr(dns_server, "TCP_IDLE", 0.5)

    def client() -> tuple[list[bytes], float]:
        conns = []
        for _ in range(3):
            c = socket_in_netns(f"/run/netns/{NS1}", socket.AF_INET, socket.SOCK_STREAM)
            c.settimeout(3)
            c.connect(("127.0.0.11", 53))
            conns.append(c)
            time.sleep(0.1)  # let the server take each one in turn
        try:
            third = conns[2].recv(10)  # over the bound: closed at once, nothing sent
            t0 = time.monotonic()
            first = conns[0].recv(10)  # idle: closed by the server after TCP_IDLE
            return [third, first], time.monotonic() - t0
        finally:
            for c in conns:
                c.close()

    (third, first), waited = run(loop, asyncio.to_thread(client))
    assert third == b"" and first == b""
    assert waited < 2.0
    assert server.stats["tcp_rejected"] == 1
