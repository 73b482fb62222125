"""The load balancer's applier: keeps one nftables table per namespace equal to a spec.

Why a full replace on the first apply of a key: after an agent restart the tables left by
the previous agent keep serving (published ports must survive a restart), but their index
assignment is unknown to us; replacing the table atomically adopts it without a gap.
After that, every apply sends only the difference against the last applied state; if nft
refuses it (the table was changed behind our back, say) we fall back to one full replace.

A namespace that disappears between calls (its sandbox was removed) is not an error: the key
is forgotten quietly, there is nothing left to balance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.lb.drift import LbDrift, chain_drift
from agent.lb.nft import NetnsGone, Nft, NftError
from agent.lb.plan import LbSpec, LbState, render_delete, render_full, render_update

log = logging.getLogger(__name__)


class LbError(Exception):
    """A spec could not be applied, not even by a full replace."""


@dataclass
class _Entry:
    netns: str | None
    nft: Nft
    state: LbState | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    spec: LbSpec | None = None  # the last one applied (what `drift` compares with)


@dataclass
class LbStats:
    full: int = 0  # full replaces (first apply, structural change or fallback)
    updates: int = 0  # incremental scripts applied
    fallbacks: int = 0  # incremental scripts nft refused, repaired by a full replace
    noops: int = 0  # applies where nothing changed
    gone: int = 0  # keys dropped because their namespace vanished


class LoadBalancer:
    def __init__(self, table: str = "ovnet-lb", *, backend: str = "auto") -> None:
        self.table = table
        self.backend = backend
        self._entries: dict[str, _Entry] = {}
        self.last_apply_ms: dict[str, float] = {}
        self.stats = LbStats()
        # Told the seconds of each apply that changed the kernel (agent/metrics.py), if set.
        self.on_apply: Callable[[float], None] | None = None

    def keys(self) -> set[str]:
        return set(self._entries)

    def state(self, key: str) -> LbState | None:
        entry = self._entries.get(key)
        return entry.state if entry else None

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        self.last_apply_ms.pop(key, None)
        if entry is not None:
            entry.nft.close()

    async def apply(self, key: str, netns: str | None, spec: LbSpec) -> None:
        """Make our table in ``netns`` match ``spec`` (ValueError for an invalid spec)."""
        t0 = time.perf_counter()
        changed = False
        while True:
            entry = self._entries.get(key)
            if entry is None:
                try:
                    # Made in a thread inside the namespace: its socket stays there.
                    nft = await asyncio.to_thread(Nft, netns, backend=self.backend)
                except NetnsGone:
                    self._forget_gone(key)
                    return
                except (NftError, OSError) as e:
                    raise LbError(f"lb {key}: no nftables context in {netns or 'host'}: {e}") from e
                entry = self._entries.setdefault(key, _Entry(netns, nft))
                if entry.nft is not nft:  # a concurrent apply made one first
                    nft.close()
            async with entry.lock:
                current = self._entries.get(key)
                if current is None:  # removed while we waited: do not resurrect it
                    return
                if current is not entry:
                    continue
                if entry.netns != netns or not entry.nft.alive():
                    # Moved, or the name is gone or now names a new namespace: start over
                    # with a context made inside it (or forget the key if it is gone).
                    self._drop(key)
                    continue
                try:
                    changed = await self._apply_locked(key, entry, spec)
                except NetnsGone:
                    self._forget_gone(key)
                    return
                entry.spec = spec
                break
        self.last_apply_ms[key] = (time.perf_counter() - t0) * 1000
        if changed and self.on_apply is not None:
            self.on_apply(time.perf_counter() - t0)

    async def _apply_locked(self, key: str, entry: _Entry, spec: LbSpec) -> bool:
        """Whether nft was given a script (False: the table already held `spec`)."""
        if entry.state is not None:
            script, state = render_update(self.table, entry.state, spec)
            if not script:
                entry.state = state
                self.stats.noops += 1
                return False
            try:
                await entry.nft.arun(script)
                entry.state = state
                self.stats.updates += 1
                return True
            except NetnsGone:
                raise
            except NftError as e:
                self.stats.fallbacks += 1
                log.warning("lb %s: nft refused an update (%s); replacing the table", key, e)
        script, state = render_full(self.table, spec)
        try:
            await entry.nft.arun(script)
        except NetnsGone:
            raise
        except NftError as e:
            entry.state = None  # unknown now: the next apply starts with a full replace
            raise LbError(f"lb {key}: nft refused the full ruleset: {e}") from e
        entry.state = state
        self.stats.full += 1
        return True

    def _forget_gone(self, key: str) -> None:
        log.info("lb %s: network namespace gone; forgetting it", key)
        self.stats.gone += 1
        self._drop(key)

    async def remove(self, key: str, netns: str | None, *, delete_table: bool = True) -> None:
        """Forget ``key``; delete our table in ``netns`` (also when the key is unknown, e.g.
        a leftover of a previous agent). A vanished namespace is fine."""
        entry = self._entries.get(key)
        lock = entry.lock if entry is not None else None
        if lock is not None:
            await lock.acquire()
        try:
            if entry is not None and self._entries.get(key) is entry:
                del self._entries[key]
                self.last_apply_ms.pop(key, None)
            nft = entry.nft if entry is not None and entry.netns == netns else None
            if delete_table:
                await self._delete_table(netns, nft)
        finally:
            if entry is not None:
                entry.nft.close()
            if lock is not None:
                lock.release()

    async def _delete_table(self, netns: str | None, nft: Nft | None) -> None:
        own = nft is None
        try:
            if nft is None:
                nft = await asyncio.to_thread(Nft, netns, backend=self.backend)
            await nft.arun(render_delete(self.table))
        except NetnsGone:
            return
        except NftError as e:
            raise LbError(f"deleting table {self.table} in {netns or 'host'}: {e}") from e
        finally:
            if own and nft is not None:
                nft.close()

    async def close(self) -> None:
        """Free every context; the tables stay, so published ports keep working while the
        agent restarts."""
        for key in list(self._entries):
            entry = self._entries.pop(key)
            async with entry.lock:
                entry.nft.close()
        self.last_apply_ms.clear()

    async def drift(self, key: str) -> list[LbDrift]:
        """How the kernel's table of `key` differs from the last applied spec (`ovctl
        doctor`): updates only send differences, so a rule deleted by hand stays deleted
        until `invalidate` makes the next apply a full replace."""
        entry = self._entries.get(key)
        if entry is None or entry.spec is None:
            return []
        async with entry.lock:
            if entry.spec is None:
                return []
            script, _ = render_full(self.table, entry.spec)
            try:
                listing: str | None = await entry.nft.arun(f"list table ip {self.table}")
            except NetnsGone:
                return []
            except NftError:
                listing = None
        return chain_drift(self.table, entry.netns or "host", script, listing)

    def invalidate(self, key: str) -> None:
        """Forget what the table of `key` holds: its next apply replaces it whole."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.state = None

    def __contains__(self, key: str) -> bool:
        return key in self._entries


__all__ = ["LbError", "LbStats", "LoadBalancer", "NftError"]
