"""The agent's task state machine and desired data plane, as pure functions.

The manager says what should run (a task with a desired state); the host says what is (a
process, an exit, a sandbox that is built or failed). `decide` turns both into the next
actions and the states to report, without doing any of it, so every transition is a unit
test. It follows swarmkit's task model: a task moves only forward, ACCEPTED -> PREPARING
(sandbox and veths) -> STARTING -> RUNNING -> COMPLETE / FAILED / SHUTDOWN, and a finished task
is not restarted here while a manager is reachable: restarting is the orchestrator's job (a new
task, after the restart policy's delay), so the agent only reports faithfully. With every
manager away the agent restarts it in place instead (see `decide`).

`Controller` holds what the host knows of each task (`Local`) and is the only writer of it:
the daemon reports events (assigned, started, exited, a sandbox built, a health verdict, a
state sent) through its methods and acts on what `decide` returns. Events in, decisions out.

What the kernel must hold for the sandboxes decided on is derived in agent/desiredstate.py.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum

from agent.executor.api import ExitInfo
from proto import objects_pb2 as pb


class Sandbox(Enum):
    ABSENT = "absent"
    READY = "ready"
    FAILED = "failed"


@dataclass
class Local:
    """What this host knows of one task, beyond what the manager sent."""

    pid: int = 0  # a running process (0: none)
    exit_code: int | None = None
    exited: bool = False
    exit_error: str = ""
    exited_ms: int = 0  # when the exit was recorded (the restart delay counts from it)
    # Restarts done here while no manager was reachable (see `decide`).
    local_restarts: int = 0
    start_error: str = ""
    sandbox: Sandbox = Sandbox.ABSENT
    sandbox_error: str = ""
    # The health check's verdict (TASK_HEALTH_NONE: no check) and since when (wall ms) the
    # task can take traffic: running, and healthy if checked (0: it cannot).
    health: int = pb.TASK_HEALTH_NONE
    ready_ms: int = 0
    # Why the agent is stopping a task that turned unhealthy ("" while it is not).
    unhealthy: str = ""
    # Highest state reported to (or known by) the manager, so nothing is said twice; for a
    # RUNNING task also the (health, ready_ms) last reported, so a change is said once.
    reported: int = pb.TASK_STATE_NEW
    reported_health: tuple[int, int] = (pb.TASK_HEALTH_NONE, 0)
    # The task as last assigned (kept after the manager drops it, until its process is gone).
    task: pb.Task | None = None


@dataclass
class Decision:
    # Tasks whose process must be started now (their sandbox is ready).
    start: list[str] = field(default_factory=list)
    # Exited tasks to start again in place (same sandbox and address), by the restart policy,
    # while no manager is reachable.
    restart: list[str] = field(default_factory=list)
    # Tasks whose process must be stopped.
    stop: list[str] = field(default_factory=list)
    # Tasks gone from the assignment set whose leftovers (directory, logs) can be removed.
    forget: list[str] = field(default_factory=list)
    # Tasks that need a sandbox (being prepared, running, or still stopping).
    sandboxes: set[str] = field(default_factory=set)
    # States to send to the manager, at most one per task.
    reports: dict[str, pb.TaskStatus] = field(default_factory=dict)


def status(state: int, message: str, now_ms: int, **fields: object) -> pb.TaskStatus:
    return pb.TaskStatus(
        state=state,  # type: ignore[arg-type]
        message=message,
        timestamp_ms=now_ms,
        **fields,  # type: ignore[arg-type]
    )


def failed(message: str, err: str, now_ms: int) -> pb.TaskStatus:
    """FAILED for a task that never ran a process (exit code -1, as Docker reports)."""
    return status(pb.TASK_STATE_FAILED, message, now_ms, err=err, exit_code=-1)


def is_terminal(state: int) -> bool:
    return state >= pb.TASK_STATE_COMPLETE


def exit_status(local: Local, now_ms: int) -> pb.TaskStatus:
    """COMPLETE for a clean exit, FAILED with the code and the reason otherwise."""
    code = local.exit_code
    if local.unhealthy:
        # Stopped by the agent for failing its health check: whatever the exit code, it failed.
        return status(
            pb.TASK_STATE_FAILED,
            "task was unhealthy",
            now_ms,
            err=f"unhealthy: {local.unhealthy}",
            exit_code=code if code is not None else -1,
        )
    if code == 0:
        return status(pb.TASK_STATE_COMPLETE, "finished", now_ms, exit_code=0)
    return status(
        pb.TASK_STATE_FAILED,
        "task exited with an error",
        now_ms,
        err=local.exit_error or (f"exit status {code}" if code is not None else "exited"),
        exit_code=code if code is not None else -1,
    )


def restart_in_place(policy: pb.RestartPolicy | None, lo: Local) -> bool:
    """Whether an exited task may start again here, by its service's restart policy (the
    window is not applied: local restarts count over the agent's life)."""
    if policy is None or policy.condition == pb.RESTART_CONDITION_NONE:
        return False
    if policy.condition == pb.RESTART_CONDITION_ON_FAILURE and lo.exit_code == 0:
        return False
    return not policy.max_attempts or lo.local_restarts < policy.max_attempts


def decide(
    tasks: Mapping[str, pb.Task],
    local: Mapping[str, Local],
    now_ms: int,
    *,
    autonomous: bool = False,
    policies: Mapping[str, pb.RestartPolicy] | None = None,
) -> Decision:
    """The next step for every task this host holds or still has leftovers of.

    `autonomous` says no manager is reachable. Restarting is then the agent's job, as
    swarmkit's orchestrator cannot do it: an exited task whose restart policy (`policies`, by
    service ID) allows it starts again in its own sandbox after the policy's delay, keeping its
    address, and is never reported as ended. With a manager, exits are reported and the
    orchestrator replaces the task.

    Each assigned task goes through the named steps below in order; the first that has
    something to say about it decides (and may report one state).
    """
    d = Decision()
    for task_id, task in tasks.items():
        lo = local.get(task_id)
        if lo is None:
            continue  # the caller creates a Local for every assigned task first
        policy = (policies or {}).get(task.service_id)
        step = _Step(d, task_id, task, lo, now_ms, max(lo.reported, task.status.state))
        for rule in _RULES:
            if rule(step, autonomous, policy):
                break
    _decide_unassigned(d, tasks, local)
    return d


@dataclass
class _Step:
    """One task's turn in `decide`: what is known of it, and where the outcome goes."""

    d: Decision
    task_id: str
    task: pb.Task
    lo: Local
    now_ms: int
    state: int  # the highest state the manager knows of

    @property
    def running(self) -> bool:
        return self.lo.pid != 0

    def report(self, status: pb.TaskStatus) -> None:
        """Say `status` unless the manager knows it already (a RUNNING task's health and
        readiness count as news)."""
        lo = self.lo
        if status.state > lo.reported or (
            status.state == lo.reported == pb.TASK_STATE_RUNNING
            and (status.health, status.ready_ms) != lo.reported_health
        ):
            self.d.reports[self.task_id] = status

    def stop(self) -> None:
        """Stop its process; its sandbox stays until the process is gone."""
        self.d.stop.append(self.task_id)
        self.d.sandboxes.add(self.task_id)


def _told_to_stop(s: _Step, _autonomous: bool, _policy: pb.RestartPolicy | None) -> bool:
    """Told to stop (SHUTDOWN or REMOVE): stop what runs, then say it is shut down."""
    if s.task.desired_state <= pb.TASK_STATE_RUNNING:
        return False
    if s.running:
        s.stop()
    elif not is_terminal(s.state):
        # Whatever ended the process (our SIGTERM, or its own exit just before), the manager
        # asked for it to stop, and it has.
        s.report(
            status(pb.TASK_STATE_SHUTDOWN, "shut down", s.now_ms, exit_code=s.lo.exit_code or 0)
        )
    return True


def _finished(s: _Step, _autonomous: bool, _policy: pb.RestartPolicy | None) -> bool:
    """Finished here; stays finished (the orchestrator decides about a replacement)."""
    if not is_terminal(s.state):
        return False
    if s.running:
        s.stop()
    return True


def _restart_here(s: _Step, autonomous: bool, policy: pb.RestartPolicy | None) -> bool:
    """With no manager, an ended task (exited, or lost with the host: a process gone without
    an exit record) that its policy lets restart does so in place, after the policy's delay."""
    lo = s.lo
    ended = lo.exited or (
        not s.running and not lo.start_error and s.state >= pb.TASK_STATE_STARTING
    )
    if not (ended and autonomous and policy is not None and restart_in_place(policy, lo)):
        return False
    s.d.sandboxes.add(s.task_id)
    if lo.sandbox is Sandbox.READY and s.now_ms >= lo.exited_ms + policy.delay_ms:
        s.d.restart.append(s.task_id)
    return True


def _ended(s: _Step, _autonomous: bool, _policy: pb.RestartPolicy | None) -> bool:
    """An exit or a start failure is reported as the task's end."""
    if s.lo.exited:
        s.report(exit_status(s.lo, s.now_ms))
        return True
    if s.lo.start_error:
        s.report(failed("task could not start", s.lo.start_error, s.now_ms))
        return True
    return False


def _runs(s: _Step, _autonomous: bool, _policy: pb.RestartPolicy | None) -> bool:
    """A running task is RUNNING, with its health; one found unhealthy is stopped."""
    if not s.running:
        return False
    s.d.sandboxes.add(s.task_id)
    if s.lo.unhealthy:
        # Withdrawn from the balancers already (its record says disabled); now it goes.
        s.d.stop.append(s.task_id)
    lo = s.lo
    s.report(
        status(
            pb.TASK_STATE_RUNNING,
            "started",
            s.now_ms,
            pid=lo.pid,
            health=lo.health,
            ready_ms=lo.ready_ms,
        )
    )
    return True


def _lost(s: _Step, _autonomous: bool, _policy: pb.RestartPolicy | None) -> bool:
    """The manager saw it start, but no process is here and no exit was recorded: the host
    lost it (state directory gone, or the agent died between spawn and record)."""
    if s.state < pb.TASK_STATE_STARTING:
        return False
    s.report(
        failed(
            "task process lost",
            "the task's process is gone and its exit status is unknown",
            s.now_ms,
        )
    )
    return True


def _delayed(s: _Step, _autonomous: bool, _policy: pb.RestartPolicy | None) -> bool:
    """A replacement waits out its restart delay before anything is prepared."""
    if not (s.task.not_before_ms and s.now_ms < s.task.not_before_ms):
        return False
    s.report(status(pb.TASK_STATE_ACCEPTED, "waiting for restart delay", s.now_ms))
    return True


def _prepare_and_start(s: _Step, _autonomous: bool, _policy: pb.RestartPolicy | None) -> bool:
    """Not started yet: its sandbox is made (PREPARING), then it starts (STARTING); a
    sandbox that cannot be made fails it."""
    s.d.sandboxes.add(s.task_id)
    if s.lo.sandbox is Sandbox.FAILED:
        s.report(failed("network setup failed", s.lo.sandbox_error, s.now_ms))
        s.d.sandboxes.discard(s.task_id)
    elif s.lo.sandbox is Sandbox.READY:
        s.d.start.append(s.task_id)
        s.report(status(pb.TASK_STATE_STARTING, "starting", s.now_ms))
    else:
        s.report(status(pb.TASK_STATE_PREPARING, "preparing network", s.now_ms))
    return True


_RULES = (
    _told_to_stop,
    _finished,
    _restart_here,
    _ended,
    _runs,
    _lost,
    _delayed,
    _prepare_and_start,
)


def _decide_unassigned(
    d: Decision, tasks: Mapping[str, pb.Task], local: Mapping[str, Local]
) -> None:
    """No longer assigned (removed by the manager): stop anything left, then forget it."""
    for task_id, lo in local.items():
        if task_id in tasks:
            continue
        if lo.pid:
            d.stop.append(task_id)
            d.sandboxes.add(task_id)
        else:
            d.forget.append(task_id)


class Controller:
    """Owns what this host knows of every task (`Local`, by task ID) and every change to it.

    The daemon is its I/O shell: it tells the controller what happened (a task assigned,
    started, exited, found unhealthy, a sandbox built, a state sent) through the methods below,
    asks `decide` what to do next, and does it. Nothing else writes a `Local`, so every
    transition is here and testable without a host.
    """

    def __init__(self) -> None:
        self.local: dict[str, Local] = {}

    def get(self, task_id: str) -> Local:
        return self.local.get(task_id) or Local()

    def running(self) -> dict[str, int]:
        """Task ID -> PID of every task whose process runs here."""
        return {tid: lo.pid for tid, lo in self.local.items() if lo.pid}

    def known_tasks(self) -> dict[str, pb.Task]:
        """The last assigned spec of every task with a record (dropped tasks included, until
        their process is gone)."""
        return {tid: lo.task for tid, lo in self.local.items() if lo.task is not None}

    # ------------------------------------------------------------------ events

    def assigned(self, tasks: Mapping[str, pb.Task]) -> None:
        """The manager's current tasks for this host."""
        for task_id, task in tasks.items():
            lo = self.local.setdefault(task_id, Local())
            lo.reported = max(lo.reported, task.status.state)
            lo.task = task

    def adopted(self, task_id: str, pid: int) -> None:
        """A process an earlier agent started runs on (found after a restart)."""
        self.local.setdefault(task_id, Local()).pid = pid

    def started(self, task_id: str, pid: int) -> None:
        self.local.setdefault(task_id, Local()).pid = pid

    def start_failed(self, task_id: str, error: str) -> None:
        self.local.setdefault(task_id, Local()).start_error = error

    def exited(self, task_id: str, info: ExitInfo, now_ms: int) -> None:
        """The task's process ended (now, or while no agent watched)."""
        lo = self.local.setdefault(task_id, Local())
        lo.pid = 0
        if info.start_failed:
            # The command never ran (the runtime could not exec it): a start failure.
            lo.start_error = info.error
            return
        lo.exited = True
        lo.exit_code = info.exit_code
        lo.exit_error = info.error
        lo.exited_ms = now_ms

    def restarting(self, task_id: str) -> None:
        """A restart in place (see `decide`): the last run's end is forgotten, counted."""
        lo = self.local[task_id]
        lo.exited, lo.exit_code, lo.exit_error = False, None, ""
        lo.unhealthy = ""
        lo.local_restarts += 1

    def sandboxes_built(
        self, wanted: Collection[str], built: Collection[str], problems: Mapping[str, str]
    ) -> bool:
        """What the data plane holds after a reconcile: `wanted` were asked for, `built` are
        there, `problems` says why a sandbox cannot be. True if a wanted task's sandbox changed
        (another round of `decide` may start it in this same pass)."""
        changed = False
        for task_id, lo in self.local.items():
            why = problems.get(task_id, "")
            if task_id not in wanted:
                new = Sandbox.ABSENT
            elif why:
                new = Sandbox.FAILED
            else:
                new = Sandbox.READY if task_id in built else Sandbox.ABSENT
            if new is not lo.sandbox:
                changed = changed or task_id in wanted
                lo.sandbox, lo.sandbox_error = new, why
        return changed

    def not_checked(self, task_id: str, now_ms: int, *, serving: bool) -> None:
        """No health verdict for the task: `serving` (it runs in its sandbox and has no check)
        makes it ready from the first time it was seen so, else it cannot take traffic."""
        lo = self.local[task_id]
        lo.health = pb.TASK_HEALTH_NONE
        lo.ready_ms = (lo.ready_ms or now_ms) if serving else 0

    def checked(self, task_id: str, health: int, ready_ms: int, error: str) -> str:
        """The health check's verdict (`ready_ms`: wall ms since when it is healthy, 0: it is
        not). Returns why the task must now be stopped if it just turned unhealthy, else ""."""
        lo = self.local[task_id]
        lo.health, lo.ready_ms = health, ready_ms
        if health == pb.TASK_HEALTH_UNHEALTHY and not lo.unhealthy:
            lo.unhealthy = error or "the health check failed"
            return lo.unhealthy
        return ""

    def reported(self, reports: Mapping[str, pb.TaskStatus]) -> None:
        """The manager took these states: they are not said again."""
        for task_id, st in reports.items():
            lo = self.local.get(task_id)
            if lo is not None:
                lo.reported = max(lo.reported, st.state)
                if st.state == pb.TASK_STATE_RUNNING:
                    lo.reported_health = (st.health, st.ready_ms)

    def forget(self, task_id: str) -> None:
        """Its leftovers are gone: nothing more is known of it."""
        self.local.pop(task_id, None)

    # ------------------------------------------------------------------ decisions

    def decide(
        self,
        tasks: Mapping[str, pb.Task],
        now_ms: int,
        *,
        autonomous: bool = False,
        policies: Mapping[str, pb.RestartPolicy] | None = None,
    ) -> Decision:
        return decide(tasks, self.local, now_ms, autonomous=autonomous, policies=policies)


def task_hostname(task: pb.Task) -> str:
    """The task's name as Swarm forms it: SERVICE.SLOT.ID (SERVICE.NODE.ID for global tasks)."""
    return f"{task.service_name}.{task.slot or task.node_id}.{task.meta.id}"
