"""Key rotation on a real etcd: the leader's loop rotates on schedule, two managers on one
prefix never both take a step, a deposed leader writes nothing, listeners hear every change."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest

from manager.keymanager import GOSSIP, IPSEC, KeyManager, parse_keyring
from manager.store import Store
from manager.store.etcd import EtcdClient
from proto import objects_pb2 as pb
from tests.support.etcd import EtcdHandle
from tests.support.wait import await_for

pytestmark = pytest.mark.integration

SUBSYSTEMS = (GOSSIP, IPSEC)


def raw(ring: pb.Keyring) -> list[bytes]:
    return [k.key for k in ring.keys]


async def stored(store: Store, subsystem: str) -> tuple[pb.Keyring, int]:
    kv = await store.etcd.get(store.key("keys", subsystem))
    assert kv is not None
    ring, problem = parse_keyring(kv.value)
    assert not problem
    return ring, kv.mod_revision


async def history(store: Store, subsystem: str, since: int) -> list[pb.Keyring]:
    """Every value the keyring had from revision `since` on (etcd keeps the history)."""
    path = store.key("keys", subsystem)
    _, last = await stored(store, subsystem)
    rings: list[pb.Keyring] = []
    watch = store.etcd.watch_prefix(path, since)
    try:
        while True:
            update = await asyncio.wait_for(watch.__anext__(), 5)
            for ev in update.events:
                if ev.kv.key == path:
                    rings.append(parse_keyring(ev.kv.value)[0])
            if update.revision >= last:
                return rings
    finally:
        await watch.aclose()  # type: ignore[attr-defined]


def assert_valid_chain(rings: list[pb.Keyring]) -> int:
    """Each write is exactly one rotation step of the one before it; returns the promotions.

    An addition keeps every key and appends one; a promotion makes the newest key primary and
    keeps the previous primary. Two managers both adding a key from the same ring would show
    as a write that loses a key nobody promoted."""
    promotions = 0
    for before, after in itertools.pairwise(rings):
        b, a = raw(before), raw(after)
        if a[:-1] == b and a[-1] not in b:
            assert after.keys[-1].lamport_time > max(k.lamport_time for k in before.keys)
        else:
            assert a == [b[-1], b[0]], f"not one rotation step: {len(b)} keys -> {len(a)} keys"
            promotions += 1
        assert len(a) <= 3
    return promotions


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled(), "run() ended on its own"


def test_leader_loop_rotates_every_keyring_in_etcd(etcd: EtcdHandle) -> None:
    async def main() -> None:
        client = EtcdClient([etcd.endpoint])
        store = Store(client, etcd.prefix)
        keys = KeyManager(store, subsystems=SUBSYSTEMS, rotation_interval=1.0)
        calls: list[list[bytes]] = []
        keys.subscribe(lambda: calls.append(keys.keys(GOSSIP)))
        await keys.load()
        first = {s: (await stored(store, s)) for s in SUBSYSTEMS}
        assert first[GOSSIP][0] != first[IPSEC][0]
        task = asyncio.create_task(keys.run())

        async def rotated_twice() -> bool:
            # The first key goes with the second promotion ([k2, k1] -> [k3, k2]).
            for s in SUBSYSTEMS:
                ring, _ = await stored(store, s)
                if first[s][0].keys[0].key in raw(ring):
                    return False
            return True

        await await_for("every keyring rotated twice", rotated_twice, 10)
        await stop(task)
        for s in SUBSYSTEMS:
            ring, _ = await stored(store, s)
            assert raw(keys.keyring(s)) == raw(ring)  # memory follows etcd
            chain = [first[s][0], *await history(store, s, first[s][1] + 1)]
            assert assert_valid_chain(chain) >= 2
        # The dispatcher's listener hears each step: every gossip ring written was current in
        # memory when a listener call came.
        written = [raw(r) for r in await history(store, GOSSIP, first[GOSSIP][1] + 1)]
        assert len(written) >= 4 and all(w in calls for w in written)
        await client.close()

    asyncio.run(main())


def test_second_manager_conflicts_and_adopts_instead_of_rotating(etcd: EtcdHandle) -> None:
    async def main() -> None:
        client = EtcdClient([etcd.endpoint])
        a = KeyManager(Store(client, etcd.prefix), rotation_interval=1.0)
        b = KeyManager(Store(client, etcd.prefix), rotation_interval=1.0)
        heard: list[str] = []
        b.subscribe(lambda: heard.append("b"))
        await a.load()
        await b.load()  # reads the ring a created
        assert a.keys() == b.keys() and len(a.keys()) == 1
        later = a.keyring().keys[0].created_at_ms + 1000
        assert await a.rotate_once(GOSSIP, now=later)
        # b's step is due too, on its stale ring: the transaction loses and b takes a's ring.
        assert not await b.rotate_once(GOSSIP, now=later)
        assert heard == ["b"] and b.keys() == a.keys() and len(a.keys()) == 2
        ring, _ = await stored(a.store, GOSSIP)
        assert raw(ring) == a.keys()
        # b is current now: its promotion wins, and a in turn adopts it.
        assert await b.rotate_once(GOSSIP, now=later + 250)
        assert not await a.rotate_once(GOSSIP, now=later + 250)
        assert a.keys() == b.keys() and raw((await stored(a.store, GOSSIP))[0]) == b.keys()
        assert b.keys()[1] == ring.keys[0].key  # the previous primary is kept
        await client.close()

    asyncio.run(main())


def test_two_running_managers_make_one_chain_of_steps(etcd: EtcdHandle) -> None:
    async def main() -> None:
        client = EtcdClient([etcd.endpoint])
        managers = [KeyManager(Store(client, etcd.prefix), rotation_interval=0.6) for _ in range(2)]
        for m in managers:
            await m.load()
        first, rev = await stored(managers[0].store, GOSSIP)
        tasks = [asyncio.create_task(m.run()) for m in managers]
        await asyncio.sleep(3.0)
        for t in tasks:
            await stop(t)
        chain = [first, *await history(managers[0].store, GOSSIP, rev + 1)]
        assert assert_valid_chain(chain) >= 2
        final = raw(chain[-1])
        for m in managers:
            await m.refresh(GOSSIP)
            assert m.keys() == final
        await client.close()

    asyncio.run(main())


def test_deposed_leader_does_not_rotate(etcd: EtcdHandle) -> None:
    async def main() -> None:
        client = EtcdClient([etcd.endpoint])
        store = Store(client, etcd.prefix)
        leader = store.key("leader")
        fence = await client.put(leader, b"m0")
        store.set_fence(leader, fence)
        keys = KeyManager(store, rotation_interval=1.0)
        await keys.load()
        later = keys.keyring().keys[0].created_at_ms + 1000
        before, rev = await stored(store, GOSSIP)
        await client.delete(leader)
        await client.put(leader, b"m1")  # someone else leads now
        assert not await keys.rotate_once(GOSSIP, now=later)
        assert (await stored(store, GOSSIP)) == (before, rev)
        assert raw(keys.keyring()) == raw(before)
        await client.close()

    asyncio.run(main())


def test_refresh_restores_a_garbled_ring_and_recreates_a_deleted_one(etcd: EtcdHandle) -> None:
    async def main() -> None:
        client = EtcdClient([etcd.endpoint])
        store = Store(client, etcd.prefix)
        keys = KeyManager(store)
        heard: list[list[bytes]] = []
        keys.subscribe(lambda: heard.append(keys.keys()))
        await keys.load()
        ours = keys.keys()
        path = keys.key_path(GOSSIP)
        await client.put(path, b"\xff not a keyring")
        assert not await keys.refresh(GOSSIP)
        assert raw((await stored(store, GOSSIP))[0]) == ours and heard == []
        assert not await keys.refresh(GOSSIP)  # and it knows the revision it wrote
        await client.delete(path)
        assert await keys.refresh(GOSSIP)
        new = raw((await stored(store, GOSSIP))[0])
        assert new != ours and keys.keys() == new and heard == [new]
        await client.close()

    asyncio.run(main())
