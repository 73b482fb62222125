"""IpsecTables (agent/dataplane/xfrm.py), the data plane's IPsec stage, with `ip` replaced by
a fake kernel table: the two stages around a reconcile, no observation while nothing changes,
and a failed setup leaving encrypted networks unbuilt rather than in clear."""

from __future__ import annotations

import asyncio
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
