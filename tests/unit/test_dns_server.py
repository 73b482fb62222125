"""DnsServer without sockets: the reply bytes its caches produce, table updates, upstreams
from resolv.conf. (Sockets, namespaces and forwarding: tests/e2e/test_dns_server.py.)"""

from __future__ import annotations

from pathlib import Path

from dnslib import EDNS0, OPCODE, QTYPE, RCODE, DNSRecord

from agent.dns.server import DnsServer
from agent.endpoints import EndpointRecord

NET = "net1"
VIEW = frozenset({NET})


def rec(ip: str, task: str, vip: str = "", enabled: bool = True) -> EndpointRecord:
    svc, slot, tid = task.split(".")
    return EndpointRecord(
        network_id=NET,
        addr=f"{ip}/16",
        mac="02:42:0a:00:00:01",
        vtep="198.51.100.225",
        node_id="n1",
        task_id=tid,
        task_name=task,
        service_id=f"{svc}-id",
        service_name=svc,
        slot=int(slot),
        vip=vip,
        enabled=enabled,
    )


RECORDS = [rec("10.0.0.5", "web.1.a", "10.0.0.2"), rec("10.0.0.6", "web.2.b", "10.0.0.2")]
RR_TASKS = [rec(f"10.0.1.{i}", f"rr.{i}.t{i}") for i in range(1, 4)]


def server(records: list[EndpointRecord] = RECORDS, **kw: object) -> DnsServer:
    s = DnsServer(**kw)  # type: ignore[arg-type]
    s.update(records, {NET: "front"})
    return s


def ask(s: DnsServer, name: str, qtype: str = "A", tcp: bool = False, **kw: int) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    for k, v in kw.items():
        setattr(q.header, k, v)
    raw = s.answer(VIEW, q.pack(), tcp)
    assert raw is not None
    r = DNSRecord.parse(raw)
    assert r.header.id == q.header.id
    return r


def addrs(r: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in r.rr if rr.rtype == QTYPE.A]


def test_local_answer_flags_and_cache_hit_with_another_id() -> None:
    s = server()
    first = ask(s, "web")
    assert addrs(first) == ["10.0.0.2"]
    h = first.header
    assert (h.qr, h.aa, h.ra, h.rd, h.rcode) == (1, 1, 1, 1, RCODE.NOERROR)
    second = ask(s, "web")  # another random ID: served from the cache, ID rewritten
    assert addrs(second) == ["10.0.0.2"]
    assert s.stats["cache_hits"] == 1
    no_rd = ask(s, "web", rd=0)
    assert no_rd.header.rd == 0 and addrs(no_rd) == ["10.0.0.2"]


def test_unknown_name_without_upstreams_is_nxdomain_not_authoritative() -> None:
    s = server()
    r = ask(s, "example.org")
    assert r.header.rcode == RCODE.NXDOMAIN and r.header.aa == 0
    assert s.stats["nxdomain"] == 1


def test_unknown_name_with_upstreams_is_not_answered_locally() -> None:
    s = server(upstreams=[("198.51.100.5", 53)])
    assert s.answer(VIEW, DNSRecord.question("example.org").pack()) is None
    assert addrs(ask(s, "web")) == ["10.0.0.2"]


def test_aaaa_of_a_known_name_is_empty_noerror() -> None:
    r = ask(server(), "web", "AAAA")
    assert r.header.rcode == RCODE.NOERROR and r.rr == []


def test_shuffled_answers_rotate_through_the_cache() -> None:
    s = server(RR_TASKS)
    firsts = {addrs(ask(s, "rr"))[0] for _ in range(16)}
    assert len(firsts) > 1
    assert {tuple(sorted(addrs(ask(s, "tasks.rr")))) for _ in range(8)} == {
        ("10.0.1.1", "10.0.1.2", "10.0.1.3")
    }


def test_every_record_comes_first_in_turn_even_with_two() -> None:
    # Independent shuffles could all put one record first (1 in 128 with two records and 8
    # orders); the cache keeps distinct orders, so each of the two leads every other answer.
    for _ in range(50):
        s = server(RR_TASKS[:2])
        firsts = [addrs(ask(s, "rr"))[0] for _ in range(4)]
        assert set(firsts) == {"10.0.1.1", "10.0.1.2"}
        assert firsts[0] != firsts[1] and firsts[:2] == firsts[2:]


def test_update_is_cheap_when_unchanged_and_invalidates_caches_when_changed() -> None:
    s = server()
    assert addrs(ask(s, "web")) == ["10.0.0.2"]
    assert s.update(list(reversed(RECORDS)), {NET: "front"}) is False
    moved = [rec("10.0.0.5", "web.1.a", "10.0.0.3"), rec("10.0.0.6", "web.2.b", "10.0.0.3")]
    assert s.update(moved, {NET: "front"}) is True
    assert addrs(ask(s, "web")) == ["10.0.0.3"]
    assert s.update(moved, {NET: "renamed"}) is True
    assert addrs(ask(s, "web.renamed")) == ["10.0.0.3"]


def test_big_answer_is_truncated_over_udp_and_whole_over_tcp() -> None:
    many = [rec(f"10.0.{i // 250}.{i % 250 + 1}", f"big.{i + 1}.t{i}") for i in range(60)]
    s = server(many)
    udp = ask(s, "tasks.big")
    assert udp.header.tc == 1 and udp.rr == []
    assert s.stats["truncated"] >= 1
    tcp = ask(s, "tasks.big", tcp=True)
    assert tcp.header.tc == 0 and len(addrs(tcp)) == 60
    q = DNSRecord.question("tasks.big")
    q.add_ar(EDNS0(udp_len=4096))  # a client that takes big datagrams
    raw = s.answer(VIEW, q.pack())
    assert raw is not None and len(raw) <= 1232
    r = DNSRecord.parse(raw)
    assert r.header.tc == 0 and len(addrs(r)) == 60
    assert any(rr.rtype == QTYPE.OPT for rr in r.ar)


def test_malformed_and_odd_packets() -> None:
    s = server()
    assert s.answer(VIEW, b"\x12") is None
    assert s.answer(VIEW, b"\x12\x34" + b"\xff" * 30) is None
    response = DNSRecord.question("web").reply().pack()
    assert s.answer(VIEW, response) is None  # never answer a response
    assert s.stats["malformed"] == 3
    q = DNSRecord.question("web")
    q.header.opcode = OPCODE.STATUS
    raw = s.answer(VIEW, q.pack())
    assert raw is not None and DNSRecord.parse(raw).header.rcode == RCODE.NOTIMP
    q = DNSRecord.question("web")
    q.questions = []
    raw = s.answer(VIEW, q.pack())
    assert raw is not None and DNSRecord.parse(raw).header.rcode == RCODE.FORMERR


def test_view_scopes_answers() -> None:
    s = server()
    raw = s.answer(frozenset({"othernet"}), DNSRecord.question("web").pack())
    assert raw is not None and DNSRecord.parse(raw).header.rcode == RCODE.NXDOMAIN


def test_host_upstreams_skip_loopback(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch example.org\nnameserver 127.0.0.53\nnameserver 198.51.100.5\n"
        "nameserver ::1\nnameserver 2001:db8::1\nnameserver 198.51.100.5\nnameserver bogus\n"
        "options ndots:2\n"
    )
    assert DnsServer.host_upstreams(str(conf)) == [("198.51.100.5", 53), ("2001:db8::1", 53)]
    assert DnsServer.host_upstreams(str(tmp_path / "missing")) == []
