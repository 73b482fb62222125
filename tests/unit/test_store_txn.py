"""The store's typed transactions (manager/store): what the election, the keymanager and the CA
state, as etcd receives it, and what they read back; and how a Batch becomes one fenced
transaction. No etcd here: the wire stub is a fake that records the request."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aetcd import rpc

from manager.errors import FailedPrecondition, Unavailable
from manager.store import Batch, Store
from manager.store.etcd import (
    KV,
    Compare,
    Delete,
    EtcdClient,
    Get,
    Put,
    TxnResult,
    absent,
    created_at,
    modified_at,
)
from proto import objects_pb2 as pb


class FakeKV:
    """A KV stub answering Txn with `succeeded` and, per op of the branch taken, a range
    response holding `stored` (for a Get) or nothing."""

    def __init__(self, succeeded: bool, stored: dict[bytes, rpc.KeyValue], revision: int = 7):
        self.succeeded = succeeded
        self.stored = stored
        self.revision = revision
        self.requests: list[Any] = []

    async def Txn(self, req: Any, **_: Any) -> Any:  # the gRPC method's name
        self.requests.append(req)
        ops = req.success if self.succeeded else req.failure
        responses = []
        for op in ops:
            kvs = []
            if op.WhichOneof("request") == "request_range" and op.request_range.key in self.stored:
                kvs = [self.stored[op.request_range.key]]
            responses.append(SimpleNamespace(response_range=SimpleNamespace(kvs=kvs)))
        return SimpleNamespace(
            succeeded=self.succeeded,
            header=SimpleNamespace(revision=self.revision),
            responses=responses,
        )


def client(kv: FakeKV) -> EtcdClient:
    c = object.__new__(EtcdClient)
    c.kv = kv  # type: ignore[assignment]
    c.timeout = 1.0
    return c


def test_compares_reach_etcd_as_written() -> None:
    kv = FakeKV(True, {})
    asyncio.run(
        client(kv).txn([absent(b"a"), modified_at(b"b", 5), created_at(b"c", 9)], [Put(b"a", b"1")])
    )
    (req,) = kv.requests
    a, b, c = req.compare
    assert (a.key, a.target, a.version, a.result) == (
        b"a",
        rpc.Compare.VERSION,
        0,
        rpc.Compare.EQUAL,
    )
    assert (b.key, b.target, b.mod_revision) == (b"b", rpc.Compare.MOD, 5)
    assert (c.key, c.target, c.create_revision) == (b"c", rpc.Compare.CREATE, 9)


def test_operations_reach_etcd_in_order_with_their_lease() -> None:
    kv = FakeKV(True, {})
    asyncio.run(client(kv).txn([], [Put(b"k", b"v", lease=42), Delete(b"d")], [Get(b"k")]))
    (req,) = kv.requests
    put, delete = req.success
    assert (put.request_put.key, put.request_put.value, put.request_put.lease) == (b"k", b"v", 42)
    assert delete.request_delete_range.key == b"d"
    (get,) = req.failure
    assert get.request_range.key == b"k"


def test_an_unknown_compare_target_is_refused() -> None:
    kv = FakeKV(True, {})
    with pytest.raises(ValueError, match="unknown compare target"):
        asyncio.run(client(kv).txn([Compare(b"k", "lease", 1)], []))  # type: ignore[arg-type]


def test_reads_come_from_the_branch_taken_one_per_get() -> None:
    stored = {b"x": rpc.KeyValue(key=b"x", value=b"v", mod_revision=3, create_revision=2, lease=5)}
    kv = FakeKV(False, stored, revision=11)
    result = asyncio.run(
        client(kv).txn([absent(b"x")], [Put(b"x", b"new")], [Get(b"x"), Put(b"y", b""), Get(b"z")])
    )
    assert result == TxnResult(False, 11, [KV(b"x", b"v", 3, 2, 5), None])
    won = asyncio.run(client(FakeKV(True, stored)).txn([], [Put(b"x", b"new")], [Get(b"x")]))
    assert won.succeeded and won.reads == []


def network(net_id: str, version: int = 0) -> pb.Network:
    return pb.Network(meta=pb.Meta(id=net_id, version=version), spec=pb.NetworkSpec(name=net_id))


def test_a_batch_is_one_transaction_fenced_first() -> None:
    store = Store(client(FakeKV(True, {})), "/p/")
    store.set_fence(b"/p/leader", 4)
    batch = (
        Batch()
        .create("networks", network("n1"))
        .update("networks", network("n2", version=8))
        .update("networks", network("n3", version=9), check_version=False)
        .delete("tasks", "t1")
        .claim_name("networks", "n1", "n1")
        .release_name("networks", "old")
        .put_key(("ingress", "created"), b"1", must_be_new=True)
    )
    conds, ops = store.batch_txn(batch)
    assert conds == [
        created_at(b"/p/leader", 4),
        absent(b"/p/objects/networks/n1"),
        modified_at(b"/p/objects/networks/n2", 8),
        absent(b"/p/names/networks/n1"),
        absent(b"/p/ingress/created"),
    ]
    assert [type(op).__name__ + ":" + op.key.decode() for op in ops] == [
        "Put:/p/objects/networks/n1",
        "Put:/p/objects/networks/n2",
        "Put:/p/objects/networks/n3",
        "Delete:/p/objects/tasks/t1",
        "Put:/p/names/networks/n1",
        "Delete:/p/names/networks/old",
        "Put:/p/ingress/created",
    ]
    # The version is the key's mod revision, never stored in the value.
    stored = pb.Network.FromString(ops[1].value)  # type: ignore[union-attr]
    assert stored.meta.version == 0 and stored.meta.id == "n2"


def test_commit_stamps_versions_and_names_why_it_failed() -> None:
    obj = network("n1")
    store = Store(client(FakeKV(True, {}, revision=21)), "/p")
    assert asyncio.run(store.commit(Batch().create("networks", obj))) == 21
    assert obj.meta.version == 21

    lost = FakeKV(False, {})
    store = Store(client(lost), "/p")
    with pytest.raises(FailedPrecondition, match="changed by someone else"):
        asyncio.run(store.commit(Batch().create("networks", network("n2"))))
    store.set_fence(b"/p/leader", 4)

    async def no_leader(key: bytes) -> KV | None:
        return None

    store.etcd.get = no_leader  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match="no longer the leader"):
        asyncio.run(store.commit(Batch().create("networks", network("n2"))))
