"""The node's timer heap and the typed events it holds.

A timer is a small frozen record saying what is due (``ProbeTimeout(seq)``, ``ReapMember(name)``)
rather than a callback with an untyped argument: the node routes each event by its family
(probing, dissemination, sync, reaping) to the part that owns it, and that part reads the
fields it needs with their types.

Entries are never cancelled: each handler checks whether what it was scheduled for still
holds, which keeps scheduling O(log n) and the bookkeeping in one place. Events due at the
same time run in the order they were added (a counter breaks ties), so a run is reproducible.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


class ProbingTimer:
    """Events of `agent.gossip.probing`: failure detection."""

    __slots__ = ()


class DisseminationTimer:
    """Events of `agent.gossip.dissemination`: sending queued broadcasts."""

    __slots__ = ()


class SyncTimer:
    """Events of `agent.gossip.sync`: push-pull and join."""

    __slots__ = ()


class ReapTimer:
    """Events of the node itself: forgetting dead members and old tombstones."""

    __slots__ = ()


# ---------------------------------------------------------------- probing


@dataclass(frozen=True, slots=True)
class ProbeTick(ProbingTimer):
    """Start this interval's probes (ring successor and round robin)."""


@dataclass(frozen=True, slots=True)
class ProbeTimeout(ProbingTimer):
    """No direct ack for probe ``seq`` yet: ping again and ask others to try."""

    seq: int


@dataclass(frozen=True, slots=True)
class ProbeEnd(ProbingTimer):
    """The probe interval of probe ``seq`` is over: still no ack means suspect."""

    seq: int


@dataclass(frozen=True, slots=True)
class RelayExpired(ProbingTimer):
    """Forget the ping we relayed for someone else's probe under our ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class SuspicionDue(ProbingTimer):
    """The suspicion of ``name`` may have timed out (its deadline can have moved)."""

    name: str


# ---------------------------------------------------------------- dissemination


@dataclass(frozen=True, slots=True)
class GossipTick(DisseminationTimer):
    """Send pending broadcasts to random peers (runs only while something is pending and
    some member could take it: a lone node has none)."""


@dataclass(frozen=True, slots=True)
class EagerDue(DisseminationTimer):
    """The eager-push pause is over: news held back during it can be pushed."""


# ---------------------------------------------------------------- sync


@dataclass(frozen=True, slots=True)
class PushPullTick(SyncTimer):
    """Periodic full state exchange with a random peer."""


@dataclass(frozen=True, slots=True)
class ReconnectTick(SyncTimer):
    """Now and then, push-pull with a member held dead (heals partitions)."""


@dataclass(frozen=True, slots=True)
class JoinStep(SyncTimer):
    """Sync with the next seed of the current join round."""


@dataclass(frozen=True, slots=True)
class JoinCheck(SyncTimer):
    """Did the join round find anyone? Retry, or plan the one resync after joining."""


@dataclass(frozen=True, slots=True)
class JoinResync(SyncTimer):
    """One more sync with a random member a little after joining."""


# ---------------------------------------------------------------- reaping


@dataclass(frozen=True, slots=True)
class ReapMember(ReapTimer):
    """Forget ``name`` if it is still dead (or left) since the death this was set for."""

    name: str


@dataclass(frozen=True, slots=True)
class ReapTombstone(ReapTimer):
    """Drop the tombstone of (network, key, owner) if it is still this version."""

    network: str
    key: str
    owner: str
    ltime: int


TimerEvent = ProbingTimer | DisseminationTimer | SyncTimer | ReapTimer


class Timers:
    """A heap of (when, counter, event)."""

    __slots__ = ("_counter", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerEvent]] = []
        self._counter = 0

    def add(self, when: float, event: TimerEvent) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (when, self._counter, event))

    def next(self) -> float:
        return self._heap[0][0] if self._heap else float("inf")

    def pop_due(self, now: float) -> TimerEvent | None:
        """The earliest event due at ``now``, or None. The caller loops until None, so an
        event added for ``now`` by a handler runs in the same pass."""
        heap = self._heap
        if heap and heap[0][0] <= now:
            return heapq.heappop(heap)[2]
        return None

    def __len__(self) -> int:
        return len(self._heap)
