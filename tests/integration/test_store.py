"""The etcd edge on a real etcd: transactions, fencing, and watches that survive restarts and
compaction."""

from __future__ import annotations

import asyncio

import pytest

from manager.errors import FailedPrecondition, Unavailable
from manager.store import Batch, Store
from manager.store.etcd import EtcdClient, WatchUpdate
from ovctl.devcluster.etcd import EtcdServer
from proto import objects_pb2 as pb
from tests.support.etcd import EtcdHandle

pytestmark = pytest.mark.integration


def net(obj_id: str, name: str) -> pb.Network:
    return pb.Network(
        meta=pb.Meta(id=obj_id),
        spec=pb.NetworkSpec(name=name),
        subnet="10.1.0.0/24",
        gateway="10.1.0.1",
        vni=4096,
    )


async def _next(it: object, timeout: float = 10.0) -> WatchUpdate:
    return await asyncio.wait_for(it.__anext__(), timeout)  # type: ignore[attr-defined]


def test_commit_is_atomic_and_names_are_unique(etcd: EtcdHandle) -> None:
    async def main() -> None:
        client = EtcdClient([etcd.endpoint])
        store = Store(client, etcd.prefix)
        a = net("a1", "front")
        await store.commit(Batch().create("networks", a).claim_name("networks", "front", "a1"))
        assert a.meta.version > 0
        # Same name, different ID: the whole batch is refused, including the object put.
        b = net("b2", "front")
        with pytest.raises(FailedPrecondition):
            await store.commit(Batch().create("networks", b).claim_name("networks", "front", "b2"))
        snap = await store.load()
        assert set(snap.objects["networks"]) == {"a1"}
        assert snap.names["networks"] == {"front": "a1"}
        stored = snap.objects["networks"]["a1"]
        assert isinstance(stored, pb.Network) and stored.meta.version == a.meta.version
        # A stale version is refused.
        stale = pb.Network()
        stale.CopyFrom(a)
        a.spec.labels["x"] = "1"
        await store.commit(Batch().update("networks", a))
        with pytest.raises(FailedPrecondition):
            await store.commit(Batch().update("networks", stale))
        await client.close()

    asyncio.run(main())


def test_fence_stops_a_deposed_leader(etcd: EtcdHandle) -> None:
    async def main() -> None:
        client = EtcdClient([etcd.endpoint])
        store = Store(client, etcd.prefix)
        leader_key = store.key("leader")
        rev = await client.put(leader_key, b"m0")
        store.set_fence(leader_key, rev)
        await store.commit(Batch().create("networks", net("n1", "one")))
        # Someone else becomes leader: the key is recreated at a new revision.
        await client.delete(leader_key)
        await client.put(leader_key, b"m1")
        with pytest.raises(Unavailable, match="no longer the leader"):
            await store.commit(Batch().create("networks", net("n2", "two")))
        assert set((await store.load()).objects["networks"]) == {"n1"}
        await client.close()

    asyncio.run(main())


def test_watch_resumes_after_etcd_restart(etcd_fresh: EtcdServer) -> None:
    async def main() -> None:
        client = EtcdClient([etcd_fresh.endpoint], timeout=2)
        rev = await client.put(b"/w/a", b"1")
        it = client.watch_prefix(b"/w/", rev + 1, retry_delay=0.1).__aiter__()
        first = asyncio.ensure_future(_next(it))
        await asyncio.sleep(0.2)
        await client.put(b"/w/b", b"2")
        got = await first
        assert [e.kv.key for e in got.events] == [b"/w/b"]
        await asyncio.to_thread(etcd_fresh.stop)
        pending = asyncio.ensure_future(_next(it, 20))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(etcd_fresh.start)
        await client.put(b"/w/c", b"3")
        got = await pending
        # Exactly the change made after the restart: nothing missed, nothing repeated.
        assert [e.kv.key for e in got.events] == [b"/w/c"]
        assert not got.resync
        await client.close()

    asyncio.run(main())


def test_watch_resyncs_after_compaction(etcd_fresh: EtcdServer) -> None:
    async def main() -> None:
        client = EtcdClient([etcd_fresh.endpoint])
        start = await client.put(b"/c/a", b"1")
        await client.put(b"/c/b", b"2")
        await client.delete(b"/c/a")
        last = await client.put(b"/c/d", b"4")
        await client.compact(last)
        it = client.watch_prefix(b"/c/", start + 1).__aiter__()
        got = await _next(it)
        assert got.resync
        assert sorted(e.kv.key for e in got.events) == [b"/c/b", b"/c/d"]
        nxt = asyncio.ensure_future(_next(it))
        await asyncio.sleep(0.1)
        await client.put(b"/c/e", b"5")
        got = await nxt
        assert not got.resync and [e.kv.key for e in got.events] == [b"/c/e"]
        await client.close()

    asyncio.run(main())
