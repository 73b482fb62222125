"""What the simulator measures: watchers fed by the nodes' events, and result records.

Measurements are event-driven (the nodes' own ``EntryChanged``/``MemberChanged`` events carry
the simulated time they happened at), so their resolution does not depend on how often the
driver checks a condition. Events are recognised by their fields, not their classes, so that
a test can drive the simulator with a stand-in node that emits look-alike events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.gossip.sim import Simulator


def _is_entry_event(ev: Any) -> bool:
    return hasattr(ev, "key") and hasattr(ev, "owner")


def _is_member_event(ev: Any) -> bool:
    return hasattr(ev, "state") and hasattr(ev, "incarnation")


@dataclass
class EntryWatch:
    """When each observer first saw ``network/key`` from ``owner`` with ``value`` (any value
    if None), and when it last saw it disappear."""

    network: str
    key: str
    owner: str
    value: bytes | None
    start: float
    seen: dict[str, float] = field(default_factory=dict)
    gone: dict[str, float] = field(default_factory=dict)

    def feed(self, now: float, observer: str, ev: Any) -> None:
        if not _is_entry_event(ev):
            return
        if ev.network != self.network or ev.key != self.key or ev.owner != self.owner:
            return
        if ev.value is None:
            self.gone[observer] = now
        elif (self.value is None or ev.value == self.value) and observer not in self.seen:
            self.seen[observer] = now


@dataclass
class MemberWatch:
    """When each observer first saw member ``name`` in each state (after ``start``)."""

    name: str
    start: float
    first: dict[str, dict[str, float]] = field(default_factory=dict)  # state -> observer -> t

    def feed(self, now: float, observer: str, ev: Any) -> None:
        if _is_member_event(ev) and ev.name == self.name:
            self.first.setdefault(ev.state, {}).setdefault(observer, now)

    def at(self, state: str) -> dict[str, float]:
        return self.first.get(state, {})


@dataclass
class OwnerEntriesWatch:
    """When each observer stopped seeing every entry of ``owner`` it saw at ``start``."""

    owner: str
    start: float
    pending: dict[str, set[tuple[str, str]]]
    cleared: dict[str, float] = field(default_factory=dict)

    def feed(self, now: float, observer: str, ev: Any) -> None:
        if not _is_entry_event(ev) or ev.owner != self.owner or ev.value is not None:
            return
        left = self.pending.get(observer)
        if left is None:
            return
        left.discard((ev.network, ev.key))
        if not left and observer not in self.cleared:
            self.cleared[observer] = now


@dataclass(frozen=True)
class Detection:
    """Failure detection of one killed node, times relative to the kill: the first and the
    last live node to hold it dead (``last`` is None when some never did within the
    timeout, ``first`` when none did)."""

    name: str
    first: float | None
    last: float | None
    per_node: dict[str, float]
    entries_gone_last: float | None  # every live node hid every entry of the node by then
    observers: int


@dataclass(frozen=True)
class Traffic:
    """What one node sent so far: datagrams and stream frames (payload bytes)."""

    packets: int
    bytes: int
    streams: int
    stream_bytes: int


@dataclass(frozen=True)
class Rate:
    """Sent per second: datagrams, all bytes (datagrams on the wire + stream payload), and
    the stream part of it (push-pull)."""

    packets: float
    bytes: float
    stream_bytes: float


def fraction_times(
    times: Iterable[float], total: int, fractions: Sequence[float]
) -> dict[float, float | None]:
    """Time by which ``fraction`` of ``total`` observers had seen something (None: never).

    ``ceil(fraction * total)`` observers are needed, so 99.99 % of 1000 means all 1000."""
    ordered = sorted(times)
    out: dict[float, float | None] = {}
    for f in fractions:
        need = max(1, math.ceil(f * total - 1e-9))
        out[f] = ordered[need - 1] if need <= len(ordered) else None
    return out


def propagation(
    sim: Simulator,
    writer: str,
    network: str,
    key: str,
    value: bytes,
    fractions: Sequence[float] = (0.5, 0.99, 0.9999),
    timeout: float = 10.0,
) -> dict[float, float | None]:
    """Put one entry at ``writer``; the time until it is visible at each fraction of the
    live participants of ``network`` (the writer counts, at time 0)."""
    observers = sim.participants(network)
    w = sim.watch(EntryWatch(network, key, writer, value, sim.now))
    sim.put(writer, network, key, value)
    w.seen.setdefault(writer, sim.now)
    want = set(observers)
    sim.run_until_true(lambda: want <= w.seen.keys(), timeout, step=0.01)
    sim.unwatch(w)
    times = [w.seen[o] - w.start for o in observers if o in w.seen]
    return fraction_times(times, len(observers), fractions)


def detect_kill(sim: Simulator, name: str, timeout: float = 30.0) -> Detection:
    """Kill ``name``; run until every live node holds it dead and hides its entries."""
    owned: dict[str, set[tuple[str, str]]] = {}
    for obs in sim.live():
        if obs == name:
            continue
        node = sim.node(obs)
        owned[obs] = {
            (net, k)
            for net in node.networks()
            for k, e in node.entries(net).items()
            if e.owner == name
        }
    mw = sim.watch(MemberWatch(name, sim.now))
    ew = sim.watch(OwnerEntriesWatch(name, sim.now, {o: s for o, s in owned.items() if s}))
    ew.cleared.update({o: sim.now for o, s in owned.items() if not s})
    sim.kill(name)
    observers = [o for o in sim.live() if o != name]

    def done() -> bool:
        dead = mw.at("dead")
        return all(o in dead and o in ew.cleared for o in observers)

    sim.run_until_true(done, timeout, step=0.01)
    sim.unwatch(mw)
    sim.unwatch(ew)
    dead = {o: t - mw.start for o, t in mw.at("dead").items() if o in observers}
    complete = len(dead) == len(observers)
    cleared = [ew.cleared[o] - ew.start for o in observers if o in ew.cleared]
    return Detection(
        name=name,
        first=min(dead.values()) if dead else None,
        last=max(dead.values()) if complete and dead else None,
        per_node=dead,
        entries_gone_last=max(cleared) if len(cleared) == len(observers) else None,
        observers=len(observers),
    )
