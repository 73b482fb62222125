"""Where a rolling update stands, and what it does about failed tasks: pure.

The orchestrator (manager/orchestrator.py) replaces outdated tasks batch by batch; this module
judges the update as a whole from the stored tasks and the service's UpdateStatus, as
swarmkit's updater does (failure_action, monitor, max_failure_ratio), but without memory of
its own: every pass derives the verdict again, and only a change of state is written back.

Failures
    While the status is UPDATING or ROLLBACK_STARTED, a task *of this update* (at the service's
    spec_version, created since the update started) that exited while it was meant to run
    (COMPLETE, FAILED or REJECTED) counts as a failure if it was never ready, or ended within
    the monitor period after it became ready. A task the update itself stopped ends SHUTDOWN and
    never counts. Once failures exceed max_failure_ratio x the service's tasks, failure_action
    applies: PAUSE stops new batches (PAUSED, or ROLLBACK_PAUSED during a rollback); ROLLBACK
    puts the previous spec back (ROLLBACK_STARTED; without a previous spec it pauses, and a
    rollback that fails pauses); CONTINUE goes on, a slot whose task failed no longer holding
    back the next batch (the restart policy deals with it).

Completion
    When every slot holds a ready task of the current spec (or, with CONTINUE, failed in this
    update), no task of another spec is still meant to run, and the last of them has been
    ready for the monitor period, the update is COMPLETED (ROLLBACK_COMPLETED). Until the
    monitor period ends the caller is told when to look again (`wake_at_ms`).

A service never updated (status UNKNOWN) or whose update ended is not judged: its tasks'
failures are the restart policy's business alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proto import objects_pb2 as pb

S = pb.UpdateStatus
JUDGED = frozenset({S.UPDATING, S.ROLLBACK_STARTED})
PAUSED = frozenset({S.PAUSED, S.ROLLBACK_PAUSED})
_EXITED = frozenset({pb.TASK_STATE_COMPLETE, pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED})


def rolling_back(service: pb.Service) -> bool:
    return service.update_status.state in (
        S.ROLLBACK_STARTED,
        S.ROLLBACK_PAUSED,
        S.ROLLBACK_COMPLETED,
    )


def update_config(service: pb.Service) -> pb.UpdateConfig:
    """The config the current replacement follows: the rollback config during a rollback (when
    the spec has one), else the update config."""
    spec = service.spec
    if rolling_back(service) and spec.HasField("rollback_config"):
        return spec.rollback_config
    return spec.update_config


def monitor_ms(config: pb.UpdateConfig) -> int:
    return config.monitor_ms if config.HasField("monitor_ms") else 0


def slot_key(task: pb.Task) -> tuple[int, str]:
    """A replicated task's slot, or a global task's node."""
    return (task.slot, "") if task.slot else (0, task.node_id)


def failures(service: pb.Service, tasks: Iterable[pb.Task]) -> list[pb.Task]:
    """Tasks of the running update that count as its failures, oldest first."""
    status = service.update_status
    if status.state not in JUDGED:
        return []
    monitor = monitor_ms(update_config(service))
    out = []
    for t in tasks:
        if (
            t.spec_version != service.spec_version
            or t.meta.created_at_ms < status.started_at_ms
            or t.status.state not in _EXITED
        ):
            continue
        ready = t.status.ready_ms
        ended = t.status.timestamp_ms or t.meta.updated_at_ms
        if not ready or ended - ready <= monitor:
            out.append(t)
    out.sort(key=lambda t: (t.meta.created_at_ms, t.meta.id))
    return out


@dataclass
class Verdict:
    """What the pass must do about the update as a whole."""

    # The status to store (None: unchanged).
    status: pb.UpdateStatus | None = None
    # Put previous_spec back (the status says ROLLBACK_STARTED).
    rollback: bool = False
    # Slots (slot_key) whose task failed in this update: with CONTINUE they no longer count
    # as in progress.
    failed_slots: frozenset[tuple[int, str]] = frozenset()
    # Wall-clock ms when the monitor period of the last ready task ends (0: not waiting).
    wake_at_ms: int = 0

    @property
    def halted(self) -> bool:
        """No new batch may start in this pass."""
        return self.status is not None and self.status.state not in JUDGED


def _task_name(service: pb.Service, t: pb.Task) -> str:
    return f"{service.spec.name}.{t.slot or t.node_id[:12]} ({t.meta.id[:12]})"


def judge_failures(
    service: pb.Service, tasks: Sequence[pb.Task], wanted: int, now_ms: int
) -> Verdict:
    """Apply failure_action if this update's failures exceed what it tolerates (`wanted`: the
    service's task count, which the ratio is of)."""
    failed = failures(service, tasks)
    verdict = Verdict(failed_slots=frozenset(slot_key(t) for t in failed))
    config = update_config(service)
    if not failed or len(failed) <= config.max_failure_ratio * max(wanted, 1):
        return verdict
    status = service.update_status
    action = config.failure_action
    if action == pb.UPDATE_FAILURE_ACTION_CONTINUE:
        return verdict
    last = failed[-1]
    why = last.status.err or last.status.message or "it ended"
    cause = f"failure or early termination of task {_task_name(service, last)}: {why}"
    new = pb.UpdateStatus(started_at_ms=status.started_at_ms)
    if status.state == S.ROLLBACK_STARTED:
        new.state, new.message = S.ROLLBACK_PAUSED, f"rollback paused due to {cause}"
    elif action == pb.UPDATE_FAILURE_ACTION_ROLLBACK and service.HasField("previous_spec"):
        new.state, new.message = S.ROLLBACK_STARTED, f"update rolled back due to {cause}"
        new.started_at_ms = now_ms  # the rollback's own tasks are judged from now on
        verdict.rollback = True
    else:
        new.state, new.message = S.PAUSED, f"update paused due to {cause}"
        if action == pb.UPDATE_FAILURE_ACTION_ROLLBACK:
            new.message += " (no previous spec to roll back to)"
    verdict.status = new
    return verdict


def judge_completion(
    service: pb.Service,
    verdict: Verdict,
    current: Sequence[pb.Task | None],
    others_running: bool,
    now_ms: int,
) -> None:
    """Mark the update completed once every slot's task (`current`: one entry per slot that
    should hold one, None for a slot without a live task) is ready at the current spec, or
    failed under CONTINUE, nothing else runs, and the monitor period has passed."""
    status = service.update_status
    if status.state not in JUDGED or verdict.status is not None or others_running:
        return
    last_ready = status.started_at_ms
    for t in current:
        if t is None or t.spec_version != service.spec_version:
            return
        if t.status.state == pb.TASK_STATE_RUNNING and t.status.ready_ms:
            last_ready = max(last_ready, t.status.ready_ms)
        elif slot_key(t) not in verdict.failed_slots:
            return
    ends = last_ready + monitor_ms(update_config(service))
    if now_ms < ends:
        verdict.wake_at_ms = ends
        return
    done = S.ROLLBACK_COMPLETED if status.state == S.ROLLBACK_STARTED else S.COMPLETED
    message = "rollback completed" if done == S.ROLLBACK_COMPLETED else "update completed"
    if status.message and done == S.ROLLBACK_COMPLETED:
        message = status.message  # why it rolled back is what a person wants to read
    verdict.status = pb.UpdateStatus(
        state=done, started_at_ms=status.started_at_ms, completed_at_ms=now_ms, message=message
    )


def rolled_back(service: pb.Service) -> pb.Service:
    """The service with its previous spec back (spec version too: tasks still running from
    it are current again and stay); previous_spec is cleared, as a second rollback has
    nothing to go back to."""
    out = pb.Service()
    out.CopyFrom(service)
    out.spec.CopyFrom(service.previous_spec)
    highest = max(service.highest_spec_version, service.spec_version)
    # (A version of 0 cannot be put back: tasks of version 0 do not exist.)
    out.spec_version = service.previous_spec_version or highest + 1
    out.highest_spec_version = max(highest, out.spec_version)
    out.ClearField("previous_spec")
    out.previous_spec_version = 0
    return out
