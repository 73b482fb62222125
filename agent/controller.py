"""The agent's task state machine and desired data plane, as pure functions.

The manager says what should run (a task with a desired state); the host says what is (a
process, an exit, a sandbox that is built or failed). `decide` turns both into the next
actions and the states to report, without doing any of it, so every transition is a unit
test. It follows swarmkit's task model: a task moves only forward, ACCEPTED -> PREPARING
(sandbox and veths) -> STARTING -> RUNNING -> COMPLETE / FAILED / SHUTDOWN, and a finished task
is not restarted here while a manager is reachable: restarting is the orchestrator's job (a new
task, after the restart policy's delay), so the agent only reports faithfully. With every
manager away the agent restarts it in place instead (see `decide`).

`desired_dataplane` derives the data plane a set of sandboxes needs: the networks they are on,
their veths and addresses, and the endpoints on other hosts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from agent.model import (
    INGRESS_SANDBOX,
    DesiredState,
    HostConfig,
    LocalEndpoint,
    NetworkConfig,
    RemoteEndpoint,
    SandboxConfig,
)
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
    """
    d = Decision()

    def report(task_id: str, status: pb.TaskStatus) -> None:
        lo = local[task_id]
        if status.state > lo.reported or (
            status.state == lo.reported == pb.TASK_STATE_RUNNING
            and (status.health, status.ready_ms) != lo.reported_health
        ):
            d.reports[task_id] = status

    for task_id, task in tasks.items():
        lo = local.get(task_id)
        if lo is None:
            continue  # the caller creates a Local for every assigned task first
        state = max(lo.reported, task.status.state)
        running = lo.pid != 0
        wants_run = task.desired_state <= pb.TASK_STATE_RUNNING

        if not wants_run:
            # Told to stop (SHUTDOWN or REMOVE): stop what runs, then say it is shut down.
            if running:
                d.stop.append(task_id)
                d.sandboxes.add(task_id)
            elif not is_terminal(state):
                # Whatever ended the process (our SIGTERM, or its own exit just before), the
                # manager asked for it to stop, and it has.
                report(
                    task_id,
                    status(
                        pb.TASK_STATE_SHUTDOWN, "shut down", now_ms, exit_code=lo.exit_code or 0
                    ),
                )
            continue

        if is_terminal(state):
            # Finished here; stays finished (the orchestrator decides about a replacement).
            if running:
                d.stop.append(task_id)
                d.sandboxes.add(task_id)
            continue

        ended = lo.exited or (
            not running and not lo.start_error and state >= pb.TASK_STATE_STARTING
        )
        policy = (policies or {}).get(task.service_id)
        if ended and autonomous and policy is not None and restart_in_place(policy, lo):
            # Exited, or lost with the host (a process gone without an exit record).
            d.sandboxes.add(task_id)
            if lo.sandbox is Sandbox.READY and now_ms >= lo.exited_ms + policy.delay_ms:
                d.restart.append(task_id)
            continue
        if lo.exited:
            report(task_id, exit_status(lo, now_ms))
            continue
        if lo.start_error:
            report(task_id, failed("task could not start", lo.start_error, now_ms))
            continue
        if running:
            d.sandboxes.add(task_id)
            if lo.unhealthy:
                # Withdrawn from the balancers already (its record says disabled); now it goes.
                d.stop.append(task_id)
            report(
                task_id,
                status(
                    pb.TASK_STATE_RUNNING,
                    "started",
                    now_ms,
                    pid=lo.pid,
                    health=lo.health,
                    ready_ms=lo.ready_ms,
                ),
            )
            continue
        if state >= pb.TASK_STATE_STARTING:
            # The manager saw it start, but no process is here and no exit was recorded: the
            # host lost it (state directory gone, or the agent died between spawn and record).
            report(
                task_id,
                failed(
                    "task process lost",
                    "the task's process is gone and its exit status is unknown",
                    now_ms,
                ),
            )
            continue
        if task.not_before_ms and now_ms < task.not_before_ms:
            report(task_id, status(pb.TASK_STATE_ACCEPTED, "waiting for restart delay", now_ms))
            continue
        d.sandboxes.add(task_id)
        if lo.sandbox is Sandbox.FAILED:
            report(task_id, failed("network setup failed", lo.sandbox_error, now_ms))
            d.sandboxes.discard(task_id)
            continue
        if lo.sandbox is Sandbox.READY:
            d.start.append(task_id)
            report(task_id, status(pb.TASK_STATE_STARTING, "starting", now_ms))
        else:
            report(task_id, status(pb.TASK_STATE_PREPARING, "preparing network", now_ms))

    for task_id, lo in local.items():
        if task_id in tasks:
            continue
        # No longer assigned (removed by the manager): stop anything left, then forget it.
        if lo.pid:
            d.stop.append(task_id)
            d.sandboxes.add(task_id)
        else:
            d.forget.append(task_id)
    return d


def desired_dataplane(
    host: HostConfig,
    tasks: Mapping[str, pb.Task],
    networks: Mapping[str, pb.Network],
    endpoints: Mapping[str, Iterable[RemoteEndpoint]],
    sandboxes: Iterable[str],
    ingress: tuple[pb.Network, str] | None = None,
) -> tuple[DesiredState, dict[str, str]]:
    """The data plane for `sandboxes` (task IDs), and for each task that cannot have one, why.
    `endpoints` holds, per network, the endpoints other hosts announced (through gossip).
    `ingress` (the ingress network and this node's address on it) adds the host's ingress
    sandbox, the routing mesh's end here, built whether or not a local task publishes.

    Networks are built only when a local sandbox is on them (lazily, as Docker does), and
    removed when the last one goes: that falls out of deriving everything from the sandboxes.
    """
    nets: dict[str, NetworkConfig] = {}
    boxes: dict[str, SandboxConfig] = {}
    problems: dict[str, str] = {}
    for task_id in sorted(sandboxes):
        task = tasks.get(task_id)
        if task is None:
            continue
        legs: list[LocalEndpoint] = []
        configs: list[NetworkConfig] = []
        for index, att in enumerate(task.networks):
            net = networks.get(att.network_id)
            if net is None or not att.addresses:
                problems[task_id] = (
                    f"network {att.network_id} of task {task_id} was not sent with it"
                    if net is None
                    else f"task {task_id} has no address on network {net.spec.name}"
                )
                break
            config = network_config(net)
            configs.append(config)
            legs.append(
                LocalEndpoint(
                    task_id=task_id,
                    network_id=net.meta.id,
                    index=index,
                    address=ipaddress.IPv4Interface(att.addresses[0]),
                )
            )
        else:
            for config in configs:
                nets[config.id] = config
            boxes[task_id] = SandboxConfig(
                task_id=task_id,
                endpoints=tuple(legs),
                # Internal networks have no way out; one non-internal network gives the
                # sandbox the gwbridge leg (a task on no network at all gets egress too, as a
                # container on no network would have its bridge).
                egress=not configs or any(not c.internal for c in configs),
                hostname=task_hostname(task),
            )
    if ingress is not None:
        net, addr = ingress
        config = network_config(net)
        nets[config.id] = config
        boxes[INGRESS_SANDBOX] = SandboxConfig(
            task_id=INGRESS_SANDBOX,
            endpoints=(
                LocalEndpoint(
                    task_id=INGRESS_SANDBOX,
                    network_id=config.id,
                    index=0,
                    address=ipaddress.IPv4Interface(addr),
                ),
            ),
            egress=True,
        )
    # An address a local task holds is never sent away, even if a stale record elsewhere
    # (a dead host's, until it is reaped) still claims it.
    local_addrs = {(e.network_id, e.address.ip) for b in boxes.values() for e in b.endpoints}
    remotes = {
        net_id: frozenset(
            r
            for r in endpoints.get(net_id, ())
            if r.vtep != host.vtep and (net_id, r.address) not in local_addrs
        )
        for net_id in nets
    }
    return DesiredState(networks=nets, sandboxes=boxes, remotes=remotes), problems


def network_config(net: pb.Network) -> NetworkConfig:
    return NetworkConfig(
        id=net.meta.id,
        name=net.spec.name,
        vni=net.vni,
        subnet=ipaddress.IPv4Network(net.subnet),
        gateway=ipaddress.IPv4Address(net.gateway),
        internal=net.spec.internal,
        encrypted=net.spec.encrypted,
        ingress=net.spec.ingress,
    )


def task_hostname(task: pb.Task) -> str:
    """The task's name as Swarm forms it: SERVICE.SLOT.ID (SERVICE.NODE.ID for global tasks)."""
    return f"{task.service_name}.{task.slot or task.node_id}.{task.meta.id}"
