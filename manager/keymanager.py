"""Cluster keys: made by the leading manager, kept in etcd, handed to agents over their sessions.

Agents seal every gossip packet with AES-GCM under a keyring (keys[0], the primary, encrypts;
every key in the ring is accepted). Workers never talk to etcd, so the keys reach them only
through the dispatcher, which puts them into each session's GossipConfig.

A subsystem's keyring lives at ``{prefix}/keys/{subsystem}`` as a serialized ``Keyring``. The
first leader creates it in one etcd transaction that writes only if the key does not exist yet,
and every later leader (after a restart or a failover) reads that same keyring: the keys agents
hold never change because the leader did. Two managers racing to create it cannot both win;
the loser reads the winner's keys in the same transaction.

Rotation (the leader's `run()` loop, pure core `rotation_step`) never asks every node to switch
at one instant, because a node sealing with a key its peer does not hold loses packets:

    [cur]            steady state after a rotation settles (or [cur, prev])
    [cur, new]       step 1, every `rotation_interval`: the new key is only accepted
    [new, cur]       step 2, a grace later (min(interval/4, 10 s)): the new key seals, the
                     previous primary is still accepted, and anything older is dropped

A node that lags one step behind still opens everything the others seal (each ring holds the
primary of the ring before and after it), so agents that get their new GossipConfig a little
late drop nothing. Each step is one etcd transaction conditioned on the keyring's mod revision
(and the leader's fence): two managers that both think they should rotate cannot both win, and
the loser adopts the winner's ring.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable

import grpc
from google.protobuf.message import DecodeError

from manager.cluster import now_ms
from manager.store import Store
from manager.store.etcd import KV, Compare, Get, Put, absent, modified_at
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

GOSSIP = "gossip"
IPSEC = "ipsec"
KEY_BYTES = 32  # AES-256-GCM
VALID_KEY_SIZES = frozenset({16, 24, 32})
DEFAULT_ROTATION_INTERVAL = 43200.0  # seconds (12 h)
MAX_GRACE_MS = 10_000
# Keys left after a promotion: the new primary and the one it replaced.
MAX_KEYS = 2
# How often the rotation loop re-reads the keyrings even when nothing is due, so a ring another
# manager wrote (a previous leader's last step) is picked up without waiting for a conflict.
REFRESH_S = 10.0
MIN_SLEEP_S = 0.05
RETRY_S = 1.0  # after an etcd error, or a step that could not be written

Entropy = Callable[[int], bytes]
Listener = Callable[[], None]


def new_keyring(entropy: Entropy = os.urandom, created_at_ms: int = 0) -> pb.Keyring:
    """A keyring holding one fresh key (the first key of a subsystem has Lamport time 1)."""
    key = _fresh_key(entropy)
    return pb.Keyring(keys=[pb.EncryptionKey(key=key, lamport_time=1, created_at_ms=created_at_ms)])


def grace_ms(interval_ms: int) -> int:
    """How long a new key is only accepted before it seals: long enough for every session to get
    it (a push takes well under a second), short next to the interval."""
    return max(0, min(interval_ms // 4, MAX_GRACE_MS))


def _fresh_key(entropy: Entropy) -> bytes:
    key = entropy(KEY_BYTES)
    if len(key) != KEY_BYTES:
        raise ValueError(f"entropy source gave {len(key)} bytes, not {KEY_BYTES}")
    return key


def _pending(ring: pb.Keyring) -> pb.EncryptionKey | None:
    """The key added by step 1 and not promoted yet: one newer (Lamport time) than the primary."""
    primary = ring.keys[0]
    newest = max(ring.keys, key=lambda k: k.lamport_time)
    return newest if newest.lamport_time > primary.lamport_time else None


def next_step_ms(ring: pb.Keyring, interval_ms: int, grace: int) -> int:
    """The wall-clock time (ms) at which `rotation_step` will next change `ring`."""
    if not ring.keys:
        return 0
    pending = _pending(ring)
    if pending is not None:
        return int(pending.created_at_ms) + grace
    return int(ring.keys[0].created_at_ms) + interval_ms


def rotation_step(
    ring: pb.Keyring,
    now_ms: int,
    interval_ms: int,
    grace_ms: int,
    entropy: Entropy = os.urandom,
) -> pb.Keyring | None:
    """The keyring after the rotation step due at `now_ms`, or None if none is due.

    Step 1 (the primary is the newest key and `interval_ms` has passed since it was made):
    append a fresh key with the next Lamport time; it is accepted, not used. Step 2 (a key
    newer than the primary has been there `grace_ms`): make it the primary, keep the previous
    primary after it and drop every other key. The previous primary is thus in the ring at every
    step, and a ring never holds more than MAX_KEYS keys once a rotation settles (one more
    between the steps).

    A key made more than an interval in the future means the clock went back (or another
    manager's is far ahead): take the step rather than wait that long. A smaller skew only
    delays the step, never shortens the grace. An empty ring gets one key.
    """
    if not ring.keys:
        return new_keyring(entropy, now_ms)
    pending = _pending(ring)
    if pending is None:
        made = int(ring.keys[0].created_at_ms)
        if now_ms < made + interval_ms and made <= now_ms + interval_ms:
            return None
        lamport = max(k.lamport_time for k in ring.keys) + 1
        out = pb.Keyring()
        out.CopyFrom(ring)
        out.keys.append(
            pb.EncryptionKey(key=_fresh_key(entropy), lamport_time=lamport, created_at_ms=now_ms)
        )
        return out
    made = int(pending.created_at_ms)
    if now_ms < made + grace_ms and made <= now_ms + interval_ms:
        return None
    out = pb.Keyring()
    out.keys.append(pending)
    out.keys.append(ring.keys[0])
    del out.keys[MAX_KEYS:]
    return out


def keyring_problem(ring: pb.Keyring) -> str:
    """Why agents could not use this keyring ("" if they can)."""
    if not ring.keys:
        return "it holds no key"
    for i, k in enumerate(ring.keys):
        if len(k.key) not in VALID_KEY_SIZES:
            return f"key {i} is {len(k.key)} bytes (AES needs 16, 24 or 32)"
    return ""


def parse_keyring(data: bytes) -> tuple[pb.Keyring, str]:
    """The stored keyring and why it is unusable ("" if it is usable)."""
    ring = pb.Keyring()
    try:
        ring.ParseFromString(data)
    except DecodeError as e:
        return pb.Keyring(), f"it does not parse ({e})"
    return ring, keyring_problem(ring)


class KeyManager:
    """The leader's view of the cluster's keyrings; `load()` before use, `run()` to rotate."""

    def __init__(
        self,
        store: Store,
        subsystems: Iterable[str] = (GOSSIP,),
        entropy: Entropy = os.urandom,
        rotation_interval: float = DEFAULT_ROTATION_INTERVAL,
    ) -> None:
        if rotation_interval <= 0:
            raise ValueError(f"the key rotation interval must be positive, not {rotation_interval}")
        self.store = store
        self.subsystems = tuple(subsystems)
        self.rotation_interval = rotation_interval
        self._entropy = entropy
        self._rings: dict[str, pb.Keyring] = {}
        # Mod revision of each keyring as last read or written: the next step's condition.
        self._revs: dict[str, int] = {}
        self._listeners: list[Listener] = []

    @property
    def interval_ms(self) -> int:
        return max(1, int(self.rotation_interval * 1000))

    def key_path(self, subsystem: str) -> bytes:
        return self.store.key("keys", subsystem)

    async def load(self) -> None:
        """Make sure every subsystem has a keyring in etcd, and read it.

        etcd errors propagate (grpc.aio.AioRpcError), as for the rest of a new leader's
        loading: the election loop retries."""
        for subsystem in self.subsystems:
            self._rings[subsystem], self._revs[subsystem] = await self._ensure(subsystem)

    async def _ensure(self, subsystem: str) -> tuple[pb.Keyring, int]:
        path = self.key_path(subsystem)
        fresh = new_keyring(self._entropy, now_ms())
        rev, stored = await self._create_or_read(path, fresh, [absent(path)])
        if rev:
            log.info("created the %s keyring at %s", subsystem, path.decode())
            return fresh, rev
        assert stored is not None  # "absent" failed: the same transaction read the key
        ring, problem = parse_keyring(stored.value)
        if not problem:
            return ring, int(stored.mod_revision)
        # Agents cannot use it, so nothing can depend on it: replace it, unless someone else
        # rewrote it meanwhile (then take theirs on the next load).
        log.error(
            "the %s keyring at %s is unusable (%s): replacing it", subsystem, path.decode(), problem
        )
        rev, again = await self._create_or_read(
            path, fresh, [modified_at(path, stored.mod_revision)]
        )
        if rev:
            return fresh, rev
        if again is None:  # deleted meanwhile: create it on the next load
            raise RuntimeError(f"the {subsystem} keyring at {path.decode()} vanished")
        ring, problem = parse_keyring(again.value)
        if problem:
            raise RuntimeError(f"the {subsystem} keyring at {path.decode()} is unusable: {problem}")
        return ring, int(again.mod_revision)

    async def _create_or_read(
        self, path: bytes, ring: pb.Keyring, conds: list[Compare]
    ) -> tuple[int, KV | None]:
        """Write `ring` if `conds` hold: (its mod revision, None); else (0, the stored key-value
        or None if there is none)."""
        result = await self.store.etcd.txn(
            conds, [Put(path, ring.SerializeToString(deterministic=True))], [Get(path)]
        )
        if result.succeeded:
            return result.revision, None
        return 0, result.reads[0]

    # ------------------------------------------------------------------ rotation

    async def run(self) -> None:
        """Rotate every keyring on schedule, forever (the leader runs this; cancel to stop).

        Each pass re-reads the keyrings (so a ring another manager wrote is adopted), takes
        the step that is due, if any, then sleeps until the next one (at most REFRESH_S). etcd
        being away only delays a step: errors are logged and the pass is retried."""
        if any(s not in self._rings for s in self.subsystems):
            await self.load()
        while True:
            try:
                for subsystem in self.subsystems:
                    await self.refresh(subsystem)
                    await self.rotate_once(subsystem)
            except grpc.aio.AioRpcError as e:
                log.warning("key rotation: etcd error (%s); retrying", e.code().name)
                await asyncio.sleep(RETRY_S)
                continue
            delay = self.sleep_time(now_ms())
            if delay <= MIN_SLEEP_S:  # a step is still due: it was not written (deposed?)
                delay = RETRY_S
            await asyncio.sleep(delay)

    def sleep_time(self, now: int) -> float:
        """Seconds until the next step of any keyring is due, within [MIN_SLEEP_S, REFRESH_S]."""
        grace = grace_ms(self.interval_ms)
        due = min(
            (next_step_ms(self._rings[s], self.interval_ms, grace) for s in self.subsystems),
            default=now + int(REFRESH_S * 1000),
        )
        return min(REFRESH_S, max(MIN_SLEEP_S, (due - now) / 1000))

    async def refresh(self, subsystem: str) -> bool:
        """Adopt the stored keyring if someone else changed it; True if it changed."""
        kv = await self.store.etcd.get(self.key_path(subsystem))
        if kv is None:  # deleted by hand: make a new one (agents get it like a rotation)
            log.error("the %s keyring was deleted from etcd: creating a new one", subsystem)
            ring, rev = await self._ensure(subsystem)
            self._revs[subsystem] = rev
            return self._adopt(subsystem, ring)
        if kv.mod_revision == self._revs.get(subsystem):
            return False
        return await self._take(subsystem, kv.value, kv.mod_revision)

    async def _take(self, subsystem: str, data: bytes, mod_revision: int) -> bool:
        """Adopt a keyring someone else stored; if agents could not use it, put ours back."""
        ring, problem = parse_keyring(data)
        if not problem:
            self._revs[subsystem] = mod_revision
            return self._adopt(subsystem, ring)
        log.error("the stored %s keyring is unusable (%s): restoring ours", subsystem, problem)
        path = self.key_path(subsystem)
        conds = [modified_at(path, mod_revision), *self.store.fence_compares()]
        rev, _ = await self._create_or_read(path, self._rings[subsystem], conds)
        if rev:
            self._revs[subsystem] = rev
        return False

    def _adopt(self, subsystem: str, ring: pb.Keyring) -> bool:
        if ring == self._rings.get(subsystem):
            return False
        self._rings[subsystem] = ring
        log.info("the %s keyring was changed by another manager: adopted it", subsystem)
        self._changed()
        return True

    async def rotate_once(self, subsystem: str, now: int | None = None) -> bool:
        """Take the rotation step due now for `subsystem`, if any; True if this manager wrote it.

        One transaction conditioned on the ring's mod revision and the leader's fence: on a
        conflict the ring someone else stored is adopted instead (its step will not be taken
        twice); if only the fence failed, this manager is no longer the leader and writes
        nothing."""
        now = now_ms() if now is None else now
        ring = self._rings[subsystem]
        grace = grace_ms(self.interval_ms)
        nxt = rotation_step(ring, now, self.interval_ms, grace, self._entropy)
        if nxt is None:
            return False
        path = self.key_path(subsystem)
        conds = [modified_at(path, self._revs[subsystem]), *self.store.fence_compares()]
        rev, stored = await self._create_or_read(path, nxt, conds)
        if rev:
            self._rings[subsystem], self._revs[subsystem] = nxt, rev
            promoted = nxt.keys[0].key != ring.keys[0].key
            step = "promoted the new key" if promoted else "added a new key"
            log.info("%s keyring: %s (%d keys)", subsystem, step, len(nxt.keys))
            self._changed()
            return True
        if stored is None or stored.mod_revision == self._revs[subsystem]:
            # The ring is as we knew it (or gone): the fence failed, or it was deleted (the
            # next refresh recreates it).
            log.warning("%s key rotation not written: no longer the leader?", subsystem)
            return False
        await self._take(subsystem, stored.value, stored.mod_revision)
        return False

    # ------------------------------------------------------------------ readers

    def keyring(self, subsystem: str = GOSSIP) -> pb.Keyring:
        return self._rings[subsystem]

    def keys(self, subsystem: str = GOSSIP) -> list[bytes]:
        """The raw keys, primary first (what agents get)."""
        return [k.key for k in self._rings[subsystem].keys]

    def subscribe(self, listener: Listener) -> None:
        """`listener()` runs whenever a keyring changes (a rotation step, or adopting one)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()
