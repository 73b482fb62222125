"""The transmit-limited broadcast queue of a node.

A broadcast is an encoded message waiting to be sent a bounded number of times. Packets are
filled with the least-sent messages first (newest first among equals), so news overtakes
old gossip, and each message is dropped once sent `limit` times. A newer message about the
same subject replaces the older one (by key), and an alive or dead message about a member
drops every pending suspicion of it (by group).
"""

from __future__ import annotations

from collections.abc import Hashable


class _Item:
    __slots__ = ("data", "group", "key", "mult", "transmits")

    def __init__(self, key: Hashable, group: Hashable | None, data: bytes, mult: int) -> None:
        self.key = key
        self.group = group
        self.data = data
        self.mult = mult
        self.transmits = 0


class TransmitQueue:
    """Pending broadcasts, bucketed by how often each was sent (so a fill costs O(picked),
    not O(queue), in the common case)."""

    __slots__ = ("_buckets", "_groups", "_items")

    def __init__(self) -> None:
        self._items: dict[Hashable, _Item] = {}
        self._groups: dict[Hashable, dict[Hashable, None]] = {}
        self._buckets: list[dict[Hashable, _Item]] = [{}]

    def __len__(self) -> int:
        return len(self._items)

    def put(
        self,
        key: Hashable,
        data: bytes,
        group: Hashable | None = None,
        clear_group: bool = False,
        mult: int = 1,
    ) -> None:
        """Queue ``data`` (unsent) under ``key``, replacing what the key held; with
        ``clear_group`` first drop every item of ``group``. ``mult`` multiplies the item's
        transmit limit (a node's own news: it is the root of the epidemic, and if all of its
        few first transmissions are lost the news goes nowhere)."""
        if clear_group and group is not None:
            for k in list(self._groups.get(group, ())):
                self._remove(k)
        self._remove(key)
        item = _Item(key, group, data, mult)
        self._items[key] = item
        self._buckets[0][key] = item
        if group is not None:
            self._groups.setdefault(group, {})[key] = None

    def discard(self, key: Hashable) -> None:
        self._remove(key)

    def _remove(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if item is None:
            return
        del self._buckets[item.transmits][key]
        if item.group is not None:
            g = self._groups.get(item.group)
            if g is not None:
                g.pop(key, None)
                if not g:
                    del self._groups[item.group]

    def take(self, budget: int, limit: int, min_size: int = 16) -> list[bytes]:
        """Messages fitting into ``budget`` bytes; each counts one transmission and leaves
        the queue at its ``limit``-th."""
        out: list[bytes] = []
        picked: list[_Item] = []
        misses = 0  # consecutive items that did not fit: the packet is as good as full
        for bucket in self._buckets:
            if not bucket:
                continue
            for item in reversed(bucket.values()):
                n = len(item.data)
                if n <= budget:
                    out.append(item.data)
                    picked.append(item)
                    budget -= n
                    misses = 0
                    if budget < min_size:
                        break
                else:
                    misses += 1
                    if misses >= 8:
                        break
            if budget < min_size or misses >= 8:
                break
        buckets = self._buckets
        for item in picked:
            t = item.transmits
            del buckets[t][item.key]
            t += 1
            if t >= limit * item.mult:
                del self._items[item.key]
                if item.group is not None:
                    g = self._groups.get(item.group)
                    if g is not None:
                        g.pop(item.key, None)
                        if not g:
                            del self._groups[item.group]
                continue
            item.transmits = t
            while len(buckets) <= t:
                buckets.append({})
            buckets[t][item.key] = item
        return out
