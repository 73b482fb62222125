"""Per-network tables of owned entries, with Lamport clocks and tombstones (like libnetwork's
networkdb: generic, values are opaque bytes).

- A node participates in networks; participation itself is a cluster-wide last-writer-wins
  record (node, network) -> (Lamport time, joined), so every node knows who to send a
  network's entries to. Only participants store a network's table.
- An entry belongs to its owner, which alone writes it; versions of one (network, key,
  owner) are ordered by Lamport time. Entries of different owners under one key coexist; the
  visible one is the newest (ltime, then owner) among the visible ones, so a stale claim of a
  dead owner never hides a live one.
- Deletes are tombstones, exchanged like values and reaped by the node after a while.
- An entry is visible when it is not deleted, its owner is this node, or its owner is alive
  or suspect and participates in the network. The view is maintained incrementally and every
  change of it is emitted as an `EntryChanged`.
- A node that hears a version of its own entry or participation that it does not hold
  (typically after a restart with empty state) answers with a newer version of what it does
  hold: the value it has, or a tombstone.

Iteration order is insertion order everywhere (dicts, never sets), so that a simulation is
reproducible across interpreter hash seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.gossip.common import IndexedSet, Outcome
from agent.gossip.events import EntryChanged
from agent.gossip.wire import EntryMsg, NetMsg, net_record

MAX_LTIME = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True, slots=True)
class Entry:
    network: str
    key: str
    owner: str
    ltime: int
    value: bytes
    deleted: bool

    def to_msg(self) -> EntryMsg:
        return EntryMsg(self.network, self.key, self.owner, self.ltime, self.deleted, self.value)


class Tables:
    def __init__(
        self,
        name: str,
        owner_active: Callable[[str], bool],
        emit: Callable[[EntryChanged], None],
    ) -> None:
        self.name = name
        self._owner_active = owner_active
        self._emit = emit
        self.clock = 0  # Lamport clock of entries
        self.net_clock = 0  # Lamport clock of participation
        self._mine: dict[str, None] = {}
        self._part: dict[tuple[str, str], tuple[int, bool]] = {}
        self._part_wire: dict[tuple[str, str], bytes] = {}  # push-pull encoding, cached
        self._participants: dict[str, IndexedSet[str]] = {}  # other nodes joined
        self._store: dict[str, dict[str, dict[str, Entry]]] = {}  # net -> key -> owner
        self._view: dict[str, dict[str, Entry]] = {}
        self._by_owner: dict[str, dict[str, dict[str, None]]] = {}  # owner -> net -> keys

    # ------------------------------------------------------------------ queries

    def networks(self) -> list[str]:
        return list(self._mine)

    def participates(self, network: str) -> bool:
        return network in self._mine

    def participants(self, network: str) -> IndexedSet[str] | None:
        return self._participants.get(network)

    def common_networks(self, node: str) -> list[str]:
        """Our networks that ``node`` participates in, as far as we know."""
        part = self._part
        return [net for net in self._mine if part.get((node, net), (0, False))[1]]

    def entries(self, network: str) -> dict[str, Entry]:
        return dict(self._view.get(network, {}))

    def visible(self, network: str, key: str) -> Entry | None:
        v = self._view.get(network)
        return v.get(key) if v is not None else None

    def stored(self, network: str) -> list[Entry]:
        """Every stored version of a network (tombstones and hidden entries included)."""
        s = self._store.get(network, {})
        return [e for owners in s.values() for e in owners.values()]

    def net_records(self) -> list[NetMsg]:
        return [NetMsg(n, net, lt, j) for (n, net), (lt, j) in self._part.items()]

    def net_records_wire(self) -> tuple[int, bytes]:
        """All participation records, push-pull encoded: (count, bytes)."""
        return len(self._part_wire), b"".join(self._part_wire.values())

    def _set_part(self, key: tuple[str, str], ltime: int, joined: bool) -> None:
        self._part[key] = (ltime, joined)
        self._part_wire[key] = net_record(key[0], key[1], ltime, joined)

    def entry_records(self, networks: Iterable[str]) -> list[EntryMsg]:
        out: list[EntryMsg] = []
        for net in networks:
            s = self._store.get(net)
            if s is None:
                continue
            for owners in s.values():
                out.extend(e.to_msg() for e in owners.values())
        return out

    # ------------------------------------------------------------------ local writes

    def _tick(self) -> int:
        self.clock = min(self.clock + 1, MAX_LTIME)
        return self.clock

    def _net_tick(self) -> int:
        self.net_clock = min(self.net_clock + 1, MAX_LTIME)
        return self.net_clock

    def join(self, network: str) -> NetMsg | None:
        if network in self._mine:
            return None
        self._mine[network] = None
        self._store[network] = {}
        self._view[network] = {}
        lt = self._net_tick()
        self._set_part((self.name, network), lt, True)
        return NetMsg(self.name, network, lt, True)

    def leave(self, network: str) -> tuple[NetMsg | None, list[Entry]]:
        """Stop participating: tombstone our own entries (returned, to broadcast), hide and
        drop the table."""
        if network not in self._mine:
            return None, []
        tombs: list[Entry] = []
        store = self._store[network]
        for key, owners in store.items():
            e = owners.get(self.name)
            if e is not None and not e.deleted:
                tombs.append(Entry(network, key, self.name, self._tick(), b"", True))
        for key, e in list(self._view[network].items()):
            self._emit(EntryChanged(network, key, e.owner, None))
        for owners in store.values():
            for owner in owners:
                nets = self._by_owner.get(owner)
                if nets is not None:
                    nets.pop(network, None)
                    if not nets:
                        del self._by_owner[owner]
        del self._mine[network]
        del self._store[network]
        del self._view[network]
        lt = self._net_tick()
        self._set_part((self.name, network), lt, False)
        return NetMsg(self.name, network, lt, False), tombs

    def put(self, network: str, key: str, value: bytes) -> Entry:
        if network not in self._mine:
            raise KeyError(f"not a participant of network {network!r}")
        e = Entry(network, key, self.name, self._tick(), bytes(value), False)
        self._set(e)
        return e

    def delete(self, network: str, key: str) -> Entry | None:
        if network not in self._mine:
            raise KeyError(f"not a participant of network {network!r}")
        cur = self._store[network].get(key, {}).get(self.name)
        if cur is None or cur.deleted:
            return None
        e = Entry(network, key, self.name, self._tick(), b"", True)
        self._set(e)
        return e

    # ------------------------------------------------------------------ merging

    def apply_entry(self, m: EntryMsg) -> tuple[Outcome, Entry | None]:
        """Merge one entry version. Returns (outcome, entry): CHANGED with the stored entry,
        REFUTE with our own newer version to broadcast, IGNORED, or NOT_MINE."""
        store = self._store.get(m.network)
        if store is None:
            return Outcome.NOT_MINE, None
        if m.ltime > self.clock:
            self.clock = m.ltime
        owners = store.get(m.key)
        cur = owners.get(m.owner) if owners else None
        if cur is not None and m.ltime < cur.ltime:
            return Outcome.IGNORED, None
        if m.owner == self.name:
            if cur is not None and m.ltime == cur.ltime:
                if m.deleted == cur.deleted and (m.deleted or m.value == cur.value):
                    return Outcome.IGNORED, None
            elif m.deleted and (cur is None or cur.deleted):
                # Our own old tombstone: we agree it is gone; adopt its time.
                e = Entry(m.network, m.key, self.name, m.ltime, b"", True)
                self._set(e)
                return Outcome.CHANGED, e
            if cur is not None and not cur.deleted:
                e = Entry(m.network, m.key, self.name, self._tick(), cur.value, False)
            else:
                e = Entry(m.network, m.key, self.name, self._tick(), b"", True)
            self._set(e)
            return Outcome.REFUTE, e
        if cur is not None and m.ltime == cur.ltime:
            return Outcome.IGNORED, None
        e = Entry(m.network, m.key, m.owner, m.ltime, b"" if m.deleted else m.value, m.deleted)
        self._set(e)
        return Outcome.CHANGED, e

    def apply_net(self, m: NetMsg) -> tuple[Outcome, NetMsg | None]:
        """Merge one participation record: (outcome, our re-assertion when REFUTE)."""
        if m.ltime > self.net_clock:
            self.net_clock = m.ltime
        key = (m.node, m.network)
        cur = self._part.get(key)
        if m.node == self.name:
            actual = m.network in self._mine
            if m.joined == actual or (cur is not None and m.ltime < cur[0]):
                return Outcome.IGNORED, None
            lt = self._net_tick()
            self._set_part(key, lt, actual)
            return Outcome.REFUTE, NetMsg(self.name, m.network, lt, actual)
        if cur is not None and m.ltime <= cur[0]:
            return Outcome.IGNORED, None
        self._set_part(key, m.ltime, m.joined)
        was = cur is not None and cur[1]
        if m.joined:
            ps = self._participants.get(m.network)
            if ps is None:
                ps = self._participants[m.network] = IndexedSet()
            ps.add(m.node)
        else:
            ps = self._participants.get(m.network)
            if ps is not None:
                ps.discard(m.node)
        if was != m.joined and m.network in self._mine:
            keys = self._by_owner.get(m.node, {}).get(m.network)
            if keys:
                for k in list(keys):
                    self._recompute(m.network, k)
        return Outcome.CHANGED, None

    def owner_changed(self, owner: str) -> None:
        """The owner's liveness flipped: its entries appear or disappear."""
        for net, keys in list(self._by_owner.get(owner, {}).items()):
            for k in list(keys):
                self._recompute(net, k)

    def forget_owner(self, owner: str) -> None:
        """A reaped member: drop its entries and participation."""
        for net, keys in self._by_owner.pop(owner, {}).items():
            store = self._store.get(net)
            if store is None:
                continue
            for k in keys:
                owners = store.get(k)
                if owners is not None:
                    owners.pop(owner, None)
                    if not owners:
                        del store[k]
                self._recompute(net, k)
        for key in [k for k in self._part if k[0] == owner]:
            del self._part[key]
            self._part_wire.pop(key, None)
            ps = self._participants.get(key[1])
            if ps is not None:
                ps.discard(owner)

    def reap(self, network: str, key: str, owner: str, ltime: int) -> bool:
        """Drop a tombstone if it is still the stored version."""
        store = self._store.get(network)
        owners = store.get(key) if store is not None else None
        cur = owners.get(owner) if owners is not None else None
        if cur is None or not cur.deleted or cur.ltime != ltime:
            return False
        assert store is not None and owners is not None
        del owners[owner]
        if not owners:
            del store[key]
        nets = self._by_owner.get(owner)
        if nets is not None:
            keys = nets.get(network)
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del nets[network]
            if not nets:
                del self._by_owner[owner]
        self._recompute(network, key)
        return True

    # ------------------------------------------------------------------ view

    def _set(self, e: Entry) -> None:
        store = self._store[e.network]
        owners = store.get(e.key)
        if owners is None:
            owners = store[e.key] = {}
        owners[e.owner] = e
        nets = self._by_owner.get(e.owner)
        if nets is None:
            nets = self._by_owner[e.owner] = {}
        keys = nets.get(e.network)
        if keys is None:
            keys = nets[e.network] = {}
        keys[e.key] = None
        self._recompute(e.network, e.key)

    def _visible(self, e: Entry) -> bool:
        if e.deleted:
            return False
        if e.owner == self.name:
            return True
        if not self._owner_active(e.owner):
            return False
        p = self._part.get((e.owner, e.network))
        return p is not None and p[1]

    def _recompute(self, network: str, key: str) -> None:
        view = self._view.get(network)
        if view is None:
            return
        best: Entry | None = None
        owners = self._store[network].get(key)
        if owners:
            for e in owners.values():
                if (best is None or (e.ltime, e.owner) > (best.ltime, best.owner)) and (
                    self._visible(e)
                ):
                    best = e
        old = view.get(key)
        if best is None:
            if old is not None:
                del view[key]
                self._emit(EntryChanged(network, key, old.owner, None))
            return
        view[key] = best
        if old is None or old.owner != best.owner or old.value != best.value:
            self._emit(EntryChanged(network, key, best.owner, best.value))
