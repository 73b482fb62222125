"""Small pieces every part of the gossip core shares: the address type, the one exception
a decoder may raise, the outcome of applying a message, and an indexed set for O(1)
random peer picks.

They live apart from the protocol modules so that `wire`, `crypto`, `membership` and
`tables` can each be read (and tested) on their own without import cycles.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Container, Iterator
from typing import Generic, TypeVar

Addr = tuple[str, int]


class Outcome(enum.Enum):
    """What applying one gossip message did. The node decides from it whether to pass the
    message on (only news is re-broadcast, which is what bounds an epidemic) or to answer for
    itself."""

    IGNORED = "ignored"  # stale or duplicate: nothing changed
    CHANGED = "changed"  # news: the local view changed; pass it on
    CONFIRMED = "confirmed"  # a new independent confirmation of a suspicion; pass it on
    REFUTE = "refute"  # someone holds a wrong view of this node's own state: answer with news
    NOT_MINE = "not_mine"  # an entry of a network this node is not in: not stored, not "seen"


class DecodeError(ValueError):
    """Any input the decoders reject: truncated, oversized, unknown type, bad UTF-8, bad
    authentication. It is the only exception `wire` and `crypto.open` raise on bad bytes, so
    the node can count every rejected packet under one reason and carry on."""


T = TypeVar("T")


class IndexedSet(Generic[T]):
    """A set that also supports picking a uniformly random element in O(1).

    Peer selection runs several times per gossip interval on every node; with 1,000 nodes in
    one simulator process an O(N) scan per pick would dominate the run time. Removal swaps
    the last element into the hole, so order is arbitrary but deterministic (it depends only
    on the sequence of adds and removes, never on string hashing).
    """

    __slots__ = ("_index", "_items")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._index: dict[T, int] = {}

    def add(self, item: T) -> bool:
        if item in self._index:
            return False
        self._index[item] = len(self._items)
        self._items.append(item)
        return True

    def discard(self, item: T) -> bool:
        i = self._index.pop(item, None)
        if i is None:
            return False
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._index[last] = i
        return True

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    def at(self, i: int) -> T:
        return self._items[i]

    def items(self) -> list[T]:
        """A copy of the elements, in the set's (deterministic) internal order."""
        return list(self._items)

    def sample(
        self,
        rng: random.Random,
        k: int,
        exclude: Container[T] = (),
        accept: Callable[[T], bool] | None = None,
    ) -> list[T]:
        """Up to k distinct random elements not in ``exclude`` and passing ``accept``.

        Small sets are filtered and sampled exactly; large ones by rejection with a bounded
        number of draws, which may return fewer than k when most elements are excluded (the
        caller then simply gossips to fewer peers this round).
        """
        n = len(self._items)
        if n == 0 or k <= 0:
            return []
        if n <= 4 * k + 4:
            cands = [x for x in self._items if x not in exclude and (accept is None or accept(x))]
            if len(cands) <= k:
                rng.shuffle(cands)
                return cands
            return rng.sample(cands, k)
        out: list[T] = []
        chosen: set[T] = set()
        items = self._items
        for _ in range(8 * k + 8):
            x = items[rng.randrange(n)]
            if x in chosen or x in exclude or (accept is not None and not accept(x)):
                continue
            chosen.add(x)
            out.append(x)
            if len(out) >= k:
                break
        return out
