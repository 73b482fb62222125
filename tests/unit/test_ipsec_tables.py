"""IpsecTables (agent/dataplane/xfrm.py), the data plane's IPsec stage, with `ip` replaced by
a fake kernel table: the two stages around a reconcile, no observation while nothing changes,
and a failed setup leaving encrypted networks unbuilt rather than in clear."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from agent.dataplane import xfrm
from agent.dataplane.ipsec import AddSA, DeletePolicy, DeleteSA, SetPolicy, XfrmOp, XfrmTables
from agent.model import (
    DesiredState,
    HostConfig,
    IpsecKey,
    LocalEndpoint,
    NetworkConfig,
    RemoteEndpoint,
    SandboxConfig,
)

HOST = HostConfig(vtep=IPv4Address("198.51.100.1"))
PEER = IPv4Address("198.51.100.2")


class FakeKernel:
    def __init__(self) -> None:
        self.tables = XfrmTables()
        self.observed = 0
        self.batches: list[list[XfrmOp]] = []
        self.fail = False

    def observe(self, reqid: int, netns: str | None = None) -> XfrmTables:
        self.observed += 1
        return self.tables

    def apply(self, ops: Sequence[XfrmOp], reqid: int, netns: str | None = None) -> None:
        if self.fail:
            raise xfrm.XfrmError("ip -batch -: Error: Requested type not found")
        self.batches.append(list(ops))
        sas = set(self.tables.sas)
        pols = {p.ident: p for p in self.tables.policies}
        for op in ops:
            match op:
                case AddSA(sa):
                    sas.add(sa)
                case DeleteSA(sa):
                    sas.discard(sa)
                case SetPolicy(p):
                    pols[p.ident] = p
                case DeletePolicy(p):
                    pols.pop(p.ident)
        self.tables = XfrmTables(frozenset(sas), frozenset(pols.values()))


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel()
    monkeypatch.setattr(xfrm, "observe", k.observe)
    monkeypatch.setattr(xfrm, "apply", k.apply)
    return k


def desired(encrypted: bool = True) -> DesiredState:
    nets = {
        "plain": NetworkConfig(
            "plain", "plain", 4097, IPv4Network("10.1.0.0/24"), IPv4Address("10.1.0.1")
        ),
        "sec": NetworkConfig(
            "sec",
            "sec",
            4098,
            IPv4Network("10.2.0.0/24"),
            IPv4Address("10.2.0.1"),
            encrypted=encrypted,
        ),
    }
    boxes = {
        "t1": SandboxConfig(
            "t1", (LocalEndpoint("t1", "sec", 0, IPv4Interface("10.2.0.5/24")),), True
        ),
        "t2": SandboxConfig(
            "t2", (LocalEndpoint("t2", "plain", 0, IPv4Interface("10.1.0.5/24")),), True
        ),
    }
    remotes = {"sec": frozenset({RemoteEndpoint("sec", IPv4Address("10.2.0.9"), PEER)})}
    return DesiredState(nets, boxes, remotes, ipsec_keys=(IpsecKey(1, b"k" * 32),))


def test_additions_come_before_and_removals_after_and_an_unchanged_pass_costs_nothing(
    kernel: FakeKernel,
) -> None:
    tables = xfrm.IpsecTables(HOST)

    async def scenario() -> None:
        d, unbuilt = await tables.prepare(desired())
        assert unbuilt == {} and d == desired()
        assert kernel.tables == tables.wanted(desired())
        await tables.finish()
        assert len(kernel.batches) == 1 and kernel.observed == 1
        # The same wanted tables again: no `ip` at all until the recheck.
        await tables.prepare(desired())
        await tables.finish()
        assert kernel.observed == 1
        # The encrypted network goes: nothing is removed before the data plane changed.
        await tables.prepare(desired(encrypted=False))
        assert kernel.tables == tables.wanted(desired())
        await tables.finish()
        assert kernel.tables == XfrmTables()
        # Nothing wanted, nothing there: never looked at again.
        for _ in range(3):
            await tables.prepare(desired(encrypted=False))
        assert kernel.observed == 2

    asyncio.run(scenario())


def test_a_failed_setup_leaves_encrypted_networks_unbuilt(kernel: FakeKernel) -> None:
    kernel.fail = True
    tables = xfrm.IpsecTables(HOST)
    d, unbuilt = asyncio.run(tables.prepare(desired()))
    assert set(d.networks) == {"plain"} and set(d.sandboxes) == {"t2"} and "sec" not in d.remotes
    assert unbuilt == {"t1": "IPsec setup failed: ip -batch -: Error: Requested type not found"}
    # Tried again next pass (the failure is not remembered as applied).
    kernel.fail = False
    d, unbuilt = asyncio.run(tables.prepare(desired()))
    assert unbuilt == {} and kernel.tables == tables.wanted(desired())


def test_a_host_that_cannot_encrypt_never_touches_xfrm(kernel: FakeKernel) -> None:
    tables = xfrm.IpsecTables(HostConfig(vtep=HOST.vtep, ipsec_unavailable=xfrm.NO_ESP))
    asyncio.run(tables.prepare(desired()))
    assert kernel.observed == 0 and kernel.batches == []


# What iproute2 6.1 prints on the user-mode kernel (tests/uml measured it), for the parsers.
STATES = """src 198.51.100.2 dst 198.51.100.1
\tproto esp spi 0x00001001 reqid 1870004225 mode transport
\treplay-window 64
\taead rfc4106(gcm(aes)) 0x{key} 128
\tanti-replay context: seq 0x0, oseq 0x4, bitmap 0x00000000
\tsel src 0.0.0.0/0 dst 0.0.0.0/0
src 198.51.100.3 dst 198.51.100.1
\tproto esp spi 0x00002002 reqid 7 mode transport
\treplay-window 64
\taead rfc4106(gcm(aes)) 0x{key} 128
"""
STATS = """src 198.51.100.2 dst 198.51.100.1
\tproto esp spi 0x00001001(4097) reqid 1870004225(0x6f760001) mode transport
\treplay-window 64 seq 0x00000000 flag  (0x00000000)
\taead rfc4106(gcm(aes)) 0x{key} (288 bits) 128
\tlifetime config:
\t  limit: soft (INF)(bytes), hard (INF)(bytes)
\t  limit: soft (INF)(packets), hard (INF)(packets)
\tlifetime current:
\t  352(bytes), 4(packets)
\t  add 2026-12-04 05:00:00 use 2026-12-04 05:00:01
\tstats:
\t  replay-window 0 replay 0 failed 0
src 198.51.100.1 dst 198.51.100.2
\tproto esp spi 0x00001002(4098) reqid 1870004225(0x6f760001) mode transport
\tlifetime current:
\t  88(bytes), 1(packets)
"""


def test_states_and_counters_are_read_from_ip_xfrm_text() -> None:
    key = "ab" * 36
    sas = xfrm.parse_states(STATES.format(key=key), 0x6F76_0001)
    assert [(str(s.src), s.spi, s.key) for s in sas] == [
        ("198.51.100.2", 0x1001, bytes.fromhex(key))
    ]
    counts = xfrm.parse_packets_in(STATS.format(key=key), 0x6F76_0001, HOST.vtep)
    assert counts == {PEER: 4}


def test_the_report_keeps_its_peers_current_and_goes_out_empty_once_none_are_left(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manager keeps a node's last report: once the host's last encrypted network is gone
    it must get one without peers, not keep showing the old peer (ok, or silent and growing)."""
    sent: list[tuple[bytes, tuple[str, int]]] = []
    monkeypatch.setattr(xfrm, "_ip", lambda args, netns, stdin=None: STATS.format(key="ab" * 36))
    # A named netns: prepare starts no watch loop of its own; the test runs its checks.
    tables = xfrm.IpsecTables(HOST, netns="test")

    async def scenario() -> None:
        await tables.prepare(desired())
        await tables.finish()
        await tables.check(lambda data, to: sent.append((data, to)))
        st = tables.status()
        assert st is not None and [(p.addr, p.silent_since_ms) for p in st.peers] == [
            (str(PEER), 0)
        ]
        assert sent == [(xfrm.KEEPALIVE, (str(PEER), HOST.encrypted_vxlan_port))]
        await tables.prepare(desired(encrypted=False))
        await tables.finish()
        await tables.check(lambda data, to: sent.append((data, to)))
        st = tables.status()
        assert st is not None and list(st.peers) == []
        assert len(sent) == 1  # no keepalive to a host that is no longer a peer

    asyncio.run(scenario())


def test_an_incomplete_view_keeps_the_peers_sas(kernel: FakeKernel) -> None:
    """keep_remotes (a restarted agent before gossip synced): a peer missing from the view
    keeps its SAs and policies; once the view is whole, its absence counts."""
    tables = xfrm.IpsecTables(HOST, netns="test")

    async def scenario() -> None:
        await tables.prepare(desired())
        await tables.finish()
        full = kernel.tables
        assert full.sas
        await tables.prepare(dataclasses.replace(desired(), remotes={}, keep_remotes=True))
        await tables.finish()
        assert kernel.tables == full
        await tables.prepare(dataclasses.replace(desired(), remotes={}))
        await tables.finish()
        assert not kernel.tables.sas

    asyncio.run(scenario())
