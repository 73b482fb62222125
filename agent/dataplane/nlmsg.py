"""rtnetlink messages, built and parsed by hand: links, addresses, routes, neighbours.

Why by hand and not pyroute2: importing pyroute2 alone costs each agent 9.4 MB of RSS and
0.36 s of start-up (measured; its package __init__ pulls in ndb/sqlite3, ipdb, conntrack and
more, whichever submodule is imported), and its generic attribute machinery costs tens of
microseconds per message, which matters when 10,000 remote endpoints mean 20,000 requests.
The agent needs a dozen message shapes; they are written out here once.

The requests carry exactly the attributes, flags and header fields pyroute2 0.9's AsyncIPRoute
sent for the same calls (captured with strace, pinned in tests/unit/test_dataplane_nlmsg.py), so
the kernel sees the same requests as before. This module is pure (bytes in, bytes out); the
sockets are nl.py's.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import NamedTuple

# Message types
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
# Flags
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
AF_INET, AF_BRIDGE = 2, 7
IFF_UP = 0x1
# Neighbours
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02
NDA_DST, NDA_LLADDR = 1, 2
# Links
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_PROTINFO, IFLA_LINKINFO = 1, 3, 4, 10, 12, 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING = 1, 4, 7
IFLA_VXLAN_PROXY, IFLA_VXLAN_PORT = 11, 15
VETH_INFO_PEER = 1
IFLA_BRPORT_ISOLATED = 33
NLA_F_NESTED = 0x8000
# Addresses and routes
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RTN_UNICAST = 1

HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src len, tos, table, proto, scope, type, flags
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")

_ACK = NLM_F_REQUEST | NLM_F_ACK
_NEW = _ACK | NLM_F_CREATE | NLM_F_EXCL


class Request(NamedTuple):
    """One request without its header (nl.RawNetlink adds it, with the sequence number)."""

    mtype: int
    flags: int
    body: bytes


def frame(req: Request, seq: int) -> bytes:
    return HDR.pack(HDR.size + len(req.body), req.mtype, req.flags, seq, 0) + req.body


def nla(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return _NLA.pack(length, kind) + data + b"\0" * ((4 - length % 4) % 4)


def _u32(kind: int, value: int) -> bytes:
    return nla(kind, _U32.pack(value))


def _str(kind: int, value: str) -> bytes:
    return nla(kind, value.encode() + b"\0")


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_str(raw: bytes) -> str:
    return raw.hex(":")


def attrs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(type without the nested/byte-order flags, payload) of each attribute in buf[start:end]."""
    while start + 4 <= end:
        length, kind = _NLA.unpack_from(buf, start)
        if length < 4:
            return
        yield kind & 0x3FFF, buf[start + 4 : start + length]
        start += (length + 3) & ~3


# --------------------------------------------------------------------------------------------
# Requests: links


def link_add(name: str, kind: str, mtu: int, data: bytes = b"") -> Request:
    """RTM_NEWLINK (create, exclusive): name, MTU and IFLA_LINKINFO { kind, data }; `data` is
    the kind's IFLA_INFO_DATA payload (vxlan_data(), veth_peer())."""
    info = _str(IFLA_INFO_KIND, kind) + (nla(IFLA_INFO_DATA, data) if data else b"")
    body = (
        IFINFO.pack(0, 0, 0, 0, 0)
        + _str(IFLA_IFNAME, name)
        + _u32(IFLA_MTU, mtu)
        + nla(IFLA_LINKINFO, info)
    )
    return Request(RTM_NEWLINK, _NEW, body)


def vxlan_data(
    vni: int, local: IPv4Address | None, port: int, learning: bool, proxy: bool
) -> bytes:
    """The VXLAN device's IFLA_INFO_DATA: VNI, local address (if any), UDP port, learning and
    proxy; nothing else, so the kernel's defaults (TTL, ageing, ...) apply as before."""
    return (
        _u32(IFLA_VXLAN_ID, vni)
        + (nla(IFLA_VXLAN_LOCAL, local.packed) if local is not None else b"")
        + nla(IFLA_VXLAN_PORT, struct.pack("!H", port))
        + nla(IFLA_VXLAN_LEARNING, bytes([int(learning)]))
        + nla(IFLA_VXLAN_PROXY, bytes([int(proxy)]))
    )


def veth_peer(name: str, mtu: int, mac: str | None, netns_fd: int) -> bytes:
    """A veth's IFLA_INFO_DATA: the peer (its own ifinfomsg and attributes), made directly in
    the namespace `netns_fd` refers to."""
    peer = IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name) + _u32(IFLA_MTU, mtu)
    if mac:
        peer += nla(IFLA_ADDRESS, mac_bytes(mac))
    return nla(VETH_INFO_PEER, peer + _u32(IFLA_NET_NS_FD, netns_fd))


def link_set(
    index: int,
    *,
    mtu: int | None = None,
    master: int | None = None,
    mac: str | None = None,
    name: str | None = None,
    netns_fd: int | None = None,
    up: bool = False,
) -> Request:
    """RTM_NEWLINK on an existing link (as pyroute2's "set"): only what is given changes;
    `up` sets IFF_UP in both flags and change."""
    flag = IFF_UP if up else 0
    body = IFINFO.pack(0, 0, index, flag, flag)
    if name is not None:
        body += _str(IFLA_IFNAME, name)
    if mtu is not None:
        body += _u32(IFLA_MTU, mtu)
    if master is not None:
        body += _u32(IFLA_MASTER, master)
    if mac is not None:
        body += nla(IFLA_ADDRESS, mac_bytes(mac))
    if netns_fd is not None:
        body += _u32(IFLA_NET_NS_FD, netns_fd)
    return Request(RTM_NEWLINK, _ACK, body)


def link_del(name: str | None = None, index: int = 0) -> Request:
    """RTM_DELLINK by name or by index (ENODEV when there is no such link)."""
    body = IFINFO.pack(0, 0, index, 0, 0) + (_str(IFLA_IFNAME, name) if name is not None else b"")
    return Request(RTM_DELLINK, _ACK, body)


def link_get(name: str) -> Request:
    """RTM_GETLINK by name: the answer is one RTM_NEWLINK (ENODEV when there is none)."""
    return Request(RTM_GETLINK, _ACK, IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name))


def brport_isolated(index: int) -> Request:
    """RTM_SETLINK (AF_BRIDGE) with IFLA_PROTINFO { IFLA_BRPORT_ISOLATED = 1 }: what
    `bridge link set dev X isolated on` sends."""
    body = IFINFO.pack(AF_BRIDGE, 0, index, 0, 0) + nla(
        IFLA_PROTINFO | NLA_F_NESTED, nla(IFLA_BRPORT_ISOLATED, b"\x01")
    )
    return Request(RTM_SETLINK, _ACK, body)


# --------------------------------------------------------------------------------------------
# Requests: addresses, routes, neighbours


def addr(add: bool, index: int, iface: IPv4Interface) -> Request:
    """RTM_NEWADDR (create, exclusive: EEXIST if present) or RTM_DELADDR of an IPv4 address,
    with IFA_ADDRESS and IFA_LOCAL both the address (what `ip addr` and pyroute2 send)."""
    body = (
        IFADDR.pack(AF_INET, iface.network.prefixlen, 0, 0, index)
        + nla(IFA_ADDRESS, iface.ip.packed)
        + nla(IFA_LOCAL, iface.ip.packed)
    )
    return Request(RTM_NEWADDR, _NEW, body) if add else Request(RTM_DELADDR, _ACK, body)


def default_route(gateway: IPv4Address | None) -> Request:
    """Replace (create if missing) the main table's default route via `gateway` (a static,
    unicast, universe-scope route), or delete it when `gateway` is None (ESRCH when absent)."""
    if gateway is None:
        return Request(RTM_DELROUTE, _ACK, RTMSG.pack(AF_INET, 0, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0))
    rtm = RTMSG.pack(AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, 0, RTN_UNICAST, 0)
    body = rtm + nla(RTA_GATEWAY, gateway.packed)
    return Request(RTM_NEWROUTE, _ACK | NLM_F_CREATE | NLM_F_REPLACE, body)


def neigh_msg(
    cmd: int,
    flags: int,
    family: int,
    ifindex: int,
    lladdr: str,
    dst: str,
    seq: int,
) -> bytes:
    """An FDB (family AF_BRIDGE, NTF_SELF on the VXLAN device) or neighbour (AF_INET) request,
    framed (it is sent in bulk, many to a datagram, by nl.RawNetlink.bulk)."""
    ntf = NTF_SELF if family == AF_BRIDGE else 0
    body = (
        NDMSG.pack(family, ifindex, NUD_PERMANENT | NUD_NOARP, ntf, 0)
        + nla(NDA_DST, socket.inet_aton(dst))
        + nla(NDA_LLADDR, mac_bytes(lladdr))
    )
    return HDR.pack(16 + len(body), cmd, flags, seq, 0) + body


# --------------------------------------------------------------------------------------------
# Parsing dump answers (only the attributes the planner needs)

VxlanInfo = tuple[int, int, IPv4Address | None, bool, bool]  # vni, port, local, learn, proxy


@dataclass(frozen=True)
class RawLink:
    index: int
    name: str
    kind: str
    mtu: int
    up: bool
    master: int
    mac: str | None
    vxlan: VxlanInfo | None


def link_index(buf: bytes, start: int) -> int:
    """The interface index of an RTM_NEWLINK message whose body starts at `start`."""
    return int(IFINFO.unpack_from(buf, start)[2])


def _vxlan_info(data: bytes) -> VxlanInfo:
    vni, port, local, learn, proxy = 0, 0, None, True, False
    for k, v in attrs(data, 0, len(data)):
        if k == IFLA_VXLAN_ID:
            (vni,) = _U32.unpack(v[:4])
        elif k == IFLA_VXLAN_PORT:
            (port,) = struct.unpack("!H", v[:2])
        elif k == IFLA_VXLAN_LOCAL:
            local = IPv4Address(v[:4])
        elif k == IFLA_VXLAN_LEARNING:
            learn = bool(v[0])
        elif k == IFLA_VXLAN_PROXY:
            proxy = bool(v[0])
    return vni, port, local, learn, proxy


def parse_link(buf: bytes, start: int, end: int) -> RawLink:
    _fam, _type, index, flags, _chg = IFINFO.unpack_from(buf, start)
    name, kind, mtu, master, mac = "", "", 0, 0, None
    vx = None
    for k, v in attrs(buf, start + IFINFO.size, end):
        if k == IFLA_IFNAME:
            name = v.rstrip(b"\0").decode()
        elif k == IFLA_MTU:
            (mtu,) = _U32.unpack(v[:4])
        elif k == IFLA_MASTER:
            (master,) = _U32.unpack(v[:4])
        elif k == IFLA_ADDRESS and len(v) == 6:
            mac = mac_str(v)
        elif k == IFLA_LINKINFO:
            for ik, iv in attrs(v, 0, len(v)):
                if ik == IFLA_INFO_KIND:
                    kind = iv.rstrip(b"\0").decode()
                elif ik == IFLA_INFO_DATA and kind == "vxlan":
                    vx = _vxlan_info(iv)
    return RawLink(index, name, kind, mtu, bool(flags & IFF_UP), master, mac, vx)


def parse_addr(buf: bytes, start: int, end: int) -> tuple[int, IPv4Interface] | None:
    """(interface index, address) of an IPv4 RTM_NEWADDR message (None: not IPv4)."""
    fam, plen, _f, _s, index = IFADDR.unpack_from(buf, start)
    if fam != AF_INET:
        return None
    address = None
    for k, v in attrs(buf, start + IFADDR.size, end):
        if k == IFA_LOCAL or (k == IFA_ADDRESS and address is None):
            address = IPv4Address(v[:4])
    return None if address is None else (index, IPv4Interface(f"{address}/{plen}"))


def parse_default_gateway(buf: bytes, start: int, end: int) -> IPv4Address | None:
    """The gateway of an RTM_NEWROUTE message if it is the main table's IPv4 default route."""
    fam, dst_len, _s, _tos, table, *_ = RTMSG.unpack_from(buf, start)
    if fam != AF_INET or dst_len != 0:
        return None
    gateway = None
    for k, v in attrs(buf, start + RTMSG.size, end):
        if k == RTA_TABLE:
            (table,) = _U32.unpack(v[:4])
        elif k == RTA_GATEWAY:
            gateway = IPv4Address(v[:4])
    return gateway if table == RT_TABLE_MAIN else None


def parse_neigh(buf: bytes, start: int, end: int) -> tuple[int, int, int, str | None, str | None]:
    """(ifindex, state, flags, lladdr, IPv4 dst) of an RTM_NEWNEIGH message."""
    _fam, idx, state, ntf, _ = NDMSG.unpack_from(buf, start)
    mac = dst = None
    for k, v in attrs(buf, start + NDMSG.size, end):
        if k == NDA_LLADDR:
            mac = mac_str(v[:6])
        elif k == NDA_DST and len(v) == 4:
            dst = socket.inet_ntoa(v)
    return idx, state, ntf, mac, dst
