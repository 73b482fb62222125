"""etcd edge of the manager: typed object keys, fenced transactions, resumable watches.

Everything the cluster wants lives under one key prefix:

    {prefix}/objects/{kind}/{id}    serialized object (networks, services, tasks, nodes,
                                    attachments)
    {prefix}/names/{kind}/{name}    the ID owning a name (uniqueness is a compare on this key)
    {prefix}/leader                 the leading manager's ID, attached to its lease
    {prefix}/managers/{id}          a manager's advertised address, attached to its lease
    {prefix}/keys/{subsystem}       a Keyring (gossip, ipsec), created once by a leader and
                                    rotated by it (keymanager)
    {prefix}/ingress/created        set with the first ingress network (manager/ingress.py), so a
                                    leader never recreates one a user removed

Only this package talks to etcd (tests/unit/test_layers.py enforces it): `etcd` is the client
(wire protocol, transactions, leases, watches) and this module the typed store over it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from manager.errors import FailedPrecondition, Unavailable
from manager.store.etcd import (
    KV,
    Compare,
    Delete,
    EtcdClient,
    Op,
    Put,
    absent,
    created_at,
    modified_at,
)
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

KINDS: dict[str, type[Message]] = {
    "networks": pb.Network,
    "services": pb.Service,
    "tasks": pb.Task,
    "nodes": pb.Node,
    "attachments": pb.Attachment,
}

M = TypeVar("M", bound=Message)


# ------------------------------------------------------------------------------ typed store


@dataclass
class Batch:
    """One atomic change to the store: puts, deletes and the conditions they depend on."""

    puts: list[tuple[str, Message]] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)
    name_puts: list[tuple[str, str, str]] = field(default_factory=list)
    name_deletes: list[tuple[str, str]] = field(default_factory=list)
    # (kind, id, expected mod revision; 0 = must not exist)
    expect: list[tuple[str, str, int]] = field(default_factory=list)
    # Plain keys under the prefix (path parts below it), for markers that are not objects.
    key_puts: list[tuple[tuple[str, ...], bytes]] = field(default_factory=list)
    key_absent: list[tuple[str, ...]] = field(default_factory=list)

    def create(self, kind: str, obj: Message) -> Batch:
        self.puts.append((kind, obj))
        self.expect.append((kind, obj.meta.id, 0))  # type: ignore[attr-defined]
        return self

    def update(self, kind: str, obj: Message, *, check_version: bool = True) -> Batch:
        self.puts.append((kind, obj))
        if check_version:
            self.expect.append((kind, obj.meta.id, obj.meta.version))  # type: ignore[attr-defined]
        return self

    def delete(self, kind: str, obj_id: str) -> Batch:
        self.deletes.append((kind, obj_id))
        return self

    def claim_name(self, kind: str, name: str, obj_id: str) -> Batch:
        self.name_puts.append((kind, name, obj_id))
        return self

    def release_name(self, kind: str, name: str) -> Batch:
        self.name_deletes.append((kind, name))
        return self

    def put_key(self, parts: tuple[str, ...], value: bytes, *, must_be_new: bool = False) -> Batch:
        """Write a plain key; with `must_be_new` the whole batch fails if it exists already."""
        self.key_puts.append((parts, value))
        if must_be_new:
            self.key_absent.append(parts)
        return self

    def __len__(self) -> int:
        return (
            len(self.puts)
            + len(self.deletes)
            + len(self.name_puts)
            + len(self.name_deletes)
            + len(self.key_puts)
        )


@dataclass
class Snapshot:
    revision: int
    objects: dict[str, dict[str, Message]]
    names: dict[str, dict[str, str]]


class Store:
    """Typed keys over etcd; every write is one transaction fenced by the caller's leadership."""

    # etcd refuses transactions of more than 128 operations by default (--max-txn-ops).
    MAX_OPS = 120

    def __init__(self, etcd: EtcdClient, prefix: str) -> None:
        self.etcd = etcd
        self.prefix = prefix.rstrip("/")
        self._fence: tuple[bytes, int] | None = None
        # Told the seconds each commit's etcd transaction took (manager/metrics.py), if set.
        self.on_txn: Callable[[float], None] | None = None

    def key(self, *parts: str) -> bytes:
        return "/".join((self.prefix, *parts)).encode()

    def object_key(self, kind: str, obj_id: str) -> bytes:
        return self.key("objects", kind, obj_id)

    def name_key(self, kind: str, name: str) -> bytes:
        return self.key("names", kind, name)

    def set_fence(self, key: bytes | None, create_revision: int = 0) -> None:
        """Every commit from now on requires `key` to still be the one created at that revision:
        a manager that lost its leadership (lease expired, someone else elected) cannot write."""
        self._fence = (key, create_revision) if key is not None else None

    def fence_compares(self) -> list[Compare]:
        """The leadership condition every write must carry ([] when unfenced), for writers that
        build their own transactions (the keymanager)."""
        if self._fence is None:
            return []
        return [created_at(*self._fence)]

    def decode(self, kind: str, kv: KV) -> Message:
        obj = KINDS[kind]()
        obj.ParseFromString(kv.value)
        obj.meta.version = kv.mod_revision  # type: ignore[attr-defined]
        return obj

    def parse_key(self, key: bytes) -> tuple[str, ...]:
        rest = key.decode()[len(self.prefix) + 1 :]
        return tuple(rest.split("/", 2))

    async def load(self) -> Snapshot:
        rev, kvs = await self.etcd.get_prefix(self.key(""))
        objects: dict[str, dict[str, Message]] = {k: {} for k in KINDS}
        names: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        for kv in kvs:
            parts = self.parse_key(kv.key)
            if len(parts) == 3 and parts[0] == "objects" and parts[1] in KINDS:
                objects[parts[1]][parts[2]] = self.decode(parts[1], kv)
            elif len(parts) == 3 and parts[0] == "names" and parts[1] in KINDS:
                names[parts[1]][parts[2]] = kv.value.decode()
        return Snapshot(rev, objects, names)

    def batch_txn(self, batch: Batch) -> tuple[list[Compare], list[Op]]:
        """The compares and operations of `batch` as one transaction (the fence first)."""
        conds = self.fence_compares()
        for kind, obj_id, version in batch.expect:
            key = self.object_key(kind, obj_id)
            conds.append(absent(key) if version == 0 else modified_at(key, version))
        conds.extend(absent(self.name_key(kind, name)) for kind, name, _ in batch.name_puts)
        conds.extend(absent(self.key(*parts)) for parts in batch.key_absent)
        ops: list[Op] = [
            Put(self.object_key(kind, obj.meta.id), _encode(obj))  # type: ignore[attr-defined]
            for kind, obj in batch.puts
        ]
        ops.extend(Delete(self.object_key(kind, obj_id)) for kind, obj_id in batch.deletes)
        ops.extend(
            Put(self.name_key(kind, name), obj_id.encode())
            for kind, name, obj_id in batch.name_puts
        )
        ops.extend(Delete(self.name_key(kind, name)) for kind, name in batch.name_deletes)
        ops.extend(Put(self.key(*parts), value) for parts, value in batch.key_puts)
        return conds, ops

    async def commit(self, batch: Batch) -> int:
        """Apply `batch` atomically; returns the new revision and stamps put objects' versions.

        Raises Unavailable when this manager is no longer the leader, FailedPrecondition when an
        expectation no longer holds (someone changed the object since it was read)."""
        if len(batch) > self.MAX_OPS:
            raise ValueError(f"batch of {len(batch)} operations exceeds {self.MAX_OPS}")
        conds, ops = self.batch_txn(batch)
        t0 = time.perf_counter()
        try:
            result = await self.etcd.txn(conds, ops)
        except grpc.aio.AioRpcError as e:
            raise Unavailable(f"etcd is unreachable: {e.details()}") from e
        finally:
            if self.on_txn is not None:
                self.on_txn(time.perf_counter() - t0)
        if not result.succeeded:
            if self._fence is not None:
                cur = await self.etcd.get(self._fence[0])
                if cur is None or cur.create_revision != self._fence[1]:
                    raise Unavailable("this manager is no longer the leader; retry")
            raise FailedPrecondition(
                "the object was changed by someone else since it was read; read it again and retry"
            )
        for _, obj in batch.puts:
            obj.meta.version = result.revision  # type: ignore[attr-defined]
        return result.revision


def _encode(obj: Message) -> bytes:
    """Serialize without `meta.version`: it is the key's mod revision, known after the write."""
    version = obj.meta.version  # type: ignore[attr-defined]
    obj.meta.version = 0  # type: ignore[attr-defined]
    try:
        return obj.SerializeToString(deterministic=True)
    finally:
        obj.meta.version = version  # type: ignore[attr-defined]
