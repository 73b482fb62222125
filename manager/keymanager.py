"""Cluster keys: made by the leading manager, kept in etcd, handed to agents over their sessions.

Agents seal every gossip packet with AES-GCM under a keyring (keys[0], the primary, encrypts;
every key in the ring is accepted). Workers never talk to etcd, so the keys reach them only
through the dispatcher, which puts them into each session's GossipConfig.

A subsystem's keyring lives at ``{prefix}/keys/{subsystem}`` as a serialized ``Keyring``. The
first leader creates it in one etcd transaction that writes only if the key does not exist yet,
and every later leader (after a restart or a failover) reads that same keyring: the keys agents
hold never change because the leader did. Two managers racing to create it cannot both win;
the loser reads the winner's keys in the same transaction.

There is no rotation yet (F5 adds it). The shape is ready for it: a keyring is a list of keys
ordered primary first, each with a Lamport time, and listeners are told when it changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from aetcd import rpc
from google.protobuf.message import DecodeError

from manager.cluster import now_ms
from manager.store import Store, compare
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

GOSSIP = "gossip"
KEY_BYTES = 32  # AES-256-GCM
VALID_KEY_SIZES = frozenset({16, 24, 32})

Entropy = Callable[[int], bytes]
Listener = Callable[[], None]


def new_keyring(entropy: Entropy = os.urandom, created_at_ms: int = 0) -> pb.Keyring:
    """A keyring holding one fresh key (the first key of a subsystem has Lamport time 1)."""
    key = entropy(KEY_BYTES)
    if len(key) != KEY_BYTES:
        raise ValueError(f"entropy source gave {len(key)} bytes, not {KEY_BYTES}")
    return pb.Keyring(keys=[pb.EncryptionKey(key=key, lamport_time=1, created_at_ms=created_at_ms)])


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
    """The leader's view of the cluster's keyrings; `load()` before use."""

    def __init__(
        self,
        store: Store,
        subsystems: Iterable[str] = (GOSSIP,),
        entropy: Entropy = os.urandom,
    ) -> None:
        self.store = store
        self.subsystems = tuple(subsystems)
        self._entropy = entropy
        self._rings: dict[str, pb.Keyring] = {}
        self._listeners: list[Listener] = []

    def key_path(self, subsystem: str) -> bytes:
        return self.store.key("keys", subsystem)

    async def load(self) -> None:
        """Make sure every subsystem has a keyring in etcd, and read it.

        etcd errors propagate (grpc.aio.AioRpcError), as for the rest of a new leader's
        loading: the election loop retries."""
        for subsystem in self.subsystems:
            self._rings[subsystem] = await self._ensure(subsystem)

    async def _ensure(self, subsystem: str) -> pb.Keyring:
        path = self.key_path(subsystem)
        fresh = new_keyring(self._entropy, now_ms())
        stored = await self._create_or_read(path, fresh, compare(path, "version", 0))
        if stored is None:
            log.info("created the %s keyring at %s", subsystem, path.decode())
            return fresh
        ring, problem = parse_keyring(stored.value)
        if not problem:
            return ring
        # Agents cannot use it, so nothing can depend on it: replace it, unless someone else
        # rewrote it meanwhile (then take theirs on the next load).
        log.error(
            "the %s keyring at %s is unusable (%s): replacing it", subsystem, path.decode(), problem
        )
        again = await self._create_or_read(path, fresh, compare(path, "mod", stored.mod_revision))
        if again is None:
            return fresh
        ring, problem = parse_keyring(again.value)
        if problem:
            raise RuntimeError(f"the {subsystem} keyring at {path.decode()} is unusable: {problem}")
        return ring

    async def _create_or_read(self, path: bytes, ring: pb.Keyring, cond: Any) -> Any:
        """Write `ring` if `cond` holds (returns None), else return the stored key-value."""
        resp = await self.store.etcd.txn(
            [cond],
            [
                rpc.RequestOp(
                    request_put=rpc.PutRequest(
                        key=path, value=ring.SerializeToString(deterministic=True)
                    )
                )
            ],
            [rpc.RequestOp(request_range=rpc.RangeRequest(key=path))],
        )
        if resp.succeeded:
            return None
        kvs = resp.responses[0].response_range.kvs
        if not kvs:  # deleted between the compare and the read: cannot happen in one txn
            raise RuntimeError(f"{path.decode()} vanished inside a transaction")
        return kvs[0]

    def keyring(self, subsystem: str = GOSSIP) -> pb.Keyring:
        return self._rings[subsystem]

    def keys(self, subsystem: str = GOSSIP) -> list[bytes]:
        """The raw keys, primary first (what agents get)."""
        return [k.key for k in self._rings[subsystem].keys]

    def subscribe(self, listener: Listener) -> None:
        """`listener()` runs whenever a keyring changes (rotation, F5)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()
