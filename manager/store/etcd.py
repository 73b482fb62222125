"""The etcd client of the manager: the only module that speaks etcd's wire protocol.

It offers what the rest of the manager needs, in its own types: reads and writes, all-or-nothing
transactions stated as compares (`absent`, `modified_at`, `created_at`) and operations (`Put`,
`Delete`, `Get`), leases (grant, keep-alive, revoke), and watches that resume.

The etcd gRPC stubs come from aetcd (`aetcd.rpc`), but the channel is ours: aetcd's Client only
makes insecure channels, and its watch turns compaction into an exception that ends the stream,
while the manager needs a watch that resumes after an etcd restart and resyncs after compaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from aetcd import rpc

from osutil.hostport import split_hostport

log = logging.getLogger(__name__)


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


# ------------------------------------------------------------------------------ transactions
# The typed vocabulary of an etcd transaction, so that the election, the keymanager and the CA
# state what they need and only this module knows etcd's wire types.

CompareTarget = Literal["version", "create", "mod"]


@dataclass(frozen=True)
class Compare:
    """The condition ``target(key) == value``: ``version`` 0 means the key does not exist,
    ``create`` and ``mod`` compare the key's create or last-modified revision."""

    key: bytes
    target: CompareTarget
    value: int


def absent(key: bytes) -> Compare:
    """The condition "`key` does not exist"."""
    return Compare(key, "version", 0)


def modified_at(key: bytes, revision: int) -> Compare:
    """The condition "`key` was last written at `revision`" (nobody changed it since)."""
    return Compare(key, "mod", revision)


def created_at(key: bytes, revision: int) -> Compare:
    """The condition "`key` is the one created at `revision`" (a leadership fence)."""
    return Compare(key, "create", revision)


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: bytes


@dataclass(frozen=True)
class Get:
    key: bytes


Op = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    """What a transaction did: whether its compares held (so the success ops ran, else the
    failure ops), the revision after it, and what each `Get` of the branch taken read (one
    entry per Get, in order: the key-value, or None when the key does not exist)."""

    succeeded: bool
    revision: int
    reads: list[KV | None]


def _rpc_compare(c: Compare) -> Any:
    out = rpc.Compare(key=c.key, result=rpc.Compare.EQUAL)
    if c.target == "version":
        out.target = rpc.Compare.VERSION
        out.version = c.value
    elif c.target == "create":
        out.target = rpc.Compare.CREATE
        out.create_revision = c.value
    elif c.target == "mod":
        out.target = rpc.Compare.MOD
        out.mod_revision = c.value
    else:
        raise ValueError(f"unknown compare target {c.target!r}")
    return out


def _rpc_op(op: Op) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key, value=op.value, lease=op.lease))
    if isinstance(op, Delete):
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key))
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key))


def _reads(ops: Sequence[Op], responses: Sequence[Any]) -> list[KV | None]:
    """The key-value each Get of `ops` read, from etcd's responses (one per op, in order)."""
    out: list[KV | None] = []
    for op, r in zip(ops, responses, strict=True):
        if isinstance(op, Get):
            kvs = r.response_range.kvs
            out.append(_kv(kvs[0]) if kvs else None)
    return out


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
            name = tls.server_name or (
                split_hostport(endpoints[0])[0] if len(endpoints) > 1 else ""
            )
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
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """All or nothing: if every compare holds, run `success`, else `failure`, in one etcd
        revision. grpc.aio.AioRpcError when etcd cannot be reached."""
        resp = await self.kv.Txn(
            rpc.TxnRequest(
                compare=[_rpc_compare(c) for c in compare],
                success=[_rpc_op(op) for op in success],
                failure=[_rpc_op(op) for op in failure],
            ),
            timeout=self.timeout,
            wait_for_ready=True,
        )
        taken = success if resp.succeeded else failure
        return TxnResult(
            bool(resp.succeeded), int(resp.header.revision), _reads(taken, resp.responses)
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

    async def mirror_prefix(
        self,
        prefix: bytes,
        apply: Callable[[dict[str, bytes]], None],
        *,
        retry_delay: float = 0.5,
    ) -> None:
        """Call `apply(key suffix -> value)` with everything under `prefix`, then again after
        every change, forever (a listing, then a watch; both start over when etcd fails)."""
        while True:
            try:
                rev, kvs = await self.get_prefix(prefix)
                current = {kv.key[len(prefix) :].decode(): kv.value for kv in kvs}
                apply(current)
                async for update in self.watch_prefix(prefix, rev + 1):
                    if update.resync:
                        current = {}
                    for ev in update.events:
                        name = ev.kv.key[len(prefix) :].decode()
                        if ev.kind == "put":
                            current[name] = ev.kv.value
                        else:
                            current.pop(name, None)
                    apply(current)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(retry_delay)

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
