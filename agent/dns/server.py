"""The embedded resolver's I/O edge: 127.0.0.11:53 (UDP and TCP) in every sandbox, served by
the agent's own event loop.

Each sandbox gets a UDP and a TCP socket created inside its namespace (osutil.netns) and bound
there; the agent serves them all from one loop, so a sandbox costs two file descriptors, not
a process.

The hot path is UDP. A sandbox's answers depend only on its view (the networks it is attached
to) and on the query's bytes, and the table changes rarely compared with how often it is
asked, so answers are cached per view keyed by the query without its 2-byte ID: a hit is a
dict lookup and one bytes concat (ID + cached tail), with no parsing or encoding. The UDP
socket is drained with loop.add_reader rather than a DatagramProtocol, so that one wake-up
serves every queued datagram without a callback and a transport call per packet. Only a
miss parses (dnslib), resolves (agent.dns.names), encodes and caches. Answers whose order
must vary (dnsrr, tasks.S) are cached as a small cycle of precomputed shuffles, rotated per
query. Sandboxes with the same view share one cache; update() with a changed table drops
every cache at once (single-threaded loop: no query sees half of a change).

Names that are not ours go to the host's upstream resolvers (agent.dns.upstream: fresh IDs, a
timeout, a bound on outstanding queries); without upstreams such names get NXDOMAIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import math
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dnslib import EDNS0, QTYPE, RCODE, DNSHeader, DNSRecord

from agent.dns.meter import QueryMeter
from agent.dns.names import DEFAULT_TTL, Kind, NameTable, Resolution
from agent.dns.upstream import Forwarder, host_upstreams
from agent.endpoints import EndpointRecord
from osutil.netns import run_in_netns

log = logging.getLogger(__name__)

LISTEN_ADDR = "127.0.0.11"
LISTEN_PORT = 53
# Datagrams handled per wake-up before yielding to the loop (the reader fires again if more
# are queued), so a flood on one sandbox cannot starve the rest of the agent.
UDP_BATCH = 256
CACHE_MAX = 10_000
# Precomputed orders kept for an answer that is shuffled per query.
SHUFFLES = 8
TCP_IDLE = 10.0
TCP_MAX_CONNS = 32
EDNS_UDP = 1232  # the payload size we offer and honour at most (DNS flag day 2020)
PLAIN_UDP = 512

# Cache marker: the name is not ours, forward it (saves the parse on a repeat).
_FORWARD = object()

_STATS = (
    "queries",
    "cache_hits",
    "answered_local",
    "forwarded",
    "nxdomain",
    "servfail",
    "malformed",
    "truncated",
    "upstream_timeouts",
    "upstream_errors",
    "tcp_connections",
    "tcp_rejected",
)


@dataclass
class _View:
    networks: frozenset[str]
    udp: dict[bytes, Any] = field(default_factory=dict)
    tcp: dict[bytes, Any] = field(default_factory=dict)
    users: int = 0


@dataclass
class _Sandbox:
    key: str
    netns: str
    view: _View
    udp: socket.socket
    tcp: asyncio.Server | None = None
    conns: set[asyncio.StreamWriter] = field(default_factory=set)


class DnsServer:
    def __init__(
        self,
        upstreams: Sequence[tuple[str, int]] = (),
        *,
        ttl: int = DEFAULT_TTL,
        forward_timeout: float = 2.0,
        max_inflight: int = 256,
        upstream_netns: str | None = None,
    ) -> None:
        self.upstreams = [(str(ipaddress.ip_address(h)), int(p)) for h, p in upstreams]
        self.ttl = ttl
        self.forward_timeout = forward_timeout
        self.max_inflight = max_inflight
        self.upstream_netns = upstream_netns
        # queries and cache_hits count every query; answered_local, nxdomain and truncated
        # count answers computed (cache misses), so that the hot path pays for two counters
        # only; forwarded and servfail count every query they concern.
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self._table = NameTable(ttl=ttl)
        self._fingerprint: object = None
        self._views: dict[frozenset[str], _View] = {}
        self._sandboxes: dict[str, _Sandbox] = {}
        # attach/detach cross an await (the thread hop); one lock keeps two passes from
        # interleaving on a sandbox (a per-key lock would need its own lifetime rules).
        self._lock = asyncio.Lock()
        self._upstream = Forwarder(
            self.upstreams,
            self.stats,
            timeout=forward_timeout,
            max_inflight=max_inflight,
            netns=upstream_netns,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        # Answers by rcode and their latency (agent/dns/meter.py), when metrics are on.
        self.meter: QueryMeter | None = None

    # ------------------------------------------------------------------ table

    @staticmethod
    def host_upstreams(resolv_conf: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
        """The host's nameservers, less loopback ones (see agent.dns.upstream)."""
        return host_upstreams(resolv_conf)

    def update(self, records: Iterable[EndpointRecord], network_names: Mapping[str, str]) -> bool:
        """Take a new set of records; cheap (one frozenset compare) when nothing changed,
        which is what most agent passes bring."""
        recs = frozenset(r for r in records if r.is_task)
        fingerprint = (recs, frozenset(network_names.items()))
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        self._table = NameTable.build(recs, network_names, ttl=self.ttl)
        for view in self._views.values():
            view.udp = {}
            view.tcp = {}
        return True

    @property
    def table(self) -> NameTable:
        return self._table

    # ------------------------------------------------------------------ sandboxes

    def attached(self) -> set[str]:
        return set(self._sandboxes)

    def _view(self, networks: frozenset[str]) -> _View:
        view = self._views.get(networks)
        if view is None:
            view = self._views[networks] = _View(networks)
        view.users += 1
        return view

    def _release(self, view: _View) -> None:
        view.users -= 1
        if view.users <= 0 and self._views.get(view.networks) is view:
            del self._views[view.networks]

    async def attach(self, key: str, netns: str, networks: frozenset[str]) -> None:
        """Serve 127.0.0.11:53 in `netns` for the sandbox `key`; idempotent, and a known key
        with other networks only changes its view."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            self._loop = loop
            sb = self._sandboxes.get(key)
            if sb is not None and sb.netns != netns:
                await self._detach(sb)
                sb = None
            if sb is not None:
                if sb.view.networks != networks:
                    old = sb.view
                    sb.view = self._view(frozenset(networks))
                    self._release(old)
                return
            if self.upstreams:
                await self._upstream.start(loop)
            udp, tcp = await asyncio.to_thread(run_in_netns, netns, _listen_sockets)
            view = self._view(frozenset(networks))
            sb = _Sandbox(key, netns, view, udp)
            self._sandboxes[key] = sb
            try:
                loop.add_reader(udp.fileno(), self._udp_readable, sb)
                sb.tcp = await asyncio.start_server(
                    lambda r, w: self._tcp_client(sb, r, w), sock=tcp
                )
            except BaseException:
                tcp.close()
                await self._detach(sb)
                raise

    async def detach(self, key: str) -> None:
        async with self._lock:
            sb = self._sandboxes.get(key)
            if sb is not None:
                await self._detach(sb)

    async def _detach(self, sb: _Sandbox) -> None:
        if self._sandboxes.get(sb.key) is sb:
            del self._sandboxes[sb.key]
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sb.udp.fileno())
        sb.udp.close()
        if sb.tcp is not None:
            sb.tcp.close()
        for w in list(sb.conns):
            w.close()
        sb.conns.clear()
        self._release(sb.view)

    async def close(self) -> None:
        for key in list(self._sandboxes):
            await self.detach(key)
        self._upstream.close()

    # ------------------------------------------------------------------ answers

    def _compute(self, view: _View, data: bytes, tcp: bool) -> Any:
        """Answer a query the cache did not hold: bytes (a reply tail after the ID), an
        itertools.cycle of tails, _FORWARD, or None to drop a malformed packet."""
        try:
            req = DNSRecord.parse(data)
        except Exception:
            return None
        h = req.header
        if h.qr:
            return None  # a response sent to us: never answer those (reflection loops)
        if h.opcode != 0:
            return self._encode(req, RCODE.NOTIMP, None, tcp)[2:]
        if len(req.questions) != 1:
            return self._encode(req, RCODE.FORMERR, None, tcp)[2:]
        q = req.questions[0]
        res = self._table.resolve(view.networks, str(q.qname), q.qtype)
        if res.kind is Kind.FORWARD:
            if self.upstreams:
                return _FORWARD
            return self._account(self._encode(req, RCODE.NXDOMAIN, None, tcp)[2:])
        tail = self._account(self._encode(req, RCODE.NOERROR, res, tcp)[2:])
        if not res.varies:
            return tail
        return itertools.cycle(self._orders(view, req, tail, len(res.answer), tcp))

    def _orders(self, view: _View, req: DNSRecord, first: bytes, n: int, tcp: bool) -> list[bytes]:
        """Up to SHUFFLES *distinct* orders of a shuffled answer, `first` among them. Distinct,
        so that the cycle cannot freeze on one record first by chance (with 2 records and 8
        independent shuffles that happened once in 128 misses); tries are bounded, and there
        are only n! orders to find."""
        q = req.questions[0]
        want = min(SHUFFLES, math.factorial(min(n, 5)))
        tails, seen = [first], {first}
        for _ in range(4 * SHUFFLES):
            if len(tails) >= want:
                break
            again = self._table.resolve(view.networks, str(q.qname), q.qtype)
            tail = self._encode(req, RCODE.NOERROR, again, tcp)[2:]
            if tail not in seen:
                seen.add(tail)
                tails.append(tail)
        return tails

    def _encode(self, req: DNSRecord, rcode: int, res: Resolution | None, tcp: bool) -> bytes:
        h = req.header
        local = res is not None
        edns = next((rr for rr in req.ar if rr.rtype == QTYPE.OPT), None)
        rep = DNSRecord(
            DNSHeader(id=h.id, qr=1, aa=int(local), opcode=h.opcode, rd=h.rd, ra=1, rcode=rcode),
            q=req.q,
        )
        rep.questions = req.questions
        if res is not None:
            rep.rr = list(res.answer)
            rep.ar = list(res.additional)
        if edns is not None:
            rep.add_ar(EDNS0(udp_len=EDNS_UDP))
        out = bytes(rep.pack())
        limit = max(PLAIN_UDP, min(int(edns.rclass), EDNS_UDP)) if edns is not None else PLAIN_UDP
        if not tcp and len(out) > limit:
            # Too big for this client over UDP: TC=1 and no records, so it retries on TCP.
            rep.rr, rep.ar, rep.auth = [], [], []
            rep.header.tc = 1
            if edns is not None:
                rep.add_ar(EDNS0(udp_len=EDNS_UDP))
            out = bytes(rep.pack())
        return out

    def _account(self, tail: bytes) -> bytes:
        """Count a freshly computed local answer by the rcode and TC bit in its tail."""
        rcode = tail[1] & 0x0F
        if rcode == RCODE.NXDOMAIN:
            self.stats["nxdomain"] += 1
        elif rcode == RCODE.NOERROR:
            self.stats["answered_local"] += 1
        if tail[0] & 0x02:
            self.stats["truncated"] += 1
        return tail

    # ------------------------------------------------------------------ UDP hot path

    def _udp_readable(self, sb: _Sandbox) -> None:
        sock = sb.udp
        view = sb.view
        cache = view.udp
        recv = sock.recvfrom
        send = sock.sendto
        meter, clock = self.meter, time.perf_counter
        n = hits = 0
        try:
            for _ in range(UDP_BATCH):
                try:
                    data, addr = recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
                n += 1
                t0 = clock() if meter is not None else 0.0
                entry = cache.get(data[2:])
                if entry is None:
                    entry = self._compute(view, data, False)
                    if entry is None:
                        self.stats["malformed"] += 1
                        continue
                    if len(cache) >= CACHE_MAX:
                        cache.clear()
                    cache[data[2:]] = entry
                else:
                    hits += 1
                if entry.__class__ is bytes:
                    out = data[:2] + entry
                elif entry is _FORWARD:
                    self._forward_udp(sock, data, addr, t0)
                    continue
                else:
                    out = data[:2] + next(entry)
                # A bare try is cheaper than contextlib.suppress on this path.
                try:  # noqa: SIM105
                    send(out, addr)
                except OSError:
                    pass  # client gone or buffer full: as good as a lost datagram
                if meter is not None:
                    meter.record(out[3] & 0x0F, clock() - t0)
        except OSError as e:
            log.debug("dns %s: udp read: %s", sb.key, e)
        finally:
            self.stats["queries"] += n
            self.stats["cache_hits"] += hits

    def _forward_udp(self, sock: socket.socket, data: bytes, addr: Any, t0: float = 0.0) -> None:
        meter = self.meter

        def reply(resp: bytes) -> None:
            with contextlib.suppress(OSError):
                sock.sendto(resp, addr)
            if meter is not None and len(resp) > 3:
                meter.record(resp[3] & 0x0F, time.perf_counter() - t0)

        self._upstream.forward(data, reply)

    # ------------------------------------------------------------------ TCP

    async def _tcp_client(
        self, sb: _Sandbox, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(sb.conns) >= TCP_MAX_CONNS or self._sandboxes.get(sb.key) is not sb:
            self.stats["tcp_rejected"] += 1
            writer.close()
            return
        self.stats["tcp_connections"] += 1
        sb.conns.add(writer)
        try:
            while True:
                hdr = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                data = await asyncio.wait_for(
                    reader.readexactly(int.from_bytes(hdr, "big")), TCP_IDLE
                )
                self.stats["queries"] += 1
                t0 = time.perf_counter()
                resp = await self._answer_tcp(sb.view, data)
                if resp is None:
                    break  # malformed: a stream we cannot trust the framing of any more
                writer.write(len(resp).to_bytes(2, "big") + resp)
                await writer.drain()
                if self.meter is not None and len(resp) > 3:
                    self.meter.record(resp[3] & 0x0F, time.perf_counter() - t0)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            pass
        finally:
            sb.conns.discard(writer)
            writer.close()

    def _entry(self, view: _View, data: bytes, tcp: bool) -> Any:
        """The cache path outside the UDP reader (which inlines it): the entry for `data`,
        computed and cached on a miss; None for a packet to drop."""
        cache = view.tcp if tcp else view.udp
        entry = cache.get(data[2:])
        if entry is None:
            entry = self._compute(view, data, tcp)
            if entry is None:
                self.stats["malformed"] += 1
                return None
            if len(cache) >= CACHE_MAX:
                cache.clear()
            cache[data[2:]] = entry
        else:
            self.stats["cache_hits"] += 1
        return entry

    def answer(self, networks: frozenset[str], data: bytes, tcp: bool = False) -> bytes | None:
        """The reply a sandbox whose view is `networks` gets for the query `data` when it is
        answered here, through the same caches as the sockets; None when the packet is
        dropped or would go upstream. For tests and diagnostics: no socket involved."""
        data = bytes(data)  # a cache key must be hashable (dnslib packs bytearrays)
        view = self._views.get(networks)
        if view is None:  # kept (no user) until a sandbox with this view comes and goes
            view = self._views[networks] = _View(networks)
        entry = self._entry(view, data, tcp)
        if entry is None or entry is _FORWARD:
            return None
        return data[:2] + (entry if entry.__class__ is bytes else next(entry))

    async def _answer_tcp(self, view: _View, data: bytes) -> bytes | None:
        entry = self._entry(view, data, True)
        if entry is None:
            return None
        if entry.__class__ is bytes:
            return data[:2] + entry
        if entry is _FORWARD:
            return await self._upstream.forward_tcp(data)
        return data[:2] + next(entry)


def _listen_sockets() -> tuple[socket.socket, socket.socket]:
    """Runs inside the sandbox's namespace: bind 127.0.0.11:53 for UDP and TCP."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for s in (udp, tcp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((LISTEN_ADDR, LISTEN_PORT))
            s.setblocking(False)
        # Room for a burst while the loop is busy elsewhere.
        with contextlib.suppress(OSError):
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        tcp.listen(64)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp
