"""What the agent wants the host to look like, in plain values shared by its control loops.

The session hands the agent protobuf objects; the data plane and the executor work on these
frozen dataclasses instead, so that their planners are pure functions over hashable values and
can be tested without a manager. `Names` is the single place that says what the agent calls the
kernel objects it makes: everything carries the agent's prefix, which is how a restarted agent
finds (and may remove) what it made, and how it leaves alone what it did not.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

# Headers VXLAN adds on the underlay: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
VXLAN_OVERHEAD = 50
# ESP in transport mode around the VXLAN packet: SPI, sequence, 8-byte IV, padding and trailer
# (up to 4 + 2), 16-byte ICV; the MTU is then rounded down to a multiple of 4.
ESP_OVERHEAD = 26
DEFAULT_VXLAN_PORT = 4789
# The host-local bridge that gives sandboxes a way out (Docker's docker_gwbridge). Its subnet
# only ever exists in the host's namespace; each host may use the same one.
DEFAULT_GWBRIDGE_SUBNET = IPv4Network("172.18.0.0/16")


# The pseudo task ID of a host's ingress sandbox: the routing mesh's end on this host, with a leg
# on the ingress network (the node's own ingress address) and one on the gwbridge, where the
# host's published ports are DNATed to. Alphanumeric and long enough that its netns name reads
# `<prefix>t-ingresssandb`.
INGRESS_SANDBOX = "ingresssandbox"


def endpoint_mac(address: IPv4Address | IPv4Interface | str) -> str:
    """The MAC of the interface holding an overlay address: 02:42 followed by the address.

    Deriving it (as Docker does) means every host can program a remote endpoint's FDB and
    neighbour entries from its IP alone, and a task that moves keeps a consistent mapping.
    """
    ip = (
        ipaddress.ip_interface(str(address)).ip if not isinstance(address, IPv4Address) else address
    )
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


def bridge_mac(vtep: IPv4Address | str, ns: str | None, name: str) -> str:
    """The fixed MAC of a bridge the agent makes: 06 (locally administered, apart from the
    endpoints' 02:42) and five bytes of a hash of the host's VTEP and the bridge's place.

    A Linux bridge whose address was never set takes the lowest MAC of its ports, so starting
    or stopping a task (a veth port more or less) could change the gwbridge's MAC under every
    sandbox routing through it: the ingress sandbox kept sending the routing mesh's answers to
    the old MAC until its neighbour entry was re-probed, and a request hung for seconds
    (measured: 1 in ~12 runs of the e2e scale/update test). A set address never follows the
    ports. Per host and per namespace, so that no two bridges of one layer 2 segment (an
    overlay spans hosts) share it, and stable, so that a restarted agent finds it right.
    """
    digest = hashlib.sha256(f"{vtep}|{ns or ''}|{name}".encode()).digest()
    return "06:" + ":".join(f"{b:02x}" for b in digest[:5])


def short_id(object_id: str, length: int = 10) -> str:
    """A stable short form of an object ID for names with a length limit (15 for interfaces)."""
    if len(object_id) >= length and object_id.isalnum():
        return object_id[:length].lower()
    return hashlib.sha1(object_id.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Names:
    """Names of every kernel object and file the agent makes, derived from one prefix.

    `prefix` namespaces the named network namespaces (which are global to the machine under
    /run/netns): the dev cluster gives each host's agent its own (e.g. ``ovd-h1-``), a real host
    uses the default. Interface names inside the agent's own namespaces need no prefix, but the
    ones in the host's namespace get ``ov`` so that they are recognisable there.
    """

    prefix: str = "ovnet-"

    def network_ns(self, network_id: str) -> str:
        return f"{self.prefix}n-{short_id(network_id, 12)}"

    def sandbox_ns(self, task_id: str) -> str:
        return f"{self.prefix}t-{short_id(task_id, 12)}"

    def is_network_ns(self, name: str) -> bool:
        return name.startswith(f"{self.prefix}n-")

    def is_sandbox_ns(self, name: str) -> bool:
        return name.startswith(f"{self.prefix}t-")

    # Inside a network namespace.
    bridge: str = "ovbr0"
    vxlan: str = "ovvx0"

    def veth_outer(self, task_id: str, index: int) -> str:
        """The bridge-side end of a task's veth, in the network's namespace."""
        return f"ovv{short_id(task_id, 9)}{index:x}"[:15]

    # Inside a sandbox: eth<index> per network attachment, in attachment order, and the
    # gwbridge leg.
    @staticmethod
    def sandbox_if(index: int) -> str:
        return f"eth{index}"

    sandbox_gw_if: str = "gw0"

    # In the host's namespace.
    gwbridge: str = "ovgw0"
    nft_table: str = "ovnet"
    # Carried by every xfrm SA and policy the agent makes (reqid is what xfrm has for a tag).
    xfrm_reqid: int = 0x6F76_0001
    # The load-balancing table, in the host, the ingress sandbox and every task sandbox.
    lb_table: str = "ovnet-lb"

    def vxlan_staging(self, vni: int) -> str:
        """Name of a VXLAN device while it is made in the host namespace (its UDP socket must
        live there, next to the underlay) before it moves into the network's namespace."""
        return f"ovx{vni}"[:15]

    def gw_veth_outer(self, task_id: str) -> str:
        """The gwbridge-side end of a sandbox's egress veth, in the host namespace."""
        return f"ovg{short_id(task_id, 10)}"[:15]


@dataclass(frozen=True)
class NetworkConfig:
    """One overlay network as this host must build it (only networks with a local task)."""

    id: str
    name: str
    vni: int
    subnet: IPv4Network
    gateway: IPv4Address
    internal: bool = False
    encrypted: bool = False
    ingress: bool = False


@dataclass(frozen=True)
class LocalEndpoint:
    """A local task's attachment to one network: a veth from the sandbox into the bridge."""

    task_id: str
    network_id: str
    index: int  # eth<index> in the sandbox
    address: IPv4Interface  # with the network's prefix length

    @property
    def mac(self) -> str:
        return endpoint_mac(self.address)


@dataclass(frozen=True)
class RemoteEndpoint:
    """An endpoint on another host: what the static FDB and neighbour entries point at."""

    network_id: str
    address: IPv4Address
    vtep: IPv4Address

    @property
    def mac(self) -> str:
        return endpoint_mac(self.address)


@dataclass(frozen=True)
class SandboxConfig:
    """A task's network namespace: its overlay legs and, unless every network it is on is
    internal, a leg on the gwbridge with the default route (egress, masqueraded by the host)."""

    task_id: str
    endpoints: tuple[LocalEndpoint, ...]
    egress: bool
    # Written to the sandbox's own /etc/hosts next to its addresses.
    hostname: str = ""


@dataclass(frozen=True)
class AttachmentConfig:
    """An endpoint on an attachable network in a namespace someone else made (a container
    joined through the CNI plugin): a veth from the network's bridge into `netns`, named
    `ifname` there. The namespace is the runtime's: the agent never makes or deletes it, only
    the veth (which dies with the namespace), and it does not observe inside it (a pair whose
    outer end exists is whole: the two ends only ever go together)."""

    id: str
    network_id: str
    netns: str  # a path (CNI_NETNS)
    ifname: str
    address: IPv4Interface

    @property
    def mac(self) -> str:
        return endpoint_mac(self.address)


@dataclass(frozen=True)
class HostConfig:
    """Facts about this host that the data plane needs and no manager decides."""

    vtep: IPv4Address
    underlay_mtu: int = 1500
    vxlan_port: int = DEFAULT_VXLAN_PORT
    gwbridge_subnet: IPv4Network = DEFAULT_GWBRIDGE_SUBNET
    names: Names = field(default_factory=Names)
    # Per-sandbox resolv.conf and hosts live in <etc_netns>/<sandbox netns name>/, where
    # `ip netns exec` bind-mounts them over /etc for the task (iproute2's convention).
    etc_netns: Path = Path("/etc/netns")

    # Why this host cannot encrypt ("" if it can), found when the agent starts: tasks on an
    # encrypted network fail here rather than run in clear.
    ipsec_unavailable: str = ""

    @property
    def overlay_mtu(self) -> int:
        return self.underlay_mtu - VXLAN_OVERHEAD

    @property
    def encrypted_vxlan_port(self) -> int:
        """Encrypted networks' VXLAN port: their own, so that IPsec policies (which match
        ports, not VNIs) select exactly their traffic (see agent/dataplane/ipsec.py)."""
        return self.vxlan_port + 1

    def network_mtu(self, net: NetworkConfig) -> int:
        """The MTU of a network's bridge, VXLAN device and veths (1450 plain, 1424 encrypted
        on a 1500 underlay)."""
        if not net.encrypted:
            return self.overlay_mtu
        return (self.underlay_mtu - VXLAN_OVERHEAD - ESP_OVERHEAD) // 4 * 4

    def network_vxlan_port(self, net: NetworkConfig) -> int:
        return self.encrypted_vxlan_port if net.encrypted else self.vxlan_port


@dataclass(frozen=True)
class IpsecKey:
    """One key of the IPsec ring the manager sends; `tag` (its Lamport time) is the same on
    every host, so both ends of a pair derive the same SPIs (agent/dataplane/ipsec.py)."""

    tag: int
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class DesiredState:
    """Everything the data plane must hold on this host; anything else carrying the agent's
    prefix is to be removed."""

    networks: dict[str, NetworkConfig] = field(default_factory=dict)
    sandboxes: dict[str, SandboxConfig] = field(default_factory=dict)
    # Per network ID: endpoints on other hosts (never this host's own).
    remotes: dict[str, frozenset[RemoteEndpoint]] = field(default_factory=dict)
    # The IPsec ring, primary first (used only with an encrypted network here).
    ipsec_keys: tuple[IpsecKey, ...] = ()
    # True while `remotes` may be incomplete (a restarted agent before gossip has synced): the
    # remote entries and IPsec peers already in the kernel stay, only additions are made, so
    # traffic to other hosts does not stop while the view fills in.
    keep_remotes: bool = False
    # Containers of other runtimes on attachable networks, by attachment ID.
    attachments: dict[str, AttachmentConfig] = field(default_factory=dict)

    def encrypted_peers(self) -> frozenset[IPv4Address]:
        """VTEPs this host sends encrypted networks' traffic to (each needs SAs)."""
        return frozenset(
            r.vtep
            for nid, net in self.networks.items()
            if net.encrypted
            for r in self.remotes.get(nid, ())
        )
