"""Raw rtnetlink for the two hot paths: dumps (observe) and bulk FDB/neighbour programming.

Why not pyroute2 here: pyroute2 builds and parses every message through its generic NLA
machinery, which costs tens of microseconds per message in Python; a no-op reconcile of a
network with 10,000 remote endpoints dumps ~20,000 FDB/neighbour entries, and programming them
sends as many requests. Hand-packed messages sent many to a datagram (the kernel processes each
message of a datagram in turn) and a parser that only looks at the few attributes the planner
needs make both take milliseconds. Everything else (creating and configuring links, addresses,
routes) goes through pyroute2's AsyncIPRoute in kernel.py.

Also here: creating a named network namespace from a short-lived thread (netns membership is
per thread) and making sockets in one, without forking; entering one is `osutil.netns`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from osutil.netns import (
    CLONE_NEWNET,
    NETNS_RUN_DIR,
    enter_netns,
    netns_path,
    run_in_netns,
    run_in_thread,
)

# rtnetlink message types and flags
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
AF_INET, AF_BRIDGE = 2, 7
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02
NDA_DST, NDA_LLADDR = 1, 2
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_PROTINFO, IFLA_LINKINFO = 1, 3, 4, 10, 12, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING = 1, 4, 7
IFLA_VXLAN_PROXY, IFLA_VXLAN_PORT = 11, 15
IFLA_BRPORT_ISOLATED = 33
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN = 254
IFF_UP = 0x1
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
NLA_F_NESTED = 0x8000

_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLA = struct.Struct("=HH")


def _nla(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return _NLA.pack(length, kind) + data + b"\0" * ((4 - length % 4) % 4)


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _mac_str(raw: bytes) -> str:
    return raw.hex(":")


def _attrs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    while start + 4 <= end:
        length, kind = _NLA.unpack_from(buf, start)
        if length < 4:
            return
        yield kind & 0x3FFF, buf[start + 4 : start + length]
        start += (length + 3) & ~3


# --------------------------------------------------------------------------------------------
# Network namespaces from threads

_libc = ctypes.CDLL(None, use_errno=True)
MS_BIND, MS_REC, MS_SHARED = 4096, 16384, 1 << 20
MNT_DETACH = 2
_rundir_ready = False
_rundir_lock = threading.Lock()


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prepare_rundir() -> None:
    """/run/netns as a shared mount, as `ip netns add` leaves it (so that the namespaces made
    here are visible in other mount namespaces too)."""
    global _rundir_ready
    with _rundir_lock:
        if _rundir_ready:
            return
        os.makedirs(NETNS_RUN_DIR, exist_ok=True)
        d = NETNS_RUN_DIR.encode()
        if _libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None) != 0:
            _check(_libc.mount(d, d, b"none", MS_BIND | MS_REC, None), "bind /run/netns")
            _check(_libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None), "share /run/netns")
        _rundir_ready = True


def create_netns_here(name: str, base: str | None) -> None:
    """In a throwaway thread: make a new netns, bind it to /run/netns/<name>. The calling
    thread is left inside it (so it can make sockets there)."""
    _prepare_rundir()
    enter_netns(base)  # unshare from the host ns, which is not necessarily ours
    path = netns_path(name)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare")
        src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        _check(_libc.mount(src, path.encode(), b"none", MS_BIND, None), f"mount {path}")
    except BaseException:
        os.unlink(path)
        raise


def delete_netns(name: str) -> None:
    path = netns_path(name)
    _libc.umount2(path.encode(), MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def list_netns() -> list[str]:
    try:
        return os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []


def netlink_socket() -> socket.socket:
    """An rtnetlink socket in the calling thread's netns (it stays there for its lifetime).
    SOCK_DGRAM (the same as SOCK_RAW to netlink) because asyncio wants a datagram socket."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
    for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # *BUFFORCE
        try:
            s.setsockopt(socket.SOL_SOCKET, force, 8 << 20)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
    return s


# --------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True)
class RawLink:
    index: int
    name: str
    kind: str
    mtu: int
    up: bool
    master: int
    mac: str | None
    vxlan: tuple[int, int, IPv4Address | None, bool, bool] | None  # vni, port, local, learn, proxy


def neigh_msg(
    cmd: int,
    flags: int,
    family: int,
    ifindex: int,
    lladdr: str,
    dst: str,
    seq: int,
) -> bytes:
    """An FDB (family AF_BRIDGE, NTF_SELF on the VXLAN device) or neighbour (AF_INET) request."""
    ntf = NTF_SELF if family == AF_BRIDGE else 0
    body = (
        _NDMSG.pack(family, ifindex, NUD_PERMANENT | NUD_NOARP, ntf, 0)
        + _nla(NDA_DST, socket.inet_aton(dst))
        + _nla(NDA_LLADDR, _mac_bytes(lladdr))
    )
    return _HDR.pack(16 + len(body), cmd, flags, seq, 0) + body


def brport_isolated_msg(ifindex: int, seq: int) -> bytes:
    """RTM_SETLINK (AF_BRIDGE) with IFLA_PROTINFO { IFLA_BRPORT_ISOLATED = 1 }: what
    `bridge link set dev X isolated on` sends (pyroute2 0.9 lacks the attribute)."""
    body = _IFINFO.pack(AF_BRIDGE, 0, ifindex, 0, 0) + _nla(
        IFLA_PROTINFO | NLA_F_NESTED, _nla(IFLA_BRPORT_ISOLATED, b"\x01")
    )
    return _HDR.pack(16 + len(body), RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


class RawNetlink:
    """A blocking rtnetlink socket in one netns, used from one thread at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.bind((0, 0))
        # Errors without a copy of the failed request: a bulk of failures stays small. (Not on
        # pyroute2's socket: its parser expects the copy.)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.seq = 1

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        return self.seq

    def _recv_until_done(self, seq: int) -> Iterator[tuple[int, bytes, int, int]]:
        """(type, buffer, body start, body end) of each message answering `seq`."""
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, mtype, _flags, mseq, _ = _HDR.unpack_from(data, off)
                if length < 16:
                    break
                if mseq == seq:
                    if mtype == NLMSG_DONE:
                        return
                    if mtype == NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", data, off + 16)
                        if err:
                            raise OSError(-err, os.strerror(-err))
                        return
                    yield mtype, data, off + 16, off + length
                off += (length + 3) & ~3

    def dump(self, mtype: int, body: bytes) -> Iterator[tuple[int, bytes, int, int]]:
        seq = self._next_seq()
        self.sock.send(_HDR.pack(16 + len(body), mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        return self._recv_until_done(seq)

    def request(self, msg_for_seq: Callable[[int], bytes]) -> None:
        seq = self._next_seq()
        self.sock.send(msg_for_seq(seq))
        for _ in self._recv_until_done(seq):
            pass

    def links(self) -> list[RawLink]:
        out: list[RawLink] = []
        for _t, buf, start, end in self.dump(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0)):
            _fam, _type, index, flags, _chg = _IFINFO.unpack_from(buf, start)
            name, kind, mtu, master, mac = "", "", 0, 0, None
            vx = None
            for k, v in _attrs(buf, start + _IFINFO.size, end):
                if k == IFLA_IFNAME:
                    name = v.rstrip(b"\0").decode()
                elif k == IFLA_MTU:
                    (mtu,) = struct.unpack("=I", v[:4])
                elif k == IFLA_MASTER:
                    (master,) = struct.unpack("=I", v[:4])
                elif k == IFLA_ADDRESS and len(v) == 6:
                    mac = _mac_str(v)
                elif k == IFLA_LINKINFO:
                    for ik, iv in _attrs(v, 0, len(v)):
                        if ik == IFLA_INFO_KIND:
                            kind = iv.rstrip(b"\0").decode()
                        elif ik == IFLA_INFO_DATA and kind == "vxlan":
                            vni, port, local, learn, proxy = 0, 0, None, True, False
                            for vk, vv in _attrs(iv, 0, len(iv)):
                                if vk == IFLA_VXLAN_ID:
                                    (vni,) = struct.unpack("=I", vv[:4])
                                elif vk == IFLA_VXLAN_PORT:
                                    (port,) = struct.unpack("!H", vv[:2])
                                elif vk == IFLA_VXLAN_LOCAL:
                                    local = IPv4Address(vv[:4])
                                elif vk == IFLA_VXLAN_LEARNING:
                                    learn = bool(vv[0])
                                elif vk == IFLA_VXLAN_PROXY:
                                    proxy = bool(vv[0])
                            vx = (vni, port, local, learn, proxy)
            out.append(RawLink(index, name, kind, mtu, bool(flags & IFF_UP), master, mac, vx))
        return out

    def addresses(self) -> dict[int, set[IPv4Interface]]:
        out: dict[int, set[IPv4Interface]] = {}
        for _t, buf, start, end in self.dump(RTM_GETADDR, _IFADDR.pack(AF_INET, 0, 0, 0, 0)):
            fam, plen, _f, _s, index = _IFADDR.unpack_from(buf, start)
            if fam != AF_INET:
                continue
            addr = None
            for k, v in _attrs(buf, start + _IFADDR.size, end):
                if k == IFA_LOCAL or (k == IFA_ADDRESS and addr is None):
                    addr = IPv4Address(v[:4])
            if addr is not None:
                out.setdefault(index, set()).add(IPv4Interface(f"{addr}/{plen}"))
        return out

    def default_gateway(self) -> IPv4Address | None:
        body = _RTMSG.pack(AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        gw = None
        for _t, buf, start, end in self.dump(RTM_GETROUTE, body):
            fam, dst_len, _s, _tos, table, *_ = _RTMSG.unpack_from(buf, start)
            if fam != AF_INET or dst_len != 0:
                continue
            gateway = None
            for k, v in _attrs(buf, start + _RTMSG.size, end):
                if k == RTA_TABLE:
                    (table,) = struct.unpack("=I", v[:4])
                elif k == RTA_GATEWAY:
                    gateway = IPv4Address(v[:4])
            if table == RT_TABLE_MAIN and gateway is not None:
                gw = gateway
        return gw

    def entries(self, ifindex: int) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(FDB (mac, dst), neighbours (ip, mac)) that the agent programs on `ifindex`: static
        FDB entries with a remote (NTF_SELF on the VXLAN device), permanent neighbours."""
        fdb: set[tuple[str, str]] = set()
        for _t, buf, start, end in self.dump(RTM_GETNEIGH, _NDMSG.pack(AF_BRIDGE, 0, 0, 0, 0)):
            _fam, idx, _state, ntf, _ = _NDMSG.unpack_from(buf, start)
            if idx != ifindex or not ntf & NTF_SELF:
                continue
            mac = dst = None
            for k, v in _attrs(buf, start + _NDMSG.size, end):
                if k == NDA_LLADDR:
                    mac = _mac_str(v[:6])
                elif k == NDA_DST and len(v) == 4:
                    dst = socket.inet_ntoa(v)
            if mac is not None and dst is not None:
                fdb.add((mac, dst))
        neigh: set[tuple[str, str]] = set()
        for _t, buf, start, end in self.dump(RTM_GETNEIGH, _NDMSG.pack(AF_INET, 0, 0, 0, 0)):
            _fam, idx, state, _ntf, _ = _NDMSG.unpack_from(buf, start)
            if idx != ifindex or not state & NUD_PERMANENT:
                continue
            ip = mac = None
            for k, v in _attrs(buf, start + _NDMSG.size, end):
                if k == NDA_LLADDR:
                    mac = _mac_str(v[:6])
                elif k == NDA_DST and len(v) == 4:
                    ip = socket.inet_ntoa(v)
            if mac is not None and ip is not None:
                neigh.add((ip, mac))
        return fdb, neigh

    def bulk(
        self, messages: Sequence[Callable[[int], bytes]], chunk: int = 1024
    ) -> list[tuple[int, int]]:
        """Send many requests, `chunk` per datagram, without per-message acks; return
        (message index, errno) for each one that failed.

        Without NLM_F_ACK the kernel answers only failures; a final request with an ack is
        the barrier that says every earlier message has been processed.
        """
        failures: list[tuple[int, int]] = []
        base = self._next_seq()
        self.seq = base + len(messages) + 1
        by_seq: dict[int, int] = {}
        for lo in range(0, len(messages), chunk):
            part = []
            for i in range(lo, min(lo + chunk, len(messages))):
                seq = (base + i) & 0x7FFFFFFF
                by_seq[seq] = i
                part.append(messages[i](seq))
            self.sock.send(b"".join(part))
            self._drain_errors(by_seq, failures, block=False)
        # Barrier: an (always failing) harmless get with an ack? Use a links dump of nothing:
        # a dump request is processed after everything already queued on this socket.
        barrier = self._next_seq()
        self.sock.send(
            _HDR.pack(16 + _IFINFO.size, RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, barrier, 0)
            + _IFINFO.pack(0, 0, 1, 0, 0)
        )
        self._drain_errors(by_seq, failures, block=True, until=barrier)
        return failures

    def _drain_errors(
        self,
        by_seq: dict[int, int],
        failures: list[tuple[int, int]],
        block: bool,
        until: int | None = None,
    ) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 20, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            off = 0
            while off + 16 <= len(data):
                length, mtype, _f, mseq, _ = _HDR.unpack_from(data, off)
                if length < 16:
                    break
                if mseq == until:
                    return
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    if err and mseq in by_seq:
                        failures.append((by_seq[mseq], -err))
                off += (length + 3) & ~3


def open_sockets(netns: str | None, count: int = 2) -> list[socket.socket]:
    """`count` rtnetlink sockets in `netns` (None: the calling process's), made in a thread."""
    return run_in_netns(netns, lambda: [netlink_socket() for _ in range(count)])


def create_netns(name: str, base: str | None, count: int = 2) -> list[socket.socket]:
    """Create /run/netns/<name> (from `base`'s netns context) and return sockets in it."""

    def make() -> list[socket.socket]:
        create_netns_here(name, base)
        return [netlink_socket() for _ in range(count)]

    return run_in_thread(make)


def read_sysctl(netns: str | None, path: str) -> str:
    def read() -> str:
        with open(path) as f:
            return f.read().strip()

    return run_in_netns(netns, read)


def write_sysctl(netns: str | None, path: str, value: str) -> None:
    def write() -> None:
        with open(path, "w") as f:
            f.write(value)

    run_in_netns(netns, write)


def errno_name(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))}: {os.strerror(err)}"
