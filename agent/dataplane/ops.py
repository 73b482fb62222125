"""The data plane's operations: one kernel or file change each, planned by plan.py and
applied by kernel.DataPlane (or by simulate.py, in tests).

`ns` None means the host namespace (the one the agent runs in).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from agent.dataplane.observed import VxlanParams


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
    """A bridge with a set MAC (agent.model.bridge_mac: it must not follow its ports'), its
    address, up."""

    ns: str | None
    name: str
    mtu: int
    address: IPv4Interface
    mac: str


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


@dataclass(frozen=True, kw_only=True)
class SetRouteLocalnet(Op):
    """route_localnet on the gwbridge: a connection from the host to 127.0.0.1 on a published
    port is DNATed to an address behind the gwbridge, and the kernel drops packets with a
    loopback source on any other interface unless this is set (they are masqueraded to the
    gwbridge's address on the way out: the table's from_loopback chain)."""

    bridge: str
