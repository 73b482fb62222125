"""What a manager holds while it leads: the store, the in-memory state, the allocator.

All writers (control API, reconciler, dispatcher) serialize on `lock` and commit through
`commit`, which writes to etcd first and mirrors into memory only once etcd has accepted it; that
keeps the allocator and the state exactly in step with what is stored, and lets the dispatcher
and reconciler be told what changed.
"""

from __future__ import annotations

import asyncio
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass

from manager.allocator import Allocator
from manager.state import ClusterState
from manager.store import Batch, Store
from proto import objects_pb2 as pb

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id() -> str:
    """25 random base-36 characters, like swarmkit's IDs (~129 bits)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(25))


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class ManagerConfig:
    default_pools: tuple[str, ...] = ("10.0.0.0/8",)
    default_subnet_size: int = 24
    heartbeat_period_ms: int = 5000
    # A node is down after this many missed heartbeat periods.
    heartbeat_grace: float = 3.0
    task_history_limit: int = 5
    reconcile_interval: float = 1.0
    # Seconds a node may be down before its attachments (CNI containers) are released: long
    # enough to ride out a reboot, short enough that a dead host's addresses come back.
    attachment_grace: float = 3600.0


Listener = Callable[[Batch], None]


class Cluster:
    def __init__(self, store: Store, state: ClusterState, config: ManagerConfig) -> None:
        self.store = store
        self.state = state
        self.config = config
        self.lock = asyncio.Lock()
        self.allocator = Allocator(
            pools=config.default_pools,
            subnet_size=config.default_subnet_size,
            node_name=state.hostname,
        )
        self.allocator.restore(
            state.networks.values(),
            state.services.values(),
            state.tasks.values(),
            state.nodes.values(),
            attachments=state.attachments.values(),
        )
        self._listeners: list[Listener] = []
        # Told each task at the commit that first records it RUNNING, with the wall-clock ms
        # (the scheduling delay of manager/metrics.py); states only move forward, so that is
        # once per task.
        self.on_task_running: Callable[[pb.Task, int], None] | None = None

    @classmethod
    async def load(cls, store: Store, config: ManagerConfig) -> Cluster:
        snap = await store.load()
        return cls(store, ClusterState.from_snapshot(snap), config)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def commit(self, batch: Batch) -> int:
        """Write `batch` to etcd, then to memory, then tell listeners. Callers hold `lock`."""
        rev = await self.store.commit(batch)
        started = self._started(batch) if self.on_task_running is not None else []
        self.state.apply(batch, rev)
        for listener in self._listeners:
            listener(batch)
        if started and self.on_task_running is not None:
            now = now_ms()
            for task in started:
                self.on_task_running(task, now)
        return rev

    def _started(self, batch: Batch) -> list[pb.Task]:
        """Tasks `batch` puts RUNNING that the state (not yet updated) holds in an earlier
        state."""
        out = []
        for _, obj in batch.puts:
            if not isinstance(obj, pb.Task) or obj.status.state != pb.TASK_STATE_RUNNING:
                continue
            old = self.state.tasks.get(obj.meta.id)
            if old is not None and old.status.state < pb.TASK_STATE_RUNNING:
                out.append(obj)
        return out
