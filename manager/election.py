"""Leader election through an etcd lease.

Each manager holds a lease it keeps alive and registers its address under it. The leader key is
created (only if absent) attached to that lease; its create revision becomes the write fence, so
a manager that lost its lease can no longer commit even if it has not noticed yet. A follower
watches the leader key and campaigns as soon as it disappears: after a clean stop (lease revoked)
at once, after a crash when the lease's TTL runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from manager.store import Store
from manager.store.etcd import EtcdClient, Get, Put, absent

log = logging.getLogger(__name__)


class Election:
    def __init__(
        self, etcd: EtcdClient, store: Store, manager_id: str, advertise: str, ttl: int = 3
    ) -> None:
        self.etcd = etcd
        self.store = store
        self.manager_id = manager_id
        self.advertise = advertise
        self.ttl = ttl
        self.leader_key = store.key("leader")
        self.manager_key = store.key("managers", manager_id)
        self.leader_id = ""
        self.lease_id = 0
        self.is_leader = False

    async def run(
        self,
        on_elected: Callable[[int], Awaitable[None]],
        on_deposed: Callable[[], Awaitable[None]],
    ) -> None:
        """Campaign forever; call `on_elected(fence_revision)` on winning and `on_deposed()` when
        the lease is lost. Returns only by cancellation."""
        while True:
            try:
                self.lease_id = await self.etcd.lease_grant(self.ttl)
                await self.etcd.put(self.manager_key, self.advertise.encode(), self.lease_id)
                keepalive = asyncio.create_task(self._keepalive(self.lease_id))
                try:
                    await self._campaign_while_alive(keepalive, on_elected, on_deposed)
                finally:
                    keepalive.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await keepalive
            except grpc.aio.AioRpcError as e:
                log.warning("election: etcd unavailable (%s); retrying", e.code().name)
            if self.is_leader:
                self.is_leader = False
                await on_deposed()
            await asyncio.sleep(0.2)

    async def _campaign_while_alive(
        self,
        keepalive: asyncio.Task[None],
        on_elected: Callable[[int], Awaitable[None]],
        on_deposed: Callable[[], Awaitable[None]],
    ) -> None:
        while not keepalive.done():
            result = await self.etcd.txn(
                [absent(self.leader_key)],
                [Put(self.leader_key, self.manager_id.encode(), lease=self.lease_id)],
                [Get(self.leader_key)],
            )
            if result.succeeded:
                self.leader_id = self.manager_id
                self.is_leader = True
                log.info("manager %s is now the leader", self.manager_id)
                await on_elected(result.revision)
                await asyncio.wait({keepalive})
                self.is_leader = False
                log.warning("manager %s lost its lease: no longer the leader", self.manager_id)
                await on_deposed()
                return
            leader = result.reads[0]
            if leader is None:
                continue
            if leader.value.decode() == self.manager_id and leader.lease != self.lease_id:
                # Our own previous life (killed before its lease ran out): nobody else leads,
                # so end that lease now instead of waiting out its TTL.
                log.info("revoking lease %x of this manager's previous run", leader.lease)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.etcd.lease_revoke(leader.lease)
                continue
            self.leader_id = leader.value.decode()
            await self._wait_leader_gone(result.revision, keepalive)

    async def _wait_leader_gone(self, revision: int, keepalive: asyncio.Task[None]) -> None:
        async def gone() -> None:
            async for update in self.etcd.watch_prefix(self.leader_key, revision + 1):
                if any(e.kv.key == self.leader_key and e.kind == "delete" for e in update.events):
                    return
                if update.resync and not any(e.kv.key == self.leader_key for e in update.events):
                    return

        watcher = asyncio.create_task(gone())
        try:
            await asyncio.wait({watcher, keepalive}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        self.leader_id = ""

    async def _keepalive(self, lease_id: int) -> None:
        """Returns when the lease is certainly gone (etcd says so, or no refresh for a TTL)."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                remaining = await self.etcd.lease_keepalive(lease_id)
            except grpc.aio.AioRpcError as e:
                if time.monotonic() - last_ok >= self.ttl:
                    log.warning("lease keep-alive failing for %ds (%s)", self.ttl, e.code().name)
                    return
                continue
            if remaining <= 0:
                return
            last_ok = time.monotonic()

    async def resign(self) -> None:
        """Give up leadership and membership at once, so another manager takes over without
        waiting for the TTL."""
        if self.lease_id:
            with contextlib.suppress(Exception):
                await self.etcd.lease_revoke(self.lease_id)
