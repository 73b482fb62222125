"""Rolling updates as a whole: failure actions, monitor, start-first, completion, rollback
(manager/updater.py through the orchestrator's plans), and how a new spec is versioned
(manager/servicespec.py)."""

from __future__ import annotations

import itertools

import pytest

from manager import updater
from manager.errors import InvalidArgument
from manager.orchestrator import reconcile_service
from manager.servicespec import respecified
from manager.validation import check_service_spec
from proto import objects_pb2 as pb

NOW = 1_000_000
STARTED = 900_000  # when the update started
RUNNING, FAILED, SHUTDOWN = pb.TASK_STATE_RUNNING, pb.TASK_STATE_FAILED, pb.TASK_STATE_SHUTDOWN
S = pb.UpdateStatus
NODES = [
    pb.Node(meta=pb.Meta(id=n), status=pb.NodeStatus(state=pb.NODE_STATE_READY))
    for n in ("n1", "n2", "n3")
]
_ids = itertools.count(1)


def service(
    replicas: int = 3,
    *,
    version: int = 2,
    state: int = S.UPDATING,
    action: int = pb.UPDATE_FAILURE_ACTION_PAUSE,
    monitor: int | None = None,
    ratio: float = 0.0,
    order: int = pb.UPDATE_ORDER_STOP_FIRST,
    parallelism: int = 1,
    previous: bool = True,
) -> pb.Service:
    config = pb.UpdateConfig(
        parallelism=parallelism,
        failure_action=action,  # type: ignore[arg-type]
        max_failure_ratio=ratio,
        order=order,  # type: ignore[arg-type]
    )
    if monitor is not None:
        config.monitor_ms = monitor
    spec = pb.ServiceSpec(name="web", command=["v2"], update_config=config)
    spec.replicated.replicas = replicas
    svc = pb.Service(
        meta=pb.Meta(id="svc"),
        spec=spec,
        spec_version=version,
        highest_spec_version=version,
        update_status=pb.UpdateStatus(state=state, started_at_ms=STARTED),  # type: ignore[arg-type]
    )
    if previous:
        svc.previous_spec.CopyFrom(pb.ServiceSpec(name="web", command=["v1"]))
        svc.previous_spec.replicated.replicas = replicas
        svc.previous_spec_version = version - 1
    return svc


def task(
    slot: int,
    version: int,
    *,
    state: int = RUNNING,
    desired: int = RUNNING,
    ready: int = STARTED + 10,
    ended: int = 0,
    created: int | None = None,
    err: str = "",
) -> pb.Task:
    n = next(_ids)
    return pb.Task(
        meta=pb.Meta(id=f"t{n}", created_at_ms=STARTED + n if created is None else created),
        service_id="svc",
        slot=slot,
        node_id=f"n{(slot - 1) % 3 + 1}",
        spec_version=version,
        desired_state=desired,  # type: ignore[arg-type]
        status=pb.TaskStatus(
            state=state,  # type: ignore[arg-type]
            ready_ms=ready if state == RUNNING else 0,
            timestamp_ms=ended or STARTED + n,
            err=err,
        ),
    )


def plan(svc: pb.Service, tasks: list[pb.Task]):  # type: ignore[no-untyped-def]
    return reconcile_service(svc, tasks, NODES, NOW)


def failed_slot1(**kw: object) -> list[pb.Task]:
    """Slot 1 got its v2 task, which failed before it was ready; slots 2, 3 still run v1."""
    return [
        task(1, 1, state=SHUTDOWN, desired=SHUTDOWN),
        task(1, 2, state=FAILED, err="exit code 3", **kw),  # type: ignore[arg-type]
        task(2, 1),
        task(3, 1),
    ]


def test_a_failed_task_pauses_the_update_and_no_batch_follows() -> None:
    tasks = failed_slot1()
    p = plan(service(), tasks)
    assert p.status is not None and p.status.state == S.PAUSED
    assert "update paused due to failure or early termination of task web.1" in p.status.message
    assert p.status.message.endswith("exit code 3")
    assert not p.rollback
    # The failed slot is restarted by its policy (the failed task is told to stay down, as
    # any exited task is); slots 2 and 3 keep v1.
    assert [c.slot for c in p.create] == [1] and p.shutdown == [tasks[1].meta.id]
    # Next pass, once paused: slot 1 runs v2, but nothing else is replaced.
    tasks = [*failed_slot1(), task(1, 2)]
    assert plan(service(state=S.PAUSED), tasks).create == []


def test_only_failures_of_this_update_within_the_monitor_count() -> None:
    # Created before the update started: not this update's.
    old = [task(1, 2, state=FAILED, created=STARTED - 1), task(1, 2), task(2, 1), task(3, 1)]
    assert plan(service(), old).status is None
    # Ready, then failed 6 s later: counts with a 10 s monitor, not with 5 s (or none).
    late = [task(1, 2, state=FAILED, ended=STARTED + 6010), task(1, 2), task(2, 1), task(3, 1)]
    late[0].status.ready_ms = STARTED + 10
    assert plan(service(monitor=10_000), late).status is not None
    assert plan(service(monitor=5_000), late).status is None
    assert plan(service(), late).status is None
    # A task the update stopped (SHUTDOWN) never counts.
    stopped = [task(1, 2, state=SHUTDOWN, desired=SHUTDOWN), task(1, 2), task(2, 1), task(3, 1)]
    assert plan(service(), stopped).status is None


def test_max_failure_ratio() -> None:
    tasks = [task(1, 2, state=FAILED), task(2, 2, state=FAILED), task(3, 1), task(4, 1)]
    assert plan(service(4, ratio=0.5), tasks).status is None  # 2 of 4 tolerated
    tasks.append(task(3, 2, state=FAILED))
    p = plan(service(4, ratio=0.5), tasks)
    assert p.status is not None and p.status.state == S.PAUSED


def test_rollback_on_failure() -> None:
    p = plan(service(action=pb.UPDATE_FAILURE_ACTION_ROLLBACK), failed_slot1())
    assert p.rollback and p.status is not None
    assert p.status.state == S.ROLLBACK_STARTED and p.status.started_at_ms == NOW
    assert p.status.message.startswith("update rolled back due to failure")
    # Without a previous spec there is nothing to go back to: it pauses and says why.
    p = plan(service(action=pb.UPDATE_FAILURE_ACTION_ROLLBACK, previous=False), failed_slot1())
    assert not p.rollback and p.status is not None and p.status.state == S.PAUSED
    assert p.status.message.endswith("(no previous spec to roll back to)")
    # A rollback that fails pauses, whatever the action.
    back = service(action=pb.UPDATE_FAILURE_ACTION_ROLLBACK, state=S.ROLLBACK_STARTED)
    p = plan(back, failed_slot1())
    assert p.status is not None and p.status.state == S.ROLLBACK_PAUSED and not p.rollback


def test_rolled_back_service_takes_the_previous_spec_and_version() -> None:
    svc = updater.rolled_back(service(version=5))
    assert list(svc.spec.command) == ["v1"] and svc.spec_version == 4
    assert svc.highest_spec_version == 5 and not svc.HasField("previous_spec")
    # Tasks of v5 (newer than the service now) are outdated; those of v4 stay.
    svc.update_status.CopyFrom(pb.UpdateStatus(state=S.ROLLBACK_STARTED, started_at_ms=NOW))
    p = plan(svc, [task(1, 5), task(2, 4), task(3, 4)])
    assert [c.slot for c in p.create] == [1] and len(p.shutdown) == 1


def test_continue_lets_the_next_batch_start() -> None:
    svc = service(action=pb.UPDATE_FAILURE_ACTION_CONTINUE)
    tasks = [*failed_slot1(), task(1, 2, state=pb.TASK_STATE_STARTING)]
    p = plan(svc, tasks)
    assert p.status is None
    assert [c.slot for c in p.create] == [2] and tasks[2].meta.id in p.shutdown
    # With pause, the restarted (not yet ready) slot 1 holds the update.
    assert plan(service(state=S.PAUSED), tasks).create == []


def test_start_first_keeps_the_old_task_until_the_new_one_is_ready() -> None:
    svc = service(1, order=pb.UPDATE_ORDER_START_FIRST)
    old = task(1, 1)
    p = plan(svc, [old])
    assert [c.slot for c in p.create] == [1] and p.shutdown == []
    starting = task(1, 2, state=pb.TASK_STATE_STARTING)
    assert plan(svc, [old, starting]).empty()
    ready = task(1, 2)
    assert plan(svc, [old, ready]).shutdown == [old.meta.id]
    # Stop-first stops the old one with the creation.
    p = plan(service(1), [old])
    assert p.shutdown == [old.meta.id] and [c.slot for c in p.create] == [1]


def test_start_first_retry_follows_the_restart_policy() -> None:
    svc = service(1, order=pb.UPDATE_ORDER_START_FIRST, action=pb.UPDATE_FAILURE_ACTION_CONTINUE)
    svc.spec.restart_policy.CopyFrom(pb.RestartPolicy(delay_ms=5000))
    old, dead = task(1, 1), task(1, 2, state=FAILED)
    p = plan(svc, [old, dead])
    assert [c.not_before_ms for c in p.create] == [NOW + 5000]
    assert old.meta.id not in p.shutdown
    svc.spec.restart_policy.condition = pb.RESTART_CONDITION_NONE
    assert plan(svc, [old, dead]).create == []  # the old task runs on


def test_completion_waits_for_the_monitor_period() -> None:
    tasks = [task(1, 2, ready=NOW - 1000), task(2, 2), task(3, 2)]
    p = plan(service(), tasks)
    assert p.status is not None and p.status.state == S.COMPLETED
    assert p.status.completed_at_ms == NOW and p.status.message == "update completed"
    p = plan(service(monitor=5000), tasks)
    assert p.status is None and p.wake_at_ms == NOW + 4000
    # An old task still running, or a slot short, is not complete.
    assert plan(service(), [*tasks, task(3, 1)]).status is None
    assert plan(service(4), tasks).status is None
    # A finished rollback keeps its reason.
    back = service(state=S.ROLLBACK_STARTED)
    back.update_status.message = "update rolled back due to X"
    p = plan(back, tasks)
    assert p.status is not None and p.status.state == S.ROLLBACK_COMPLETED
    assert p.status.message == "update rolled back due to X"
    # Nothing is judged once the update ended (or for a service never updated).
    assert plan(service(state=S.COMPLETED), tasks).status is None
    assert plan(service(state=S.UNKNOWN), failed_slot1()).status is None


def test_respecified_versions_and_starts_updates() -> None:
    cur = service(version=4, state=S.COMPLETED)
    cur.highest_spec_version = 7  # a rollback put version 4 back
    new = pb.ServiceSpec()
    new.CopyFrom(cur.spec)
    new.command[:] = ["v3"]
    svc = respecified(cur, new, NOW)
    assert (svc.spec_version, svc.highest_spec_version, svc.previous_spec_version) == (8, 8, 4)
    assert svc.previous_spec == cur.spec
    assert svc.update_status.state == S.UPDATING and svc.update_status.started_at_ms == NOW
    # A scale is no update (its status stays), except that it resumes a paused one.
    scaled = pb.ServiceSpec()
    scaled.CopyFrom(cur.spec)
    scaled.replicated.replicas = 5
    svc = respecified(cur, scaled, NOW)
    assert svc.spec_version == 4 and svc.update_status.state == S.COMPLETED
    cur.update_status.state = S.PAUSED
    assert respecified(cur, scaled, NOW).update_status.state == S.UPDATING


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (pb.UpdateConfig(max_failure_ratio=1.5), "max failure ratio 1.5 is out of range"),
        (pb.UpdateConfig(failure_action=7), "failure action 7 is unknown"),  # type: ignore[arg-type]
        (pb.UpdateConfig(order=9), "order 9 is unknown"),  # type: ignore[arg-type]
    ],
)
def test_bad_update_configs_are_refused(config: pb.UpdateConfig, message: str) -> None:
    spec = pb.ServiceSpec(name="web", command=["x"], rollback_config=config)
    with pytest.raises(InvalidArgument, match=f"rollback_config: {message}"):
        check_service_spec(spec)
