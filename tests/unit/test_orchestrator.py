from __future__ import annotations

import itertools
import time

import pytest

from manager.orchestrator import NewTask, ServicePlan, reconcile_removed_service, reconcile_service
from proto import objects_pb2 as pb

NOW = 1_000_000
RUNNING = pb.TASK_STATE_RUNNING
SHUTDOWN = pb.TASK_STATE_SHUTDOWN
COMPLETE = pb.TASK_STATE_COMPLETE
FAILED = pb.TASK_STATE_FAILED
REJECTED = pb.TASK_STATE_REJECTED
PENDING = pb.TASK_STATE_PENDING
_clock = itertools.count(1)


def node(node_id: str, *, state: int = pb.NODE_STATE_READY,
         availability: int = pb.NODE_AVAILABILITY_ACTIVE,
         labels: dict[str, str] | None = None) -> pb.Node:
    return pb.Node(meta=pb.Meta(id=node_id),
                   spec=pb.NodeSpec(availability=availability, labels=labels or {}),  # type: ignore[arg-type]
                   description=pb.NodeDescription(hostname=node_id),
                   status=pb.NodeStatus(state=state))  # type: ignore[arg-type]


def service(replicas: int | None = None, *, version: int = 1,
            condition: int = pb.RESTART_CONDITION_ANY, delay: int = 0, max_attempts: int = 0,
            window: int = 0, parallelism: int = 0, constraints: tuple[str, ...] = ()) -> pb.Service:
    """A replicated service with `replicas`, or a global one when replicas is None."""
    spec = pb.ServiceSpec(
        name="web",
        placement=pb.Placement(constraints=constraints),
        restart_policy=pb.RestartPolicy(condition=condition, delay_ms=delay,  # type: ignore[arg-type]
                                        max_attempts=max_attempts, window_ms=window),
        update_config=pb.UpdateConfig(parallelism=parallelism))
    if replicas is None:
        getattr(spec, "global").SetInParent()
    else:
        spec.replicated.replicas = replicas
    return pb.Service(meta=pb.Meta(id="svc"), spec=spec, spec_version=version)


def task(task_id: str, slot: int = 0, node_id: str = "n1", *, state: int = RUNNING,
         desired: int = RUNNING, version: int = 1, ended: int = 0, exit_code: int = 0,
         created: int | None = None) -> pb.Task:
    """Tasks are created in call order unless `created` says otherwise."""
    return pb.Task(
        meta=pb.Meta(id=task_id, created_at_ms=next(_clock) if created is None else created),
        service_id="svc", slot=slot, node_id=node_id, spec_version=version,
        desired_state=desired,  # type: ignore[arg-type]
        status=pb.TaskStatus(state=state, timestamp_ms=ended, exit_code=exit_code))  # type: ignore[arg-type]


def new(slot: int, node_id: str = "", not_before: int = NOW, replaces: str = "") -> NewTask:
    return NewTask(slot=slot, node_id=node_id, not_before_ms=not_before, replaces=replaces)


NODES = [node("n1"), node("n2"), node("n3")]


def plan_for(svc: pb.Service, tasks: list[pb.Task], nodes: list[pb.Node] | None = None,
             history_limit: int = 5) -> ServicePlan:
    return reconcile_service(svc, tasks, NODES if nodes is None else nodes, NOW,
                             history_limit=history_limit)


# ------------------------------------------------------------------ replicated: scaling


def test_new_service_gets_one_task_per_slot() -> None:
    plan = plan_for(service(3), [])
    assert plan == ServicePlan(create=[new(1), new(2), new(3)])


def test_converged_service_needs_nothing() -> None:
    tasks = [task("a", 1, "n1"), task("b", 2, "n2", state=PENDING, created=5)]
    plan = plan_for(service(2), tasks)
    assert plan.empty()


def test_scale_up_adds_the_missing_slots() -> None:
    plan = plan_for(service(4), [task("a", 1), task("b", 2)])
    assert plan == ServicePlan(create=[new(3), new(4)])


def test_scale_up_fills_the_lowest_free_numbers() -> None:
    tasks = [task("a", 1, "n1"), task("d", 4, "n2"), task("e", 5, "n3")]
    plan = plan_for(service(5), tasks)
    assert [c.slot for c in plan.create] == [2, 3]


def test_scale_down_takes_from_the_busiest_node_then_highest_slot() -> None:
    tasks = [task("t1", 1, "n1"), task("t2", 2, "n1"), task("t3", 3, "n1"), task("t4", 4, "n1"),
             task("t5", 5, "n2"), task("t6", 6, "n2")]
    plan = plan_for(service(3), tasks)
    # n1 has 4: drop slot 4, then slot 3; now 2 and 2: drop the highest slot, 6.
    assert sorted(plan.shutdown) == ["t3", "t4", "t6"]
    assert plan.create == [] and plan.delete == []


def test_scale_down_prefers_slots_that_are_not_running() -> None:
    tasks = [task("t1", 1, "n1"), task("t2", 2, "n2", state=pb.TASK_STATE_ASSIGNED),
             task("t3", 3, "n3")]
    plan = plan_for(service(2), tasks)
    assert plan.shutdown == ["t2"]


def test_scale_down_retires_a_given_up_slot_first() -> None:
    svc = service(2, condition=pb.RESTART_CONDITION_NONE)
    tasks = [task("gave-up", 1, "n1", state=COMPLETE, desired=SHUTDOWN),
             task("t2", 2, "n2"), task("t3", 3, "n3")]
    assert plan_for(service(3, condition=pb.RESTART_CONDITION_NONE), tasks).empty()
    assert plan_for(svc, tasks) == ServicePlan(delete=["gave-up"])


def test_retired_slot_whose_task_just_ended_is_deleted_not_shut_down() -> None:
    svc = service(1, condition=pb.RESTART_CONDITION_NONE)
    tasks = [task("t1", 1, "n1"), task("t2", 2, "n2", state=FAILED, ended=NOW)]
    assert plan_for(svc, tasks) == ServicePlan(delete=["t2"])


def test_scale_down_keeps_slot_numbers_and_then_is_stable() -> None:
    tasks = [task("t1", 1, "n1"), task("t2", 2, "n1"), task("t3", 3, "n2")]
    plan = plan_for(service(2), tasks)
    assert plan.shutdown == ["t2"]
    # The agent stopped it: the retired slot is not refilled, its task is deleted.
    stopped = task("t2", 2, "n1", state=SHUTDOWN, desired=SHUTDOWN)
    plan = plan_for(service(2), [tasks[0], stopped, tasks[2]])
    assert plan == ServicePlan(delete=["t2"])
    assert plan_for(service(2), [tasks[0], tasks[2]]).empty()


def test_scale_to_zero_stops_everything() -> None:
    tasks = [task("t1", 1), task("t2", 2, "n2")]
    plan = plan_for(service(0), tasks)
    assert sorted(plan.shutdown) == ["t1", "t2"] and plan.create == []


def test_scale_down_drops_history_of_retired_slots() -> None:
    tasks = [task("old", 2, "n1", state=FAILED, desired=SHUTDOWN),
             task("t1", 1, "n1"), task("t2", 2, "n2")]
    plan = plan_for(service(1), tasks)
    assert plan == ServicePlan(shutdown=["t2"], delete=["old"])


def test_duplicate_live_tasks_in_a_slot_keep_the_newest() -> None:
    plan = plan_for(service(1), [task("older", 1, "n1"), task("newer", 1, "n2")])
    assert plan == ServicePlan(shutdown=["older"])


def test_replicated_tasks_without_a_slot_are_cleared() -> None:
    tasks = [task("s1", 1), task("odd", 0, "n2"),
             task("odd-done", 0, "n2", state=COMPLETE, desired=SHUTDOWN)]
    plan = plan_for(service(1), tasks)
    assert plan == ServicePlan(shutdown=["odd"], delete=["odd-done"])


# ------------------------------------------------------------------ replicated: nodes


@pytest.mark.parametrize("bad_node", [
    node("n1", availability=pb.NODE_AVAILABILITY_DRAIN),
    node("n1", state=pb.NODE_STATE_DOWN),
    None,
], ids=["drain", "down", "gone"])
def test_task_on_lost_node_is_replaced_in_its_slot(bad_node: pb.Node | None) -> None:
    nodes = [bad_node, node("n2")] if bad_node is not None else [node("n2")]
    tasks = [task("a", 1, "n1"), task("b", 2, "n2")]
    plan = plan_for(service(2, delay=5000), tasks, nodes)
    # A lost node is not a restart: no delay.
    assert plan == ServicePlan(create=[new(1, replaces="a")], shutdown=["a"])


@pytest.mark.parametrize("ok_node", [
    node("n1", availability=pb.NODE_AVAILABILITY_PAUSE),
    node("n1", state=pb.NODE_STATE_DISCONNECTED),
], ids=["pause", "disconnected"])
def test_paused_or_disconnected_node_keeps_its_tasks(ok_node: pb.Node) -> None:
    assert plan_for(service(1), [task("a", 1, "n1")], [ok_node]).empty()


def test_stopping_task_on_a_gone_node_counts_as_history() -> None:
    tasks = [task(f"h{i}", 1, "n2", state=FAILED, desired=SHUTDOWN) for i in range(2)]
    tasks.append(task("lost", 1, "gone", desired=SHUTDOWN))
    tasks.append(task("cur", 1, "n1"))
    plan = plan_for(service(1), tasks, history_limit=2)
    # "lost" can never report again, so it is history: the two newest stay, h0 goes.
    assert plan == ServicePlan(delete=["h0"])


# ------------------------------------------------------------------ restart policy


def test_restart_any_replaces_after_delay() -> None:
    tasks = [task("a", 1, state=COMPLETE, ended=NOW - 10), task("b", 2)]
    plan = plan_for(service(2, delay=3000), tasks)
    assert plan == ServicePlan(create=[new(1, not_before=NOW + 3000, replaces="a")],
                               shutdown=["a"])


@pytest.mark.parametrize(("state", "exit_code", "restarts"), [
    (COMPLETE, 0, False),
    (COMPLETE, 3, True),
    (FAILED, 1, True),
    (FAILED, 0, True),
    (REJECTED, 0, True),
])
def test_restart_on_failure(state: int, exit_code: int, restarts: bool) -> None:
    svc = service(1, condition=pb.RESTART_CONDITION_ON_FAILURE, delay=100)
    plan = plan_for(svc, [task("a", 1, state=state, exit_code=exit_code, ended=NOW)])
    assert plan.shutdown == ["a"]
    expected = [new(1, not_before=NOW + 100, replaces="a")] if restarts else []
    assert plan.create == expected


@pytest.mark.parametrize("state", [COMPLETE, FAILED, REJECTED])
def test_restart_none_never_restarts_and_gives_up_for_good(state: int) -> None:
    svc = service(2, condition=pb.RESTART_CONDITION_NONE)
    tasks = [task("a", 1, state=state, exit_code=1, ended=NOW), task("b", 2)]
    assert plan_for(svc, tasks) == ServicePlan(shutdown=["a"])
    # Next pass, once "a" is shut down: the slot stays empty and is not refilled as missing.
    tasks[0].desired_state = SHUTDOWN
    assert plan_for(svc, tasks).empty()


def test_completed_slot_under_on_failure_is_not_refilled() -> None:
    svc = service(1, condition=pb.RESTART_CONDITION_ON_FAILURE)
    tasks = [task("a", 1, state=COMPLETE, desired=SHUTDOWN, ended=NOW - 1)]
    assert plan_for(svc, tasks).empty()


def test_max_attempts_counts_earlier_exits_of_the_slot() -> None:
    svc = service(1, max_attempts=2)
    first = task("f1", 1, state=FAILED, desired=SHUTDOWN, ended=NOW - 300)
    second = task("f2", 1, state=FAILED, desired=SHUTDOWN, ended=NOW - 200)
    third = task("f3", 1, state=FAILED, ended=NOW - 100)
    # One earlier exit: a second restart is allowed.
    plan = plan_for(svc, [first, task("f2b", 1, state=FAILED, ended=NOW - 200)])
    assert plan == ServicePlan(create=[new(1, replaces="f2b")], shutdown=["f2b"])
    # Two earlier exits: attempts are used up.
    assert plan_for(svc, [first, second, third]) == ServicePlan(shutdown=["f3"])


def test_exits_outside_the_window_do_not_count() -> None:
    svc = service(1, max_attempts=1, window=1000)
    old = task("old", 1, state=FAILED, desired=SHUTDOWN, ended=NOW - 5000)
    latest = task("latest", 1, state=FAILED, ended=NOW - 10)
    assert plan_for(svc, [old, latest]).create == [new(1, replaces="latest")]
    recent = task("recent", 1, state=FAILED, desired=SHUTDOWN, ended=NOW - 500)
    latest2 = task("latest2", 1, state=FAILED, ended=NOW - 10)
    assert plan_for(svc, [recent, latest2]) == ServicePlan(shutdown=["latest2"])


def test_window_is_measured_from_the_failure_so_giving_up_is_final() -> None:
    svc = service(1, max_attempts=1, window=1000)
    tasks = [task("f1", 1, state=FAILED, desired=SHUTDOWN, ended=NOW - 500),
             task("f2", 1, state=FAILED, desired=SHUTDOWN, ended=NOW)]
    assert plan_for(svc, tasks).empty()
    # Long after both failures left the window, the slot is still given up.
    later = reconcile_service(svc, tasks, NODES, NOW + 3_600_000)
    assert later.empty()


def test_a_new_spec_version_gets_fresh_attempts() -> None:
    svc = service(1, version=2, max_attempts=1)
    tasks = [task("v1", 1, state=FAILED, desired=SHUTDOWN, version=1, ended=NOW - 50),
             task("v2", 1, state=FAILED, version=2, ended=NOW)]
    assert plan_for(svc, tasks).create == [new(1, replaces="v2")]


def test_task_lost_without_exit_is_replaced_whatever_the_policy() -> None:
    svc = service(1, condition=pb.RESTART_CONDITION_NONE, delay=200)
    for state in (SHUTDOWN, pb.TASK_STATE_ORPHANED):
        plan = plan_for(svc, [task("a", 1, state=state, ended=NOW)])
        assert plan == ServicePlan(create=[new(1, not_before=NOW + 200, replaces="a")],
                                   shutdown=["a"])


def test_slot_shut_down_by_us_without_replacement_is_refilled() -> None:
    # E.g. a pass that stored the shutdown but died before storing the replacement.
    tasks = [task("a", 1, state=SHUTDOWN, desired=SHUTDOWN)]
    assert plan_for(service(1), tasks).create == [new(1)]


# ------------------------------------------------------------------ updates


def test_update_replaces_outdated_tasks_with_parallelism() -> None:
    svc = service(4, version=2, parallelism=2)
    tasks = [task(f"t{i}", i, f"n{i % 3 + 1}") for i in range(1, 5)]
    plan = plan_for(svc, tasks)
    assert plan == ServicePlan(create=[new(1, "", NOW, "t1"), new(2, "", NOW, "t2")],
                               shutdown=["t1", "t2"])


def test_update_waits_for_the_batch_to_run() -> None:
    svc = service(4, version=2, parallelism=2)
    old = [task(f"t{i}", i, desired=SHUTDOWN, state=SHUTDOWN) for i in (1, 2)]
    fresh = [task("u1", 1, version=2, state=PENDING, node_id=""),
             task("u2", 2, version=2, state=RUNNING)]
    rest = [task("t3", 3), task("t4", 4)]
    plan = plan_for(svc, old + fresh + rest)
    # u1 is not running yet: one slot of budget left.
    assert plan == ServicePlan(create=[new(3, replaces="t3")], shutdown=["t3"])
    fresh[0].status.state = RUNNING
    plan = plan_for(svc, old + fresh + rest)
    assert plan == ServicePlan(create=[new(3, replaces="t3"), new(4, replaces="t4")],
                               shutdown=["t3", "t4"])


def test_update_without_parallelism_replaces_everything() -> None:
    svc = service(3, version=5)
    tasks = [task(f"t{i}", i, version=4) for i in range(1, 4)]
    plan = plan_for(svc, tasks)
    assert sorted(plan.shutdown) == ["t1", "t2", "t3"]
    assert [(c.slot, c.replaces) for c in plan.create] == [(1, "t1"), (2, "t2"), (3, "t3")]


def test_restarts_count_against_the_update_budget() -> None:
    svc = service(2, version=2, parallelism=1)
    tasks = [task("crashed", 1, version=2, state=FAILED, ended=NOW), task("old", 2)]
    plan = plan_for(svc, tasks)
    assert plan == ServicePlan(create=[new(1, replaces="crashed")], shutdown=["crashed"])


def test_update_refills_a_given_up_slot() -> None:
    svc = service(1, version=2, condition=pb.RESTART_CONDITION_NONE)
    tasks = [task("done", 1, state=COMPLETE, desired=SHUTDOWN, ended=NOW - 5)]
    assert plan_for(svc, tasks).create == [new(1, replaces="done")]


CHECK = pb.HealthCheck(tcp_port=80)


def checked(t: pb.Task, health: int, ready_ms: int = 0) -> pb.Task:
    """`t` with a health check in its spec and the given verdict."""
    t.spec.health_check.CopyFrom(CHECK)
    t.status.health = health  # type: ignore[assignment]
    t.status.ready_ms = ready_ms
    return t


@pytest.mark.parametrize("health", [pb.TASK_HEALTH_NONE, pb.TASK_HEALTH_STARTING,
                                    pb.TASK_HEALTH_UNHEALTHY])
def test_update_never_passes_a_batch_whose_new_task_is_not_healthy(health: int) -> None:
    svc = service(3, version=2, parallelism=1)
    old = task("t1", 1, desired=SHUTDOWN, state=SHUTDOWN)
    fresh = checked(task("u1", 1, version=2, state=RUNNING), health)
    rest = [task("t2", 2), task("t3", 3)]
    # However often the pass runs and however late it is, the batch holds.
    for now in (NOW, NOW + 3_600_000):
        plan = reconcile_service(svc, [old, fresh, *rest], NODES, now)
        assert plan == ServicePlan(), health
    fresh.status.health = pb.TASK_HEALTH_HEALTHY
    fresh.status.ready_ms = NOW - 1
    assert plan_for(svc, [old, fresh, *rest]) == ServicePlan(
        create=[new(2, replaces="t2")], shutdown=["t2"])


def test_unchecked_tasks_are_ready_once_running_whatever_the_health_field() -> None:
    svc = service(2, version=2, parallelism=1)
    fresh = task("u1", 1, version=2, state=RUNNING)
    fresh.status.health = pb.TASK_HEALTH_UNHEALTHY  # no check in its spec: not looked at
    plan = plan_for(svc, [fresh, task("t2", 2)])
    assert plan.create == [new(2, replaces="t2")]


def test_update_delay_counts_from_ready_and_asks_for_a_wake_up() -> None:
    svc = service(3, version=2, parallelism=1)
    svc.spec.update_config.delay_ms = 10_000
    fresh = checked(task("u1", 1, version=2, state=RUNNING, ended=NOW - 60_000),
                    pb.TASK_HEALTH_HEALTHY, ready_ms=NOW - 4_000)
    rest = [task("t2", 2), task("t3", 3)]
    plan = plan_for(svc, [fresh, *rest])
    # Ready 4 s ago, delay 10 s: nothing yet, and a pass is wanted when the 6 s are up.
    assert plan == ServicePlan(wake_at_ms=NOW + 6_000)
    plan = reconcile_service(svc, [fresh, *rest], NODES, NOW + 6_000)
    assert plan == ServicePlan(create=[new(2, not_before=NOW + 6_000, replaces="t2")],
                               shutdown=["t2"])


def test_update_delay_falls_back_to_the_status_time_without_ready_ms() -> None:
    svc = service(2, version=2, parallelism=1)
    svc.spec.update_config.delay_ms = 5_000
    fresh = task("u1", 1, version=2, state=RUNNING, ended=NOW - 1_000)
    plan = plan_for(svc, [fresh, task("t2", 2)])
    assert plan == ServicePlan(wake_at_ms=NOW + 4_000)


def test_no_wake_up_when_nothing_waits_on_the_delay() -> None:
    svc = service(2, version=2, parallelism=2)
    svc.spec.update_config.delay_ms = 5_000
    fresh = task("u1", 1, version=2, state=RUNNING, ended=NOW - 1_000)
    # One slot settling, one of budget left for the last outdated task: nothing left waiting.
    plan = plan_for(svc, [fresh, task("t2", 2)])
    assert plan.create == [new(2, replaces="t2")] and plan.wake_at_ms == 0
    # Converged: a settling task alone asks for nothing.
    assert plan_for(svc, [fresh, task("u2", 2, version=2)]).wake_at_ms == 0


def test_global_update_waits_for_health() -> None:
    svc = service(None, version=2, parallelism=1)
    fresh = checked(task("u1", 0, "n1", version=2), pb.TASK_HEALTH_STARTING)
    tasks = [fresh, task("o2", 0, "n2"), task("o3", 0, "n3")]
    assert plan_for(svc, tasks) == ServicePlan()
    fresh.status.health = pb.TASK_HEALTH_HEALTHY
    assert plan_for(svc, tasks).shutdown == ["o2"]


# ------------------------------------------------------------------ history


def test_history_keeps_the_newest_finished_tasks_per_slot() -> None:
    history = [task(f"h{i}", 1, state=SHUTDOWN, desired=SHUTDOWN) for i in range(7)]
    other = [task(f"o{i}", 2, state=FAILED, desired=SHUTDOWN) for i in range(3)]
    tasks = [*history, task("cur1", 1), *other, task("cur2", 2)]
    plan = plan_for(service(2), tasks, history_limit=3)
    assert sorted(plan.delete) == ["h0", "h1", "h2", "h3"]
    assert plan.create == [] and plan.shutdown == []


def test_history_keeps_what_restart_counting_needs() -> None:
    svc = service(1, max_attempts=4)
    fails = [task(f"f{i}", 1, state=FAILED, desired=SHUTDOWN, ended=NOW - 100 + i)
             for i in range(6)]
    plan = plan_for(svc, fails, history_limit=2)
    # The newest five exits (the last one and its four attempts) stay; the slot has given up.
    assert plan == ServicePlan(delete=["f0"])
    # And it still has given up on the next pass, after the deletion.
    assert plan_for(svc, fails[1:], history_limit=2).empty()


def test_history_limit_zero_still_keeps_the_newest() -> None:
    svc = service(1, condition=pb.RESTART_CONDITION_NONE)
    tasks = [task("a", 1, state=COMPLETE, desired=SHUTDOWN),
             task("b", 1, state=COMPLETE, desired=SHUTDOWN)]
    assert plan_for(svc, tasks, history_limit=0) == ServicePlan(delete=["a"])


# ------------------------------------------------------------------ global


def test_global_one_task_per_eligible_node() -> None:
    nodes = [node("n1"), node("n2", availability=pb.NODE_AVAILABILITY_PAUSE),
             node("n3", availability=pb.NODE_AVAILABILITY_DRAIN),
             node("n4", state=pb.NODE_STATE_DOWN), node("n5", state=pb.NODE_STATE_DISCONNECTED),
             node("n6")]
    plan = plan_for(service(), [], nodes)
    assert plan == ServicePlan(create=[new(0, "n1"), new(0, "n6")])


def test_global_node_joins() -> None:
    tasks = [task("a", 0, "n1"), task("b", 0, "n2")]
    assert plan_for(service(), tasks, [node("n1"), node("n2")]).empty()
    plan = plan_for(service(), tasks, [node("n1"), node("n2"), node("n3")])
    assert plan == ServicePlan(create=[new(0, "n3")])


@pytest.mark.parametrize("n2", [
    node("n2", availability=pb.NODE_AVAILABILITY_DRAIN),
    node("n2", state=pb.NODE_STATE_DOWN),
], ids=["drain", "down"])
def test_global_task_stops_when_its_node_becomes_ineligible(n2: pb.Node) -> None:
    tasks = [task("a", 0, "n1"), task("b", 0, "n2")]
    assert plan_for(service(), tasks, [node("n1"), n2]) == ServicePlan(shutdown=["b"])


def test_global_node_removed_stops_and_forgets_its_tasks() -> None:
    tasks = [task("a", 0, "n1"), task("b", 0, "n2"),
             task("b-old", 0, "n2", state=FAILED, desired=SHUTDOWN)]
    plan = plan_for(service(), tasks, [node("n1")])
    assert plan == ServicePlan(shutdown=["b"], delete=["b-old"])
    tasks[1].desired_state = SHUTDOWN
    assert plan_for(service(), tasks, [node("n1")]) == ServicePlan(delete=["b", "b-old"])


def test_global_pause_keeps_tasks_but_places_none() -> None:
    nodes = [node("n1", availability=pb.NODE_AVAILABILITY_PAUSE),
             node("n2", availability=pb.NODE_AVAILABILITY_PAUSE)]
    assert plan_for(service(), [task("a", 0, "n1")], nodes).empty()
    # A task that exits on a paused node is not restarted there until the node is active again.
    exited = [task("a", 0, "n1", state=FAILED, ended=NOW)]
    assert plan_for(service(), exited, nodes) == ServicePlan(shutdown=["a"])
    exited[0].desired_state = SHUTDOWN
    assert plan_for(service(), exited, nodes).empty()
    assert plan_for(service(), exited, [node("n1")]).create == [new(0, "n1", replaces="a")]


def test_global_drained_node_comes_back() -> None:
    tasks = [task("a", 0, "n1", state=SHUTDOWN, desired=SHUTDOWN)]
    assert plan_for(service(), tasks, [node("n1")]).create == [new(0, "n1")]


def test_global_constraint_change() -> None:
    nodes = [node("n1", labels={"zone": "a"}), node("n2", labels={"zone": "b"})]
    tasks = [task("a", 0, "n1")]
    assert plan_for(service(constraints=("node.labels.zone==a",)), tasks, nodes).empty()
    plan = plan_for(service(constraints=("node.labels.zone==b",)), tasks, nodes)
    assert plan == ServicePlan(create=[new(0, "n2")], shutdown=["a"])
    # A paused node that stops matching loses its task too.
    nodes[0].spec.availability = pb.NODE_AVAILABILITY_PAUSE
    plan = plan_for(service(constraints=("node.labels.zone==b",)), tasks, nodes)
    assert plan == ServicePlan(create=[new(0, "n2")], shutdown=["a"])


def test_global_constraints_that_do_not_parse_place_nothing_new() -> None:
    svc = service(constraints=("node.zone=a",))
    assert plan_for(svc, [task("a", 0, "n1")], [node("n1"), node("n2")]).empty()


def test_global_restart_on_the_same_node() -> None:
    svc = service(delay=700, condition=pb.RESTART_CONDITION_ON_FAILURE, max_attempts=1)
    tasks = [task("a", 0, "n1", state=FAILED, exit_code=2, ended=NOW)]
    plan = plan_for(svc, tasks, [node("n1")])
    assert plan == ServicePlan(create=[new(0, "n1", NOW + 700, "a")], shutdown=["a"])
    # Attempts are counted per node.
    tasks.append(task("b", 0, "n1", state=FAILED, exit_code=2, ended=NOW + 1))
    tasks[0].desired_state = SHUTDOWN
    assert plan_for(svc, tasks, [node("n1")]) == ServicePlan(shutdown=["b"])


def test_global_update_with_parallelism() -> None:
    svc = service(version=3, parallelism=1)
    nodes = [node("n1"), node("n2"), node("n3")]
    tasks = [task("a", 0, "n1", version=2), task("b", 0, "n2", version=2),
             task("c", 0, "n3", version=3)]
    plan = plan_for(svc, tasks, nodes)
    assert plan == ServicePlan(create=[new(0, "n1", replaces="a")], shutdown=["a"])
    tasks[2].status.state = pb.TASK_STATE_STARTING
    assert plan_for(svc, tasks, nodes).empty()


def test_global_service_clears_tasks_with_a_slot() -> None:
    plan = plan_for(service(), [task("a", 0, "n1"), task("r", 3, "n1")], [node("n1")])
    assert plan == ServicePlan(shutdown=["r"])


# ------------------------------------------------------------------ removed services


def test_removed_service() -> None:
    nodes = {"n1": node("n1"), "down": node("down", state=pb.NODE_STATE_DOWN)}
    tasks = [
        task("running", 1, "n1"),
        task("stopping", 2, "n1", desired=pb.TASK_STATE_REMOVE),
        task("finished", 3, "n1", state=COMPLETE),
        task("unassigned", 4, "", state=PENDING),
        task("on-down", 5, "down"),
        task("on-gone", 6, "gone"),
    ]
    remove, delete = reconcile_removed_service(tasks, nodes)
    assert remove == ["running"]
    assert delete == ["finished", "unassigned", "on-down", "on-gone"]


# ------------------------------------------------------------------ determinism and speed


def test_plan_does_not_depend_on_task_order() -> None:
    svc = service(3, version=2, parallelism=2, max_attempts=3)
    tasks = [task("a", 1, "n1"), task("b", 2, "n2", state=FAILED, ended=NOW),
             task("c", 2, "n2", state=FAILED, desired=SHUTDOWN, ended=NOW - 9),
             task("d", 5, "n1"), task("e", 6, "n3", version=2)]
    expected = plan_for(svc, tasks)
    assert not expected.empty()
    for perm in itertools.permutations(tasks):
        assert plan_for(svc, list(perm)) == expected


@pytest.mark.parametrize("by_id", [False, True], ids=["node-list", "node-map"])
def test_thousand_single_task_services_are_fast(by_id: bool) -> None:
    node_list = [node(f"n{i:03d}") for i in range(100)]
    nodes = {n.meta.id: n for n in node_list} if by_id else node_list
    work = []
    for i in range(1000):
        svc = service(1)
        svc.meta.id = f"s{i}"
        work.append((svc, [task(f"t{i}", 1, f"n{i % 100:03d}", state=FAILED, ended=NOW)]))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        plans = [reconcile_service(svc, ts, nodes, NOW) for svc, ts in work]
        best = min(best, time.perf_counter() - start)
    assert [p.create for p in plans[:2]] == [[new(1, replaces="t0")], [new(1, replaces="t1")]]
    assert all(len(p.create) == 1 for p in plans)
    assert best < 0.2, f"reconciling took {best * 1000:.1f} ms"
