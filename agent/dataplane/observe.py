"""Reading the kernel into the planner's records: netlink dumps (nl.RawNetlink) and the
sandboxes' /etc/netns files -> `Link`, `NetworkNs`, `SandboxNs`.

Only objects the agent recognises as its own are kept (its prefix, its interface names), so that
the planner never plans to change what it did not make. `kernel.DataPlane` calls these from a
worker thread with handles it owns; nothing here opens or enters a namespace.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.dataplane import nl
from agent.dataplane.desired import is_sandbox_if
from agent.dataplane.observed import Link, NetworkNs, SandboxNs, VxlanParams
from agent.model import Names

# The agent's links in the host namespace besides the gwbridge: gwbridge veth ends and staging
# VXLAN devices (made there, then moved into a network's namespace).
_GW_VETH = re.compile(r"^ovg[0-9a-z]{10}$")
_STAGING = re.compile(r"^ovx\d+$")


def links(
    raw: nl.RawNetlink,
    keep: Callable[[str], bool] | None = None,
    dump: Sequence[nl.RawLink] | None = None,
) -> dict[str, Link]:
    """The namespace's links but lo (and those `keep` refuses), with their addresses; `dump`
    is a link dump already made by the caller."""
    if dump is None:
        dump = raw.links()
    addrs = raw.addresses()
    by_index = {lk.index: lk.name for lk in dump}
    out: dict[str, Link] = {}
    for lk in dump:
        if lk.name == "lo" or (keep is not None and not keep(lk.name)):
            continue
        vx = VxlanParams(*lk.vxlan) if lk.vxlan else None
        out[lk.name] = Link(
            kind=lk.kind,
            mtu=lk.mtu,
            up=lk.up,
            master=by_index.get(lk.master) if lk.master else None,
            addresses=frozenset(addrs.get(lk.index, ())),
            mac=lk.mac,
            vxlan=vx,
        )
    return out


def network(raw: nl.RawNetlink, names: Names) -> NetworkNs:
    """A network's namespace: its links and the static entries on its VXLAN device."""
    dump = raw.links()
    vx = next((lk for lk in dump if lk.name == names.vxlan), None)
    fdb: set[tuple[str, str]] = set()
    neigh: set[tuple[str, str]] = set()
    if vx is not None:
        fdb, neigh = raw.entries(vx.index)
    return NetworkNs(links=links(raw, dump=dump), fdb=frozenset(fdb), neigh=frozenset(neigh))


def sandbox(raw: nl.RawNetlink, names: Names) -> SandboxNs:
    """A sandbox's namespace: only the agent's interfaces, lo's state, the default route."""
    dump = raw.links()
    lo_up = any(lk.name == "lo" and lk.up for lk in dump)
    keep = lambda n: is_sandbox_if(n, names.sandbox_gw_if)  # noqa: E731
    return SandboxNs(
        links=links(raw, keep=keep, dump=dump), lo_up=lo_up, default_gateway=raw.default_gateway()
    )


def host_links(raw: nl.RawNetlink, names: Names) -> dict[str, Link]:
    """The agent's links in the host namespace: the gwbridge, its veth ends, staging VXLANs."""
    return {
        name: link
        for name, link in links(raw).items()
        if name == names.gwbridge
        or (_GW_VETH.match(name) and link.kind == "veth")
        or (_STAGING.match(name) and link.kind == "vxlan")
    }


def sandbox_files(etc_netns: Path, names: Names) -> dict[str, tuple[str, str]]:
    """(resolv.conf, hosts) per sandbox directory under /etc/netns ("" for a missing file)."""
    out: dict[str, tuple[str, str]] = {}
    try:
        entries = os.listdir(etc_netns)
    except FileNotFoundError:
        return out
    for name in entries:
        if not names.is_sandbox_ns(name):
            continue
        d = etc_netns / name
        out[name] = (_read(d / "resolv.conf"), _read(d / "hosts"))
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
