"""What the kernel and the filesystem hold, as far as the data-plane planner cares.

`kernel.DataPlane.observe()` fills these records from netlink dumps and /etc/netns; the planner
(plan.py) compares them with the desired state, and the in-memory kernel model (simulate.py)
produces them from ops. Plain frozen values, so that two snapshots compare with `==`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface


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
    # net.ipv4.conf.<gwbridge>.route_localnet (False while there is no gwbridge).
    route_localnet: bool = False
    files: Mapping[str, tuple[str, str]] = field(default_factory=dict)
