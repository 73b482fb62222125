"""The leader's control loop: services -> tasks (orchestrator) -> addresses (allocator) ->
nodes (scheduler), every node's own address on the ingress network, and the release of
attachments (CNI containers) that their nodes will never release (manager/attachments.py).

Each pass reads the in-memory state, asks the pure cores what to change, and commits the result
in etcd transactions of bounded size. Passes run when something is kicked (a service or node
changed) and periodically in full, so a lost kick or a crash mid-way is repaired by the next pass
rather than remembered: after a restart the first full pass finishes whatever was half done.
A rolling update held back only by its delay asks for a pass over its service when the delay
ends (`wake_at_ms`), so it does not wait for the next periodic pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from manager import attachments, servicespec
from manager.cluster import Cluster, new_id, now_ms
from manager.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OvnetError,
    Unavailable,
)
from manager.ingress import ingress_network, node_attachment_changes, publishes_ingress
from manager.logbroker import LogBroker
from manager.orchestrator import (
    NewTask,
    ServicePlan,
    reconcile_removed_service,
    reconcile_service,
)
from manager.scheduler import schedule, service_needs
from manager.store import Batch, Store
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

PENDING = pb.TASK_STATE_PENDING


def _chunks(items: Sequence[pb.Task], size: int) -> list[Sequence[pb.Task]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Reconciler:
    def __init__(self, cluster: Cluster, logs: LogBroker) -> None:
        self.cluster = cluster
        self.state = cluster.state
        self.logs = logs
        self._dirty: set[str] = set()
        self._full = True
        self._wake = asyncio.Event()
        # service ID -> wall-clock ms when an update delay of that service ends.
        self._wakeups: dict[str, int] = {}

    def kick(self, service_id: str | None = None) -> None:
        """Ask for a pass over one service, or (None) over everything."""
        if service_id is None:
            self._full = True
        else:
            self._dirty.add(service_id)
        self._wake.set()

    def _take_due_wakeups(self, now: int) -> None:
        due = [sid for sid, at in self._wakeups.items() if at <= now]
        for sid in due:
            del self._wakeups[sid]
            self._dirty.add(sid)

    async def run(self) -> None:
        interval = self.cluster.config.reconcile_interval
        last_full = time.monotonic()
        while True:
            timeout = interval
            if self._wakeups:
                soonest = (min(self._wakeups.values()) - now_ms()) / 1000
                timeout = max(0.0, min(interval, soonest))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                if time.monotonic() - last_full >= interval:
                    self._full = True
            self._take_due_wakeups(now_ms())
            if self._full:
                last_full = time.monotonic()
            self._wake.clear()
            try:
                await self.reconcile()
            except Unavailable:
                raise
            except OvnetError as e:
                log.warning("reconcile pass failed, retrying: %s", e.message)
            except Exception:
                log.exception("reconcile pass failed, retrying")

    async def reconcile(self) -> None:
        async with self.cluster.lock:
            full, dirty = self._full, self._dirty
            self._full, self._dirty = False, set()
            await self._orchestrate(full, dirty)
            await self._allocate_new()
            await self._schedule()
            if full:
                await self._attach_nodes()
                # Full passes only: what it judges (nodes down for a long grace, removed
                # nodes) changes slowly, and a node's removal asks for a full pass.
                await attachments.reap(self.cluster)

    # ------------------------------------------------------------------ phases

    async def _orchestrate(self, full: bool, dirty: set[str]) -> None:
        state = self.state
        now = now_ms()
        candidates = set(state.services) | set(state.tasks_by_service) if full else dirty
        creates: list[pb.Task] = []
        updates: list[pb.Task] = []
        deletes: list[pb.Task] = []
        verdicts: list[tuple[pb.Service, ServicePlan]] = []
        for sid in sorted(candidates):
            svc = state.services.get(sid)
            tasks = state.service_tasks(sid)
            if svc is None:
                self._wakeups.pop(sid, None)
                to_remove, deletable = reconcile_removed_service(tasks, state.nodes)
                deletes += [state.tasks[t] for t in deletable]
                updates += [
                    _with_desired(state.tasks[t], pb.TASK_STATE_REMOVE)
                    for t in to_remove
                    if t not in deletable
                ]
                continue
            plan = reconcile_service(
                svc, tasks, state.nodes, now, history_limit=self.cluster.config.task_history_limit
            )
            if plan.wake_at_ms:
                self._wakeups[sid] = plan.wake_at_ms
            else:
                self._wakeups.pop(sid, None)
            updates += [
                _with_desired(state.tasks[t], pb.TASK_STATE_SHUTDOWN) for t in plan.shutdown
            ]
            deletes += [state.tasks[t] for t in plan.delete]
            creates += [self._new_task(svc, nt, now) for nt in plan.create]
            if plan.status is not None:
                verdicts.append((svc, plan))
        await self._write(creates, updates, deletes)
        for svc, plan in verdicts:
            await self._store_verdict(svc, plan)

    async def _store_verdict(self, svc: pb.Service, plan: ServicePlan) -> None:
        """Store where the service's update now stands; for a rollback, put the previous spec
        back (as `service rollback` does) and look at the service again at once. A rollback
        the cluster refuses (its spec names a network since removed...) pauses instead."""
        assert plan.status is not None
        cur = self.state.services.get(svc.meta.id)
        if cur is None or cur.meta.version != svc.meta.version:
            return  # changed meanwhile: the next pass judges the new version
        if plan.rollback:
            try:
                await servicespec.store_spec(self.cluster, cur, None, plan.status)
            except (InvalidArgument, NotFound, FailedPrecondition) as e:
                paused = pb.UpdateStatus()
                paused.CopyFrom(plan.status)
                paused.state = pb.UpdateStatus.PAUSED
                paused.message = f"{plan.status.message}; the rollback was refused: {e.message}"
                await self._write_status(cur, paused)
            self.kick(svc.meta.id)
            return
        await self._write_status(cur, plan.status)
        log.info("service %s: %s", svc.spec.name, plan.status.message)

    async def _write_status(self, cur: pb.Service, status: pb.UpdateStatus) -> None:
        svc = pb.Service()
        svc.CopyFrom(cur)
        svc.update_status.CopyFrom(status)
        svc.meta.updated_at_ms = now_ms()
        await self.cluster.commit(Batch().update("services", svc))

    async def _allocate_new(self) -> None:
        """Tasks whose addresses could not be allocated when they were made (pool full) retry."""
        retry = [
            t
            for t in self.state.tasks.values()
            if t.status.state == pb.TASK_STATE_NEW and t.desired_state <= pb.TASK_STATE_RUNNING
        ]
        for cur in retry:
            task = pb.Task()
            task.CopyFrom(cur)
            if not self._allocate(task):
                continue
            try:
                await self.cluster.commit(Batch().update("tasks", task))
            except BaseException:
                self.cluster.allocator.release_task(task)
                raise

    async def _attach_nodes(self) -> None:
        """Every node holds one address on the ingress network (none when there is none): new
        nodes, and all nodes once an ingress network appears, get theirs here; attachments to
        a removed ingress network are dropped."""
        state = self.state
        allocator = self.cluster.allocator
        allocated, cleaned = node_attachment_changes(
            state.nodes.values(), ingress_network(state.networks), allocator
        )
        changed = allocated + cleaned
        pending = list(allocated)
        try:
            for i in range(0, len(changed), Store.MAX_OPS):
                chunk = changed[i : i + Store.MAX_OPS]
                batch = Batch()
                for node in chunk:
                    batch.update("nodes", node)
                await self.cluster.commit(batch)
                done = {n.meta.id for n in chunk}
                pending = [n for n in pending if n.meta.id not in done]
        finally:
            for node in pending:
                allocator.release_attachments(node.attachments)

    async def _schedule(self) -> None:
        state = self.state
        now = now_ms()
        pending, running = [], []
        for t in state.tasks.values():
            if t.desired_state > pb.TASK_STATE_RUNNING:
                continue
            if t.status.state == PENDING and t.not_before_ms <= now:
                pending.append(t)
            elif pb.TASK_STATE_ASSIGNED <= t.status.state <= pb.TASK_STATE_RUNNING:
                running.append(t)
        if not pending:
            return
        preset = [t for t in pending if t.node_id]
        unplaced = [t for t in pending if not t.node_id]
        needs = {
            sid: service_needs(state.services[sid], state.networks)
            for sid in {t.service_id for t in unplaced}
            if sid in state.services
        }
        result = schedule(unplaced, list(state.nodes.values()), running, state.services, needs)
        updates = []
        for t in preset:
            updates.append(_assigned(t, t.node_id, now))
        for task_id, node_id in result.assignments.items():
            updates.append(_assigned(state.tasks[task_id], node_id, now))
        for task_id, message in result.unschedulable.items():
            cur = state.tasks[task_id]
            if cur.status.message != message:
                task = pb.Task()
                task.CopyFrom(cur)
                task.status.message = message
                task.status.timestamp_ms = now
                updates.append(task)
        await self._write([], updates, [])

    # ------------------------------------------------------------------ helpers

    def _new_task(self, svc: pb.Service, nt: NewTask, now: int) -> pb.Task:
        spec = svc.spec
        task = pb.Task(
            meta=pb.Meta(id=new_id(), created_at_ms=now, updated_at_ms=now),
            service_id=svc.meta.id,
            service_name=spec.name,
            slot=nt.slot,
            node_id=nt.node_id,
            spec=pb.TaskSpec(
                image=spec.image,
                command=spec.command,
                env=spec.env,
                workdir=spec.workdir,
                health_check=spec.health_check if spec.HasField("health_check") else None,
                stop_grace_period_ms=spec.stop_grace_period_ms,
            ),
            spec_version=svc.spec_version,
            desired_state=pb.TASK_STATE_RUNNING,
            status=pb.TaskStatus(state=pb.TASK_STATE_NEW, timestamp_ms=now, message="created"),
            endpoint_mode=spec.endpoint.mode,
            not_before_ms=nt.not_before_ms,
        )
        for att in spec.networks:
            task.networks.append(pb.NetworkAttachment(network_id=att.target, aliases=att.aliases))
        ingress = ingress_network(self.state.networks)
        if ingress is not None and publishes_ingress(spec):
            # The routing mesh reaches the task over the ingress network: one more address,
            # after the service's own networks, with no aliases (no DNS there).
            task.networks.append(pb.NetworkAttachment(network_id=ingress.meta.id))
        self._allocate(task)
        return task

    def _allocate(self, task: pb.Task) -> bool:
        """Give the task its addresses and move it to PENDING; on failure it stays NEW with the
        reason in its status, and a later pass retries."""
        try:
            addrs = self.cluster.allocator.allocate_task([a.network_id for a in task.networks])
        except OvnetError as e:
            task.status.err = e.message
            return False
        for att, addr in zip(task.networks, addrs, strict=True):
            del att.addresses[:]
            att.addresses.append(addr)
        task.status.state = PENDING
        task.status.message = "pending task scheduling"
        task.status.err = ""
        return True

    async def _write(
        self, creates: list[pb.Task], updates: list[pb.Task], deletes: list[pb.Task]
    ) -> None:
        """Commit in bounded transactions. Allocations of tasks that could not be stored are
        released; those of deleted tasks only once the deletion is stored."""
        size = Store.MAX_OPS
        created = {t.meta.id for t in creates}
        failed: list[pb.Task] = []
        try:
            for chunk in _chunks(creates, size):
                batch = Batch()
                for t in chunk:
                    batch.create("tasks", t)
                try:
                    await self.cluster.commit(batch)
                except BaseException:
                    failed = [t for t in creates if t.meta.id in created]
                    raise
                created -= {t.meta.id for t in chunk}
            for chunk in _chunks(updates, size):
                batch = Batch()
                for t in chunk:
                    batch.update("tasks", t)
                await self.cluster.commit(batch)
            for chunk in _chunks(deletes, size):
                batch = Batch()
                for t in chunk:
                    batch.delete("tasks", t.meta.id)
                await self.cluster.commit(batch)
                for t in chunk:
                    self.cluster.allocator.release_task(t)
                self.logs.forget(t.meta.id for t in chunk)
        except BaseException:
            for t in failed:
                if t.status.state != pb.TASK_STATE_NEW:
                    self.cluster.allocator.release_task(t)
            raise


def _with_desired(cur: pb.Task, desired: int) -> pb.Task:
    task = pb.Task()
    task.CopyFrom(cur)
    task.desired_state = desired  # type: ignore[assignment]
    task.meta.updated_at_ms = now_ms()
    return task


def _assigned(cur: pb.Task, node_id: str, now: int) -> pb.Task:
    task = pb.Task()
    task.CopyFrom(cur)
    task.node_id = node_id
    task.status.state = pb.TASK_STATE_ASSIGNED
    task.status.message = "scheduled on node"
    task.status.timestamp_ms = now
    task.meta.updated_at_ms = now
    return task
