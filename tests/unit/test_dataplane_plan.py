"""The data-plane planner against its in-memory kernel model (`simulate`): no root needed.

Each scenario applies plan() to a snapshot with simulate() and checks both what the result holds
and that planning again yields nothing (the idempotence a periodic reconcile relies on).
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.dataplane.desired import ZERO_MAC, problems
from agent.dataplane.observed import Observed
from agent.dataplane.ops import (
    AddFdb,
    CreateNetns,
    CreateVeth,
    DeleteLink,
    DeleteNetns,
    DelFdb,
    DelNeigh,
    EnsureNft,
    Op,
    SetAddresses,
    SetLink,
    SetLoUp,
)
from agent.dataplane.plan import plan
from agent.dataplane.simulate import simulate
from agent.model import (
    INGRESS_SANDBOX,
    AttachmentConfig,
    DesiredState,
    HostConfig,
    LocalEndpoint,
    Names,
    NetworkConfig,
    RemoteEndpoint,
    SandboxConfig,
    bridge_mac,
    endpoint_mac,
)

HOST = HostConfig(vtep=IPv4Address("198.51.100.11"), names=Names("ovu-"))
NAMES = HOST.names
EMPTY = Observed()


def net(i: int, internal: bool = False) -> NetworkConfig:
    return NetworkConfig(
        id=f"net{i}",
        name=f"n{i}",
        vni=4096 + i,
        subnet=IPv4Network(f"10.{i}.0.0/24"),
        gateway=IPv4Address(f"10.{i}.0.1"),
        internal=internal,
    )


def sandbox(task: str, nets: list[tuple[int, int]], egress: bool = True) -> SandboxConfig:
    """nets: (network number, host byte of the address) per attachment, in order."""
    return SandboxConfig(
        task_id=task,
        endpoints=tuple(
            LocalEndpoint(task, f"net{n}", i, IPv4Interface(f"10.{n}.0.{h}/24"))
            for i, (n, h) in enumerate(nets)
        ),
        egress=egress,
        hostname=task,
    )


def remotes(n: int, count: int, vteps: int = 2) -> frozenset[RemoteEndpoint]:
    return frozenset(
        RemoteEndpoint(
            f"net{n}", IPv4Address(f"10.{n}.1.{i + 1}"), IPv4Address(f"198.51.100.{20 + i % vteps}")
        )
        for i in range(count)
    )


def desired(
    sandboxes: list[SandboxConfig], nets: list[NetworkConfig], rem: dict[str, frozenset]
) -> DesiredState:
    return DesiredState(
        networks={n.id: n for n in nets},
        sandboxes={s.task_id: s for s in sandboxes},
        remotes=rem,
    )


def converge(d: DesiredState, obs: Observed = EMPTY) -> tuple[list[Op], Observed]:
    ops = plan(HOST, d, obs)
    after = simulate(HOST, obs, ops)
    assert plan(HOST, d, after) == [], "a second plan must be empty"
    return ops, after


FULL = desired(
    [sandbox("taska", [(1, 2)]), sandbox("taskb", [(1, 3), (2, 2)])],
    [net(1), net(2)],
    {"net1": remotes(1, 3), "net2": remotes(2, 1)},
)


def test_empty_to_full_builds_everything_in_order() -> None:
    ops, obs = converge(FULL)
    n1, n2 = NAMES.network_ns("net1"), NAMES.network_ns("net2")
    sa, sb = NAMES.sandbox_ns("taska"), NAMES.sandbox_ns("taskb")
    assert set(obs.networks) == {n1, n2}
    assert set(obs.sandboxes) == {sa, sb}
    # Parents before children: each netns is created before anything goes in it.
    first_use: dict[str, int] = {}
    for i, op in enumerate(ops):
        for ns in (getattr(op, "ns", None), getattr(op, "peer_ns", None)):
            if ns and ns not in first_use:
                first_use[ns] = i
                assert isinstance(op, CreateNetns), op
    # Network 1: bridge with the gateway, VXLAN enslaved, veths of both tasks.
    links = obs.networks[n1].links
    assert links["ovbr0"].addresses == {IPv4Interface("10.1.0.1/24")}
    assert links["ovbr0"].mtu == 1450
    assert links["ovvx0"].master == "ovbr0"
    assert links["ovvx0"].vxlan is not None and links["ovvx0"].vxlan.vni == 4097
    assert {NAMES.veth_outer("taska", 0), NAMES.veth_outer("taskb", 0)} <= set(links)
    assert NAMES.veth_outer("taskb", 1) in obs.networks[n2].links
    # FDB: a MAC per remote plus the zero MAC per remote VTEP; neighbour per remote.
    fdb = obs.networks[n1].fdb
    assert (ZERO_MAC, "198.51.100.20") in fdb and (ZERO_MAC, "198.51.100.21") in fdb
    assert (endpoint_mac("10.1.1.1"), "198.51.100.20") in fdb
    assert len(fdb) == 5
    assert obs.networks[n1].neigh == {
        (f"10.1.1.{i}", endpoint_mac(f"10.1.1.{i}")) for i in (1, 2, 3)
    }
    # Sandbox b: eth0, eth1 with addresses and derived MACs, gw0, default route, files.
    sbl = obs.sandboxes[sb].links
    assert sbl["eth1"].addresses == {IPv4Interface("10.2.0.2/24")}
    assert sbl["eth1"].mac == endpoint_mac("10.2.0.2")
    assert sbl["gw0"].addresses == {IPv4Interface("172.18.0.4/16")}
    assert obs.sandboxes[sa].links["gw0"].addresses == {IPv4Interface("172.18.0.3/16")}
    assert obs.sandboxes[sb].default_gateway == IPv4Address("172.18.0.1")
    assert obs.host_links["ovgw0"].addresses == {IPv4Interface("172.18.0.1/16")}
    assert obs.nft and obs.ip_forward
    assert "10.1.0.3\ttaskb\n" in obs.files[sb][1]
    assert obs.files[sb][0].startswith("nameserver 127.0.0.11")
    # Entries are added last, after the VXLAN device exists.
    kinds = [type(op).__name__ for op in ops]
    assert kinds.index("CreateVxlan") < kinds.index("AddFdb")
    assert all(k in ("AddFdb", "AddNeigh") for k in kinds[kinds.index("AddFdb") :])


def test_full_to_empty_removes_everything() -> None:
    _, obs = converge(FULL)
    ops, after = converge(DesiredState(), obs)
    assert after == Observed(ip_forward=True)
    # Children go before parents: veth ends before the netns they sit in, gwbridge ports
    # before the gwbridge.
    veths = [
        i
        for i, op in enumerate(ops)
        if isinstance(op, DeleteLink) and op.name.startswith("ovg") and op.name != "ovgw0"
    ]
    netns = [i for i, op in enumerate(ops) if isinstance(op, DeleteNetns)]
    assert veths and max(veths) < min(netns)
    assert ops[-1] == DeleteLink(ns=None, name="ovgw0")


def test_already_converged_plans_nothing() -> None:
    _, obs = converge(FULL)
    assert plan(HOST, FULL, obs) == []


def test_drift_deleted_fdb_entry_is_restored() -> None:
    _, obs = converge(FULL)
    ns = NAMES.network_ns("net1")
    entry = (endpoint_mac("10.1.1.2"), "198.51.100.21")
    drifted = replace(
        obs,
        networks={
            **obs.networks,
            ns: replace(obs.networks[ns], fdb=obs.networks[ns].fdb - {entry}),
        },
    )
    ops = plan(HOST, FULL, drifted)
    assert ops == [AddFdb(ns=ns, mac=entry[0], dst=entry[1], network_id="net1")]


def _with_stale_fdb_entry() -> tuple[Observed, str, tuple[str, str]]:
    """FULL converged, plus an FDB entry on net1 that nothing wants."""
    _, obs = converge(FULL)
    ns = NAMES.network_ns("net1")
    stale = ("02:42:0a:01:01:63", "198.51.100.99")
    net = obs.networks[ns]
    return (
        replace(obs, networks={**obs.networks, ns: replace(net, fdb=net.fdb | {stale})}),
        ns,
        stale,
    )


def test_drift_stale_fdb_entry_is_removed() -> None:
    drifted, ns, stale = _with_stale_fdb_entry()
    assert plan(HOST, FULL, drifted) == [
        DelFdb(ns=ns, mac=stale[0], dst=stale[1], network_id="net1")
    ]


def test_an_incomplete_view_adds_remote_entries_but_removes_none() -> None:
    """keep_remotes (a restarted agent before gossip synced): what is in the kernel stays."""
    drifted, _, _ = _with_stale_fdb_entry()
    assert plan(HOST, replace(FULL, keep_remotes=True), drifted) == []
    _, obs = converge(FULL)
    empty_view = replace(FULL, remotes={}, keep_remotes=True)
    assert not [op for op in plan(HOST, empty_view, obs) if isinstance(op, (DelFdb, DelNeigh))]


def test_drift_deleted_veth_is_recreated() -> None:
    _, obs = converge(FULL)
    # Deleting one end of a veth deletes both.
    gone = simulate(
        HOST,
        obs,
        [DeleteLink(ns=NAMES.network_ns("net1"), name=NAMES.veth_outer("taska", 0),
                    peer=(NAMES.sandbox_ns("taska"), "eth0"))],
    )  # fmt: skip
    ops, after = converge(FULL, gone)
    assert [type(op) for op in ops] == [CreateVeth, SetAddresses]
    assert after == obs


def test_drift_changed_address_and_mtu_are_fixed() -> None:
    _, obs = converge(FULL)
    sa = NAMES.sandbox_ns("taska")
    eth0 = obs.sandboxes[sa].links["eth0"]
    bad = replace(eth0, addresses=frozenset({IPv4Interface("10.1.0.77/24")}), mtu=1500)
    drifted = replace(
        obs,
        sandboxes={
            **obs.sandboxes,
            sa: replace(obs.sandboxes[sa], links={**obs.sandboxes[sa].links, "eth0": bad}),
        },
    )
    ops, after = converge(FULL, drifted)
    assert {type(op) for op in ops} == {SetLink, SetAddresses}
    assert after == obs


def test_bridges_get_a_set_mac_and_one_that_follows_its_ports_is_fixed() -> None:
    """A bridge that took a port's MAC (the kernel's default, when its own was never set) has
    its MAC set back, so that sandboxes routing through it keep a valid neighbour entry."""
    _, obs = converge(FULL)
    gwb = obs.host_links[NAMES.gwbridge]
    ns1 = NAMES.network_ns("net1")
    br = obs.networks[ns1].links[NAMES.bridge]
    assert gwb.mac == bridge_mac(HOST.vtep, None, NAMES.gwbridge)
    assert br.mac == bridge_mac(HOST.vtep, ns1, NAMES.bridge)
    macs = {gwb.mac, br.mac, bridge_mac("198.51.100.12", ns1, NAMES.bridge)}
    assert len(macs) == 3 and all(m.startswith("06:") for m in macs)
    drifted = replace(
        obs, host_links={**obs.host_links, NAMES.gwbridge: replace(gwb, mac="02:00:00:00:00:01")}
    )
    fix, after = converge(FULL, drifted)
    assert fix == [SetLink(ns=None, name=NAMES.gwbridge, mtu=gwb.mtu, mac=gwb.mac)]
    assert after == obs


def test_inner_end_in_wrong_network_moves() -> None:
    """A task whose eth0 moves from net1 to net2 gets a new veth into net2's bridge."""
    _, obs = converge(FULL)
    moved = desired(
        [sandbox("taska", [(2, 9)]), sandbox("taskb", [(1, 3), (2, 2)])],
        [net(1), net(2)],
        {"net1": remotes(1, 3), "net2": remotes(2, 1)},
    )
    _, after = converge(moved, obs)
    outer = NAMES.veth_outer("taska", 0)
    assert outer in after.networks[NAMES.network_ns("net2")].links
    assert outer not in after.networks[NAMES.network_ns("net1")].links


def test_scale_remote_endpoints_and_sandboxes_3_9_1() -> None:
    obs = EMPTY
    ns = NAMES.network_ns("net1")
    for n in (3, 9, 1):
        d = desired(
            [sandbox(f"task{i}", [(1, 10 + i)]) for i in range(n)],
            [net(1)],
            {"net1": remotes(1, n, vteps=3)},
        )
        _, obs = converge(d, obs)
        assert len(obs.sandboxes) == n
        assert len(obs.networks[ns].neigh) == n
        assert len(obs.networks[ns].fdb) == n + min(n, 3)
        veths = [k for k in obs.networks[ns].links if k.startswith("ovv") and k != "ovvx0"]
        assert len(veths) == n
        assert len([k for k in obs.host_links if k.startswith("ovg") and k != "ovgw0"]) == n


def test_internal_network_has_no_egress_and_no_default_route() -> None:
    d = desired([sandbox("t1", [(1, 2)])], [net(1, internal=True)], {})
    _, obs = converge(d)
    sb = obs.sandboxes[NAMES.sandbox_ns("t1")]
    assert "gw0" not in sb.links and sb.default_gateway is None
    assert "ovgw0" not in obs.host_links and not obs.nft
    # One egress network among internal ones is enough for a way out.
    d2 = desired([sandbox("t1", [(1, 2), (2, 2)])], [net(1, internal=True), net(2)], {})
    ops, obs2 = converge(d2, obs)
    assert any(isinstance(op, EnsureNft) for op in ops)
    assert obs2.sandboxes[NAMES.sandbox_ns("t1")].default_gateway == IPv4Address("172.18.0.1")
    # Back to internal only: gw0 and the gwbridge go away.
    _, obs3 = converge(d, obs2)
    assert obs3.sandboxes[NAMES.sandbox_ns("t1")].default_gateway is None
    assert "ovgw0" not in obs3.host_links


def test_an_encrypted_network_has_its_own_vxlan_port_and_room_for_esp() -> None:
    enc = replace(net(2), encrypted=True)
    d = desired([sandbox("t1", [(1, 2), (2, 2)])], [net(1), enc], {})
    _, obs = converge(d)
    plain_links = obs.networks[NAMES.network_ns("net1")].links
    enc_links = obs.networks[NAMES.network_ns("net2")].links
    plain_vx, enc_vx = plain_links["ovvx0"].vxlan, enc_links["ovvx0"].vxlan
    assert plain_vx is not None and plain_vx.port == 4789
    assert enc_vx is not None and enc_vx.port == 4790
    assert plain_links["ovbr0"].mtu == 1450
    assert {enc_links[n].mtu for n in ("ovbr0", "ovvx0", NAMES.veth_outer("t1", 1))} == {1424}
    sb = obs.sandboxes[NAMES.sandbox_ns("t1")].links
    assert (sb["eth0"].mtu, sb["eth1"].mtu) == (1450, 1424)


def test_egress_false_means_no_gw_leg() -> None:
    _, obs = converge(desired([sandbox("t1", [(1, 2)], egress=False)], [net(1)], {}))
    assert "gw0" not in obs.sandboxes[NAMES.sandbox_ns("t1")].links


def gw_of(obs: Observed, task: str) -> IPv4Interface:
    (addr,) = obs.sandboxes[NAMES.sandbox_ns(task)].links["gw0"].addresses
    return addr


def test_gw_addresses_are_stable_and_lowest_free() -> None:
    three = desired([sandbox(f"t{i}", [(1, 10 + i)]) for i in range(3)], [net(1)], {})
    _, obs = converge(three)
    # .1 is the bridge's, .2 is kept for the ingress sandbox.
    assert [str(gw_of(obs, f"t{i}")) for i in range(3)] == [
        "172.18.0.3/16",
        "172.18.0.4/16",
        "172.18.0.5/16",
    ]
    # t0 leaves: the others keep theirs; a newcomer takes the lowest free one (t0's).
    later = desired(
        [sandbox(f"t{i}", [(1, 10 + i)]) for i in (1, 2)] + [sandbox("a-new", [(1, 20)])],
        [net(1)],
        {},
    )
    _, obs2 = converge(later, obs)
    assert str(gw_of(obs2, "t1")) == "172.18.0.4/16"
    assert str(gw_of(obs2, "t2")) == "172.18.0.5/16"
    assert str(gw_of(obs2, "a-new")) == "172.18.0.3/16"


def test_the_ingress_sandbox_always_gets_the_second_gwbridge_address() -> None:
    boxes = [sandbox("t0", [(1, 10)]), sandbox(INGRESS_SANDBOX, [(1, 11)])]
    _, obs = converge(desired(boxes, [net(1)], {}))
    assert str(gw_of(obs, INGRESS_SANDBOX)) == "172.18.0.2/16"
    assert str(gw_of(obs, "t0")) == "172.18.0.3/16"


def test_undesired_network_for_endpoint_is_skipped_and_reported() -> None:
    d = desired([sandbox("t1", [(1, 2), (7, 2)])], [net(1)], {})
    assert problems(d) == ["task t1: network net7 is not desired"]
    _, obs = converge(d)
    links = obs.sandboxes[NAMES.sandbox_ns("t1")].links
    assert "eth0" in links and "eth1" not in links


def test_remote_on_own_vtep_and_foreign_leftovers_are_ignored() -> None:
    own = RemoteEndpoint("net1", IPv4Address("10.1.1.1"), HOST.vtep)
    d = desired([sandbox("t1", [(1, 2)])], [net(1)], {"net1": frozenset({own})})
    _, obs = converge(d)
    assert obs.networks[NAMES.network_ns("net1")].fdb == frozenset()


def test_staging_vxlan_left_in_host_ns_is_removed() -> None:
    from agent.dataplane.observed import Link

    obs = Observed(host_links={"ovx4097": Link(kind="vxlan", mtu=1450)})
    ops = plan(HOST, DesiredState(), obs)
    assert ops == [DeleteLink(ns=None, name="ovx4097")]


# ---- property: any A then any B converges to exactly what B alone would build


@st.composite
def desired_states(draw: st.DrawFn) -> DesiredState:
    net_ids = draw(st.sets(st.integers(1, 4), max_size=3))
    nets = [net(i, internal=draw(st.booleans())) for i in sorted(net_ids)]
    sbs = []
    for t in draw(st.sets(st.integers(0, 6), max_size=4)):
        if not nets:
            break
        chosen = draw(st.lists(st.sampled_from(sorted(net_ids)), max_size=2, unique=True))
        sbs.append(sandbox(f"t{t}", [(n, 10 + t) for n in chosen], egress=draw(st.booleans())))
    rem = {}
    for i in net_ids:
        count = draw(st.integers(0, 5))
        rem[f"net{i}"] = remotes(i, count, vteps=draw(st.integers(1, 3)))
    return desired(sbs, nets, rem)


def normalise(obs: Observed) -> Observed:
    """Drop gw0 addresses, which legitimately depend on history (kept, not renumbered)."""
    sbs = {}
    for k, sb in obs.sandboxes.items():
        links = dict(sb.links)
        if "gw0" in links:
            links["gw0"] = replace(links["gw0"], addresses=frozenset())
        sbs[k] = replace(sb, links=links)
    return replace(obs, sandboxes=sbs, ip_forward=False)


@settings(max_examples=200, deadline=None)
@given(desired_states(), desired_states())
def test_property_a_then_b_equals_b(a: DesiredState, b: DesiredState) -> None:
    _, after_a = converge(a)
    _, after_ab = converge(b, after_a)
    _, only_b = converge(b)
    assert normalise(after_ab) == normalise(only_b)
    gws = [
        a
        for sb in after_ab.sandboxes.values()
        if "gw0" in sb.links
        for a in sb.links["gw0"].addresses
    ]
    assert len(gws) == len(set(gws))


# ---------------------------------------------------------------- attachments (CNI containers)

CNI_NETNS = "/run/netns/cni-1234"


def attachment(att_id: str = "att1", n: int = 1, h: int = 40) -> AttachmentConfig:
    return AttachmentConfig(
        id=att_id,
        network_id=f"net{n}",
        netns=CNI_NETNS,
        ifname="eth0",
        address=IPv4Interface(f"10.{n}.0.{h}/24"),
    )


def test_an_attachment_gets_a_veth_into_the_runtimes_namespace_and_is_kept() -> None:
    att = attachment()
    d = DesiredState(networks={"net1": net(1)}, attachments={att.id: att})
    todo, obs = converge(d)
    ns = NAMES.network_ns("net1")
    veth = next(op for op in todo if isinstance(op, CreateVeth))
    assert (veth.ns, veth.peer_ns, veth.peer_name, veth.peer_mac) == (
        ns,
        CNI_NETNS,
        "eth0",
        endpoint_mac("10.1.0.40"),
    )
    assert (
        SetAddresses(ns=CNI_NETNS, name="eth0", addresses=frozenset({att.address}), task_id="att1")
        in todo
    )
    assert SetLoUp(ns=CNI_NETNS, task_id="att1") in todo
    # The runtime's namespace is never made, deleted or observed as one of ours.
    assert not any(isinstance(op, (CreateNetns, DeleteNetns)) and op.ns == CNI_NETNS for op in todo)
    assert obs.networks[ns].links[NAMES.veth_outer("att1", 0)].master == NAMES.bridge
    assert CNI_NETNS not in obs.sandboxes
    # A task's sandbox beside it does not make the planner touch the attachment's veth.
    d2 = replace(d, sandboxes={"t1": sandbox("t1", [(1, 2)])})
    _, obs2 = converge(d2, obs)
    assert NAMES.veth_outer("att1", 0) in obs2.networks[ns].links


def test_a_detached_attachment_loses_its_veth_and_its_network_goes_with_the_last_one() -> None:
    att = attachment()
    keep = DesiredState(
        networks={"net1": net(1)},
        sandboxes={"t1": sandbox("t1", [(1, 2)])},
        attachments={att.id: att},
    )
    _, obs = converge(keep)
    todo = plan(HOST, replace(keep, attachments={}), obs)
    outer = NAMES.veth_outer("att1", 0)
    assert [op for op in todo if isinstance(op, DeleteLink)] == [
        DeleteLink(ns=NAMES.network_ns("net1"), name=outer, network_id="net1")
    ]
    todo = plan(HOST, DesiredState(), obs)
    assert DeleteNetns(ns=NAMES.network_ns("net1")) in todo


def test_an_attachment_on_a_network_not_desired_is_skipped_and_reported() -> None:
    att = attachment(n=2)
    d = DesiredState(networks={"net1": net(1)}, attachments={att.id: att})
    todo, _ = converge(d)
    assert not any(isinstance(op, CreateVeth) for op in todo)
    assert problems(d) == ["attachment att1: network net2 is not desired"]
