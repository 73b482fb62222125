"""SWIM membership with Lifeguard's suspicion: who is in the cluster and in what state.

This module holds the member list and the rules for merging what others say about members;
it sends nothing and keeps no timers (the node does both). Every rule is a function of the
message and the current state:

- Incarnation numbers order what is said about one member; only the member itself raises its
  own. ``alive(i)`` beats anything older than i; ``suspect(i)`` beats ``alive(<=i)``;
  ``dead(i)``/``left(i)`` beat ``alive``/``suspect(<=i)``. A node that hears itself suspected
  or declared dead at its own incarnation or later refutes with a higher one.
- A suspicion dies after a timeout that starts long and shrinks as independent members
  confirm it (Lifeguard): with c of k expected confirmations the timeout is
  max(min, max - (max - min) * log(c + 1) / log(k + 1)).
- Unknown members are only ever added by an alive message: a suspect or dead message about a
  name we do not know is ignored, so reaped members do not come back from stale gossip.

It also keeps the structures the node picks peers from in O(1): the active set (alive and
suspect), recently dead members (gossip targets), failed members (reconnect targets), a
shuffled round-robin probe order, and a hash ring for successor probing.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from agent.gossip.common import Addr, IndexedSet, Outcome
from agent.gossip.config import GossipTuning
from agent.gossip.wire import member_record

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
LEFT = "left"
ACTIVE_STATES = frozenset((ALIVE, SUSPECT))
MAX_INCARNATION = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class MemberInfo:
    name: str
    addr: Addr
    state: str
    incarnation: int


class Suspicion:
    """Lifeguard's shrinking suspicion timer for one member at one incarnation."""

    __slots__ = ("confirmers", "deadline", "first", "incarnation", "k", "max_t", "min_t", "start")

    def __init__(
        self, incarnation: int, first: str, start: float, k: int, min_t: float, max_t: float
    ) -> None:
        self.incarnation = incarnation
        self.first = first
        self.start = start
        self.k = k
        self.min_t = min_t
        self.max_t = max_t
        self.confirmers: dict[str, None] = {}
        self.deadline = start + (min_t if k < 1 else max_t)

    def confirm(self, source: str) -> bool:
        """Count an independent confirmation; True if it was new and could still shorten
        the timeout (only those are passed on, which caps the dogpile at k messages)."""
        if source == self.first or source in self.confirmers or len(self.confirmers) >= self.k:
            return False
        self.confirmers[source] = None
        c = len(self.confirmers)
        frac = math.log(c + 1) / math.log(self.k + 1)
        timeout = max(self.min_t, self.max_t - (self.max_t - self.min_t) * frac)
        self.deadline = self.start + timeout
        return True


class Member:
    __slots__ = ("_wire", "addr", "incarnation", "name", "since", "state", "suspicion")

    def __init__(self, name: str, addr: Addr, state: str, incarnation: int, since: float) -> None:
        self.name = name
        self.addr = addr
        self.state = state
        self.incarnation = incarnation
        self.since = since  # when the state last changed (dead/left: when it died)
        self.suspicion: Suspicion | None = None
        self._wire: tuple[str, int, Addr, bytes] | None = None

    def info(self) -> MemberInfo:
        return MemberInfo(self.name, self.addr, self.state, self.incarnation)

    def record(self) -> bytes:
        """This member as a push-pull record (cached until it changes)."""
        w = self._wire
        if w is None or w[0] != self.state or w[1] != self.incarnation or w[2] != self.addr:
            data = member_record(self.name, self.addr, self.state, self.incarnation)
            w = self._wire = (self.state, self.incarnation, self.addr, data)
        return w[3]


# (member, old state or None if new, old address) -> None
ChangeHook = Callable[[Member, str | None, Addr, float], None]


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def _ring_key(name: str) -> tuple[int, str]:
    # crc32 is stable across processes (str.__hash__ is salted per process).
    return (zlib.crc32(name.encode()), name)


class Membership:
    def __init__(
        self,
        name: str,
        addr: Addr,
        config: GossipTuning,
        rng: random.Random,
        now: float,
        on_change: ChangeHook,
    ) -> None:
        self.name = name
        self.config = config
        self._rng = rng
        self._on_change = on_change
        self.local = Member(name, addr, ALIVE, 0, now)
        self.members: dict[str, Member] = {name: self.local}
        self.active: IndexedSet[str] = IndexedSet()  # alive or suspect, not self
        self.recent_dead: IndexedSet[str] = IndexedSet()  # dead within gossip_to_dead
        self.failed: IndexedSet[str] = IndexedSet()  # dead (not left), for reconnects
        self._rr: list[str] = []
        self._rr_pos = 0
        self._self_key = _ring_key(name)
        self._ring: list[tuple[int, str]] = [self._self_key]
        self.version = 0  # bumped on every change of any member (cache key for views)
        # XOR of a 64-bit hash of every active member's name, this node included. Two nodes
        # that agree on who is in the cluster have the same digest whatever the order they
        # learned it in; pings carry it, so a pair that an epidemic missed (it happens, in
        # join storms: each broadcast's transmissions are spent within ~100 ms) is noticed
        # and repaired by a push-pull instead of waiting minutes for the periodic one.
        self.digest = _name_hash(name)

    # ----------------------------------------------------------------- queries

    @property
    def left(self) -> bool:
        return self.local.state == LEFT

    def get(self, name: str) -> Member | None:
        return self.members.get(name)

    def is_active(self, name: str) -> bool:
        return name in self.active or (name == self.name and not self.left)

    def size(self) -> int:
        """Members believed alive or suspect, this node included (N in every formula)."""
        return len(self.active) + 1

    def infos(self) -> list[MemberInfo]:
        return [m.info() for m in self.members.values()]

    # ----------------------------------------------------------------- merging

    def apply_alive(self, name: str, addr: Addr, inc: int, now: float) -> Outcome:
        if name == self.name:
            if self.left:
                return Outcome.IGNORED
            local = self.local
            if inc > local.incarnation or (inc == local.incarnation and addr != local.addr):
                return self._refute(inc)
            return Outcome.IGNORED
        m = self.members.get(name)
        if m is None:
            m = Member(name, addr, ALIVE, inc, now)
            self.members[name] = m
            self._activate(name)
            self.version += 1
            self._on_change(m, None, addr, now)
            return Outcome.CHANGED
        if inc <= m.incarnation:
            return Outcome.IGNORED
        old_state, old_addr = m.state, m.addr
        m.incarnation = inc
        m.addr = addr
        m.suspicion = None
        if old_state != ALIVE:
            m.state = ALIVE
            m.since = now
            if old_state != SUSPECT:
                self._activate(name)
        self.version += 1
        self._on_change(m, old_state, old_addr, now)
        return Outcome.CHANGED

    def apply_suspect(self, name: str, inc: int, source: str, now: float) -> Outcome:
        if name == self.name:
            if self.left or inc < self.local.incarnation:
                return Outcome.IGNORED
            return self._refute(inc)
        m = self.members.get(name)
        if m is None or inc < m.incarnation or m.state in (DEAD, LEFT):
            return Outcome.IGNORED
        if m.state == SUSPECT and inc == m.incarnation:
            assert m.suspicion is not None
            return Outcome.CONFIRMED if m.suspicion.confirm(source) else Outcome.IGNORED
        old_state = m.state
        m.state = SUSPECT
        m.incarnation = inc
        m.since = now
        m.suspicion = self._new_suspicion(inc, source, now)
        self.version += 1
        self._on_change(m, old_state, m.addr, now)
        return Outcome.CHANGED

    def apply_dead(self, name: str, inc: int, source: str, now: float) -> Outcome:
        """``source == name`` means the member left gracefully."""
        gone = LEFT if source == name else DEAD
        if name == self.name:
            if self.left or inc < self.local.incarnation:
                return Outcome.IGNORED
            return self._refute(inc)
        m = self.members.get(name)
        if m is None or inc < m.incarnation or m.state == LEFT:
            return Outcome.IGNORED
        if m.state == DEAD and gone == DEAD:
            return Outcome.IGNORED
        old_state = m.state
        m.state = gone
        m.incarnation = inc
        m.suspicion = None
        if old_state != DEAD:
            m.since = now
        self._deactivate(name, gone, old_state)
        self.version += 1
        self._on_change(m, old_state, m.addr, now)
        return Outcome.CHANGED

    def leave(self, now: float) -> None:
        if self.local.state != LEFT:
            self.digest ^= _name_hash(self.name)
        self.local.state = LEFT
        self.local.since = now
        self._ring_remove(self.name)
        self.version += 1

    def remove(self, name: str) -> None:
        """Forget a member entirely (reaped)."""
        m = self.members.pop(name, None)
        if m is None:
            return
        if self.active.discard(name):
            self.digest ^= _name_hash(name)
        self.recent_dead.discard(name)
        self.failed.discard(name)
        self._ring_remove(name)
        self.version += 1

    def _refute(self, inc: int) -> Outcome:
        self.local.incarnation = min(max(self.local.incarnation, inc) + 1, MAX_INCARNATION)
        self.version += 1
        return Outcome.REFUTE

    def _new_suspicion(self, inc: int, source: str, now: float) -> Suspicion:
        cfg = self.config
        n = self.size()
        k = min(cfg.indirect_checks, n - 2) if n > 2 else 0
        scale = max(1.0, math.log10(max(n, 1)))
        max_t = min(cfg.suspicion_mult * scale, cfg.suspicion_max_mult) * cfg.probe_interval
        min_t = min(cfg.suspicion_min_mult * cfg.probe_interval, max_t)
        return Suspicion(inc, source, now, k, min_t, max_t)

    # ----------------------------------------------------------------- pools

    def _activate(self, name: str) -> None:
        if self.active.add(name):
            self.digest ^= _name_hash(name)
        self.recent_dead.discard(name)
        self.failed.discard(name)
        # A newcomer goes to a random place among the members not yet probed this round
        # (memberlist does the same), so it is probed within one round.
        pos = self._rng.randint(self._rr_pos, len(self._rr))
        self._rr.insert(pos, name)
        bisect.insort(self._ring, _ring_key(name))

    def _deactivate(self, name: str, gone: str, old_state: str) -> None:
        if old_state in ACTIVE_STATES:
            if self.active.discard(name):
                self.digest ^= _name_hash(name)
            self._ring_remove(name)
            self.recent_dead.add(name)
        if gone == DEAD:
            self.failed.add(name)
        else:
            self.failed.discard(name)

    def _ring_remove(self, name: str) -> None:
        key = _ring_key(name)
        i = bisect.bisect_left(self._ring, key)
        if i < len(self._ring) and self._ring[i] == key:
            del self._ring[i]

    def ring_successor(self) -> str | None:
        """The next active member after this node on the hash ring (None when alone)."""
        ring = self._ring
        if len(ring) < 2:
            return None
        i = bisect.bisect_right(ring, self._self_key) % len(ring)
        name = ring[i][1]
        return None if name == self.name else name

    def ring_predecessor(self) -> str | None:
        """The active member whose ring successor this node is (None when alone)."""
        ring = self._ring
        if len(ring) < 2:
            return None
        i = bisect.bisect_left(ring, self._self_key) - 1
        name = ring[i][1]
        return None if name == self.name else name

    def next_probe_target(self, skip: set[str]) -> str | None:
        """Round robin over a shuffled list of active members, reshuffled each round."""
        for _ in range(len(self._rr) + 2):
            if self._rr_pos >= len(self._rr):
                self._rr = self.active.items()
                self._rng.shuffle(self._rr)
                self._rr_pos = 0
                if not self._rr:
                    return None
            name = self._rr[self._rr_pos]
            self._rr_pos += 1
            if name in self.active and name not in skip:
                return name
        return None

    def gossip_targets(self, k: int, now: float, exclude: set[str]) -> list[str]:
        """k random members to gossip to: active ones and those dead for less than
        gossip_to_dead (so a member wrongly declared dead hears of it and refutes)."""
        rd = self.recent_dead
        horizon = now - self.config.gossip_to_dead
        # Prune expired entries lazily, a couple per call (they sit at random places).
        for _ in range(min(2, len(rd))):
            name = rd.at(self._rng.randrange(len(rd)))
            m = self.members.get(name)
            if m is None or m.state != DEAD or m.since < horizon:
                rd.discard(name)
        nd = len(rd)
        if nd == 0:
            return self.active.sample(self._rng, k, exclude)
        na = len(self.active)
        out: list[str] = []
        chosen: set[str] = set()
        for _ in range(4 * k + 4):
            i = self._rng.randrange(na + nd)
            if i < na:
                name = self.active.at(i)
            else:
                name = rd.at(i - na)
                m = self.members.get(name)
                if m is None or m.state != DEAD or m.since < horizon:
                    continue
            if name in chosen or name in exclude:
                continue
            chosen.add(name)
            out.append(name)
            if len(out) >= k:
                break
        return out
