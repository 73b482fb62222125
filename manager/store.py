"""etcd edge of the manager: typed object keys, fenced transactions, resumable watches.

Everything the cluster wants lives under one key prefix:

    {prefix}/objects/{kind}/{id}    serialized object (networks, services, tasks, nodes)
    {prefix}/names/{kind}/{name}    the ID owning a name (uniqueness is a compare on this key)
    {prefix}/leader                 the leading manager's ID, attached to its lease
    {prefix}/managers/{id}          a manager's advertised address, attached to its lease
    {prefix}/keys/{subsystem}       a Keyring (gossip, ipsec), created once by a leader and
                                    rotated by it (keymanager)
    {prefix}/ingress/created        set with the first ingress network (manager/ingress.py), so a
                                    leader never recreates one a user removed

The etcd gRPC stubs come from aetcd (`aetcd.rpc`), but the channel is ours: aetcd's Client only
makes insecure channels, and its watch turns compaction into an exception that ends the stream,
while the manager needs a watch that resumes after an etcd restart and resyncs after compaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from aetcd import rpc
from google.protobuf.message import Message

from manager.errors import FailedPrecondition, Unavailable
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

KINDS: dict[str, type[Message]] = {
    "networks": pb.Network,
    "services": pb.Service,
    "tasks": pb.Task,
    "nodes": pb.Node,
}

M = TypeVar("M", bound=Message)


def prefix_range_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's range idiom)."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    kv: KV


@dataclass(frozen=True)
class WatchUpdate:
    """Events of one etcd revision range, in order. `resync` means: forget what you had, the
    events are a full listing at `revision` (the watch fell behind a compaction)."""

    revision: int
    events: list[WatchEvent]
    resync: bool = False


def _kv(m: Any) -> KV:
    return KV(m.key, m.value, m.mod_revision, m.create_revision, m.lease)


@dataclass(frozen=True)
class EtcdTLS:
    """How the manager reaches etcd over TLS: the CA that signed etcd's server certificate and,
    for etcd's --client-cert-auth, this manager's client certificate and key (PEM bytes)."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None
    # The name etcd's certificates are checked against, when not the address dialled: gRPC
    # cannot check each member of a several-endpoint channel against its own address, so by
    # default the first endpoint's host is used for all (etcd certificates then need a SAN in
    # common: list every member's IP in each, or set a shared DNS name here).
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("an etcd client certificate needs its key, and a key its certificate")

    def __repr__(self) -> str:  # never print the key
        return f"EtcdTLS(ca=<{len(self.ca)} bytes>, client_cert={self.cert is not None})"


def etcd_credentials(tls: EtcdTLS) -> grpc.ChannelCredentials:
    """gRPC channel credentials for `tls` (verify etcd against `tls.ca`, present the client
    certificate if there is one). etcd's certificate must name the address dialled (an IP SAN
    for an IP endpoint): gRPC checks it like any TLS client."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )


class EtcdClient:
    """Async etcd v3 client over one gRPC channel (several endpoints: pick-first failover)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        tls: EtcdTLS | None = None,
    ) -> None:
        """`tls` (or ready-made `credentials`, not both) makes the channel TLS."""
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        target = endpoints[0] if len(endpoints) == 1 else "ipv4:" + ",".join(endpoints)
        options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 10_000),
        ]
        if tls is not None:
            if credentials is not None:
                raise ValueError("pass tls or credentials, not both")
            credentials = etcd_credentials(tls)
            name = tls.server_name or (endpoints[0].rsplit(":", 1)[0] if len(endpoints) > 1 else "")
            if name:
                options.append(("grpc.ssl_target_name_override", name.strip("[]")))
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.secure = credentials is not None
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=options)
        self.kv = rpc.KVStub(self.channel)
        self.watch_stub = rpc.WatchStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.maintenance = rpc.MaintenanceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def probe(self, timeout: float = 3.0) -> str:
        """Why etcd cannot be used right now, for a person; "" if it answers. Every other call
        waits for the channel to be ready, so a TLS mistake (no client certificate, a CA that
        does not match) would only ever show as a deadline; this one fails fast with the
        handshake's reason (for a clear error at startup)."""
        try:
            await self.kv.Range(rpc.RangeRequest(key=b"\0", count_only=True), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            hint = (
                " (check the etcd TLS files: --etcd-cacert, --etcd-cert, --etcd-key)"
                if self.secure
                else ""
            )
            return f"etcd at {', '.join(self.endpoints)} is not usable: {e.details()}{hint}"
        return ""

    async def get(self, key: bytes) -> KV | None:
        resp = await self.kv.Range(
            rpc.RangeRequest(key=key), timeout=self.timeout, wait_for_ready=True
        )
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KV]]:
        """All keys under `prefix` at one revision (one range read is a consistent snapshot)."""
        resp = await self.kv.Range(
            rpc.RangeRequest(key=prefix, range_end=prefix_range_end(prefix)),
            timeout=self.timeout,
            wait_for_ready=True,
        )
        return resp.header.revision, [_kv(m) for m in resp.kvs]

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        resp = await self.kv.Put(
            rpc.PutRequest(key=key, value=value, lease=lease),
            timeout=self.timeout,
            wait_for_ready=True,
        )
        return int(resp.header.revision)

    async def delete(self, key: bytes) -> int:
        resp = await self.kv.DeleteRange(
            rpc.DeleteRangeRequest(key=key), timeout=self.timeout, wait_for_ready=True
        )
        return int(resp.header.revision)

    async def txn(
        self, compare: list[Any], success: list[Any], failure: list[Any] | None = None
    ) -> Any:
        return await self.kv.Txn(
            rpc.TxnRequest(compare=compare, success=success, failure=failure or []),
            timeout=self.timeout,
            wait_for_ready=True,
        )

    async def revision(self) -> int:
        resp = await self.kv.Range(
            rpc.RangeRequest(key=b"\0", count_only=True), timeout=self.timeout, wait_for_ready=True
        )
        return int(resp.header.revision)

    async def lease_grant(self, ttl: int) -> int:
        resp = await self.lease.LeaseGrant(
            rpc.LeaseGrantRequest(TTL=ttl), timeout=self.timeout, wait_for_ready=True
        )
        return int(resp.ID)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns the remaining TTL (0: the lease is gone)."""
        call = self.lease.LeaseKeepAlive(timeout=self.timeout, wait_for_ready=True)
        await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
        resp = await call.read()
        await call.done_writing()
        call.cancel()
        return 0 if resp is grpc.aio.EOF else int(resp.TTL)

    async def lease_revoke(self, lease_id: int) -> None:
        await self.lease.LeaseRevoke(
            rpc.LeaseRevokeRequest(ID=lease_id), timeout=self.timeout, wait_for_ready=True
        )

    async def compact(self, revision: int) -> None:
        await self.kv.Compact(
            rpc.CompactionRequest(revision=revision, physical=True),
            timeout=self.timeout,
            wait_for_ready=True,
        )

    async def watch_prefix(
        self, prefix: bytes, start_revision: int, *, retry_delay: float = 0.2
    ) -> AsyncIterator[WatchUpdate]:
        """Changes under `prefix` from `start_revision` on, forever.

        When etcd goes away the watch is re-created from the last revision seen + 1, so nothing is
        missed or repeated. When that revision has been compacted, the history is gone: the
        caller gets a `resync` update holding a full listing, then the watch goes on from there.
        """
        next_rev = start_revision
        range_end = prefix_range_end(prefix)
        while True:
            call = self.watch_stub.Watch()
            try:
                await call.write(
                    rpc.WatchRequest(
                        create_request=rpc.WatchCreateRequest(
                            key=prefix, range_end=range_end, start_revision=next_rev
                        )
                    )
                )
                compacted = False
                async for resp in call:
                    if resp.compact_revision:
                        compacted = True
                        break
                    if resp.canceled:
                        break
                    if not resp.events:
                        continue
                    events = [
                        WatchEvent("put" if e.type == rpc.Event.PUT else "delete", _kv(e.kv))
                        for e in resp.events
                    ]
                    rev = max(e.kv.mod_revision for e in events)
                    next_rev = rev + 1
                    yield WatchUpdate(rev, events)
                if compacted:
                    rev, kvs = await self.get_prefix(prefix)
                    next_rev = rev + 1
                    yield WatchUpdate(rev, [WatchEvent("put", kv) for kv in kvs], resync=True)
                    continue
            except grpc.aio.AioRpcError as e:
                if e.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.UNKNOWN,
                    grpc.StatusCode.INTERNAL,
                ):
                    raise
                log.info(
                    "etcd watch on %r interrupted (%s); resuming at revision %d",
                    prefix,
                    e.code().name,
                    next_rev,
                )
            finally:
                call.cancel()
            await asyncio.sleep(retry_delay)


# ------------------------------------------------------------------------------ typed store


def compare(key: bytes, target: str, value: int) -> Any:
    """An etcd compare `target(key) == value` (target: version, create or mod revision)."""
    c = rpc.Compare(key=key, result=rpc.Compare.EQUAL)
    if target == "version":
        c.target = rpc.Compare.VERSION
        c.version = value
    elif target == "create":
        c.target = rpc.Compare.CREATE
        c.create_revision = value
    else:
        c.target = rpc.Compare.MOD
        c.mod_revision = value
    return c


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

    def fence_compares(self) -> list[Any]:
        """The leadership condition every write must carry ([] when unfenced), for writers that
        build their own transactions (the keymanager)."""
        if self._fence is None:
            return []
        return [compare(self._fence[0], "create", self._fence[1])]

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

    async def commit(self, batch: Batch) -> int:
        """Apply `batch` atomically; returns the new revision and stamps put objects' versions.

        Raises Unavailable when this manager is no longer the leader, FailedPrecondition when an
        expectation no longer holds (someone changed the object since it was read)."""
        if len(batch) > self.MAX_OPS:
            raise ValueError(f"batch of {len(batch)} operations exceeds {self.MAX_OPS}")
        conds = []
        if self._fence is not None:
            conds.append(compare(self._fence[0], "create", self._fence[1]))
        for kind, obj_id, version in batch.expect:
            key = self.object_key(kind, obj_id)
            conds.append(
                compare(key, "version", 0) if version == 0 else compare(key, "mod", version)
            )
        for kind, name, _ in batch.name_puts:
            conds.append(compare(self.name_key(kind, name), "version", 0))
        for parts in batch.key_absent:
            conds.append(compare(self.key(*parts), "version", 0))
        ops = []
        for kind, obj in batch.puts:
            ops.append(
                rpc.RequestOp(
                    request_put=rpc.PutRequest(
                        key=self.object_key(kind, obj.meta.id),  # type: ignore[attr-defined]
                        value=_encode(obj),
                    )
                )
            )
        for kind, obj_id in batch.deletes:
            ops.append(
                rpc.RequestOp(
                    request_delete_range=rpc.DeleteRangeRequest(key=self.object_key(kind, obj_id))
                )
            )
        for kind, name, obj_id in batch.name_puts:
            ops.append(
                rpc.RequestOp(
                    request_put=rpc.PutRequest(key=self.name_key(kind, name), value=obj_id.encode())
                )
            )
        for kind, name in batch.name_deletes:
            ops.append(
                rpc.RequestOp(
                    request_delete_range=rpc.DeleteRangeRequest(key=self.name_key(kind, name))
                )
            )
        for parts, value in batch.key_puts:
            ops.append(rpc.RequestOp(request_put=rpc.PutRequest(key=self.key(*parts), value=value)))
        try:
            resp = await self.etcd.txn(conds, ops)
        except grpc.aio.AioRpcError as e:
            raise Unavailable(f"etcd is unreachable: {e.details()}") from e
        if not resp.succeeded:
            if self._fence is not None:
                cur = await self.etcd.get(self._fence[0])
                if cur is None or cur.create_revision != self._fence[1]:
                    raise Unavailable("this manager is no longer the leader; retry")
            raise FailedPrecondition(
                "the object was changed by someone else since it was read; read it again and retry"
            )
        rev = int(resp.header.revision)
        for _, obj in batch.puts:
            obj.meta.version = rev  # type: ignore[attr-defined]
        return rev


def _encode(obj: Message) -> bytes:
    """Serialize without `meta.version`: it is the key's mod revision, known after the write."""
    version = obj.meta.version  # type: ignore[attr-defined]
    obj.meta.version = 0  # type: ignore[attr-defined]
    try:
        return obj.SerializeToString(deterministic=True)
    finally:
        obj.meta.version = version  # type: ignore[attr-defined]
