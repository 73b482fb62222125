"""NameTable: every name form, scoping by the asking sandbox's networks, health, types."""

from __future__ import annotations

import random

import pytest
from dnslib import QTYPE

from agent.dns.names import DEFAULT_TTL, Kind, NameTable, Resolution
from agent.endpoints import EndpointRecord, PortRecord

N1, N2, N3 = "net1id", "net2id", "net3id"
NETWORK_NAMES = {N1: "front", N2: "back", N3: "other"}
HTTP = PortRecord("http", "tcp", 80, 8080)
PG = PortRecord("pg", "tcp", 5432)


def rec(
    net: str,
    ip: str,
    task_name: str,
    *,
    vip: str = "",
    aliases: tuple[str, ...] = (),
    enabled: bool = True,
    ports: tuple[PortRecord, ...] = (),
    service_id: str | None = None,
) -> EndpointRecord:
    svc, slot_or_node, task_id = task_name.split(".") if task_name else ("", "0", "")
    return EndpointRecord(
        network_id=net,
        addr=f"{ip}/24",
        mac="02:42:00:00:00:01",
        vtep="198.51.100.1",
        node_id="node1",
        task_id=task_id,
        task_name=task_name,
        service_id=svc + "id" if service_id is None else service_id,
        service_name=svc,
        slot=int(slot_or_node) if slot_or_node.isdigit() else 0,
        vip=vip,
        aliases=aliases,
        enabled=enabled,
        ports=ports,
    )


RECORDS = [
    # web: endpoint mode vip, on both networks; alias www on front only; task 3 unhealthy.
    rec(N1, "10.0.1.5", "web.1.t1", vip="10.0.1.2", aliases=("www",), ports=(HTTP,)),
    rec(N1, "10.0.1.6", "web.2.t2", vip="10.0.1.2", aliases=("www",), ports=(HTTP,)),
    rec(N1, "10.0.1.7", "web.3.t3", vip="10.0.1.2", aliases=("www",), enabled=False),
    rec(N2, "10.0.2.5", "web.1.t1", vip="10.0.2.2", ports=(HTTP,)),
    rec(N2, "10.0.2.6", "web.2.t2", vip="10.0.2.2", ports=(HTTP,)),
    # db: dnsrr on back; task 3 draining.
    rec(N2, "10.0.2.10", "db.1.d1", ports=(PG,)),
    rec(N2, "10.0.2.11", "db.2.d2", ports=(PG,)),
    rec(N2, "10.0.2.12", "db.3.d3", ports=(PG,), enabled=False),
    # cache: dnsrr, every task unhealthy.
    rec(N1, "10.0.1.20", "cache.1.c1", enabled=False),
    # a global service's task: SERVICE.NODEID.TASKID.
    rec(N1, "10.0.1.30", "mon.nodeabc.g1"),
    # a node's own ingress endpoint: not a task, no name.
    rec(N1, "10.0.1.250", "", service_id=""),
]

V1 = frozenset({N1})
V2 = frozenset({N2})
V12 = frozenset({N1, N2})


@pytest.fixture
def table() -> NameTable:
    return NameTable.build(RECORDS, NETWORK_NAMES, rng=random.Random(7))


def a(res: Resolution) -> list[str]:
    assert res.kind is Kind.ANSWER, res
    assert all(rr.rtype == QTYPE.A for rr in res.answer)
    return [str(rr.rdata) for rr in res.answer]


def test_service_with_vip_answers_its_vip_per_network_in_view(table: NameTable) -> None:
    assert a(table.resolve(V1, "web", QTYPE.A)) == ["10.0.1.2"]
    assert a(table.resolve(V2, "web.", QTYPE.A)) == ["10.0.2.2"]
    assert sorted(a(table.resolve(V12, "web", QTYPE.A))) == ["10.0.1.2", "10.0.2.2"]
    assert table.resolve(V1, "web", QTYPE.A).varies is False


def test_name_on_a_network_outside_the_view_is_not_ours(table: NameTable) -> None:
    assert table.resolve(frozenset({N3}), "web", QTYPE.A).kind is Kind.FORWARD
    assert table.resolve(V1, "db", QTYPE.A).kind is Kind.FORWARD
    assert table.resolve(V1, "tasks.db", QTYPE.A).kind is Kind.FORWARD
    assert table.resolve(V2, "www", QTYPE.A).kind is Kind.FORWARD
    assert table.resolve(frozenset(), "web", QTYPE.A).kind is Kind.FORWARD


def test_unknown_names_are_not_ours(table: NameTable) -> None:
    for name in ("example.org", "nosuch", "tasks.nosuch", "web.9", "web.front.x", "."):
        assert table.resolve(V12, name, QTYPE.A).kind is Kind.FORWARD, name


def test_tasks_name_lists_enabled_task_ips_only(table: NameTable) -> None:
    res = table.resolve(V1, "tasks.web", QTYPE.A)
    assert sorted(a(res)) == ["10.0.1.5", "10.0.1.6"]
    assert res.varies
    assert sorted(a(table.resolve(V12, "tasks.web", QTYPE.A))) == [
        "10.0.1.5",
        "10.0.1.6",
        "10.0.2.5",
        "10.0.2.6",
    ]


def test_dnsrr_service_answers_enabled_task_ips(table: NameTable) -> None:
    res = table.resolve(V2, "db", QTYPE.A)
    assert sorted(a(res)) == ["10.0.2.10", "10.0.2.11"]
    assert res.varies


def test_dnsrr_service_with_no_enabled_task_is_known_but_empty(table: NameTable) -> None:
    assert table.resolve(V1, "cache", QTYPE.A).kind is Kind.EMPTY
    assert table.resolve(V1, "tasks.cache", QTYPE.A).kind is Kind.EMPTY
    # ...while its task is still reachable by its own name.
    assert a(table.resolve(V1, "cache.1", QTYPE.A)) == ["10.0.1.20"]


def test_vip_service_answers_vip_even_with_no_enabled_task() -> None:
    recs = [rec(N1, "10.0.1.5", "api.1.a1", vip="10.0.1.3", enabled=False)]
    t = NameTable.build(recs, NETWORK_NAMES)
    assert a(t.resolve(V1, "api", QTYPE.A)) == ["10.0.1.3"]
    assert t.resolve(V1, "tasks.api", QTYPE.A).kind is Kind.EMPTY


def test_shuffled_answers_vary_in_order(table: NameTable) -> None:
    orders = {tuple(a(table.resolve(V12, "tasks.web", QTYPE.A))) for _ in range(200)}
    assert len(orders) > 6
    firsts = {o[0] for o in orders}
    assert firsts == {"10.0.1.5", "10.0.1.6", "10.0.2.5", "10.0.2.6"}
    assert {tuple(sorted(o)) for o in orders} == {("10.0.1.5", "10.0.1.6", "10.0.2.5", "10.0.2.6")}
    db_orders = {tuple(a(table.resolve(V2, "db", QTYPE.A))) for _ in range(100)}
    assert db_orders == {("10.0.2.10", "10.0.2.11"), ("10.0.2.11", "10.0.2.10")}


def test_alias_resolves_like_the_service(table: NameTable) -> None:
    assert a(table.resolve(V1, "www", QTYPE.A)) == ["10.0.1.2"]
    assert sorted(a(table.resolve(V1, "tasks.www", QTYPE.A))) == ["10.0.1.5", "10.0.1.6"]


def test_task_names_resolve_enabled_or_not(table: NameTable) -> None:
    assert a(table.resolve(V1, "web.2", QTYPE.A)) == ["10.0.1.6"]
    assert a(table.resolve(V1, "web.3", QTYPE.A)) == ["10.0.1.7"]
    assert a(table.resolve(V1, "web.3.t3", QTYPE.A)) == ["10.0.1.7"]
    assert a(table.resolve(V2, "web.1.t1", QTYPE.A)) == ["10.0.2.5"]
    assert sorted(a(table.resolve(V12, "web.1", QTYPE.A))) == ["10.0.1.5", "10.0.2.5"]
    assert table.resolve(V2, "web.3", QTYPE.A).kind is Kind.FORWARD


def test_global_task_names(table: NameTable) -> None:
    assert a(table.resolve(V1, "mon.nodeabc", QTYPE.A)) == ["10.0.1.30"]
    assert a(table.resolve(V1, "mon.nodeabc.g1", QTYPE.A)) == ["10.0.1.30"]
    assert a(table.resolve(V1, "mon", QTYPE.A)) == ["10.0.1.30"]


def test_name_dot_network_restricts_to_that_network(table: NameTable) -> None:
    assert a(table.resolve(V12, "web.front", QTYPE.A)) == ["10.0.1.2"]
    assert a(table.resolve(V12, "web.back", QTYPE.A)) == ["10.0.2.2"]
    assert sorted(a(table.resolve(V12, "tasks.web.back", QTYPE.A))) == ["10.0.2.5", "10.0.2.6"]
    assert a(table.resolve(V12, "web.1.back", QTYPE.A)) == ["10.0.2.5"]
    assert a(table.resolve(V12, "web.1.t1.front", QTYPE.A)) == ["10.0.1.5"]
    assert a(table.resolve(V1, "www.front", QTYPE.A)) == ["10.0.1.2"]


def test_name_dot_network_outside_the_view_is_not_ours(table: NameTable) -> None:
    assert table.resolve(V1, "web.back", QTYPE.A).kind is Kind.FORWARD
    assert table.resolve(V12, "web.other", QTYPE.A).kind is Kind.FORWARD
    assert table.resolve(V12, "www.back", QTYPE.A).kind is Kind.FORWARD


def test_network_names_with_dots() -> None:
    recs = [rec(N1, "10.0.1.5", "web.1.t1", vip="10.0.1.2")]
    t = NameTable.build(recs, {N1: "corp.front"})
    assert a(t.resolve(V1, "web.corp.front", QTYPE.A)) == ["10.0.1.2"]
    assert a(t.resolve(V1, "web.1.corp.front", QTYPE.A)) == ["10.0.1.5"]


def test_ptr_of_task_ip_and_vip(table: NameTable) -> None:
    res = table.resolve(V1, "5.1.0.10.in-addr.arpa.", QTYPE.PTR)
    assert res.kind is Kind.ANSWER
    assert [str(rr.rdata) for rr in res.answer] == ["web.1.t1."]
    assert res.answer[0].rtype == QTYPE.PTR
    assert str(res.answer[0].rname) == "5.1.0.10.in-addr.arpa."
    vip = table.resolve(V2, "2.2.0.10.in-addr.arpa", QTYPE.PTR)
    assert [str(rr.rdata) for rr in vip.answer] == ["web."]
    disabled = table.resolve(V2, "12.2.0.10.in-addr.arpa", QTYPE.PTR)
    assert [str(rr.rdata) for rr in disabled.answer] == ["db.3.d3."]


def test_ptr_scoping_and_unknown(table: NameTable) -> None:
    assert table.resolve(V2, "5.1.0.10.in-addr.arpa", QTYPE.PTR).kind is Kind.FORWARD
    assert table.resolve(V1, "99.1.0.10.in-addr.arpa", QTYPE.PTR).kind is Kind.FORWARD
    assert table.resolve(V1, "250.1.0.10.in-addr.arpa", QTYPE.PTR).kind is Kind.FORWARD
    assert table.resolve(V1, "1.0.10.in-addr.arpa", QTYPE.PTR).kind is Kind.FORWARD
    assert table.resolve(V1, "5.1.0.10.in-addr.arpa", QTYPE.A).kind is Kind.EMPTY


def test_srv_for_named_port(table: NameTable) -> None:
    res = table.resolve(V1, "_http._tcp.web", QTYPE.SRV)
    assert res.kind is Kind.ANSWER
    (srv,) = res.answer
    assert srv.rtype == QTYPE.SRV
    assert (srv.rdata.priority, srv.rdata.weight, srv.rdata.port) == (0, 0, 80)
    assert str(srv.rdata.target) == "web."
    assert [(str(rr.rname), str(rr.rdata)) for rr in res.additional] == [("web.", "10.0.1.2")]


def test_srv_of_dnsrr_service_carries_task_ips(table: NameTable) -> None:
    res = table.resolve(V12, "_pg._tcp.db.back.", QTYPE.SRV)
    (srv,) = res.answer
    assert srv.rdata.port == 5432
    assert str(srv.rdata.target) == "db.back."
    assert sorted(str(rr.rdata) for rr in res.additional) == ["10.0.2.10", "10.0.2.11"]
    assert res.varies


def test_srv_that_does_not_match_is_not_ours(table: NameTable) -> None:
    assert table.resolve(V1, "_http._udp.web", QTYPE.SRV).kind is Kind.FORWARD
    assert table.resolve(V1, "_ssh._tcp.web", QTYPE.SRV).kind is Kind.FORWARD
    assert table.resolve(V1, "_pg._tcp.db", QTYPE.SRV).kind is Kind.FORWARD
    assert table.resolve(V1, "_http._tcp.web", QTYPE.A).kind is Kind.EMPTY


def test_other_types_of_known_names_are_empty(table: NameTable) -> None:
    for qtype in (QTYPE.AAAA, QTYPE.MX, QTYPE.TXT):
        for name in ("web", "tasks.web", "www", "web.1", "web.front", "db.back"):
            view = V12
            assert table.resolve(view, name, qtype) == Resolution(Kind.EMPTY), (name, qtype)
    assert table.resolve(V12, "example.org", QTYPE.AAAA).kind is Kind.FORWARD


def test_names_are_case_insensitive_and_echo_the_asked_spelling(table: NameTable) -> None:
    res = table.resolve(V12, "WeB.FrOnT.", QTYPE.A)
    assert a(res) == ["10.0.1.2"]
    assert str(res.answer[0].rname) == "WeB.FrOnT."
    assert sorted(a(table.resolve(V1, "TASKS.Web", QTYPE.A))) == ["10.0.1.5", "10.0.1.6"]
    assert a(table.resolve(V1, "WEB.3.T3", QTYPE.A)) == ["10.0.1.7"]
    upper = NameTable.build(
        [rec(N1, "10.0.1.8", "Api.1.X1", vip="10.0.1.4", aliases=("API-Alias",))],
        {N1: "Front"},
    )
    assert a(upper.resolve(V1, "api-alias.front", QTYPE.A)) == ["10.0.1.4"]
    assert a(upper.resolve(V1, "api.1", QTYPE.A)) == ["10.0.1.8"]


def test_ttl_is_short_by_default_and_configurable() -> None:
    assert DEFAULT_TTL == 2
    t = NameTable.build(RECORDS, NETWORK_NAMES)
    assert {rr.ttl for rr in t.resolve(V1, "tasks.web", QTYPE.A).answer} == {2}
    t7 = NameTable.build(RECORDS, NETWORK_NAMES, ttl=7)
    assert {rr.ttl for rr in t7.resolve(V1, "web", QTYPE.A).answer} == {7}
    assert {rr.ttl for rr in t7.resolve(V1, "_http._tcp.web", QTYPE.SRV).additional} == {7}


def test_empty_table_forwards_everything() -> None:
    t = NameTable.build([], {})
    assert t.resolve(V1, "web", QTYPE.A).kind is Kind.FORWARD
