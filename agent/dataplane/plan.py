"""The data plane's pure core: what to change in the kernel, as a list of ops.

`plan(host, desired, observed)` compares the agent's desired state with an `Observed` snapshot
of every kernel object and file carrying the agent's prefix and returns the `Op`s that turn the
one into the other, in an order the kernel accepts: stale things are removed before new ones are
added (an FDB entry that moved to another VTEP, a veth that moved to another network), parents
are made before children (network netns, bridge, VXLAN before veths and FDB entries) and
children are removed before parents. When the snapshot already matches, the plan is empty; that
is what makes a periodic full reconcile cheap and a restarted agent adopt what it finds.

The plan is built in named steps over typed records: `_Context` (what the desired state means
for this host: namespace names, where every veth's outer end belongs, gwbridge addresses),
`_removals` (what must go), `_host_egress`, `_network` and `_sandbox` (what must exist), and
`_ensure_link` (one link brought to a `LinkSpec`). The records live in observed.py and ops.py,
the desired-side helpers in desired.py, the in-memory kernel model the tests use in simulate.py.

Nothing here does I/O; `kernel.DataPlane` observes and applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from typing import NamedTuple

from agent.dataplane import ops
from agent.dataplane.desired import (
    RESOLV_CONF,
    allocate_gw_addresses,
    desired_entries,
    gwbridge_address,
    render_hosts,
    valid_attachments,
    valid_endpoints,
    wants_egress,
)
from agent.dataplane.observed import Link, NetworkNs, Observed, SandboxNs, VxlanParams
from agent.model import AttachmentConfig, DesiredState, HostConfig, Names, bridge_mac

# --------------------------------------------------------------------------------------------
# Records


class LinkRef(NamedTuple):
    """A link by where it is (equal to the plain (ns, name) tuple a DeleteLink op's peer is)."""

    ns: str | None  # None: the host namespace
    name: str


@dataclass(frozen=True)
class VethHome:
    """Where a desired veth's outer end must be, and what is at its other end."""

    ns: str | None  # the outer end's namespace (a network's, or None: the host's gwbridge)
    inner_ns: str  # the sandbox
    inner: str  # the inner end's name there (eth<i>, gw0)
    task_id: str


@dataclass(frozen=True)
class LinkSpec:
    """What one link must be. None for master, addresses or mac: whatever it has is fine.
    task_id / network_id go on the ops that fix it (whom a failure affects)."""

    ns: str | None
    name: str
    kind: str
    mtu: int
    master: str | None = None
    addresses: frozenset[IPv4Interface] | None = None
    mac: str | None = None
    task_id: str = ""
    network_id: str = ""


@dataclass(frozen=True)
class VethPair:
    """One desired veth: the outer end in a bridge, the inner end in a sandbox."""

    outer_ns: str | None
    outer: str
    master: str
    mtu: int
    inner_ns: str
    inner: str
    address: IPv4Interface
    task_id: str
    mac: str | None = None  # the inner end's (None: the kernel's choice)
    isolated: bool = False

    def create(self, *, with_mac: bool) -> ops.CreateVeth:
        # A veth replaced because one end has the wrong kind is made without the MAC, which
        # the inner end's SetLink op then sets (as the planner always did).
        return ops.CreateVeth(
            ns=self.outer_ns,
            name=self.outer,
            master=self.master,
            mtu=self.mtu,
            peer_ns=self.inner_ns,
            peer_name=self.inner,
            peer_mac=self.mac if with_mac else None,
            isolated=self.isolated,
            task_id=self.task_id,
        )


@dataclass(frozen=True)
class _Context:
    """What the desired state means on this host, computed once per plan."""

    host: HostConfig
    desired: DesiredState
    observed: Observed
    net_ns: Mapping[str, str]  # network ID -> netns
    net_of_ns: Mapping[str, str]  # netns -> network ID
    sb_ns: Mapping[str, str]  # task ID -> netns
    task_of_ns: Mapping[str, str]  # netns -> task ID
    gw_addr: Mapping[str, IPv4Interface]  # task ID -> gw0 address, for egress tasks
    homes: Mapping[str, VethHome]  # outer end name -> where it belongs
    outer_of: Mapping[tuple[str, str], LinkRef]  # (sandbox netns, inner end) -> outer end

    @property
    def names(self) -> Names:
        return self.host.names

    @property
    def any_egress(self) -> bool:
        return bool(self.gw_addr)

    def observed_links(self, ns: str | None) -> Mapping[str, Link]:
        """The links observed in a network namespace (None: the host's)."""
        if ns is None:
            return self.observed.host_links
        return self.observed.networks.get(ns, NetworkNs()).links


@dataclass
class _Removals:
    """The removal ops so far, and the links they delete (a veth's peer goes with it)."""

    todo: list[ops.Op] = field(default_factory=list)
    deleted: set[LinkRef] = field(default_factory=set)

    def delete(self, op: ops.DeleteLink) -> None:
        self.todo.append(op)
        self.deleted.add(LinkRef(op.ns, op.name))
        if op.peer:
            self.deleted.add(LinkRef(*op.peer))


@dataclass
class _NetworkOps:
    parents: list[ops.Op] = field(default_factory=list)
    stale_entries: list[ops.Op] = field(default_factory=list)
    new_entries: list[ops.Op] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The planner


def plan(host: HostConfig, desired: DesiredState, observed: Observed) -> list[ops.Op]:
    """The ops that turn `observed` into `desired` (see the module docstring)."""
    ctx = _context(host, desired, observed)
    removals = _removals(ctx)
    parents = _host_egress(ctx)
    stale_entries: list[ops.Op] = []
    entries: list[ops.Op] = []
    for nid in sorted(desired.networks):
        net = _network(ctx, nid)
        parents += net.parents
        stale_entries += net.stale_entries
        entries += net.new_entries
    children = [op for tid in sorted(desired.sandboxes) for op in _sandbox(ctx, tid, removals)]
    children += [op for att in valid_attachments(desired) for op in _attachment(ctx, att, removals)]
    # Stale entries first (a MAC moving to another VTEP), then links/netns removals, then
    # parents, children, and the bulk of new entries last.
    return stale_entries + removals.todo + parents + children + entries


def _context(host: HostConfig, desired: DesiredState, observed: Observed) -> _Context:
    names = host.names
    net_ns = {nid: names.network_ns(nid) for nid in desired.networks}
    sb_ns = {tid: names.sandbox_ns(tid) for tid in desired.sandboxes}
    egress_tasks = [t for t, sb in desired.sandboxes.items() if wants_egress(desired, sb)]
    gw_addr = allocate_gw_addresses(host, egress_tasks, observed)
    homes: dict[str, VethHome] = {}
    for tid, sb in desired.sandboxes.items():
        for ep in valid_endpoints(desired, sb):
            homes[names.veth_outer(tid, ep.index)] = VethHome(
                net_ns[ep.network_id], sb_ns[tid], names.sandbox_if(ep.index), tid
            )
        if tid in gw_addr:
            homes[names.gw_veth_outer(tid)] = VethHome(None, sb_ns[tid], names.sandbox_gw_if, tid)
    for att in valid_attachments(desired):
        homes[names.veth_outer(att.id, 0)] = VethHome(
            net_ns[att.network_id], att.netns, att.ifname, att.id
        )
    return _Context(
        host=host,
        desired=desired,
        observed=observed,
        net_ns=net_ns,
        net_of_ns={v: k for k, v in net_ns.items()},
        sb_ns=sb_ns,
        task_of_ns={v: k for k, v in sb_ns.items()},
        gw_addr=gw_addr,
        homes=homes,
        outer_of={(h.inner_ns, h.inner): LinkRef(h.ns, outer) for outer, h in homes.items()},
    )


# --------------------------------------------------------------------------------------------
# Removals: sandboxes and networks no longer wanted, stray links


def _removals(ctx: _Context) -> _Removals:
    out = _Removals()
    _stray_outer_ends(ctx, out)
    _stray_inner_ends(ctx, out)
    _unwanted_namespaces(ctx, out)
    if not ctx.any_egress:
        if ctx.observed.nft:
            out.todo.append(ops.DeleteNft(table=ctx.names.nft_table))
        if ctx.names.gwbridge in ctx.observed.host_links:
            out.todo.append(ops.DeleteLink(ns=None, name=ctx.names.gwbridge))
    return out


def _stray_outer(
    ctx: _Context, ns: str | None, name: str, netid: str = ""
) -> ops.DeleteLink | None:
    """A DeleteLink op for a veth outer end that is not where it belongs (None: it is)."""
    home = ctx.homes.get(name)
    if home is not None and home.ns == ns:
        return None
    return ops.DeleteLink(
        ns=ns,
        name=name,
        peer=(home.inner_ns, home.inner) if home else None,
        task_id=home.task_id if home else "",
        network_id=netid,
    )


def _stray_outer_ends(ctx: _Context, out: _Removals) -> None:
    """Outer ends in kept networks and in the host namespace that do not belong there, and
    staging VXLAN devices left in the host namespace by an interrupted create. (Links in a
    network that is no longer wanted go with its namespace.)"""
    names = ctx.names
    for ns, obs_net in sorted(ctx.observed.networks.items()):
        netid = ctx.net_of_ns.get(ns, "")
        if not netid:
            continue
        for name in sorted(obs_net.links):
            if name in (names.bridge, names.vxlan):
                continue
            op = _stray_outer(ctx, ns, name, netid)
            if op is not None:
                out.delete(op)
    for name, link in sorted(ctx.observed.host_links.items()):
        if name == names.gwbridge:
            continue
        if link.kind == "vxlan":
            out.todo.append(ops.DeleteLink(ns=None, name=name))
            continue
        op = _stray_outer(ctx, None, name)
        if op is not None:
            out.delete(op)


def _stray_inner_ends(ctx: _Context, out: _Removals) -> None:
    """Inner ends in kept sandboxes whose outer end is not where it must be."""
    for ns, cur_sb in sorted(ctx.observed.sandboxes.items()):
        kept = ctx.task_of_ns.get(ns)
        if kept is None:
            continue
        for name in sorted(cur_sb.links):
            if (ns, name) in out.deleted:
                continue
            outer = ctx.outer_of.get((ns, name))
            if outer is None or outer.name not in ctx.observed_links(outer.ns):
                out.todo.append(ops.DeleteLink(ns=ns, name=name, task_id=kept))
                out.deleted.add(LinkRef(ns, name))


def _unwanted_namespaces(ctx: _Context, out: _Removals) -> None:
    """Sandboxes (with their files) and networks no longer wanted, and orphaned files."""
    obs = ctx.observed
    for ns in sorted(obs.sandboxes):
        if ns in ctx.task_of_ns:
            continue
        if ns in obs.files:
            out.todo.append(ops.RemoveSandboxFiles(ns=ns))
        out.todo.append(ops.DeleteNetns(ns=ns))
    for ns in sorted(set(obs.files) - set(obs.sandboxes) - set(ctx.task_of_ns)):
        out.todo.append(ops.RemoveSandboxFiles(ns=ns))
    for ns in sorted(obs.networks):
        if ns not in ctx.net_of_ns:
            out.todo.append(ops.DeleteNetns(ns=ns))


# --------------------------------------------------------------------------------------------
# What must exist


def _ensure_link(spec: LinkSpec, obs: Link | None, create: ops.Op) -> list[ops.Op]:
    """Create a missing link, replace one of the wrong kind, fix MTU/master/MAC/up/addrs."""
    out: list[ops.Op] = []
    tid, nid = spec.task_id, spec.network_id
    if obs is not None and obs.kind != spec.kind:
        out.append(ops.DeleteLink(ns=spec.ns, name=spec.name, task_id=tid, network_id=nid))
        obs = None
    have: frozenset[IPv4Interface]
    if obs is None:
        out.append(create)
        have = frozenset({create.address}) if isinstance(create, ops.CreateBridge) else frozenset()
    else:
        if (
            obs.mtu != spec.mtu
            or not obs.up
            or (spec.master is not None and obs.master != spec.master)
            or (spec.mac is not None and obs.mac != spec.mac)
        ):
            out.append(
                ops.SetLink(
                    ns=spec.ns,
                    name=spec.name,
                    mtu=spec.mtu,
                    master=spec.master,
                    mac=spec.mac,
                    task_id=tid,
                    network_id=nid,
                )
            )
        have = obs.addresses
    if spec.addresses is not None and have != spec.addresses:
        out.append(
            ops.SetAddresses(
                ns=spec.ns, name=spec.name, addresses=spec.addresses, task_id=tid, network_id=nid
            )
        )
    return out


def _host_egress(ctx: _Context) -> list[ops.Op]:
    """The host namespace's part of egress: the gwbridge, forwarding, the masquerade table."""
    if not ctx.any_egress:
        return []
    host, names = ctx.host, ctx.names
    gwb = gwbridge_address(host)
    mac = bridge_mac(host.vtep, None, names.gwbridge)
    spec = LinkSpec(
        None, names.gwbridge, "bridge", host.underlay_mtu, addresses=frozenset({gwb}), mac=mac
    )
    create = ops.CreateBridge(
        ns=None, name=names.gwbridge, mtu=host.underlay_mtu, address=gwb, mac=mac
    )
    out = _ensure_link(spec, ctx.observed.host_links.get(names.gwbridge), create)
    if not ctx.observed.ip_forward:
        out.append(ops.SetIpForward())
    if not ctx.observed.route_localnet:
        out.append(ops.SetRouteLocalnet(bridge=names.gwbridge))
    if not ctx.observed.nft:
        out.append(
            ops.EnsureNft(
                table=names.nft_table, gwbridge=names.gwbridge, subnet=host.gwbridge_subnet
            )
        )
    return out


def _network(ctx: _Context, nid: str) -> _NetworkOps:
    """A network's netns, bridge and VXLAN device, and its FDB / neighbour entries."""
    host, names = ctx.host, ctx.names
    net = ctx.desired.networks[nid]
    mtu = host.network_mtu(net)
    ns = ctx.net_ns[nid]
    out = _NetworkOps()
    obs_net = ctx.observed.networks.get(ns) or NetworkNs()
    if ns not in ctx.observed.networks:
        out.parents.append(ops.CreateNetns(ns=ns, network_id=nid))
    gw_if = IPv4Interface(f"{net.gateway}/{net.subnet.prefixlen}")
    mac = bridge_mac(host.vtep, ns, names.bridge)
    out.parents += _ensure_link(
        LinkSpec(
            ns, names.bridge, "bridge", mtu, addresses=frozenset({gw_if}), mac=mac, network_id=nid
        ),
        obs_net.links.get(names.bridge),
        ops.CreateBridge(ns=ns, name=names.bridge, mtu=mtu, address=gw_if, mac=mac, network_id=nid),
    )
    params = VxlanParams(vni=net.vni, port=host.network_vxlan_port(net), local=host.vtep)
    vx = obs_net.links.get(names.vxlan)
    if vx is not None and vx.kind == "vxlan" and vx.vxlan != params:
        out.parents.append(ops.DeleteLink(ns=ns, name=names.vxlan, network_id=nid))
        vx = None
    out.parents += _ensure_link(
        LinkSpec(ns, names.vxlan, "vxlan", mtu, master=names.bridge, network_id=nid),
        vx,
        ops.CreateVxlan(
            ns=ns,
            name=names.vxlan,
            staging=names.vxlan_staging(net.vni),
            params=params,
            mtu=mtu,
            master=names.bridge,
            network_id=nid,
        ),
    )
    # Entries go away with a recreated VXLAN device.
    have_fdb = obs_net.fdb if vx is not None else frozenset()
    have_neigh = obs_net.neigh if vx is not None else frozenset()
    want_fdb, want_neigh = desired_entries(host, nid, ctx.desired.remotes.get(nid, frozenset()))
    if not ctx.desired.keep_remotes:
        for mac, dst in sorted(have_fdb - want_fdb):
            out.stale_entries.append(ops.DelFdb(ns=ns, mac=mac, dst=dst, network_id=nid))
        for ip, mac in sorted(have_neigh - want_neigh):
            out.stale_entries.append(ops.DelNeigh(ns=ns, ip=ip, mac=mac, network_id=nid))
    for mac, dst in sorted(want_fdb - have_fdb):
        out.new_entries.append(ops.AddFdb(ns=ns, mac=mac, dst=dst, network_id=nid))
    for ip, mac in sorted(want_neigh - have_neigh):
        out.new_entries.append(ops.AddNeigh(ns=ns, ip=ip, mac=mac, network_id=nid))
    return out


def _sandbox(ctx: _Context, tid: str, removals: _Removals) -> list[ops.Op]:
    """A sandbox's netns, lo, a veth per endpoint, the gwbridge leg, default route, files."""
    host, names = ctx.host, ctx.names
    sb = ctx.desired.sandboxes[tid]
    ns = ctx.sb_ns[tid]
    out: list[ops.Op] = []
    obs_sb = ctx.observed.sandboxes.get(ns) or SandboxNs(lo_up=False)
    if ns not in ctx.observed.sandboxes:
        out.append(ops.CreateNetns(ns=ns, task_id=tid))
    if not obs_sb.lo_up:
        out.append(ops.SetLoUp(ns=ns, task_id=tid))
    eps = valid_endpoints(ctx.desired, sb)
    for ep in eps:
        pair = VethPair(
            outer_ns=ctx.net_ns[ep.network_id],
            outer=names.veth_outer(tid, ep.index),
            master=names.bridge,
            mtu=host.network_mtu(ctx.desired.networks[ep.network_id]),
            inner_ns=ns,
            inner=names.sandbox_if(ep.index),
            address=ep.address,
            task_id=tid,
            mac=ep.mac,
        )
        out += _veth(ctx, pair, obs_sb, removals.deleted)
    want_gw: IPv4Address | None = None
    if tid in ctx.gw_addr:
        pair = VethPair(
            outer_ns=None,
            outer=names.gw_veth_outer(tid),
            master=names.gwbridge,
            mtu=host.underlay_mtu,
            inner_ns=ns,
            inner=names.sandbox_gw_if,
            address=ctx.gw_addr[tid],
            task_id=tid,
            isolated=True,
        )
        out += _veth(ctx, pair, obs_sb, removals.deleted)
        want_gw = gwbridge_address(host).ip
    if obs_sb.default_gateway != want_gw:
        out.append(ops.SetDefaultRoute(ns=ns, gateway=want_gw, task_id=tid))
    resolv, hosts = RESOLV_CONF, render_hosts(sb, eps)
    if ctx.observed.files.get(ns) != (resolv, hosts):
        out.append(ops.WriteSandboxFiles(ns=ns, resolv=resolv, hosts=hosts, task_id=tid))
    return out


def _attachment(ctx: _Context, att: AttachmentConfig, removals: _Removals) -> list[ops.Op]:
    """A container's veth from the network's bridge into its runtime's namespace. Only the
    outer end is observed (see AttachmentConfig): missing, the pair is made, addressed and its
    namespace's lo brought up (the resolver listens on 127.0.0.11 there); present, only the
    outer end is kept right."""
    net = ctx.desired.networks[att.network_id]
    pair = VethPair(
        outer_ns=ctx.net_ns[att.network_id],
        outer=ctx.names.veth_outer(att.id, 0),
        master=ctx.names.bridge,
        mtu=ctx.host.network_mtu(net),
        inner_ns=att.netns,
        inner=att.ifname,
        address=att.address,
        task_id=att.id,
        mac=att.mac,
    )
    outer = None
    if (pair.outer_ns, pair.outer) not in removals.deleted:
        outer = ctx.observed_links(pair.outer_ns).get(pair.outer)
    if outer is not None:
        spec = LinkSpec(pair.outer_ns, pair.outer, "veth", pair.mtu, master=pair.master)
        return _ensure_link(spec, outer, pair.create(with_mac=True))
    return [
        pair.create(with_mac=True),
        ops.SetAddresses(
            ns=att.netns, name=att.ifname, addresses=frozenset({att.address}), task_id=att.id
        ),
        ops.SetLoUp(ns=att.netns, task_id=att.id),
    ]


def _veth(ctx: _Context, pair: VethPair, obs_sb: SandboxNs, deleted: set[LinkRef]) -> list[ops.Op]:
    """One veth pair: made whole when either end is missing (or deleted by this plan), else
    each end brought to what it must be."""
    out: list[ops.Op] = []
    inner = None if (pair.inner_ns, pair.inner) in deleted else obs_sb.links.get(pair.inner)
    outer = (
        None
        if (pair.outer_ns, pair.outer) in deleted
        else ctx.observed_links(pair.outer_ns).get(pair.outer)
    )
    replace = pair.create(with_mac=False)
    if inner is None or outer is None:
        if outer is not None:  # inner end gone means the pair is gone; be safe
            out.append(ops.DeleteLink(ns=pair.outer_ns, name=pair.outer, task_id=pair.task_id))
        out.append(pair.create(with_mac=True))
        inner = Link(kind="veth", mtu=pair.mtu, mac=pair.mac)
    else:
        outer_spec = LinkSpec(
            pair.outer_ns, pair.outer, "veth", pair.mtu, master=pair.master, task_id=pair.task_id
        )
        out += _ensure_link(outer_spec, outer, replace)
    inner_spec = LinkSpec(
        pair.inner_ns,
        pair.inner,
        "veth",
        pair.mtu,
        addresses=frozenset({pair.address}),
        mac=pair.mac,
        task_id=pair.task_id,
    )
    out += _ensure_link(inner_spec, inner, replace)
    return out
