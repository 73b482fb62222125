"""The IPsec core (agent/dataplane/ipsec.py): both ends of a pair agree without talking, a
rotation in the manager's two steps never leaves a sender without a receiver, and the plan
applies changes in an order that never leaves the out policy pointing at a missing SA."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.dataplane.ipsec import (
    SA_KEY_BYTES,
    SILENT_AFTER_S,
    AddSA,
    DeletePolicy,
    DeleteSA,
    EspWatch,
    Policy,
    SetPolicy,
    XfrmOp,
    XfrmTables,
    batch_line,
    desired_tables,
    plan_tables,
    sa_key,
    spi_for,
    stages,
)
from agent.model import IpsecKey

A, B, C = (IPv4Address(f"198.51.100.{i}") for i in (1, 2, 3))
PORT = 4790
K1, K2, K3 = (IpsecKey(tag=i, key=bytes([i]) * 32) for i in (1, 2, 3))
# The manager's rotation (manager/keymanager.py): step 1 adds a key that is only accepted,
# step 2 (a grace later) makes it primary and drops all but the previous primary.
RING_STEPS = [[K1], [K1, K2], [K2, K1], [K2, K1, K3], [K3, K2]]


def tables(local: IPv4Address, ring: list[IpsecKey], *peers: IPv4Address) -> XfrmTables:
    return desired_tables(local, peers, ring, PORT, encrypted=True)


def out_sa(t: XfrmTables, peer: IPv4Address) -> tuple[int, bytes]:
    (policy,) = [p for p in t.policies if p.direction == "out" and p.dst == IPv4Network(peer)]
    (sa,) = [s for s in t.sas if s.spi == policy.spi and s.dst == peer]
    return sa.spi, sa.key


def inbound(t: XfrmTables, peer: IPv4Address) -> set[tuple[int, bytes]]:
    return {(s.spi, s.key) for s in t.sas if s.src == peer}


def test_spis_and_keys_differ_per_direction_and_key_and_avoid_reserved_values() -> None:
    spis = {spi_for(s, d, t) for s, d in ((A, B), (B, A)) for t in (1, 2)}
    assert len(spis) == 4 and min(spis) >= 256
    keys = {sa_key(K1.key, A, B, 300), sa_key(K1.key, B, A, 300), sa_key(K2.key, A, B, 300)}
    assert len(keys) == 3 and {len(k) for k in keys} == {SA_KEY_BYTES}


def test_both_ends_of_a_pair_agree_without_talking() -> None:
    a, b = tables(A, [K1], B), tables(B, [K1], A)
    assert out_sa(a, B) in inbound(b, A)
    assert out_sa(b, A) in inbound(a, B)
    assert out_sa(a, B) != out_sa(b, A)


@pytest.mark.parametrize("lag", [0, 1])
def test_a_host_one_rotation_step_behind_still_opens_what_the_other_sends(lag: int) -> None:
    for i in range(lag, len(RING_STEPS)):
        sender, receiver = RING_STEPS[i], RING_STEPS[i - lag]
        assert out_sa(tables(A, sender, B), B) in inbound(tables(B, receiver, A), A)
        assert out_sa(tables(A, receiver, B), B) in inbound(tables(B, sender, A), A)


def test_switching_every_host_at_once_would_lose_packets() -> None:
    """What the grace guards against: a sender with the new primary before the receiver holds
    the key (two steps apart) is not understood."""
    assert out_sa(tables(A, [K2, K1], B), B) not in inbound(tables(B, [K1], A), A)


def test_tables_hold_one_inbound_policy_and_per_peer_one_out_sa_and_an_in_sa_per_key() -> None:
    t = tables(A, [K2, K1], B, C, A)  # its own address among the peers is ignored
    assert sorted((p.direction, p.action) for p in t.policies) == [
        ("in", "allow"),
        ("out", "allow"),
        ("out", "allow"),
        ("out", "block"),
    ]
    (pin,) = [p for p in t.policies if p.direction == "in"]
    assert pin == Policy("in", IPv4Network("0.0.0.0/0"), IPv4Network(A), PORT)
    (block,) = [p for p in t.policies if p.action == "block"]
    assert block == Policy("out", pin.src, pin.src, PORT, action="block")
    assert len([s for s in t.sas if s.src == A]) == 2  # one per peer, the primary's
    assert len([s for s in t.sas if s.dst == A]) == 4  # per peer, one per key
    assert desired_tables(A, [B], [K1], PORT, encrypted=False) == XfrmTables()
    # No ring yet: cleartext is refused already, nothing is sent.
    assert desired_tables(A, [B], [], PORT, encrypted=True) == XfrmTables(
        frozenset(), frozenset({pin, block})
    )


def apply(t: XfrmTables, ops: list[XfrmOp]) -> list[XfrmTables]:
    """The tables after each op (what the kernel holds between two lines of the batch)."""
    sas, policies = {s.ident: s for s in t.sas}, {p.ident: p for p in t.policies}
    seen = []
    for op in ops:
        match op:
            case AddSA(sa):
                assert sa.ident not in sas, f"{op} would fail: the SA exists"
                sas[sa.ident] = sa
            case DeleteSA(sa):
                assert sas.pop(sa.ident) == sa
            case SetPolicy(p):
                policies[p.ident] = p
            case DeletePolicy(p):
                assert policies.pop(p.ident) == p
        seen.append(XfrmTables(frozenset(sas.values()), frozenset(policies.values())))
    return seen


def no_dangling_out_policy(t: XfrmTables) -> bool:
    spis = {(s.dst, s.spi) for s in t.sas}
    return all(
        (p.dst.network_address, p.spi) in spis
        for p in t.policies
        if p.direction == "out" and p.action == "allow"
    )


@given(st.integers(0, len(RING_STEPS) - 1), st.integers(0, len(RING_STEPS) - 1))
def test_a_plan_reaches_the_desired_tables_and_never_leaves_an_out_policy_dangling(
    i: int, j: int
) -> None:
    start, goal = tables(A, RING_STEPS[i], B, C), tables(A, RING_STEPS[j], B)
    steps = apply(start, plan_tables(goal, start))
    assert (steps[-1] if steps else start) == goal
    assert all(no_dangling_out_policy(s) for s in steps)
    assert plan_tables(goal, goal) == []


def test_rotation_step_two_swaps_the_out_policy_between_adding_and_removing_sas() -> None:
    ops = plan_tables(tables(A, [K2, K1], B), tables(A, [K1, K2], B))
    kinds = [type(op).__name__ for op in ops]
    assert kinds == ["AddSA", "SetPolicy", "DeleteSA"]
    add, swap, drop = ops
    assert isinstance(add, AddSA) and isinstance(swap, SetPolicy) and isinstance(drop, DeleteSA)
    assert swap.policy.spi == add.sa.spi == spi_for(A, B, K2.tag)
    assert drop.sa.spi == spi_for(A, B, K1.tag)


def test_drift_is_repaired_an_sa_with_another_key_is_replaced_first() -> None:
    goal = tables(A, [K1], B)
    sa = sorted(goal.sas)[0]
    drifted = XfrmTables(
        frozenset(goal.sas - {sa} | {replace(sa, key=b"\0" * SA_KEY_BYTES)}), goal.policies
    )
    ops = plan_tables(goal, drifted)
    assert ops == [DeleteSA(replace(sa, key=b"\0" * SA_KEY_BYTES)), AddSA(sa)]
    foreign = XfrmTables(
        goal.sas, goal.policies | {Policy("out", IPv4Network(A), IPv4Network(C), PORT, 999)}
    )
    assert [type(op) for op in plan_tables(goal, foreign)] == [DeletePolicy]


def test_batch_lines_are_what_ip_xfrm_takes() -> None:
    t = tables(A, [K1], B)
    out = next(s for s in t.sas if s.src == A)
    assert batch_line(AddSA(out), 7) == (
        f"xfrm state add src 198.51.100.1 dst 198.51.100.2 proto esp spi {out.spi:#010x} "
        f"reqid 7 mode transport replay-window 64 aead rfc4106(gcm(aes)) 0x{out.key.hex()} 128"
    )
    assert batch_line(DeleteSA(out), 7) == (
        f"xfrm state delete src 198.51.100.1 dst 198.51.100.2 proto esp spi {out.spi:#010x}"
    )
    pin = Policy("in", IPv4Network("0.0.0.0/0"), IPv4Network(A), PORT)
    assert batch_line(SetPolicy(pin), 7) == (
        "xfrm policy update src 0.0.0.0/0 dst 198.51.100.1/32 proto udp dport 4790 dir in "
        "priority 1000 tmpl proto esp reqid 7 mode transport"
    )
    pout = Policy("out", IPv4Network(A), IPv4Network(B), PORT, 0x1234)
    assert batch_line(SetPolicy(pout), 7) == (
        "xfrm policy update src 198.51.100.1/32 dst 198.51.100.2/32 proto udp dport 4790 "
        "dir out priority 1000 tmpl src 198.51.100.1 dst 198.51.100.2 proto esp "
        "spi 0x00001234 reqid 7 mode transport"
    )
    assert batch_line(DeletePolicy(pout), 7) == (
        "xfrm policy delete src 198.51.100.1/32 dst 198.51.100.2/32 proto udp dport 4790 dir out"
    )


def test_removals_wait_until_the_rest_of_the_data_plane_changed() -> None:
    """The last encrypted network goes: its guards and SAs are removed only after its VXLAN
    device (in the same pass), so that nothing can leave in clear in between."""
    have = tables(A, [K1], B)
    early, late = stages(plan_tables(XfrmTables(), have))
    assert early == [] and {type(op) for op in late} == {DeletePolicy, DeleteSA}
    # A rotation: the new SA and the switch first, the old SA after.
    early, late = stages(plan_tables(tables(A, [K2, K1], B), tables(A, [K1, K2], B)))
    assert [type(op) for op in early] == [AddSA, SetPolicy] and [type(op) for op in late] == [
        DeleteSA
    ]
    # A drifted SA is replaced in the early stage (its identity is needed for the new one).
    sa = sorted(have.sas)[0]
    bad = XfrmTables(
        frozenset(have.sas - {sa} | {replace(sa, key=bytes(SA_KEY_BYTES))}), have.policies
    )
    early, late = stages(plan_tables(have, bad))
    assert [type(op) for op in early] == [DeleteSA, AddSA] and late == []


def test_the_block_policy_line() -> None:
    block = Policy("out", IPv4Network("0.0.0.0/0"), IPv4Network("0.0.0.0/0"), PORT, action="block")
    assert batch_line(SetPolicy(block), 7) == (
        "xfrm policy update src 0.0.0.0/0 dst 0.0.0.0/0 proto udp dport 4790 dir out "
        "priority 2000 action block tmpl proto esp reqid 7 mode transport"
    )


def test_esp_watch_reports_a_peer_silent_only_after_the_threshold_and_until_esp_comes() -> None:
    w, s = EspWatch(), SILENT_AFTER_S

    def at(t: float, counts: dict[IPv4Address, int]) -> dict[IPv4Address, int]:
        return w.update(counts, now=t, now_ms=int(t * 1000))

    assert at(100.0, {B: 5}) == {B: 0}  # new: a full grace
    assert at(103.0, {B: 9}) == {B: 0}
    assert at(103.0 + s - 0.1, {B: 9}) == {B: 0}
    # SILENT_AFTER_S without growth: silent since the last arrival, a stable value.
    assert at(103.0 + s, {B: 9, C: 0}) == {B: 103_000, C: 0}
    assert at(110.0 + s, {B: 9, C: 0}) == {B: 103_000, C: 0}
    # A rotation removed an SA (the count went down): still silent; then ESP: fine at once.
    assert at(110.2 + s, {B: 2, C: 0}) == {B: 103_000, C: 0}
    assert at(110.5 + s, {B: 3, C: 0}) == {B: 0, C: 0}
    # A peer that goes away is forgotten; back later, it starts fresh.
    assert at(104.0 + 2 * s, {C: 0}) == {C: int((103.0 + s) * 1000)}
    assert at(105.0 + 2 * s, {B: 9, C: 0})[B] == 0
