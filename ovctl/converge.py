"""Waiting until a service change is real: `service create|update|scale` and `stack deploy`.

`docker service create` waits until the tasks run; a request right after it returns can still
fail, because another host's balancer has not heard of them yet. Here the manager says when a
service has converged (manager/convergence.py: tasks ready at the current spec, and every host
concerned has programmed them), and the command returns then.

`snapshot` is the pure core (service, tasks, the manager's verdict -> what to show); `wait`
polls and shows it: with rich on a terminal (docker's layout: "overall progress", one bar per
replica, "verify", "converged"), as plain lines when the output is not a terminal (only
when a line changes), or not at all with -q. Ctrl-C leaves the change going, as docker does.

A rolling update is done when the manager says it COMPLETED (its monitor period passed); one
that PAUSED on failures, or ROLLED BACK, ends the wait with UpdateFailed and its message (a
rollback that was asked for, `service rollback`, is done once ROLLBACK_COMPLETED).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ovctl import render
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb

Stub = Any  # the manager's ControlStub, typed loosely as in commands.py
POLL_S = 0.1
# Per-replica lines shown at most (global services: one per node).
MAX_LINES = 20
# A task's way to RUNNING, in docker's steps (the bar of a replica).
STEPS = (
    pb.TASK_STATE_NEW,
    pb.TASK_STATE_PENDING,
    pb.TASK_STATE_ASSIGNED,
    pb.TASK_STATE_ACCEPTED,
    pb.TASK_STATE_PREPARING,
    pb.TASK_STATE_STARTING,
    pb.TASK_STATE_RUNNING,
)


@dataclass(frozen=True)
class Line:
    """One replica (slot, or node of a global service)."""

    label: str  # "1/3", or a hostname
    state: str  # "running", "starting", "failed", ...
    step: int  # 0..len(STEPS)
    message: str = ""  # the task's error or status message


@dataclass(frozen=True)
class Snapshot:
    service: str
    overall: str
    lines: tuple[Line, ...]
    verify: str
    converged: bool
    waiting: tuple[str, ...] = field(default_factory=tuple)
    # The update's end, if it ended badly for this wait: the manager's message.
    failed: str = ""


_UPDATE = pb.UpdateStatus
# States in which the manager is still replacing tasks.
_UPDATING = (_UPDATE.UPDATING, _UPDATE.ROLLBACK_STARTED)


def update_failure(status: pb.UpdateStatus, rollback: bool) -> str:
    """The manager's message when the update ended in a way the command did not ask for
    (paused, or rolled back by its failure action); "" otherwise."""
    bad = {_UPDATE.PAUSED, _UPDATE.ROLLBACK_PAUSED}
    if not rollback:
        bad.add(_UPDATE.ROLLBACK_COMPLETED)
    if status.state in bad:
        return status.message or render.enum_word(_UPDATE.State, status.state)
    return ""


def snapshot(
    svc: pb.Service,
    tasks: Sequence[pb.Task],
    conv: cpb.ServiceConvergence,
    hostnames: Mapping[str, str],
    stable_for: float | None = None,
    monitor: float = 0.0,
    rollback: bool = False,
) -> Snapshot:
    """What to show of one service now. `stable_for`: seconds the service has been converged
    (None: it is not); it is done once that reaches `monitor` and the manager no longer
    updates it. `rollback`: the command asked for a rollback (see update_failure)."""
    current = [
        t
        for t in tasks
        if t.desired_state == pb.TASK_STATE_RUNNING and t.spec_version == svc.spec_version
    ]
    glob = svc.spec.WhichOneof("mode") == "global"
    lines = []
    for t in sorted(current, key=lambda t: (hostnames.get(t.node_id, t.node_id), t.slot)):
        label = (
            hostnames.get(t.node_id, t.node_id or "?") if glob else f"{t.slot}/{conv.tasks_wanted}"
        )
        lines.append(_line(label, t))
    if not glob:  # a slot with no task yet at this spec is a line too
        have = {t.slot for t in current}
        for slot in range(1, conv.tasks_wanted + 1):
            if slot not in have:
                lines.append(Line(f"{slot}/{conv.tasks_wanted}", "new", 0))
        lines.sort(key=lambda ln: int(ln.label.split("/")[0]))
    overall = f"overall progress: {conv.tasks_ready} out of {conv.tasks_wanted} tasks"
    status = svc.update_status
    failed = update_failure(status, rollback)
    updating = status.state in _UPDATING
    done = stable_for is not None and stable_for >= monitor and not updating and not failed
    if failed:
        verify = failed
    elif updating and status.state == _UPDATE.ROLLBACK_STARTED and not rollback:
        verify = f"rollback: {status.message}"
    elif done:
        verify = "Service converged"
    elif updating and stable_for is not None:
        verify = "waiting for the update's monitor period to end"
    elif stable_for is not None:
        verify = f"Waiting {monitor - stable_for:.0f} seconds to verify that tasks are stable..."
    elif conv.tasks_ready >= conv.tasks_wanted:
        verify = f"{conv.hosts_programmed} of {conv.hosts_concerned} hosts programmed"
    else:
        verify = "waiting for tasks"
    waiting = tuple(conv.waiting)
    if updating and not waiting:
        waiting = ("the update is not completed (its monitor period)",)
    return Snapshot(svc.spec.name, overall, tuple(lines[:MAX_LINES]), verify, done, waiting, failed)


def _line(label: str, t: pb.Task) -> Line:
    state = t.status.state
    word = render.enum_word(pb.TaskState, state)
    message = t.status.err or ("" if state == pb.TASK_STATE_RUNNING else t.status.message)
    if state == pb.TASK_STATE_RUNNING and t.status.ready_ms == 0:
        word = "running (health: starting)"
    step = STEPS.index(state) + 1 if state in STEPS else 0
    return Line(label, word, step, message)


def plain(snap: Snapshot, named: bool = False) -> list[str]:
    """The snapshot as lines of text (no terminal); `named`: each line says the service (when
    several are waited on, their lines interleave)."""
    pre = f"{snap.service} " if named else ""
    out = [f"{snap.service}: {snap.overall}"]
    for ln in snap.lines:
        extra = f"  {ln.message}" if ln.message else ""
        out.append(f"{pre}{ln.label}: {ln.state}{extra}")
    out.append(f"{pre}verify: {snap.verify}")
    return out


def rich_view(snaps: Sequence[Snapshot]) -> object:
    """The snapshots as a rich renderable: docker's layout with a bar per replica."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    parts: list[object] = []
    for snap in snaps:
        parts.append(Text(f"{snap.service}: {snap.overall}", style="bold"))
        table = Table.grid(padding=(0, 1))
        for ln in snap.lines:
            style = "red" if ln.state in ("failed", "rejected") else None
            bar = ProgressBar(total=len(STEPS), completed=ln.step, width=40)
            table.add_row(f"{ln.label}:", Text(ln.state, style=style or ""), bar, ln.message)
        parts.append(table)
        parts.append(Text(f"verify: {snap.verify}"))
    return Group(*parts)  # type: ignore[arg-type]


class NotConverged(Exception):
    """The wait's time ran out; the message says what is still missing (the change goes on)."""


class UpdateFailed(Exception):
    """The update paused or rolled back on failed tasks; the message is the manager's."""


def wait(
    stub: Stub,
    service_ids: Sequence[str],
    hostnames: Mapping[str, str],
    *,
    quiet: bool = False,
    timeout: float = 120.0,
    monitor: float = 0.0,
    out: TextIO | None = None,
    tty: bool | None = None,
    rollback: bool = False,
) -> int:
    """Poll until every service has converged (0); raise NotConverged once `timeout` passes,
    UpdateFailed as soon as an update paused or rolled back. Ctrl-C: say that the change goes
    on, and 0 (as docker)."""
    out = out or sys.stdout
    tty = out.isatty() if tty is None else tty
    deadline = time.monotonic() + timeout
    converged_at: dict[str, float] = {}
    shown: list[str] = []
    live = None
    if tty and not quiet:
        from rich.console import Console
        from rich.live import Live

        live = Live(console=Console(file=out), auto_refresh=False, transient=False)
        live.start()
    try:
        while True:
            snaps = [
                _poll(stub, sid, hostnames, converged_at, monitor, rollback) for sid in service_ids
            ]
            if live is not None:
                live.update(rich_view(snaps), refresh=True)  # type: ignore[arg-type]
            elif not quiet:
                lines = [ln for s in snaps for ln in plain(s, len(snaps) > 1)]
                for ln in lines:
                    if ln not in shown:
                        print(ln, file=out, flush=True)
                shown = lines
            if all(s.converged for s in snaps):
                return 0
            failed = [f"{s.service}: {s.failed}" for s in snaps if s.failed]
            if failed:
                raise UpdateFailed("; ".join(failed))
            if time.monotonic() > deadline:
                why = "; ".join(
                    f"{s.service}: {', '.join(s.waiting) or 'converged, in its --monitor window'}"
                    for s in snaps
                    if not s.converged
                )
                raise NotConverged(
                    f"not converged after {timeout:.0f} s ({why}); the change goes on: "
                    f"see `ovctl service ps {' '.join(s.service for s in snaps)}`"
                )
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        if live is not None:
            live.stop()  # first: it redraws its last frame over what follows otherwise
            live = None
        names = " ".join(service_ids)
        print("Operation continuing in background.", file=out)
        print(f"Use `ovctl service ps {names}` to check progress.", file=out)
        return 0
    finally:
        if live is not None:
            live.stop()


def _poll(
    stub: Stub,
    service_id: str,
    hostnames: Mapping[str, str],
    converged_at: dict[str, float],
    monitor: float,
    rollback: bool,
) -> Snapshot:
    resp = stub.GetService(cpb.GetServiceRequest(service_ref=service_id))
    tasks = stub.ListTasks(cpb.ListTasksRequest(service_refs=[service_id])).tasks
    now = time.monotonic()
    if resp.convergence.converged:
        converged_at.setdefault(service_id, now)
    else:
        converged_at.pop(service_id, None)  # a task that fails restarts the window
    since = converged_at.get(service_id)
    return snapshot(
        resp.service,
        tasks,
        resp.convergence,
        hostnames,
        None if since is None else now - since,
        monitor,
        rollback,
    )
