"""Forwarding the names that are not ours to the host's upstream resolvers.

A sandbox usually has no route to the host's resolvers, so queries go out from sockets in the
agent's namespace (or `netns`), one UDP socket per address family in use, with fresh IDs. Each
upstream gets an equal share of the timeout, so a dead first resolver costs a fraction of it;
when all have been tried the client gets SERVFAIL. Outstanding queries (UDP and TCP together)
are bounded: past the bound a query gets SERVFAIL at once. Answers are passed back untouched but
for the ID, and only when they come from an upstream we asked and carry the question we sent
under that ID. A TCP client's query goes upstream over TCP: its answer may be too big for UDP.

Counters go to the `stats` dict the server shares with us: forwarded, servfail,
upstream_timeouts, upstream_errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dnslib import RCODE, DNSHeader, DNSRecord

from agent.netns import asocket_in_netns

log = logging.getLogger(__name__)

# Datagrams read per wake-up before yielding to the loop.
UDP_BATCH = 256


def host_upstreams(resolv_conf: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The host's nameservers, less loopback ones: a sandbox's own loopback is not the
    host's, and forwarding to ourselves would loop."""
    out: list[tuple[str, int]] = []
    try:
        with open(resolv_conf) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 2 or parts[0] != "nameserver":
            continue
        try:
            addr = ipaddress.ip_address(parts[1].split("%", 1)[0])
        except ValueError:
            continue
        if addr.is_loopback:
            continue
        if (str(addr), 53) not in out:
            out.append((str(addr), 53))
    return out


@dataclass
class _Pending:
    client_id: bytes
    query: bytes  # with our ID
    reply: Callable[[bytes], None]
    question: bytes
    tries: int = 0
    timer: asyncio.TimerHandle | None = None


class Forwarder:
    """Queries forwarded upstream, over UDP with retries across upstreams or over TCP."""

    def __init__(
        self,
        upstreams: Sequence[tuple[str, int]],
        stats: dict[str, int],
        *,
        timeout: float,
        max_inflight: int,
        netns: str | None,
    ) -> None:
        self.upstreams = list(upstreams)
        self.stats = stats
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.netns = netns
        # One UDP socket per address family in use, outstanding queries by our ID, TCP
        # forwards in flight (they count against max_inflight too).
        self._socks: dict[int, socket.socket] = {}
        self._addrs = {(h, p) for h, p in self.upstreams}
        self._pending: dict[int, _Pending] = {}
        self._tcp_forwards = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = random.SystemRandom()

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make the UDP sockets (once) and serve their answers from `loop`."""
        self._loop = loop
        for fam in {_family(h) for h, _ in self.upstreams}:
            if fam in self._socks:
                continue
            s = await asocket_in_netns(self.netns, fam, socket.SOCK_DGRAM)
            s.setblocking(False)
            self._socks[fam] = s
            loop.add_reader(s.fileno(), self._readable, s)

    def close(self) -> None:
        for p in self._pending.values():
            if p.timer is not None:
                p.timer.cancel()
        self._pending.clear()
        for s in self._socks.values():
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(s.fileno())
            s.close()
        self._socks.clear()

    def _new_id(self) -> int | None:
        for _ in range(16):
            qid = self._ids.randrange(0x10000)
            if qid not in self._pending:
                return qid
        return None

    def _servfail(self, data: bytes) -> bytes | None:
        self.stats["servfail"] += 1
        return rcode_only(data, RCODE.SERVFAIL)

    # ------------------------------------------------------------------ UDP

    def forward(self, data: bytes, reply: Callable[[bytes], None]) -> None:
        """Send the query `data` upstream; `reply` gets the answer (or a SERVFAIL)."""
        self.stats["forwarded"] += 1
        qid = None
        if len(self._pending) + self._tcp_forwards < self.max_inflight:
            qid = self._new_id()
        if qid is None or self._loop is None:
            resp = self._servfail(data)
            if resp is not None:
                reply(resp)
            return
        p = _Pending(
            client_id=data[:2],
            query=qid.to_bytes(2, "big") + data[2:],
            reply=reply,
            question=question_bytes(data),
        )
        self._pending[qid] = p
        self._send(qid, p)

    def _send(self, qid: int, p: _Pending) -> None:
        """Send to the next upstream; each gets an equal share of the timeout, so a dead
        first resolver costs a fraction of it, not all."""
        assert self._loop is not None
        host, port = self.upstreams[p.tries % len(self.upstreams)]
        p.tries += 1
        with contextlib.suppress(OSError):
            self._socks[_family(host)].sendto(p.query, (host, port))
        share = self.timeout / len(self.upstreams)
        p.timer = self._loop.call_later(share, self._timed_out, qid, p)

    def _timed_out(self, qid: int, p: _Pending) -> None:
        if self._pending.get(qid) is not p:
            return
        if p.tries < len(self.upstreams):
            self._send(qid, p)
            return
        del self._pending[qid]
        self.stats["upstream_timeouts"] += 1
        resp = self._servfail(p.client_id + p.query[2:])
        if resp is not None:
            p.reply(resp)

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(UDP_BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("dns upstream read: %s", e)
                return
            if len(data) < 12 or (str(addr[0]), addr[1]) not in self._addrs:
                continue
            qid = int.from_bytes(data[:2], "big")
            p = self._pending.get(qid)
            if p is None or question_bytes(data) != p.question:
                continue  # late, or not the answer to what we asked under that ID
            del self._pending[qid]
            if p.timer is not None:
                p.timer.cancel()
            p.reply(p.client_id + data[2:])

    # ------------------------------------------------------------------ TCP

    async def forward_tcp(self, data: bytes) -> bytes | None:
        """A TCP client's query goes upstream over TCP: its answer may be too big for UDP."""
        self.stats["forwarded"] += 1
        if len(self._pending) + self._tcp_forwards >= self.max_inflight:
            return self._servfail(data)
        self._tcp_forwards += 1
        try:
            return await asyncio.wait_for(self._tcp_upstreams(data), self.timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            self.stats["upstream_timeouts"] += 1
            return self._servfail(data)
        finally:
            self._tcp_forwards -= 1

    async def _tcp_upstreams(self, data: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        last: Exception = OSError("no upstream")
        for host, port in self.upstreams:
            s = await asocket_in_netns(self.netns, _family(host), socket.SOCK_STREAM)
            try:
                s.setblocking(False)
                await loop.sock_connect(s, (host, port))
                await loop.sock_sendall(s, len(data).to_bytes(2, "big") + data)
                n = int.from_bytes(await _recv_exactly(loop, s, 2), "big")
                resp = await _recv_exactly(loop, s, n)
                return data[:2] + resp[2:]
            except (OSError, asyncio.IncompleteReadError) as e:
                self.stats["upstream_errors"] += 1
                last = e
            finally:
                s.close()
        raise last


def question_bytes(msg: bytes) -> bytes:
    """The raw question section of a one-question message (b"" if it does not parse); used
    to check that an upstream answer belongs to the query we sent under that ID."""
    i = 12
    n = len(msg)
    while i < n:
        ln = msg[i]
        if ln == 0:
            return msg[12 : i + 5]
        if ln & 0xC0:
            return b""
        i += ln + 1
    return b""


def rcode_only(query: bytes, rcode: int) -> bytes | None:
    """A reply to `query` with `rcode` and no records; None if the query does not parse."""
    try:
        req = DNSRecord.parse(query)
    except Exception:
        return None
    h = req.header
    rep = DNSRecord(DNSHeader(id=h.id, qr=1, opcode=h.opcode, rd=h.rd, ra=1, rcode=rcode), q=req.q)
    rep.questions = req.questions
    return bytes(rep.pack())


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def _recv_exactly(loop: asyncio.AbstractEventLoop, s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(s, n - len(buf))
        if not chunk:
            raise asyncio.IncompleteReadError(buf, n)
        buf += chunk
    return buf
