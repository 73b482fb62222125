"""rtnetlink sockets: one per namespace, made in it without forking; requests, dumps and bulk.

Everything the agent asks of the kernel's network configuration goes through `RawNetlink`:
links, addresses and routes (one request, one acknowledgement), dumps (observe), and bulk
FDB/neighbour programming. The messages themselves are built and parsed in nlmsg.py.

Why hand-written and not pyroute2: importing pyroute2 alone costs each agent 9.4 MB of RSS and
0.36 s of start-up (measured), and its generic attribute machinery costs tens of microseconds
per message in Python. A no-op reconcile of a network with 10,000 remote endpoints dumps
~20,000 FDB/neighbour entries, and programming them sends as many requests; hand-packed
messages sent many to a datagram (the kernel processes each message of a datagram in turn) and
a parser that only looks at the few attributes the planner needs make both take milliseconds.

Calls are synchronous: the kernel handles an rtnetlink request inside the send() itself and
queues the answer before send() returns, so the recv() that follows does not wait. (pyroute2's
AsyncIPRoute did the same send() on the event loop; only its wait for the answer was async.)

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
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Interface

from agent.dataplane.nlmsg import (
    AF_BRIDGE,
    AF_INET,
    HDR,
    IFADDR,
    IFINFO,
    NDMSG,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NTF_SELF,
    NUD_PERMANENT,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTM_NEWLINK,
    RTMSG,
    RawLink,
    Request,
    frame,
    link_get,
    link_index,
    parse_addr,
    parse_default_gateway,
    parse_link,
    parse_neigh,
)
from osutil.netns import (
    CLONE_NEWNET,
    NETNS_RUN_DIR,
    enter_netns,
    netns_path,
    run_in_netns,
    run_in_thread,
)

SOL_NETLINK, NETLINK_CAP_ACK = 270, 10

# One reply message: (type, buffer, body start, body end).
Reply = tuple[int, bytes, int, int]


class NetlinkError(OSError):
    """The kernel refused a request; `errno` says why (ENODEV, EEXIST, ...)."""

    def __init__(self, err: int) -> None:
        super().__init__(err, os.strerror(err))
        self.code = err  # always set, unlike OSError.errno's type says; pyroute2's name for it

    def __str__(self) -> str:
        return errno_name(self.code)


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
    SOCK_DGRAM (the same as SOCK_RAW to netlink) so that bench/dataplane.py can also hand one
    to pyroute2's AsyncIPRoute (asyncio wants a datagram socket) for its comparison."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
    for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # *BUFFORCE
        try:
            s.setsockopt(socket.SOL_SOCKET, force, 8 << 20)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
    return s


# --------------------------------------------------------------------------------------------
# The socket


class RawNetlink:
    """A blocking rtnetlink socket in one netns. Each exchange (request and answer, dump,
    bulk) holds a lock, so the event loop's thread and a worker thread (observe, a large
    bulk) can share the socket without reading each other's answers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.bind((0, 0))
        # Errors without a copy of the failed request: a bulk of failures stays small.
        with contextlib.suppress(OSError):
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.seq = 1
        self._lock = threading.Lock()

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        return self.seq

    def _recv_until_done(self, seq: int) -> list[Reply]:
        """Every message answering `seq`, up to its NLMSG_DONE or acknowledgement; answers to
        earlier sequence numbers (an exchange given up half-way) are skipped."""
        out: list[Reply] = []
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, mtype, _flags, mseq, _ = HDR.unpack_from(data, off)
                if length < 16:
                    break
                if mseq == seq:
                    if mtype == NLMSG_DONE:
                        return out
                    if mtype == NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", data, off + 16)
                        if err:
                            raise NetlinkError(-err)
                        return out
                    out.append((mtype, data, off + 16, off + length))
                off += (length + 3) & ~3

    def call(self, req: Request) -> list[Reply]:
        """Send one request (with NLM_F_ACK) and wait for its acknowledgement; returns the
        messages that came before it (a get's answer). Raises NetlinkError on refusal."""
        with self._lock:
            seq = self._next_seq()
            self.sock.send(frame(req, seq))
            return self._recv_until_done(seq)

    def dump(self, mtype: int, body: bytes) -> list[Reply]:
        with self._lock:
            seq = self._next_seq()
            self.sock.send(
                HDR.pack(16 + len(body), mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body
            )
            return self._recv_until_done(seq)

    def link_index(self, name: str) -> int:
        """The index of link `name` (NetlinkError ENODEV when there is none)."""
        for mtype, buf, start, _end in self.call(link_get(name)):
            if mtype == RTM_NEWLINK:
                return link_index(buf, start)
        raise NetlinkError(errno.ENODEV)

    def links(self) -> list[RawLink]:
        return [parse_link(*m[1:]) for m in self.dump(RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0))]

    def addresses(self) -> dict[int, set[IPv4Interface]]:
        out: dict[int, set[IPv4Interface]] = {}
        for _t, buf, start, end in self.dump(RTM_GETADDR, IFADDR.pack(AF_INET, 0, 0, 0, 0)):
            found = parse_addr(buf, start, end)
            if found is not None:
                out.setdefault(found[0], set()).add(found[1])
        return out

    def default_gateway(self) -> IPv4Address | None:
        body = RTMSG.pack(AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        gw = None
        for _t, buf, start, end in self.dump(RTM_GETROUTE, body):
            gw = parse_default_gateway(buf, start, end) or gw
        return gw

    def entries(self, ifindex: int) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(FDB (mac, dst), neighbours (ip, mac)) that the agent programs on `ifindex`: static
        FDB entries with a remote (NTF_SELF on the VXLAN device), permanent neighbours."""
        fdb: set[tuple[str, str]] = set()
        for _t, buf, start, end in self.dump(RTM_GETNEIGH, NDMSG.pack(AF_BRIDGE, 0, 0, 0, 0)):
            idx, _state, ntf, mac, dst = parse_neigh(buf, start, end)
            if idx == ifindex and ntf & NTF_SELF and mac is not None and dst is not None:
                fdb.add((mac, dst))
        neigh: set[tuple[str, str]] = set()
        for _t, buf, start, end in self.dump(RTM_GETNEIGH, NDMSG.pack(AF_INET, 0, 0, 0, 0)):
            idx, state, _ntf, mac, ip = parse_neigh(buf, start, end)
            if idx == ifindex and state & NUD_PERMANENT and mac is not None and ip is not None:
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
        with self._lock:
            return self._bulk(messages, chunk)

    def _bulk(
        self, messages: Sequence[Callable[[int], bytes]], chunk: int
    ) -> list[tuple[int, int]]:
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
        # Barrier: a get of lo with an ack, processed after everything already sent.
        barrier = self._next_seq()
        self.sock.send(
            HDR.pack(16 + IFINFO.size, RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, barrier, 0)
            + IFINFO.pack(0, 0, 1, 0, 0)
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
                length, mtype, _f, mseq, _ = HDR.unpack_from(data, off)
                if length < 16:
                    break
                if mseq == until:
                    return
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    if err and mseq in by_seq:
                        failures.append((by_seq[mseq], -err))
                off += (length + 3) & ~3


def open_sockets(netns: str | None, count: int = 1) -> list[socket.socket]:
    """`count` rtnetlink sockets in `netns` (None: the calling process's), made in a thread."""
    return run_in_netns(netns, lambda: [netlink_socket() for _ in range(count)])


def create_netns(name: str, base: str | None, count: int = 1) -> list[socket.socket]:
    """Create /run/netns/<name> (from `base`'s netns context) and return sockets in it."""

    def make() -> list[socket.socket]:
        create_netns_here(name, base)
        return [netlink_socket() for _ in range(count)]

    return run_in_thread(make)


def read_sysctl(netns: str | None, path: str) -> str:
    """A /proc/sys value as `netns` sees it (None: the process's own, read in the calling
    thread, which never leaves it: no thread is made for the read every pass does)."""

    def read() -> str:
        with open(path) as f:
            return f.read().strip()

    return read() if netns is None else run_in_netns(netns, read)


def write_sysctl(netns: str | None, path: str, value: str) -> None:
    def write() -> None:
        with open(path, "w") as f:
            f.write(value)

    if netns is None:
        write()
    else:
        run_in_netns(netns, write)


def errno_name(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))}: {os.strerror(err)}"
