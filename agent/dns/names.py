"""The names the embedded resolver answers for, as a pure function of the endpoint records.

Answers come from the gossip tables (EndpointRecord), never from a manager, so that names
keep resolving while every manager is down. A table is built once per change of the records
and then queried many times, so the build does the work (indexes keyed by lower-cased name)
and a lookup is a few dict probes.

Scoping: a sandbox sees only the names of the networks it is attached to (its view), as with
Docker's per-network service discovery; `NAME.NETWORK` narrows a name to one network of the
view, and a network outside the view does not exist for it.

Choices where Swarm differs or says nothing:
- A dnsrr service (no VIP) whose tasks are all disabled (unhealthy, draining) is still a
  known name: NOERROR with no answer, instead of Swarm's NXDOMAIN or stale addresses. The
  client then fails fast and retries, rather than caching a negative answer for the
  SOA minimum, and the name is not leaked to the upstream resolver.
- A VIP service answers its VIP even when no task is enabled: the VIP is stable and the load
  balancer, not DNS, decides where its packets go.
- A service with no task at all has no record in gossip, so its name is not known here.
- SRV for a port name the service does not have is not ours (forwarded, hence NXDOMAIN from a
  sane upstream) rather than an empty answer, as for any other name we do not hold.
- TTL is short (2 s by default): a removed or unhealthy task is not served for long (Swarm
  serves 600 s, moby#42833).
"""

from __future__ import annotations

import enum
import random
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from dnslib import PTR, QTYPE, RR, SRV, A

from agent.endpoints import EndpointRecord

DEFAULT_TTL = 2

_ARPA = ".in-addr.arpa"
_SRV_PROTOS = ("_tcp", "_udp")


class Kind(enum.Enum):
    ANSWER = "answer"  # NOERROR with records
    EMPTY = "empty"  # a name we know, but no data of the type asked: NOERROR, no answer
    FORWARD = "forward"  # not one of ours: the caller asks upstream (or says NXDOMAIN)


@dataclass(frozen=True)
class Resolution:
    kind: Kind
    answer: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()
    # True when the order of the records is shuffled per query (dnsrr, tasks.S): a cache
    # must keep several orders and rotate them, not freeze one.
    varies: bool = False


NOT_OURS = Resolution(Kind.FORWARD)
EMPTY = Resolution(Kind.EMPTY)


@dataclass
class _Svc:
    """A service name or alias on one network."""

    vips: set[str] = field(default_factory=set)
    ips: list[str] = field(default_factory=list)  # enabled tasks only
    ports: set[tuple[str, str, int]] = field(default_factory=set)  # (name, proto, target)


class _Hit(NamedTuple):
    ips: tuple[str, ...]
    varies: bool
    ports: frozenset[tuple[str, str, int]]  # empty unless the name is a service or alias


def _uniq(items: Iterable[str]) -> tuple[str, ...]:
    """Distinct addresses in numeric order (a stable base for shuffles and for tests)."""
    distinct = set(items)
    if len(distinct) < 2:
        return tuple(distinct)
    return tuple(sorted(distinct, key=_ip_key))


def _ip_key(ip: str) -> bytes:
    # inet_aton, not ipaddress: a table rebuild sorts every service's addresses, and
    # ipaddress made that most of the rebuild (pure functions, no I/O).
    try:
        return socket.inet_aton(ip)
    except OSError:
        try:
            return b"\xff" + socket.inet_pton(socket.AF_INET6, ip)
        except OSError:
            return b"\xff\xff" + ip.encode()


def _task_names(rec: EndpointRecord) -> set[str]:
    """The full task name and its short form: SERVICE.SLOT (or SERVICE.NODEID for a global
    task, whose name has the node ID where a replicated one has its slot)."""
    full = rec.task_name.lower()
    names = {full}
    suffix = "." + rec.task_id.lower()
    if rec.task_id and full.endswith(suffix):
        names.add(full[: -len(suffix)])
    if rec.slot > 0 and rec.service_name:
        names.add(f"{rec.service_name}.{rec.slot}".lower())
    names.discard("")
    return names


class NameTable:
    def __init__(
        self,
        services: dict[str, dict[str, _Svc]] | None = None,
        tasks: dict[str, dict[str, tuple[str, ...]]] | None = None,
        ptr: dict[str, dict[str, tuple[str, ...]]] | None = None,
        networks: dict[str, frozenset[str]] | None = None,
        ttl: int = DEFAULT_TTL,
        rng: random.Random | None = None,
    ) -> None:
        # name -> network ID -> entry; names are lower-cased.
        self._svc = services or {}
        self._task = tasks or {}
        self._ptr = ptr or {}  # IP -> network ID -> names it maps back to
        self._nets = networks or {}  # network name -> network IDs
        self.ttl = ttl
        self._rng = rng or random.Random()

    @classmethod
    def build(
        cls,
        records: Iterable[EndpointRecord],
        network_names: Mapping[str, str],
        ttl: int = DEFAULT_TTL,
        rng: random.Random | None = None,
    ) -> NameTable:
        svc: dict[str, dict[str, _Svc]] = {}
        tasks: dict[str, dict[str, list[str]]] = {}
        ptr: dict[str, dict[str, list[str]]] = {}
        for rec in records:
            if not rec.is_task:
                continue
            net, ip = rec.network_id, rec.ip
            ports = {(p.name.lower(), p.protocol.lower(), p.target) for p in rec.ports if p.name}
            for name in {rec.service_name.lower(), *(a.lower() for a in rec.aliases)} - {""}:
                s = svc.setdefault(name, {}).setdefault(net, _Svc())
                if rec.vip:
                    s.vips.add(rec.vip)
                if rec.enabled:
                    s.ips.append(ip)
                s.ports |= ports
            for name in _task_names(rec):
                tasks.setdefault(name, {}).setdefault(net, []).append(ip)
            if rec.task_name:
                ptr.setdefault(ip, {}).setdefault(net, []).append(rec.task_name)
            if rec.vip and rec.service_name:
                ptr.setdefault(rec.vip, {}).setdefault(net, []).append(rec.service_name)
        for by_net in svc.values():
            for s in by_net.values():
                s.ips = list(_uniq(s.ips))
        nets: dict[str, set[str]] = {}
        for nid, nname in network_names.items():
            if nname:
                nets.setdefault(nname.lower(), set()).add(nid)
        return cls(
            services=svc,
            tasks={n: {k: _uniq(v) for k, v in m.items()} for n, m in tasks.items()},
            ptr={ip: {k: tuple(sorted(set(v))) for k, v in m.items()} for ip, m in ptr.items()},
            networks={n: frozenset(ids) for n, ids in nets.items()},
            ttl=ttl,
            rng=rng,
        )

    # ------------------------------------------------------------------ lookups

    def _lookup(self, view: frozenset[str], name: str) -> _Hit | None:
        """The addresses of `name` (no network suffix) on the networks of `view`."""
        by_net = self._svc.get(name)
        if by_net is not None:
            hits = [s for nid, s in by_net.items() if nid in view]
            if hits:
                ports = frozenset(p for s in hits for p in s.ports)
                vips = _uniq(v for s in hits for v in s.vips)
                if vips:
                    return _Hit(vips, False, ports)
                return _Hit(_uniq(ip for s in hits for ip in s.ips), True, ports)
        if name.startswith("tasks."):
            by_net = self._svc.get(name[6:])
            if by_net is not None:
                hits = [s for nid, s in by_net.items() if nid in view]
                if hits:
                    return _Hit(_uniq(ip for s in hits for ip in s.ips), True, frozenset())
        by_net_ips = self._task.get(name)
        if by_net_ips is not None:
            ips = [ip for nid, v in by_net_ips.items() if nid in view for ip in v]
            if ips:
                return _Hit(_uniq(ips), False, frozenset())
        return None

    def _lookup_scoped(self, view: frozenset[str], name: str) -> _Hit | None:
        """`_lookup`, and failing that NAME.NETWORK with NETWORK one of the view's networks
        (network names may hold dots, so every split is tried, longest name first)."""
        hit = self._lookup(view, name)
        if hit is not None:
            return hit
        dot = name.find(".")
        while dot > 0:
            ids = self._nets.get(name[dot + 1 :])
            if ids is not None:
                narrowed = view & ids
                if narrowed:
                    hit = self._lookup(narrowed, name[:dot])
                    if hit is not None:
                        return hit
            dot = name.find(".", dot + 1)
        return None

    def _a_records(self, qname: str, hit: _Hit) -> tuple[RR, ...]:
        ips = list(hit.ips)
        if hit.varies and len(ips) > 1:
            self._rng.shuffle(ips)
        return tuple(RR(qname, QTYPE.A, rdata=A(ip), ttl=self.ttl) for ip in ips)

    def resolve(self, view: frozenset[str], qname: str, qtype: int) -> Resolution:
        """What to answer a sandbox attached to the networks `view` asking (qname, qtype).

        `qname` is as asked (trailing dot optional); answers carry it unchanged, so a client
        that randomises case (0x20) gets its own spelling back."""
        name = qname.rstrip(".").lower()
        if not name or not view:
            return NOT_OURS
        if name.endswith(_ARPA):
            return self._resolve_ptr(view, qname, name, qtype)
        if name.startswith("_"):
            res = self._resolve_srv(view, qname, name, qtype)
            if res is not None:
                return res
        hit = self._lookup_scoped(view, name)
        if hit is None:
            return NOT_OURS
        if qtype != QTYPE.A or not hit.ips:
            return EMPTY
        return Resolution(Kind.ANSWER, self._a_records(qname, hit), varies=hit.varies)

    def _resolve_ptr(self, view: frozenset[str], qname: str, name: str, qtype: int) -> Resolution:
        parts = name[: -len(_ARPA)].split(".")
        if len(parts) != 4:
            return NOT_OURS
        ip = ".".join(reversed(parts))
        by_net = self._ptr.get(ip)
        if by_net is None:
            return NOT_OURS
        targets = sorted({t for nid, ts in by_net.items() if nid in view for t in ts})
        if not targets:
            return NOT_OURS
        if qtype != QTYPE.PTR:
            return EMPTY
        return Resolution(
            Kind.ANSWER,
            tuple(RR(qname, QTYPE.PTR, rdata=PTR(t + "."), ttl=self.ttl) for t in targets),
        )

    def _resolve_srv(
        self, view: frozenset[str], qname: str, name: str, qtype: int
    ) -> Resolution | None:
        """`_PORT._PROTO.SERVICE[.NETWORK]`; None when `name` is not of that form."""
        labels = name.split(".", 2)
        if len(labels) != 3 or labels[1] not in _SRV_PROTOS or len(labels[0]) < 2:
            return None
        port_name, proto, base = labels[0][1:], labels[1][1:], labels[2]
        hit = self._lookup_scoped(view, base)
        if hit is None:
            return NOT_OURS
        ports = sorted(t for n, p, t in hit.ports if n == port_name and p == proto)
        if not ports:
            return NOT_OURS
        if qtype != QTYPE.SRV:
            return EMPTY
        # The target is the service name as asked (network suffix included), so that a
        # client following it lands on the same addresses as in the additional section.
        target = qname.rstrip(".").split(".", 2)[2] + "."
        answer = tuple(
            RR(qname, QTYPE.SRV, rdata=SRV(0, 0, port, target), ttl=self.ttl) for port in ports
        )
        return Resolution(
            Kind.ANSWER, answer, additional=self._a_records(target, hit), varies=hit.varies
        )
