"""The data plane's pure core: what the kernel holds, what to change, and a model of the change.

`plan(host, desired, observed)` compares the agent's desired state with an `Observed` snapshot
of every kernel object and file carrying the agent's prefix and returns the `Op`s that turn the
one into the other, in an order the kernel accepts: stale things are removed before new ones are
added (an FDB entry that moved to another VTEP, a veth that moved to another network), parents
are made before children (network netns, bridge, VXLAN before veths and FDB entries) and
children are removed before parents. When the snapshot already matches, the plan is empty; that
is what makes a periodic full reconcile cheap and a restarted agent adopt what it finds.

`simulate(observed, ops)` is the same change applied to the snapshot instead of the kernel: the
unit tests use it as an in-memory kernel (plan, simulate, plan again must give nothing), and it
documents what each op is expected to leave behind.

Nothing here does I/O; `kernel.DataPlane` observes and applies.

Input errors: a sandbox endpoint whose network is not in ``desired.networks`` (or whose index
repeats, or whose address lies outside the network's subnet) cannot be built; `plan` skips it and
`problems(desired)` lists it in words, so that the caller can report it instead of failing the
whole host.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from agent.model import (
    INGRESS_SANDBOX,
    DesiredState,
    HostConfig,
    LocalEndpoint,
    NetworkConfig,
    RemoteEndpoint,
    SandboxConfig,
)

ZERO_MAC = "00:00:00:00:00:00"
RESOLV_CONF = "nameserver 127.0.0.11\noptions ndots:0\n"
HOSTS_HEADER = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

# Names the agent manages inside a sandbox; anything else there belongs to the task.
_SANDBOX_IF = re.compile(r"^eth\d+$")


# --------------------------------------------------------------------------------------------
# Observed state


@dataclass(frozen=True)
class VxlanParams:
    """The parameters of a VXLAN device that can only be set when it is created."""

    vni: int
    port: int
    local: IPv4Address | None
    learning: bool = False
    proxy: bool = True


@dataclass(frozen=True)
class Link:
    """One interface as far as the planner cares. ``mac`` None: not observed / don't care."""

    kind: str
    mtu: int
    up: bool = True
    master: str | None = None
    addresses: frozenset[IPv4Interface] = frozenset()
    mac: str | None = None
    vxlan: VxlanParams | None = None


@dataclass(frozen=True)
class NetworkNs:
    """A network's namespace: bridge, VXLAN device, veth outer ends, and the static entries
    on the VXLAN device (FDB: (mac, dst vtep); neighbours: (ip, mac))."""

    links: Mapping[str, Link] = field(default_factory=dict)
    fdb: frozenset[tuple[str, str]] = frozenset()
    neigh: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class SandboxNs:
    """A task's namespace: only the agent's interfaces (eth<i>, gw0), lo and the default route."""

    links: Mapping[str, Link] = field(default_factory=dict)
    lo_up: bool = True
    default_gateway: IPv4Address | None = None


@dataclass(frozen=True)
class Observed:
    """Everything carrying the agent's prefix, as the kernel and the filesystem hold it.

    networks/sandboxes are keyed by netns name; host_links holds the agent's links in the host
    namespace (the gwbridge, gwbridge veth ends, staging VXLAN devices); files maps a sandbox
    netns name to its (resolv.conf, hosts) contents ("" for a missing file).
    """

    networks: Mapping[str, NetworkNs] = field(default_factory=dict)
    sandboxes: Mapping[str, SandboxNs] = field(default_factory=dict)
    host_links: Mapping[str, Link] = field(default_factory=dict)
    nft: bool = False
    ip_forward: bool = False
    files: Mapping[str, tuple[str, str]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Operations. `ns` None means the host namespace (the one the agent runs in).


@dataclass(frozen=True, kw_only=True)
class Op:
    """One kernel or file change. task_id / network_id say whom a failure affects."""

    task_id: str = ""
    network_id: str = ""

    def describe(self) -> str:
        fields = ", ".join(
            f"{k}={v}"
            for k, v in self.__dict__.items()
            if k not in ("task_id", "network_id") and v not in (None, "")
        )
        return f"{type(self).__name__}({fields})"

    @property
    def owner(self) -> str:
        if self.task_id:
            return f"task {self.task_id}"
        if self.network_id:
            return f"network {self.network_id}"
        return "host"


@dataclass(frozen=True, kw_only=True)
class CreateNetns(Op):
    ns: str


@dataclass(frozen=True, kw_only=True)
class DeleteNetns(Op):
    ns: str


@dataclass(frozen=True, kw_only=True)
class DeleteLink(Op):
    """Delete a link; for a veth, `peer` (ns, name) names the other end, which goes with it."""

    ns: str | None
    name: str
    peer: tuple[str | None, str] | None = None


@dataclass(frozen=True, kw_only=True)
class CreateBridge(Op):
    ns: str | None
    name: str
    mtu: int
    address: IPv4Interface


@dataclass(frozen=True, kw_only=True)
class CreateVxlan(Op):
    """Made in the host ns as `staging` (so its socket stays next to the underlay), moved to
    `ns`, renamed `name`, enslaved to `master`, up."""

    ns: str
    name: str
    staging: str
    params: VxlanParams
    mtu: int
    master: str


@dataclass(frozen=True, kw_only=True)
class CreateVeth(Op):
    """A veth pair: `name` in `ns` (enslaved to `master`, up), `peer_name` in `peer_ns` (up)."""

    ns: str | None
    name: str
    master: str
    mtu: int
    peer_ns: str
    peer_name: str
    peer_mac: str | None = None
    isolated: bool = False


@dataclass(frozen=True, kw_only=True)
class SetLink(Op):
    """Bring a link to the given MTU / master / MAC and up (None: leave as is)."""

    ns: str | None
    name: str
    mtu: int
    master: str | None = None
    mac: str | None = None


@dataclass(frozen=True, kw_only=True)
class SetAddresses(Op):
    """Make `addresses` the exact set of IPv4 addresses of the link."""

    ns: str | None
    name: str
    addresses: frozenset[IPv4Interface]


@dataclass(frozen=True, kw_only=True)
class SetDefaultRoute(Op):
    ns: str
    gateway: IPv4Address | None


@dataclass(frozen=True, kw_only=True)
class SetLoUp(Op):
    ns: str


@dataclass(frozen=True, kw_only=True)
class AddFdb(Op):
    """FDB entry on the network's VXLAN device; the zero MAC is appended (one per VTEP)."""

    ns: str
    mac: str
    dst: str


@dataclass(frozen=True, kw_only=True)
class DelFdb(Op):
    ns: str
    mac: str
    dst: str


@dataclass(frozen=True, kw_only=True)
class AddNeigh(Op):
    ns: str
    ip: str
    mac: str


@dataclass(frozen=True, kw_only=True)
class DelNeigh(Op):
    ns: str
    ip: str
    mac: str


@dataclass(frozen=True, kw_only=True)
class WriteSandboxFiles(Op):
    ns: str
    resolv: str
    hosts: str


@dataclass(frozen=True, kw_only=True)
class RemoveSandboxFiles(Op):
    ns: str


@dataclass(frozen=True, kw_only=True)
class EnsureNft(Op):
    """Replace the agent's nftables table (masquerade of the gwbridge subnet) atomically."""

    table: str
    gwbridge: str
    subnet: IPv4Network


@dataclass(frozen=True, kw_only=True)
class DeleteNft(Op):
    table: str


@dataclass(frozen=True, kw_only=True)
class SetIpForward(Op):
    pass


# --------------------------------------------------------------------------------------------
# Desired form


def problems(desired: DesiredState) -> list[str]:
    """Input errors in `desired` that make `plan` skip an endpoint, in words."""
    return [msg for _, msg in _endpoint_errors(desired)]


def _endpoint_errors(desired: DesiredState) -> list[tuple[LocalEndpoint, str]]:
    return [e for sb in desired.sandboxes.values() for e in _sandbox_errors(desired, sb)]


def _sandbox_errors(desired: DesiredState, sb: SandboxConfig) -> list[tuple[LocalEndpoint, str]]:
    out: list[tuple[LocalEndpoint, str]] = []
    seen: set[int] = set()
    for ep in sb.endpoints:
        net = desired.networks.get(ep.network_id)
        if net is None:
            out.append((ep, f"task {sb.task_id}: network {ep.network_id} is not desired"))
        elif ep.index in seen:
            out.append((ep, f"task {sb.task_id}: eth{ep.index} attached twice"))
        elif ep.address.ip not in net.subnet:
            out.append((ep, f"task {sb.task_id}: {ep.address} is outside {net.subnet} ({net.id})"))
        seen.add(ep.index)
    return out


def valid_endpoints(desired: DesiredState, sb: SandboxConfig) -> list[LocalEndpoint]:
    """The sandbox's endpoints that can be built (the others are reported by `problems`)."""
    bad = {id(ep) for ep, _ in _sandbox_errors(desired, sb)}
    return [ep for ep in sb.endpoints if id(ep) not in bad]


def wants_egress(desired: DesiredState, sb: SandboxConfig) -> bool:
    """A leg on the gwbridge unless the task asked for none or every network is internal."""
    eps = valid_endpoints(desired, sb)
    if not sb.egress:
        return False
    return not eps or any(not desired.networks[ep.network_id].internal for ep in eps)


def render_hosts(sb: SandboxConfig, endpoints: Iterable[LocalEndpoint]) -> str:
    lines = [HOSTS_HEADER]
    if sb.hostname:
        lines += [f"{ep.address.ip}\t{sb.hostname}\n" for ep in endpoints]
    return "".join(lines)


def gwbridge_address(host: HostConfig) -> IPv4Interface:
    net = host.gwbridge_subnet
    return IPv4Interface(f"{net.network_address + 1}/{net.prefixlen}")


def ingress_gw_address(host: HostConfig) -> IPv4Interface:
    """The ingress sandbox's gwbridge address (the second of the subnet, after the bridge's)."""
    net = host.gwbridge_subnet
    return IPv4Interface(f"{net.network_address + 2}/{net.prefixlen}")


def allocate_gw_addresses(
    host: HostConfig, egress_tasks: Sequence[str], observed: Observed
) -> dict[str, IPv4Interface]:
    """gw0 address per egress task: what the kernel already has (so that a reconcile never
    renumbers a running task), else the lowest free address of the gwbridge subnet."""
    net = host.gwbridge_subnet
    ingress = ingress_gw_address(host)
    reserved = {net.network_address, net.broadcast_address, gwbridge_address(host).ip, ingress.ip}
    names = host.names
    out: dict[str, IPv4Interface] = {}
    if INGRESS_SANDBOX in egress_tasks:
        # The host's published ports are DNATed to it: a fixed address, known without a lookup.
        out[INGRESS_SANDBOX] = ingress
    used: set[IPv4Address] = set(reserved)
    for task_id in sorted(egress_tasks):
        if task_id == INGRESS_SANDBOX:
            continue
        sb = observed.sandboxes.get(names.sandbox_ns(task_id))
        gw = sb.links.get(names.sandbox_gw_if) if sb else None
        if gw is None:
            continue
        for a in sorted(gw.addresses):
            if a.network == net and a.ip not in used:
                out[task_id] = a
                used.add(a.ip)
                break
    free = (ip for ip in net.hosts() if ip not in used)
    for task_id in sorted(egress_tasks):
        if task_id not in out:
            ip = next(free)
            used.add(ip)
            out[task_id] = IPv4Interface(f"{ip}/{net.prefixlen}")
    return out


# --------------------------------------------------------------------------------------------
# The planner


def plan(host: HostConfig, desired: DesiredState, observed: Observed) -> list[Op]:
    """The ops that turn `observed` into `desired` (see the module docstring)."""
    names = host.names
    mtu = host.overlay_mtu
    removals: list[Op] = []
    parents: list[Op] = []
    children: list[Op] = []
    entries: list[Op] = []

    nets: dict[str, NetworkConfig] = dict(desired.networks)
    net_ns = {nid: names.network_ns(nid) for nid in nets}
    wanted_net_ns = {v: k for k, v in net_ns.items()}
    sb_ns = {tid: names.sandbox_ns(tid) for tid in desired.sandboxes}
    wanted_sb_ns = {v: k for k, v in sb_ns.items()}
    egress_tasks = [t for t, sb in desired.sandboxes.items() if wants_egress(desired, sb)]
    any_egress = bool(egress_tasks)
    gw_addr = allocate_gw_addresses(host, egress_tasks, observed)

    # Where each desired veth outer end must be, and what is at the other end.
    outer_home: dict[str, tuple[str | None, str, str, str]] = {}  # outer -> (ns, sb, inner, tid)
    for tid, sb in desired.sandboxes.items():
        for ep in valid_endpoints(desired, sb):
            outer_home[names.veth_outer(tid, ep.index)] = (
                net_ns[ep.network_id],
                sb_ns[tid],
                names.sandbox_if(ep.index),
                tid,
            )
        if tid in gw_addr:
            outer_home[names.gw_veth_outer(tid)] = (None, sb_ns[tid], names.sandbox_gw_if, tid)

    inner_to_outer = {(v[1], v[2]): (k, v[0]) for k, v in outer_home.items()}

    def stray_outer(ns: str | None, name: str, netid: str = "") -> Op | None:
        home = outer_home.get(name)
        if home is not None and home[0] == ns:
            return None
        peer = (home[1], home[2]) if home else None
        return DeleteLink(
            ns=ns, name=name, peer=peer, task_id=home[3] if home else "", network_id=netid
        )

    # ---- removals: sandboxes and networks no longer wanted, stray links and entries
    deleted_pairs: set[tuple[str | None, str]] = set()
    for ns, obs_net in sorted(observed.networks.items()):
        netid = wanted_net_ns.get(ns, "")
        for name in sorted(obs_net.links):
            if name in (names.bridge, names.vxlan):
                continue
            op = stray_outer(ns, name, netid)
            if op is not None and netid:
                removals.append(op)
                assert isinstance(op, DeleteLink)
                deleted_pairs.add((ns, name))
                if op.peer:
                    deleted_pairs.add(op.peer)
    for name, link in sorted(observed.host_links.items()):
        if name == names.gwbridge:
            continue
        if link.kind == "vxlan":  # a staging device left by an interrupted create
            removals.append(DeleteLink(ns=None, name=name))
            continue
        op = stray_outer(None, name)
        if op is not None:
            removals.append(op)
            assert isinstance(op, DeleteLink)
            deleted_pairs.add((None, name))
            if op.peer:
                deleted_pairs.add(op.peer)
    # Inner ends in kept sandboxes whose outer end is not where it must be.
    for ns, cur_sb in sorted(observed.sandboxes.items()):
        kept = wanted_sb_ns.get(ns)
        if kept is None:
            continue
        for name in sorted(cur_sb.links):
            if (ns, name) in deleted_pairs:
                continue
            home_ok = False
            if (ns, name) in inner_to_outer:
                outer, ons = inner_to_outer[(ns, name)]
                where = (
                    observed.host_links
                    if ons is None
                    else observed.networks.get(ons, NetworkNs()).links
                )
                home_ok = outer in where
            if not home_ok:
                removals.append(DeleteLink(ns=ns, name=name, task_id=kept))
                deleted_pairs.add((ns, name))

    for ns in sorted(observed.sandboxes):
        if ns in wanted_sb_ns:
            continue
        if ns in observed.files:
            removals.append(RemoveSandboxFiles(ns=ns))
        removals.append(DeleteNetns(ns=ns))
    for ns in sorted(set(observed.files) - set(observed.sandboxes) - set(wanted_sb_ns)):
        removals.append(RemoveSandboxFiles(ns=ns))
    for ns in sorted(observed.networks):
        if ns not in wanted_net_ns:
            removals.append(DeleteNetns(ns=ns))
    if not any_egress:
        if observed.nft:
            removals.append(DeleteNft(table=names.nft_table))
        if names.gwbridge in observed.host_links:
            removals.append(DeleteLink(ns=None, name=names.gwbridge))

    def ensure_link(
        ns: str | None,
        name: str,
        obs: Link | None,
        kind: str,
        want_mtu: int,
        master: str | None,
        addresses: frozenset[IPv4Interface] | None,
        mac: str | None,
        create: Op,
        out: list[Op],
        owner: dict[str, str],
    ) -> None:
        """Create a missing link, replace one of the wrong kind, fix MTU/master/MAC/up/addrs."""
        if obs is not None and obs.kind != kind:
            out.append(DeleteLink(ns=ns, name=name, **owner))  # type: ignore[arg-type]
            obs = None
        if obs is None:
            out.append(create)
            have: frozenset[IPv4Interface] = (
                frozenset({create.address}) if isinstance(create, CreateBridge) else frozenset()
            )
        else:
            if (
                obs.mtu != want_mtu
                or not obs.up
                or (master is not None and obs.master != master)
                or (mac is not None and obs.mac != mac)
            ):
                out.append(SetLink(ns=ns, name=name, mtu=want_mtu, master=master, mac=mac, **owner))  # type: ignore[arg-type]
            have = obs.addresses
        if addresses is not None and have != addresses:
            out.append(SetAddresses(ns=ns, name=name, addresses=addresses, **owner))  # type: ignore[arg-type]

    # ---- host namespace: the gwbridge, nftables, forwarding
    if any_egress:
        gwb = gwbridge_address(host)
        ensure_link(
            None,
            names.gwbridge,
            observed.host_links.get(names.gwbridge),
            "bridge",
            host.underlay_mtu,
            None,
            frozenset({gwb}),
            None,
            CreateBridge(ns=None, name=names.gwbridge, mtu=host.underlay_mtu, address=gwb),
            parents,
            {},
        )
        if not observed.ip_forward:
            parents.append(SetIpForward())
        if not observed.nft:
            parents.append(
                EnsureNft(
                    table=names.nft_table, gwbridge=names.gwbridge, subnet=host.gwbridge_subnet
                )
            )

    # ---- networks: netns, bridge, VXLAN, then their FDB / neighbour entries
    for nid in sorted(nets):
        net = nets[nid]
        ns = net_ns[nid]
        own = {"network_id": nid}
        obs_net = observed.networks.get(ns) or NetworkNs()
        if ns not in observed.networks:
            parents.append(CreateNetns(ns=ns, network_id=nid))
        gw_if = IPv4Interface(f"{net.gateway}/{net.subnet.prefixlen}")
        ensure_link(
            ns,
            names.bridge,
            obs_net.links.get(names.bridge),
            "bridge",
            mtu,
            None,
            frozenset({gw_if}),
            None,
            CreateBridge(ns=ns, name=names.bridge, mtu=mtu, address=gw_if, network_id=nid),
            parents,
            own,
        )
        params = VxlanParams(vni=net.vni, port=host.vxlan_port, local=host.vtep)
        vx = obs_net.links.get(names.vxlan)
        if vx is not None and vx.kind == "vxlan" and vx.vxlan != params:
            parents.append(DeleteLink(ns=ns, name=names.vxlan, network_id=nid))
            vx = None
        ensure_link(
            ns,
            names.vxlan,
            vx,
            "vxlan",
            mtu,
            names.bridge,
            None,
            None,
            CreateVxlan(
                ns=ns,
                name=names.vxlan,
                staging=names.vxlan_staging(net.vni),
                params=params,
                mtu=mtu,
                master=names.bridge,
                network_id=nid,
            ),
            parents,
            own,
        )
        # Entries go away with a recreated VXLAN device.
        have_fdb = obs_net.fdb if vx is not None else frozenset()
        have_neigh = obs_net.neigh if vx is not None else frozenset()
        want_fdb, want_neigh = desired_entries(host, nid, desired.remotes.get(nid, frozenset()))
        for mac, dst in sorted(have_fdb - want_fdb):
            removals.append(DelFdb(ns=ns, mac=mac, dst=dst, network_id=nid))
        for ip, mac in sorted(have_neigh - want_neigh):
            removals.append(DelNeigh(ns=ns, ip=ip, mac=mac, network_id=nid))
        for mac, dst in sorted(want_fdb - have_fdb):
            entries.append(AddFdb(ns=ns, mac=mac, dst=dst, network_id=nid))
        for ip, mac in sorted(want_neigh - have_neigh):
            entries.append(AddNeigh(ns=ns, ip=ip, mac=mac, network_id=nid))

    # ---- sandboxes: netns, lo, a veth per endpoint, the gwbridge leg, route, files
    for tid in sorted(desired.sandboxes):
        sb = desired.sandboxes[tid]
        ns = sb_ns[tid]
        own = {"task_id": tid}
        obs_sb = observed.sandboxes.get(ns) or SandboxNs(lo_up=False)
        if ns not in observed.sandboxes:
            children.append(CreateNetns(ns=ns, task_id=tid))
        if not obs_sb.lo_up:
            children.append(SetLoUp(ns=ns, task_id=tid))
        eps = valid_endpoints(desired, sb)
        for ep in eps:
            inner = names.sandbox_if(ep.index)
            outer = names.veth_outer(tid, ep.index)
            ons = net_ns[ep.network_id]
            have_inner = None if (ns, inner) in deleted_pairs else obs_sb.links.get(inner)
            obs_outer_net = observed.networks.get(ons, NetworkNs())
            have_outer = None if (ons, outer) in deleted_pairs else obs_outer_net.links.get(outer)
            if have_inner is None or have_outer is None:
                if have_outer is not None:  # inner end gone means the pair is gone; be safe
                    children.append(DeleteLink(ns=ons, name=outer, task_id=tid))
                children.append(
                    CreateVeth(
                        ns=ons,
                        name=outer,
                        master=names.bridge,
                        mtu=mtu,
                        peer_ns=ns,
                        peer_name=inner,
                        peer_mac=ep.mac,
                        task_id=tid,
                    )
                )
                have_inner = Link(kind="veth", mtu=mtu, mac=ep.mac)
            else:
                ensure_link(
                    ons, outer, have_outer, "veth", mtu, names.bridge, None, None,
                    CreateVeth(ns=ons, name=outer, master=names.bridge, mtu=mtu, peer_ns=ns,
                               peer_name=inner, task_id=tid),
                    children, own,
                )  # fmt: skip
            ensure_link(
                ns, inner, have_inner, "veth", mtu, None, frozenset({ep.address}), ep.mac,
                CreateVeth(ns=ons, name=outer, master=names.bridge, mtu=mtu, peer_ns=ns,
                           peer_name=inner, task_id=tid),
                children, own,
            )  # fmt: skip
        want_gw: IPv4Address | None = None
        if tid in gw_addr:
            outer = names.gw_veth_outer(tid)
            inner = names.sandbox_gw_if
            have_inner = None if (ns, inner) in deleted_pairs else obs_sb.links.get(inner)
            have_outer = None if (None, outer) in deleted_pairs else observed.host_links.get(outer)
            if have_inner is None or have_outer is None:
                if have_outer is not None:
                    children.append(DeleteLink(ns=None, name=outer, task_id=tid))
                children.append(
                    CreateVeth(
                        ns=None,
                        name=outer,
                        master=names.gwbridge,
                        mtu=host.underlay_mtu,
                        peer_ns=ns,
                        peer_name=inner,
                        isolated=True,
                        task_id=tid,
                    )
                )
                have_inner = Link(kind="veth", mtu=host.underlay_mtu)
            else:
                ensure_link(
                    None, outer, have_outer, "veth", host.underlay_mtu, names.gwbridge, None,
                    None, CreateVeth(ns=None, name=outer, master=names.gwbridge,
                                     mtu=host.underlay_mtu, peer_ns=ns, peer_name=inner,
                                     isolated=True, task_id=tid),
                    children, own,
                )  # fmt: skip
            ensure_link(
                ns, inner, have_inner, "veth", host.underlay_mtu, None,
                frozenset({gw_addr[tid]}), None,
                CreateVeth(ns=None, name=outer, master=names.gwbridge, mtu=host.underlay_mtu,
                           peer_ns=ns, peer_name=inner, isolated=True, task_id=tid),
                children, own,
            )  # fmt: skip
            want_gw = gwbridge_address(host).ip
        if obs_sb.default_gateway != want_gw:
            children.append(SetDefaultRoute(ns=ns, gateway=want_gw, task_id=tid))
        files = (RESOLV_CONF, render_hosts(sb, eps))
        if observed.files.get(ns) != files:
            children.append(WriteSandboxFiles(ns=ns, resolv=files[0], hosts=files[1], task_id=tid))

    # Stale entries first (a MAC moving to another VTEP), then links/netns removals, then
    # parents, children, and the bulk of new entries last.
    entry_dels = [op for op in removals if isinstance(op, DelFdb | DelNeigh)]
    others = [op for op in removals if not isinstance(op, DelFdb | DelNeigh)]
    return entry_dels + others + parents + children + entries


def desired_entries(
    host: HostConfig, network_id: str, remotes: Iterable[RemoteEndpoint]
) -> tuple[frozenset[tuple[str, str]], frozenset[tuple[str, str]]]:
    """FDB (mac, vtep) incl. the zero MAC per remote VTEP (BUM), and neighbours (ip, mac)."""
    fdb: set[tuple[str, str]] = set()
    neigh: set[tuple[str, str]] = set()
    vteps: dict[IPv4Address, str] = {}
    for r in remotes:
        if r.network_id != network_id or r.vtep == host.vtep:
            continue
        # endpoint_mac(r.address), and str() of addresses, without ipaddress's slow paths:
        # this loop runs over every remote endpoint of a network on every reconcile.
        packed = r.address.packed
        mac = "02:42:" + packed.hex(":")
        vtep = vteps.get(r.vtep)
        if vtep is None:
            vtep = vteps[r.vtep] = str(r.vtep)
            fdb.add((ZERO_MAC, vtep))
        fdb.add((mac, vtep))
        neigh.add((socket.inet_ntoa(packed), mac))
    return frozenset(fdb), frozenset(neigh)


# --------------------------------------------------------------------------------------------
# A model of the kernel, for tests


@dataclass
class _SimNs:
    links: dict[str, Link]
    fdb: set[tuple[str, str]] = field(default_factory=set)
    neigh: set[tuple[str, str]] = field(default_factory=set)
    lo: bool = False
    gw: IPv4Address | None = None


def simulate(host: HostConfig, observed: Observed, ops: Iterable[Op]) -> Observed:
    """Apply `ops` to a snapshot the way the kernel applier does (pure; for tests)."""
    names = host.names
    nets = {
        k: _SimNs(dict(v.links), set(v.fdb), set(v.neigh)) for k, v in observed.networks.items()
    }
    sbs = {
        k: _SimNs(dict(v.links), lo=v.lo_up, gw=v.default_gateway)
        for k, v in observed.sandboxes.items()
    }
    hostl: dict[str, Link] = dict(observed.host_links)
    nft, fwd = observed.nft, observed.ip_forward
    files = dict(observed.files)

    def links_of(ns: str | None) -> dict[str, Link]:
        if ns is None:
            return hostl
        if ns in nets:
            return nets[ns].links
        if ns in sbs:
            return sbs[ns].links
        raise KeyError(f"no netns {ns}")

    def drop_link(ns: str | None, name: str) -> None:
        links = links_of(ns)
        if links.pop(name, None) is None:
            return
        for other in links:
            if links[other].master == name:
                links[other] = replace(links[other], master=None)
        if ns in sbs:
            gw = sbs[ns].gw
            if gw is not None and not any(
                gw in a.network for link in links.values() for a in link.addresses
            ):
                sbs[ns].gw = None
        if ns in nets and name == names.vxlan:
            nets[ns].fdb.clear()
            nets[ns].neigh.clear()

    for op in ops:
        match op:
            case CreateNetns(ns=ns):
                if names.is_network_ns(ns):
                    nets[ns] = _SimNs({})
                else:
                    sbs[ns] = _SimNs({})
            case DeleteNetns(ns=ns):
                nets.pop(ns, None)
                sbs.pop(ns, None)
            case DeleteLink(ns=ns, name=name, peer=peer):
                drop_link(ns, name)
                if peer is not None:
                    with contextlib.suppress(KeyError):
                        drop_link(*peer)
            case CreateBridge(ns=ns, name=name, mtu=mtu, address=addr):
                links_of(ns)[name] = Link(kind="bridge", mtu=mtu, addresses=frozenset({addr}))
            case CreateVxlan(ns=ns, name=name, params=params, mtu=mtu, master=master):
                links_of(ns)[name] = Link(kind="vxlan", mtu=mtu, master=master, vxlan=params)
            case CreateVeth():
                links_of(op.ns)[op.name] = Link(kind="veth", mtu=op.mtu, master=op.master)
                links_of(op.peer_ns)[op.peer_name] = Link(kind="veth", mtu=op.mtu, mac=op.peer_mac)
            case SetLink(ns=ns, name=name, mtu=mtu, master=master, mac=mac):
                links = links_of(ns)
                link = replace(links[name], mtu=mtu, up=True)
                if master is not None:
                    link = replace(link, master=master)
                if mac is not None:
                    link = replace(link, mac=mac)
                links[name] = link
            case SetAddresses(ns=ns, name=name, addresses=addrs):
                links = links_of(ns)
                links[name] = replace(links[name], addresses=addrs)
            case SetDefaultRoute(ns=ns, gateway=gw):
                sbs[ns].gw = gw
            case SetLoUp(ns=ns):
                sbs[ns].lo = True
            case AddFdb(ns=ns, mac=mac, dst=dst):
                nets[ns].fdb.add((mac, dst))
            case DelFdb(ns=ns, mac=mac, dst=dst):
                nets[ns].fdb.discard((mac, dst))
            case AddNeigh(ns=ns, ip=ip, mac=mac):
                neigh = nets[ns].neigh
                for old in [e for e in neigh if e[0] == ip]:
                    neigh.discard(old)
                neigh.add((ip, mac))
            case DelNeigh(ns=ns, ip=ip, mac=mac):
                nets[ns].neigh.discard((ip, mac))
            case WriteSandboxFiles(ns=ns, resolv=resolv, hosts=hosts):
                files[ns] = (resolv, hosts)
            case RemoveSandboxFiles(ns=ns):
                files.pop(ns, None)
            case EnsureNft():
                nft = True
            case DeleteNft():
                nft = False
            case SetIpForward():
                fwd = True
            case _:
                raise TypeError(f"unknown op {op!r}")
    return Observed(
        networks={
            k: NetworkNs(links=v.links, fdb=frozenset(v.fdb), neigh=frozenset(v.neigh))
            for k, v in nets.items()
        },
        sandboxes={
            k: SandboxNs(links=v.links, lo_up=v.lo, default_gateway=v.gw) for k, v in sbs.items()
        },
        host_links=hostl,
        nft=nft,
        ip_forward=fwd,
        files=files,
    )


def is_sandbox_if(name: str, names_gw_if: str = "gw0") -> bool:
    """Whether a sandbox interface is the agent's (eth<i> or gw0) rather than the task's."""
    return bool(_SANDBOX_IF.match(name)) or name == names_gw_if
