"""A model of the kernel, for tests: `simulate(host, observed, ops)` is the change the ops make,
applied to the snapshot instead of the kernel.

The unit tests use it as an in-memory kernel (plan, simulate, plan again must give nothing), and
it documents what each op is expected to leave behind: deleting a link releases the links
enslaved to it, deleting one end of a veth deletes the other, deleting the VXLAN device takes
its FDB and neighbour entries along, and a default route needs an address in its subnet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address

from agent.dataplane import ops
from agent.dataplane.observed import Link, NetworkNs, Observed, SandboxNs
from agent.model import HostConfig


@dataclass
class _SimNs:
    links: dict[str, Link]
    fdb: set[tuple[str, str]] = field(default_factory=set)
    neigh: set[tuple[str, str]] = field(default_factory=set)
    lo: bool = False
    gw: IPv4Address | None = None


def simulate(host: HostConfig, observed: Observed, todo: Iterable[ops.Op]) -> Observed:
    """Apply the ops `todo` to a snapshot the way the kernel applier does (pure; for tests)."""
    kernel = _SimKernel(host, observed)
    for op in todo:
        kernel.apply(op)
    return kernel.snapshot()


class _SimKernel:
    """A mutable copy of a snapshot that ops are applied to."""

    def __init__(self, host: HostConfig, observed: Observed) -> None:
        self.names = host.names
        self.nets = {
            k: _SimNs(dict(v.links), set(v.fdb), set(v.neigh)) for k, v in observed.networks.items()
        }
        self.sbs = {
            k: _SimNs(dict(v.links), lo=v.lo_up, gw=v.default_gateway)
            for k, v in observed.sandboxes.items()
        }
        self.hostl: dict[str, Link] = dict(observed.host_links)
        self.nft, self.fwd = observed.nft, observed.ip_forward
        # Bridges with route_localnet set: the sysctl goes with its bridge (the gwbridge, the
        # only bridge among the host's links).
        self.localnet = (
            {name for name, link in self.hostl.items() if link.kind == "bridge"}
            if observed.route_localnet
            else set()
        )
        self.files = dict(observed.files)
        # Namespaces of other runtimes (paths: attachments' CNI_NETNS), never observed.
        self.foreign: dict[str, _SimNs] = {}

    def snapshot(self) -> Observed:
        return Observed(
            networks={
                k: NetworkNs(links=v.links, fdb=frozenset(v.fdb), neigh=frozenset(v.neigh))
                for k, v in self.nets.items()
            },
            sandboxes={
                k: SandboxNs(links=v.links, lo_up=v.lo, default_gateway=v.gw)
                for k, v in self.sbs.items()
            },
            host_links=self.hostl,
            nft=self.nft,
            ip_forward=self.fwd,
            route_localnet=bool(self.localnet),
            files=self.files,
        )

    def links_of(self, ns: str | None) -> dict[str, Link]:
        if ns is None:
            return self.hostl
        if ns in self.nets:
            return self.nets[ns].links
        if ns in self.sbs:
            return self.sbs[ns].links
        if "/" in ns:
            return self.foreign.setdefault(ns, _SimNs({})).links
        raise KeyError(f"no netns {ns}")

    def drop_link(self, ns: str | None, name: str) -> None:
        links = self.links_of(ns)
        if links.pop(name, None) is None:
            return
        if ns is None:
            self.localnet.discard(name)
        for other in links:
            if links[other].master == name:
                links[other] = replace(links[other], master=None)
        if ns in self.sbs:
            gw = self.sbs[ns].gw
            if gw is not None and not any(
                gw in a.network for link in links.values() for a in link.addresses
            ):
                self.sbs[ns].gw = None
        if ns in self.nets and name == self.names.vxlan:
            self.nets[ns].fdb.clear()
            self.nets[ns].neigh.clear()

    def apply(self, op: ops.Op) -> None:
        match op:
            case ops.CreateNetns(ns=ns):
                if self.names.is_network_ns(ns):
                    self.nets[ns] = _SimNs({})
                else:
                    self.sbs[ns] = _SimNs({})
            case ops.DeleteNetns(ns=ns):
                self.nets.pop(ns, None)
                self.sbs.pop(ns, None)
            case ops.SetDefaultRoute(ns=ns, gateway=gw):
                self.sbs[ns].gw = gw
            case ops.SetLoUp(ns=ns):
                (self.foreign if "/" in ns else self.sbs)[ns].lo = True
            case ops.DeleteLink(ns=ns, name=name, peer=peer):
                self.drop_link(ns, name)
                if peer is not None:
                    with contextlib.suppress(KeyError):
                        self.drop_link(*peer)
            case ops.CreateBridge(ns=ns, name=name, mtu=mtu, address=addr, mac=mac):
                self.links_of(ns)[name] = Link(
                    kind="bridge", mtu=mtu, addresses=frozenset({addr}), mac=mac
                )
            case ops.CreateVxlan(ns=ns, name=name, params=params, mtu=mtu, master=master):
                self.links_of(ns)[name] = Link(kind="vxlan", mtu=mtu, master=master, vxlan=params)
            case ops.CreateVeth():
                self.links_of(op.ns)[op.name] = Link(kind="veth", mtu=op.mtu, master=op.master)
                self.links_of(op.peer_ns)[op.peer_name] = Link(
                    kind="veth", mtu=op.mtu, mac=op.peer_mac
                )
            case ops.SetLink(ns=ns, name=name, mtu=mtu, master=master, mac=mac):
                links = self.links_of(ns)
                link = replace(links[name], mtu=mtu, up=True)
                if master is not None:
                    link = replace(link, master=master)
                if mac is not None:
                    link = replace(link, mac=mac)
                links[name] = link
            case ops.SetAddresses(ns=ns, name=name, addresses=addrs):
                links = self.links_of(ns)
                links[name] = replace(links[name], addresses=addrs)
            case ops.AddFdb(ns=ns, mac=mac, dst=dst):
                self.nets[ns].fdb.add((mac, dst))
            case ops.DelFdb(ns=ns, mac=mac, dst=dst):
                self.nets[ns].fdb.discard((mac, dst))
            case ops.AddNeigh(ns=ns, ip=ip, mac=mac):
                neigh = self.nets[ns].neigh
                for old in [e for e in neigh if e[0] == ip]:
                    neigh.discard(old)
                neigh.add((ip, mac))
            case ops.DelNeigh(ns=ns, ip=ip, mac=mac):
                self.nets[ns].neigh.discard((ip, mac))
            case ops.WriteSandboxFiles(ns=ns, resolv=resolv, hosts=hosts):
                self.files[ns] = (resolv, hosts)
            case ops.RemoveSandboxFiles(ns=ns):
                self.files.pop(ns, None)
            case ops.EnsureNft():
                self.nft = True
            case ops.DeleteNft():
                self.nft = False
            case ops.SetIpForward():
                self.fwd = True
            case ops.SetRouteLocalnet(bridge=bridge):
                if bridge in self.hostl:
                    self.localnet.add(bridge)
            case _:
                raise TypeError(f"unknown op {op!r}")
