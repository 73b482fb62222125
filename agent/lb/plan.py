"""The load balancer's pure core: (services, healthy endpoints) -> nftables scripts.

One table of ours per namespace. Every load-balanced target (a VIP, or a published
(protocol, port)) gets a numgen-keyed map ``index -> backend`` and a chain with a single
``dnat to numgen random mod N map @m`` rule, reached from the hook chains through a verdict
map (``vips`` / ``ports``). Why this shape:

- Adding or removing one backend must cost in proportion to the change, not to the size of
  the service: with a named map, one backend more is one element add plus replacing one
  rule (its modulus); a full rebuild of a 10,000-backend service is what we avoid.
- ``numgen random mod N`` needs the indices to be dense (0..N-1). LbState remembers which
  backend sits at which index, so an update leaves every surviving backend where it is,
  fills holes with new backends first and otherwise moves the last backend into the hole:
  the fewest element rewrites that keep the indices dense.
- A target with zero backends goes into a ``dead_*`` set that a filter chain running just
  before NAT rejects (TCP reset, ICMP port unreachable otherwise), so clients fail fast
  instead of hanging on a VIP that nothing answers. Only new connections are rejected:
  a draining backend's established connections still finish.
- Anything structural (table name, hooks, local_only, masquerade interface) changes rarely,
  so a change there is simply a full, atomic replace of the table.
- The host's table (``local_only``) also takes ports bound to one of its addresses
  (``PortTarget.addr``, `ovctl run -p 127.0.0.1:8081:80`): those go through a verdict map keyed
  by (address, protocol, port), ``bound_ports``, matched before the any-address ``ports``.
  A (protocol, port) is one target either way, so a port that moves between bound and unbound
  is a full replace too.

nft 1.0.6 cannot write a numgen-keyed map in JSON, so the scripts are nft's text syntax.
Every script is meant to run as one nft transaction (one ``nft -f`` / one libnftables call).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from socket import AF_INET as _AF_INET
from socket import inet_pton as _pton

HOOKS = frozenset({"prerouting", "output"})
PROTOCOLS = ("tcp", "udp")
# Numeric: nft accepts the name "dstnat" in prerouting but not in output.
NAT_PRIORITY = -100  # dstnat
REJECT_PRIORITY = -110  # just before DNAT
SNAT_PRIORITY = 100  # srcnat
_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@:+-]{1,15}$")


@dataclass(frozen=True)
class PortTarget:
    """Where one published (protocol, port) goes: ``backends`` on ``target_port``; only for
    packets to ``addr`` when given (host tables only), else to any local address."""

    target_port: int
    backends: tuple[str, ...]  # IPv4 addresses; order irrelevant in a spec (deduplicated)
    addr: str = ""


@dataclass(frozen=True)
class LbSpec:
    """What one namespace's table must do (see the module docstring for the three kinds)."""

    vips: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # VIP -> backend IPs
    ports: Mapping[tuple[str, int], PortTarget] = field(default_factory=dict)
    hooks: frozenset[str] = frozenset({"output"})  # DNAT chains: subset of HOOKS
    local_only: bool = False  # ports only for packets addressed to this host
    masquerade_oif: str = ""  # masquerade what we DNATed when it leaves via this interface


@dataclass(frozen=True)
class LbState:
    """What a script left in the table: enough to diff the next spec against.

    ``vips`` and ``ports`` hold the backends in index order (index i of the numgen map is
    ``backends[i]``), sorted by key so that equal states compare (and hash) equal.
    """

    table: str
    hooks: frozenset[str]
    local_only: bool
    masquerade_oif: str
    vips: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ports: tuple[tuple[tuple[str, int], PortTarget], ...] = ()

    def vip_map(self) -> dict[str, tuple[str, ...]]:
        return dict(self.vips)

    def port_map(self) -> dict[tuple[str, int], PortTarget]:
        return dict(self.ports)


# --------------------------------------------------------------------------------------------
# Names and validation


def vip_name(vip: str) -> str:
    """The nft identifier of a VIP's map and chain: v_10_0_0_2."""
    return "v_" + vip.replace(".", "_")


def port_name(proto: str, port: int) -> str:
    """The nft identifier of a published port's map and chain: p_tcp_8080."""
    return f"p_{proto}_{port}"


def _ip(text: str) -> str:
    """``text`` if it is a dotted-quad IPv4 address, else ValueError. inet_pton is strict
    (no leading zeros, no short forms), so what it accepts is already canonical: one backend
    has one spelling, and nothing else ever reaches a script. ~30x faster than ipaddress,
    which matters with 10,000 backends per apply."""
    try:
        _pton(_AF_INET, text)
    except (OSError, TypeError):
        raise ValueError(f"not an IPv4 address: {text!r}") from None
    return text


def _backends(values: Iterable[str]) -> frozenset[str]:
    return frozenset(_ip(v) for v in values)


def _sorted_ips(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(values, key=lambda a: _pton(_AF_INET, a)))


def _check_table(table: str) -> None:
    if not _TABLE_RE.match(table):
        raise ValueError(f"invalid nft table name {table!r}")


def _check_structure(spec: LbSpec) -> None:
    if not spec.hooks or not spec.hooks <= HOOKS:
        raise ValueError(f"hooks must be a non-empty subset of {sorted(HOOKS)}: {spec.hooks}")
    if spec.masquerade_oif and not _IFNAME_RE.match(spec.masquerade_oif):
        raise ValueError(f"invalid interface name {spec.masquerade_oif!r}")


def _check_port_key(key: tuple[str, int], target: PortTarget, spec: LbSpec) -> None:
    proto, port = key
    if proto not in PROTOCOLS:
        raise ValueError(f"protocol must be tcp or udp: {proto!r}")
    for p in (port, target.target_port):
        if not 1 <= p <= 65535:
            raise ValueError(f"port out of range: {p}")
    if target.addr:
        _ip(target.addr)
        if not spec.local_only:
            raise ValueError(f"port {port}/{proto} is bound to {target.addr}: host tables only")


# (target port, bound address) of each published port.
_PortDest = tuple[int, str]
_Normalized = tuple[
    dict[str, frozenset[str]],
    dict[tuple[str, int], _PortDest],
    dict[tuple[str, int], frozenset[str]],
]


def _normalize(spec: LbSpec) -> _Normalized:
    """The spec's VIP and port targets with canonical addresses (ValueError when invalid)."""
    _check_structure(spec)
    vips = {_ip(vip): _backends(b) for vip, b in spec.vips.items()}
    tports: dict[tuple[str, int], _PortDest] = {}
    pbackends: dict[tuple[str, int], frozenset[str]] = {}
    for key, target in spec.ports.items():
        _check_port_key(key, target, spec)
        tports[key] = (target.target_port, target.addr)
        pbackends[key] = _backends(target.backends)
    return vips, tports, pbackends


# --------------------------------------------------------------------------------------------
# One load-balanced target (a VIP or a port): its nft text


@dataclass(frozen=True)
class _Target:
    name: str  # identifier of its map and of its chain
    vmap: str  # the verdict map that jumps to its chain
    dead: str  # the set that rejects it while it has no backend
    key: str  # its element in vmap / dead: "10.0.0.2" or "tcp . 8080"
    proto: str  # "" for a VIP (any protocol)
    target_port: int  # 0 for a VIP (port unchanged)

    def rule(self, n: int) -> str:
        pick = f"numgen random mod {n} map @{self.name}"
        if not self.proto:
            return f"dnat to {pick}"
        # A port mapping needs a protocol match in the same rule.
        return f"meta l4proto {self.proto} dnat to {pick} : {self.target_port}"


def _vip_target(vip: str) -> _Target:
    return _Target(vip_name(vip), "vips", "dead_vips", vip, "", 0)


def _port_target(key: tuple[str, int], dest: _PortDest) -> _Target:
    proto, port = key
    target_port, addr = dest
    if addr:
        return _Target(
            port_name(proto, port),
            "bound_ports",
            "dead_bound",
            f"{addr} . {proto} . {port}",
            proto,
            target_port,
        )
    return _Target(
        port_name(proto, port), "ports", "dead_ports", f"{proto} . {port}", proto, target_port
    )


def _elements(pairs: Iterable[tuple[int, str]]) -> str:
    return ", ".join(f"{i} : {ip}" for i, ip in pairs)


def _map_body(slots: tuple[str, ...]) -> str:
    # typeof, not "type mark : ipv4_addr": nft refuses a numgen lookup in a map keyed by mark.
    elems = f" elements = {{ {_elements(enumerate(slots))} }}" if slots else ""
    return f"{{ typeof numgen random mod 1 : ip daddr;{elems} }}"


def _add_live(table: str, t: _Target, slots: tuple[str, ...]) -> list[str]:
    """Statements that create a target with backends (map, chain, its vmap element)."""
    return [
        f"add map ip {table} {t.name} {_map_body(slots)}",
        f"add chain ip {table} {t.name}",
        f"add rule ip {table} {t.name} {t.rule(len(slots))}",
        f"add element ip {table} {t.vmap} {{ {t.key} : goto {t.name} }}",
    ]


def _remove_live(table: str, t: _Target) -> list[str]:
    """Statements that remove a target with backends. The vmap element goes first (it
    references the chain), the rule before the map (it references the map)."""
    return [
        f"delete element ip {table} {t.vmap} {{ {t.key} }}",
        f"flush chain ip {table} {t.name}",
        f"delete chain ip {table} {t.name}",
        f"delete map ip {table} {t.name}",
    ]


# --------------------------------------------------------------------------------------------
# Full render


_BOUND = "ip daddr . meta l4proto . th dport"
_BOUND_TYPE = "ipv4_addr . inet_proto . inet_service"


def _base_chains(spec: LbSpec) -> list[str]:
    local = "fib daddr type local " if spec.local_only else ""
    bound = f"{_BOUND} vmap @bound_ports; " if spec.local_only else ""
    out = []
    for hook in sorted(spec.hooks):
        out.append(
            f"chain nat_{hook} {{ type nat hook {hook} priority {NAT_PRIORITY}; policy accept; "
            f"ip daddr vmap @vips; {bound}{local}meta l4proto . th dport vmap @ports; }}"
        )
        # Before DNAT: it sees the address the client used, so a backend whose
        # address happens to match a dead port's number is never rejected after DNAT.
        dead_ports = f"ct state new {local}meta l4proto . th dport @dead_ports"
        dead_bound = ""
        if spec.local_only:
            rule = f"ct state new {_BOUND} @dead_bound"
            dead_bound = f"{rule} meta l4proto tcp reject with tcp reset; {rule} reject; "
        out.append(
            f"chain filter_{hook} {{ type filter hook {hook} priority {REJECT_PRIORITY}; "
            "policy accept; "
            "ct state new ip daddr @dead_vips meta l4proto tcp reject with tcp reset; "
            "ct state new ip daddr @dead_vips reject; "
            f"{dead_bound}"
            f"{dead_ports} meta l4proto tcp reject with tcp reset; "
            f"{dead_ports} reject; }}"
        )
    if spec.masquerade_oif:
        out.append(
            f"chain nat_postrouting {{ type nat hook postrouting priority {SNAT_PRIORITY}; "
            "policy accept; "
            f'oifname "{spec.masquerade_oif}" ct status dnat masquerade; }}'
        )
    return out


def render_full(table: str, spec: LbSpec) -> tuple[str, LbState]:
    """A script that replaces the whole table in one transaction (``table`` + ``delete`` so it
    works whether or not the table exists, e.g. left by a previous agent), and its state."""
    _check_table(table)
    vips, tports, pbackends = _normalize(spec)
    state = LbState(
        table=table,
        hooks=frozenset(spec.hooks),
        local_only=spec.local_only,
        masquerade_oif=spec.masquerade_oif,
        vips=tuple((v, _sorted_ips(vips[v])) for v in sorted(vips)),
        ports=tuple(
            (k, PortTarget(tports[k][0], _sorted_ips(pbackends[k]), tports[k][1]))
            for k in sorted(pbackends)
        ),
    )
    targets = [(_vip_target(v), s) for v, s in state.vips]
    targets += [(_port_target(k, (p.target_port, p.addr)), p.backends) for k, p in state.ports]

    body = [
        "map vips { type ipv4_addr : verdict; }",
        "map ports { type inet_proto . inet_service : verdict; }",
    ]
    kinds = [
        ("dead_vips", "ipv4_addr", "vips"),
        ("dead_ports", "inet_proto . inet_service", "ports"),
    ]
    if spec.local_only:
        body.append(f"map bound_ports {{ type {_BOUND_TYPE} : verdict; }}")
        kinds.append(("dead_bound", _BOUND_TYPE, "bound_ports"))
    for set_name, set_type, vmap in kinds:
        dead = [t.key for t, slots in targets if not slots and t.vmap == vmap]
        elems = f" elements = {{ {', '.join(dead)} }}" if dead else ""
        body.append(f"set {set_name} {{ type {set_type};{elems} }}")
    live = [(t, slots) for t, slots in targets if slots]
    body += [f"map {t.name} {_map_body(slots)}" for t, slots in live]
    body += [f"chain {t.name} {{ {t.rule(len(slots))}; }}" for t, slots in live]
    body += _base_chains(spec)

    lines = [f"table ip {table} {{}}", f"delete table ip {table}", f"table ip {table} {{"]
    lines += [f"\t{b}" for b in body]
    lines.append("}")
    # Verdict elements after the block: they reference the chains it declares.
    for vmap in ("vips", "ports", "bound_ports"):
        jumps = [f"{t.key} : goto {t.name}" for t, _ in live if t.vmap == vmap]
        if jumps:
            lines.append(f"add element ip {table} {vmap} {{ {', '.join(jumps)} }}")
    return "\n".join(lines) + "\n", state


def render_delete(table: str) -> str:
    """Delete our table; succeeds whether or not it exists (create-then-delete)."""
    _check_table(table)
    return f"table ip {table} {{}}\ndelete table ip {table}\n"


# --------------------------------------------------------------------------------------------
# Incremental update


def reassign(slots: tuple[str, ...], desired: frozenset[str]) -> tuple[str, ...]:
    """New index -> backend assignment: survivors keep their index, new backends fill holes
    first, then remaining holes take the last backends; extra new backends are appended.

    The result is dense and holds exactly ``desired``.
    """
    new = _sorted_ips(desired - set(slots))
    out: list[str | None] = [s if s in desired else None for s in slots]
    holes = [i for i, s in enumerate(out) if s is None]  # ascending
    filled = min(len(holes), len(new))
    for h, b in zip(holes[:filled], new[:filled], strict=True):
        out[h] = b
    if len(new) > filled:  # no hole left
        return tuple(s for s in out if s is not None) + new[filled:]
    for h in holes[filled:]:
        while out and out[-1] is None:
            out.pop()
        if h >= len(out):  # every hole left is in the trimmed tail
            break
        out[h] = out.pop()
    return tuple(s for s in out if s is not None)


def _element_diff(table: str, t: _Target, old: tuple[str, ...], new: tuple[str, ...]) -> list[str]:
    """Element deletes then adds turning map ``old`` into ``new`` (a changed index is a
    delete plus an add of the same key: nft 1.0.6 has no element replace)."""
    changed = [i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b]
    dels = changed + list(range(len(new), len(old)))
    adds = [(i, new[i]) for i in changed] + [(i, new[i]) for i in range(len(old), len(new))]
    out = []
    if dels:
        out.append(f"delete element ip {table} {t.name} {{ {', '.join(map(str, dels))} }}")
    if adds:
        out.append(f"add element ip {table} {t.name} {{ {_elements(adds)} }}")
    return out


def _target_update(
    table: str,
    old_t: _Target | None,
    old: tuple[str, ...] | None,
    new_t: _Target | None,
    desired: frozenset[str] | None,
) -> tuple[list[str], tuple[str, ...] | None]:
    """Statements for one target (``None``: absent on that side) and its new slots."""
    out: list[str] = []
    if new_t is None or desired is None:  # removed
        assert old_t is not None and old is not None
        if old:
            out += _remove_live(table, old_t)
        else:
            out.append(f"delete element ip {table} {old_t.dead} {{ {old_t.key} }}")
        return out, None
    if old is None or old_t is None:  # added
        slots = _sorted_ips(desired)
        if slots:
            out += _add_live(table, new_t, slots)
        else:
            out.append(f"add element ip {table} {new_t.dead} {{ {new_t.key} }}")
        return out, slots
    slots = reassign(old, desired)
    if not old and not slots:
        return out, slots
    if not slots:  # live -> dead
        out += _remove_live(table, old_t)
        out.append(f"add element ip {table} {new_t.dead} {{ {new_t.key} }}")
    elif not old:  # dead -> live
        out.append(f"delete element ip {table} {old_t.dead} {{ {old_t.key} }}")
        out += _add_live(table, new_t, slots)
    else:
        out += _element_diff(table, new_t, old, slots)
        if len(slots) != len(old) or new_t.rule(1) != old_t.rule(1):
            out.append(f"flush chain ip {table} {new_t.name}")
            out.append(f"add rule ip {table} {new_t.name} {new_t.rule(len(slots))}")
    return out, slots


def render_update(table: str, applied: LbState, spec: LbSpec) -> tuple[str, LbState]:
    """A script with only what changed since ``applied`` ("" when nothing did), and the state
    it leaves. A structural change (table, hooks, local_only, masquerade) is a full replace."""
    _check_table(table)
    vips, tports, pbackends = _normalize(spec)
    if (
        table != applied.table
        or frozenset(spec.hooks) != applied.hooks
        or spec.local_only != applied.local_only
        or spec.masquerade_oif != applied.masquerade_oif
    ):
        return render_full(table, spec)

    lines: list[str] = []
    old_vips = applied.vip_map()
    new_vips: dict[str, tuple[str, ...]] = {}
    for vip in sorted(old_vips.keys() | vips.keys()):
        old_t = _vip_target(vip) if vip in old_vips else None
        new_t = _vip_target(vip) if vip in vips else None
        stmts, slots = _target_update(table, old_t, old_vips.get(vip), new_t, vips.get(vip))
        lines += stmts
        if slots is not None:
            new_vips[vip] = slots

    old_ports = applied.port_map()
    if any(key in tports and tports[key][1] != p.addr for key, p in old_ports.items()):
        return render_full(table, spec)  # a port bound or unbound: its verdict map changes
    new_ports: dict[tuple[str, int], PortTarget] = {}
    for key in sorted(old_ports.keys() | pbackends.keys()):
        old_p = old_ports.get(key)
        old_t = _port_target(key, (old_p.target_port, old_p.addr)) if old_p else None
        new_t = _port_target(key, tports[key]) if key in tports else None
        stmts, slots = _target_update(
            table, old_t, old_p.backends if old_p else None, new_t, pbackends.get(key)
        )
        lines += stmts
        if slots is not None:
            new_ports[key] = PortTarget(tports[key][0], slots, tports[key][1])

    state = LbState(
        table=table,
        hooks=applied.hooks,
        local_only=applied.local_only,
        masquerade_oif=applied.masquerade_oif,
        vips=tuple(sorted(new_vips.items())),
        ports=tuple(sorted(new_ports.items())),
    )
    return ("\n".join(lines) + "\n" if lines else ""), state
