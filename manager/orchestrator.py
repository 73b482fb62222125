"""Services -> task slots: the orchestrator's pure core.

The leading manager calls :func:`reconcile_service` for each service on every pass and applies
the returned plan; nothing is remembered between calls. Every decision below is therefore
derived from the stored tasks alone, so that a pass repeated after a crash (or simply the next
periodic pass) reaches the same answer instead of undoing the previous one.

Slots
    A replicated service has N slots, each meant to hold one live task; a global service has one
    slot per node (tasks carry slot 0 and the node identifies them). A slot's tasks are its
    history, oldest first by (created_at_ms, id). A task is *live* while both its desired and its
    observed state are at most RUNNING.

Ended tasks and the restart policy
    A task whose desired state is still RUNNING but whose observed state is terminal is shut down
    (desired -> SHUTDOWN) in any case. What happens to its slot depends on how it ended:

    * It *exited* (COMPLETE, FAILED, REJECTED): the restart policy decides. ANY restarts,
      ON_FAILURE restarts unless it completed with exit code 0, NONE never does. With
      max_attempts > 0, the earlier exits of the slot at the same spec_version count as attempts:
      a restart happens only while they are fewer than max_attempts. With window_ms > 0 only the
      exits that ended within window_ms *before this task ended* count (the task's own end,
      status.timestamp_ms, not "now": the decision is re-derived on every pass and must not
      change as time goes by, or a slot that gave up would come back to life once its failures
      slid out of the window). A new spec_version starts the count afresh, as a fix deserves a
      fresh set of attempts.
    * It was *lost* without exiting (SHUTDOWN or ORPHANED while it should run): it is replaced
      whatever the policy says, like a task on a node that went down, but after the restart
      delay so that a misbehaving host cannot make it spin.

    A restarted slot gets its new task with not_before_ms = now + delay_ms.

    The newest task of a slot with no live task tells the slot's state on later passes: if it
    exited and the policy does not allow its restart, the slot has *given up*. A given-up slot
    still counts as one of the N (it is not "missing", so it is not refilled: Docker leaves such a
    slot empty too) until the service is updated, when it is refilled with the new spec. This
    relies on one convention of the agent, the same as Docker's: a task it stops because the
    desired state moved past RUNNING is reported SHUTDOWN, never COMPLETE or FAILED; so an
    exited newest task is always one that ended on its own.

Nodes
    A replicated task on a node that is DRAIN, DOWN or gone is shut down and replaced in the same
    slot at once. PAUSE, and the transient DISCONNECTED and UNKNOWN states, keep their tasks: the
    dispatcher marks a node DOWN once it has really given up on it.
    A global service keeps a task on a node that exists, is not DOWN and not DRAIN and still
    matches the constraints; it places new tasks only on READY and ACTIVE ones. A service whose
    constraints no longer parse (the control API rejects them, so only a stored spec from an
    older grammar can get here) places nothing new but keeps what runs, rather than stopping a
    fleet because of a parser change.

Scaling
    Scaling down picks the slots to retire, not the highest numbers: first slots without a running
    task (given up, restarting, not yet running), then the slots on the node with most tasks of
    the service, then the highest slot number; nothing is renumbered. Scaling up fills the lowest
    numbers that are not in use. A retired slot keeps no history (its finished tasks are deleted),
    as Docker removes the tasks of a scale-down.

Updates
    Tasks with another spec_version than the service's are replaced in their slot, at most
    update_config.parallelism slots at a time (0: all at once). A slot counts as in progress
    while it gets a new task in this plan, while its current-spec task is not *ready* (RUNNING,
    and HEALTHY if its TaskSpec has a health check: a STARTING or UNHEALTHY task holds the
    update where it is), and then for update_config.delay_ms after it became ready (counted
    from status.ready_ms, or from the status timestamp for an agent that does not set it). So
    a batch must be ready, and have stayed so for the delay, before the next one starts. A
    task that stays unhealthy is failed by its agent and restarted by the policy above; the
    update goes on only once a replacement is ready. Time only enters through `now_ms`: when
    a delay is all that holds an update back, the plan says when it ends (`wake_at_ms`) so
    that the caller runs a pass then.

    With order START_FIRST the new task starts while the slot's old one runs; the old one is
    stopped once the new one is ready (if the new one exits, the old one goes on and the
    restart policy decides whether the slot tries again). How the update as a whole fares
    (failure_action, monitor, completion) is manager/updater.py's judgement: a PAUSED update
    starts no batch, and the plan carries the status to store.

History
    Each slot keeps its newest `history_limit` finished tasks (at least 1: the newest tells
    whether the slot gave up), plus, when max_attempts > 0, its newest max_attempts + 1 exits so
    that attempts can still be counted; older ones are deleted. A task counts as finished once
    its observed state is terminal, or once it is meant to stop and can no longer report (never
    assigned, or its node is DOWN or gone).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from manager import updater
from manager.errors import InvalidArgument
from manager.scheduler import Constraint, node_is_eligible, parse_constraints
from manager.validation import has_health_check
from proto import objects_pb2 as pb

RUNNING = pb.TASK_STATE_RUNNING
_TERMINAL = pb.TASK_STATE_COMPLETE
_EXITED = frozenset({pb.TASK_STATE_COMPLETE, pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED})
_Nodes = Sequence[pb.Node] | Mapping[str, pb.Node]


@dataclass
class NewTask:
    slot: int
    node_id: str
    not_before_ms: int
    replaces: str


@dataclass
class ServicePlan:
    create: list[NewTask] = field(default_factory=list)
    shutdown: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    # Wall-clock ms at which an update delay (or monitor period) ends and a pass can start
    # the next batch or complete the update (0: nothing is waiting on time).
    wake_at_ms: int = 0
    # The service's new update status to store (None: unchanged), and whether its previous
    # spec must be put back first (manager/updater.py).
    status: pb.UpdateStatus | None = None
    rollback: bool = False

    def empty(self) -> bool:
        return not (self.create or self.shutdown or self.delete)


def task_is_live(task: pb.Task) -> bool:
    return task.desired_state <= RUNNING and task.status.state <= RUNNING


def task_is_ready(task: pb.Task) -> bool:
    """Running, and healthy if it is checked: what a rolling update waits for."""
    if task.status.state != RUNNING:
        return False
    if not has_health_check(task.spec.health_check):
        return True
    return task.status.health == pb.TASK_HEALTH_HEALTHY


def ready_since_ms(task: pb.Task) -> int:
    return task.status.ready_ms or task.status.timestamp_ms


def task_is_terminal(task: pb.Task) -> bool:
    return task.status.state >= _TERMINAL


def _unreachable(task: pb.Task, nodes: Mapping[str, pb.Node]) -> bool:
    """No agent will ever report on this task again."""
    if not task.node_id:
        return True
    node = nodes.get(task.node_id)
    return node is None or node.status.state == pb.NODE_STATE_DOWN


def _age(task: pb.Task) -> tuple[int, str]:
    return task.meta.created_at_ms, task.meta.id


def _ended_ms(task: pb.Task) -> int:
    return task.status.timestamp_ms or task.meta.updated_at_ms


def _node_keeps_tasks(node: pb.Node | None) -> bool:
    return (
        node is not None
        and node.status.state != pb.NODE_STATE_DOWN
        and node.spec.availability != pb.NODE_AVAILABILITY_DRAIN
    )


@dataclass
class _Slot:
    """One slot after its tasks were read. At most one of current / replace / given_up is set;
    with none set the slot is empty (never used, or retired)."""

    tasks: list[pb.Task]
    current: pb.Task | None = None
    # START_FIRST: the outdated task that runs on until `current` (its successor) is ready.
    previous: pb.Task | None = None
    replace: pb.Task | None = None
    not_before_ms: int = 0
    given_up: pb.Task | None = None

    @property
    def active(self) -> bool:
        return self.current is not None or self.replace is not None or self.given_up is not None

    def retire(self) -> None:
        self.current = self.replace = self.given_up = self.previous = None


class _Reconciler:
    def __init__(
        self,
        service: pb.Service,
        tasks: Sequence[pb.Task],
        nodes: _Nodes,
        now_ms: int,
        history_limit: int,
    ) -> None:
        self.service = service
        self.tasks = tasks
        self.version = service.spec_version
        self.policy = service.spec.restart_policy
        self.nodes: Mapping[str, pb.Node] = (
            nodes if isinstance(nodes, Mapping) else {n.meta.id: n for n in nodes}
        )
        self.now = now_ms
        self.history_limit = max(1, history_limit)
        self.plan = ServicePlan()
        self._stopping: set[str] = set()
        self.config = updater.update_config(service)
        self.start_first = self.config.order == pb.UPDATE_ORDER_START_FIRST
        self.verdict = updater.Verdict()

    # ------------------------------------------------------------------ slots

    def shutdown(self, task: pb.Task) -> None:
        if task.meta.id not in self._stopping:
            self._stopping.add(task.meta.id)
            self.plan.shutdown.append(task.meta.id)

    def read_slot(self, tasks: list[pb.Task]) -> _Slot:
        tasks.sort(key=_age)
        slot = _Slot(tasks)
        if not tasks:
            return slot
        live = []
        for t in tasks:
            if t.desired_state <= RUNNING:
                if t.status.state <= RUNNING:
                    live.append(t)
                else:
                    self.shutdown(t)
        if live:
            slot.current = new = live[-1]
            if (
                self.start_first
                and len(live) > 1
                and not self.outdated(new)
                and not task_is_ready(new)
                and self.outdated(live[-2])
            ):
                slot.previous = live[-2]
            for t in live[:-1]:
                if t is not slot.previous:
                    self.shutdown(t)
            return slot
        newest = tasks[-1]
        if newest.status.state in _EXITED:
            if self._restart_allowed(newest, tasks):
                slot.replace, slot.not_before_ms = newest, self.now + self.policy.delay_ms
            else:
                slot.given_up = newest
        elif newest.desired_state <= RUNNING:
            slot.replace, slot.not_before_ms = newest, self.now + self.policy.delay_ms
        return slot

    def _restart_allowed(self, task: pb.Task, history: list[pb.Task]) -> bool:
        policy = self.policy
        if policy.condition == pb.RESTART_CONDITION_NONE:
            return False
        if (
            policy.condition == pb.RESTART_CONDITION_ON_FAILURE
            and task.status.state == pb.TASK_STATE_COMPLETE
            and task.status.exit_code == 0
        ):
            return False
        if not policy.max_attempts:
            return True
        since = _ended_ms(task) - policy.window_ms if policy.window_ms else None
        attempts = 0
        for t in history:
            if t is task:
                break
            if (
                t.status.state in _EXITED
                and t.spec_version == task.spec_version
                and (since is None or _ended_ms(t) >= since)
            ):
                attempts += 1
        return attempts < policy.max_attempts

    def create(self, slot: int, node_id: str, not_before_ms: int, replaces: pb.Task | None) -> None:
        self.plan.create.append(
            NewTask(slot, node_id, not_before_ms, replaces.meta.id if replaces else "")
        )

    def outdated(self, task: pb.Task) -> bool:
        return task.spec_version != self.version

    def stop(self, slot: _Slot) -> None:
        """Shut down what a slot runs (the slot is retired or its node lost)."""
        for t in (slot.current, slot.previous):
            if t is not None:
                self.shutdown(t)

    # ------------------------------------------------------------------ update

    def update(self, slots: Iterable[tuple[int, str, _Slot]], wanted: int) -> None:
        """Replace outdated tasks of active slots, in the order given, within the parallelism
        budget, unless the update is paused or must roll back (`wanted`: the service's task
        count). Run after all other creations so that they count as in progress."""
        slots = list(slots)
        verdict = self.verdict = updater.judge_failures(self.service, self.tasks, wanted, self.now)
        self.plan.status, self.plan.rollback = verdict.status, verdict.rollback
        paused = self.service.update_status.state in updater.PAUSED
        if verdict.rollback or verdict.halted or paused:
            return
        go_on = self.config.failure_action == pb.UPDATE_FAILURE_ACTION_CONTINUE
        in_progress = len(self.plan.create)
        delay = self.config.delay_ms
        settling: list[int] = []
        candidates = []
        for number, node_id, slot in slots:
            cur = slot.current
            if cur is not None and not self.outdated(cur):
                failed = (number, "" if number else node_id) in verdict.failed_slots
                if not task_is_ready(cur):
                    in_progress += not (go_on and failed)
                elif delay and self.now < ready_since_ms(cur) + delay:
                    in_progress += 1
                    settling.append(ready_since_ms(cur) + delay)
            elif cur is not None or (slot.given_up is not None and self.outdated(slot.given_up)):
                candidates.append((number, node_id, slot))
        parallelism = self.config.parallelism
        budget = max(0, parallelism - in_progress) if parallelism else len(candidates)
        if len(candidates) > budget and settling:
            self.plan.wake_at_ms = min(settling)
        for number, node_id, slot in candidates[:budget]:
            old = slot.current or slot.given_up
            not_before: int | None = self.now
            if slot.current is None:
                pass
            elif self.start_first:
                not_before = self._start_first_retry(slot)
            else:
                self.shutdown(slot.current)
            if not_before is not None:
                self.create(number, node_id, not_before, old)

    def _start_first_retry(self, slot: _Slot) -> int | None:
        """When a START_FIRST slot may start a new task beside its old one: now, unless a new
        one already exited there (the old one ran on); then the restart policy says whether
        (None: not) and after which delay."""
        newest = slot.tasks[-1]
        if self.outdated(newest) or newest.status.state not in _EXITED:
            return self.now
        if not self._restart_allowed(newest, slot.tasks):
            return None
        return self.now + self.policy.delay_ms

    def finish(self, currents: Sequence[pb.Task | None]) -> None:
        """Let the updater mark the update completed (`currents`: each active slot's task)."""
        if self.plan.create or self.plan.status is not None:
            return
        others = any(
            task_is_live(t) and self.outdated(t) and t.meta.id not in self._stopping
            for t in self.tasks
        )
        updater.judge_completion(self.service, self.verdict, currents, others, self.now)
        self.plan.status = self.verdict.status
        wake = self.verdict.wake_at_ms
        if wake and (not self.plan.wake_at_ms or wake < self.plan.wake_at_ms):
            self.plan.wake_at_ms = wake

    # ------------------------------------------------------------------ history

    def finished(self, task: pb.Task) -> bool:
        return task_is_terminal(task) or (
            task.desired_state > RUNNING and _unreachable(task, self.nodes)
        )

    def trim(self, tasks: list[pb.Task]) -> None:
        max_attempts = self.policy.max_attempts
        keep_exits = max_attempts + 1 if max_attempts else 0
        kept = exits = 0
        for t in reversed(tasks):
            if not self.finished(t):
                continue
            exited = t.status.state in _EXITED
            if (
                kept < self.history_limit
                or (exited and exits < keep_exits)
                or t.meta.id in self._stopping
            ):
                kept += 1
                exits += exited
            else:
                self.plan.delete.append(t.meta.id)

    def clear(self, tasks: Iterable[pb.Task]) -> None:
        """Tasks of a slot that no longer exists: delete what has finished, stop the rest."""
        for t in tasks:
            if self.finished(t):
                self.plan.delete.append(t.meta.id)
            elif t.desired_state <= RUNNING:
                self.shutdown(t)

    def done(self) -> ServicePlan:
        """A task deleted needs no shutdown: drop it from that list so the two never overlap."""
        plan = self.plan
        if plan.delete:
            deleted = set(plan.delete)
            plan.shutdown = [i for i in plan.shutdown if i not in deleted]
        return plan

    # ------------------------------------------------------------------ modes

    def replicated(self) -> ServicePlan:
        by_slot: dict[int, list[pb.Task]] = {}
        foreign = []
        for t in self.tasks:
            if t.slot:
                by_slot.setdefault(t.slot, []).append(t)
            else:
                foreign.append(t)
        slots = {n: self.read_slot(by_slot[n]) for n in sorted(by_slot)}
        for slot in slots.values():
            cur = slot.current
            prev = slot.previous
            if prev is not None and not _node_keeps_tasks(self.nodes.get(prev.node_id)):
                self.shutdown(prev)
                slot.previous = None
            if (
                cur is not None
                and cur.node_id
                and not _node_keeps_tasks(self.nodes.get(cur.node_id))
            ):
                self.shutdown(cur)
                slot.current, slot.replace, slot.not_before_ms = None, cur, self.now
        active = [n for n, s in slots.items() if s.active]
        replicas = self.service.spec.replicated.replicas
        if len(active) > replicas:
            retired = set(self._pick_retired(slots, active, len(active) - replicas))
            for n in retired:
                self.stop(slots[n])
                slots[n].retire()
            active = [n for n in active if n not in retired]
        for n in active:
            slot = slots[n]
            if slot.replace is not None:
                self.create(n, "", slot.not_before_ms, slot.replace)
        in_use = set(active)
        number = 0
        for _ in range(replicas - len(active)):
            number += 1
            while number in in_use:
                number += 1
            in_use.add(number)
            self.create(number, "", self.now, None)
        self.update(((n, "", slots[n]) for n in sorted(active)), replicas)
        self.finish([slots[n].current for n in sorted(active)])
        for n, slot in slots.items():
            if n in in_use:
                self.trim(slot.tasks)
            else:
                self.clear(slot.tasks)
        self.clear(foreign)
        self.plan.create.sort(key=lambda c: c.slot)
        return self.done()

    def _pick_retired(self, slots: Mapping[int, _Slot], active: list[int], count: int) -> list[int]:
        """The `count` slots a scale-down stops: idle slots first, then those on the node with
        most tasks of the service, then the highest number.

        A slot's rank on its node (1 for the node's lowest slot, 2 for the next...) orders the
        running slots: retiring by highest rank first always takes from a node holding the most
        remaining tasks, which is what one-at-a-time rebalancing would do, without recounting.
        """
        per_node: dict[str, int] = {}
        keys = []
        for n in sorted(active):
            cur = slots[n].current
            if cur is None:
                idle, rank = 2, 0
            else:
                idle = 0 if cur.status.state == RUNNING else 1
                per_node[cur.node_id] = rank = per_node.get(cur.node_id, 0) + 1
            keys.append((idle, rank, n))
        keys.sort(reverse=True)
        return [n for _, _, n in keys[:count]]

    def global_(self) -> ServicePlan:
        try:
            constraints: list[Constraint] | None = parse_constraints(
                list(self.service.spec.placement.constraints)
            )
        except InvalidArgument:
            constraints = None
        by_node: dict[str, list[pb.Task]] = {}
        foreign = []
        for t in self.tasks:
            if t.node_id and not t.slot:
                by_node.setdefault(t.node_id, []).append(t)
            else:
                foreign.append(t)
        placeable = set()
        if constraints is not None:
            placeable = {i for i, n in self.nodes.items() if node_is_eligible(n, constraints)}
        updatable = []
        for node_id in sorted(placeable | set(by_node)):
            slot = self.read_slot(by_node.get(node_id, []))
            node = self.nodes.get(node_id)
            keep = (
                node is not None
                and _node_keeps_tasks(node)
                and (constraints is None or all(c.matches(node) for c in constraints))
            )
            if not keep:
                self.stop(slot)
                slot.retire()
            elif node_id in placeable:
                if slot.replace is not None:
                    self.create(0, node_id, slot.not_before_ms, slot.replace)
                elif not slot.active:
                    self.create(0, node_id, self.now, None)
                else:
                    updatable.append((0, node_id, slot))
            if node is None:
                self.clear(slot.tasks)
            else:
                self.trim(slot.tasks)
        self.update(updatable, len(updatable) + len(self.plan.create))
        self.finish([s.current for _, _, s in updatable])
        self.clear(foreign)
        return self.done()


def reconcile_service(
    service: pb.Service,
    tasks: Sequence[pb.Task],
    nodes: _Nodes,
    now_ms: int,
    history_limit: int = 5,
) -> ServicePlan:
    """What to change so that `tasks` (all stored tasks of `service`) match its spec; see the
    module docstring for the rules. A spec without a mode has no replicas: defaults are the
    control API's to fill in.

    `nodes` may be given by id: a caller reconciling many services against the same nodes then
    saves rebuilding that index for each of them."""
    r = _Reconciler(service, tasks, nodes, now_ms, history_limit)
    if service.spec.WhichOneof("mode") == "global":
        return r.global_()
    return r.replicated()


def reconcile_removed_service(
    tasks: Sequence[pb.Task], nodes: Mapping[str, pb.Node]
) -> tuple[list[str], list[str]]:
    """Tasks of a deleted service: (ids whose desired state must become REMOVE, ids to delete
    now). A task is deleted at once when no agent will stop it any more (terminal, never
    assigned, or on a node that is DOWN or gone); the others are told to go and deleted on a
    later pass once they have stopped."""
    remove, delete = [], []
    for t in tasks:
        if task_is_terminal(t) or _unreachable(t, nodes):
            delete.append(t.meta.id)
        elif t.desired_state != pb.TASK_STATE_REMOVE:
            remove.append(t.meta.id)
    return remove, delete
