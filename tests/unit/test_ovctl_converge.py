"""ovctl/converge.py: what a person sees while a service change converges."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from ovctl import converge
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb

RUNNING = pb.TASK_STATE_RUNNING
HOSTS = {"n1": "h1", "n2": "h2"}


def service(replicas: int = 3, version: int = 2) -> pb.Service:
    svc = pb.Service(meta=pb.Meta(id="svc"), spec_version=version)
    svc.spec.name = "web"
    svc.spec.replicated.replicas = replicas
    return svc


def task(slot: int, state: int, *, node: str = "n1", version: int = 2, ready: bool = True,
         err: str = "", desired: int = RUNNING) -> pb.Task:  # fmt: skip
    return pb.Task(
        meta=pb.Meta(id=f"t{slot}{state}"),
        slot=slot,
        node_id=node,
        spec_version=version,
        desired_state=desired,  # type: ignore[arg-type]
        status=pb.TaskStatus(state=state, ready_ms=1 if ready else 0, err=err),  # type: ignore[arg-type]
    )


def conv(
    ready: int,
    wanted: int = 3,
    programmed: int = 0,
    concerned: int = 3,
    converged: bool = False,
    waiting: tuple[str, ...] = (),
) -> cpb.ServiceConvergence:
    return cpb.ServiceConvergence(
        converged=converged,
        tasks_ready=ready,
        tasks_wanted=wanted,
        hosts_programmed=programmed,
        hosts_concerned=concerned,
        waiting=waiting,
    )


def test_progress_lines_per_slot_with_states_errors_and_missing_slots() -> None:
    tasks = [
        task(1, RUNNING),
        task(2, pb.TASK_STATE_STARTING, node="n2"),
        task(1, RUNNING, version=1),  # the old spec's: not shown
        task(3, pb.TASK_STATE_FAILED, err="podman not found", desired=pb.TASK_STATE_SHUTDOWN),
    ]
    snap = converge.snapshot(service(), tasks, conv(1), HOSTS)
    assert converge.plain(snap) == [
        "web: overall progress: 1 out of 3 tasks",
        "1/3: running",
        "2/3: starting",
        "3/3: new",
        "verify: waiting for tasks",
    ]
    snap = converge.snapshot(
        service(), [task(1, pb.TASK_STATE_FAILED, err="exit 3")], conv(0), HOSTS
    )
    assert converge.plain(snap)[1] == "1/3: failed  exit 3"


def test_several_services_lines_each_say_their_service() -> None:
    snap = converge.snapshot(service(1), [task(1, RUNNING)], conv(1, 1, 1, 1), HOSTS)
    assert converge.plain(snap, named=True) == [
        "web: overall progress: 1 out of 1 tasks",
        "web 1/1: running",
        "web verify: 1 of 1 hosts programmed",
    ]


def test_a_running_task_not_yet_healthy_says_so() -> None:
    snap = converge.snapshot(service(1), [task(1, RUNNING, ready=False)], conv(0, 1), HOSTS)
    assert snap.lines[0].state == "running (health: starting)"


def test_verify_says_hosts_then_the_monitor_window_then_converged() -> None:
    tasks = [task(s, RUNNING) for s in (1, 2, 3)]
    snap = converge.snapshot(service(), tasks, conv(3, programmed=2), HOSTS)
    assert snap.verify == "2 of 3 hosts programmed" and not snap.converged
    done = conv(3, programmed=3, converged=True)
    snap = converge.snapshot(service(), tasks, done, HOSTS, stable_for=0.5, monitor=2.0)
    assert snap.verify == "Waiting 2 seconds to verify that tasks are stable..."
    assert not snap.converged
    snap = converge.snapshot(service(), tasks, done, HOSTS, stable_for=2.0, monitor=2.0)
    assert snap.verify == "Service converged" and snap.converged


def test_a_global_service_has_a_line_per_node() -> None:
    svc = service()
    getattr(svc.spec, "global").SetInParent()
    tasks = [task(0, RUNNING, node="n2"), task(0, pb.TASK_STATE_PENDING, node="n1")]
    snap = converge.snapshot(svc, tasks, conv(1, 2), HOSTS)
    assert [(ln.label, ln.state) for ln in snap.lines] == [("h1", "pending"), ("h2", "running")]


def test_the_rich_view_draws_a_bar_per_replica() -> None:
    tasks = [task(1, RUNNING), task(2, pb.TASK_STATE_ASSIGNED)]
    snap = converge.snapshot(service(2), tasks, conv(1, 2), HOSTS)
    buf = io.StringIO()
    Console(file=buf, width=100, force_terminal=False).print(converge.rich_view([snap]))
    text = buf.getvalue()
    assert "web: overall progress: 1 out of 2 tasks" in text
    assert "1/2: running" in text and "2/2: assigned" in text
    assert "verify: waiting for tasks" in text
    bars = [ln for ln in text.splitlines() if ln.startswith(("1/2", "2/2"))]
    # A finished replica's bar is full; an assigned one's, three sevenths.
    assert bars[0].count("━") == 40 and 0 < bars[1].count("━") < 40


def test_an_update_is_done_when_the_manager_says_completed() -> None:
    tasks = [task(s, RUNNING) for s in (1, 2, 3)]
    done = conv(3, programmed=3, converged=True)
    svc = service()
    svc.update_status.state = pb.UpdateStatus.UPDATING
    snap = converge.snapshot(svc, tasks, done, HOSTS, stable_for=1.0)
    assert not snap.converged and not snap.failed
    assert snap.verify == "waiting for the update's monitor period to end"
    assert snap.waiting == ("the update is not completed (its monitor period)",)
    svc.update_status.state = pb.UpdateStatus.COMPLETED
    assert converge.snapshot(svc, tasks, done, HOSTS, stable_for=1.0).converged


@pytest.mark.parametrize(
    ("state", "rollback", "failed"),
    [
        (pb.UpdateStatus.PAUSED, False, True),
        (pb.UpdateStatus.ROLLBACK_PAUSED, True, True),
        (pb.UpdateStatus.ROLLBACK_COMPLETED, False, True),
        (pb.UpdateStatus.ROLLBACK_COMPLETED, True, False),
        (pb.UpdateStatus.ROLLBACK_STARTED, False, False),
        (pb.UpdateStatus.COMPLETED, False, False),
    ],
)
def test_which_update_ends_fail_the_wait(state: int, rollback: bool, failed: bool) -> None:
    status = pb.UpdateStatus(state=state, message="update paused due to X")  # type: ignore[arg-type]
    assert bool(converge.update_failure(status, rollback)) == failed


def test_a_rollback_on_failure_is_shown_then_fails_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(converge, "POLL_S", 0.0)
    S = pb.UpdateStatus
    rolling = pb.UpdateStatus(state=S.ROLLBACK_STARTED, message="update rolled back due to X")
    back = pb.UpdateStatus(state=S.ROLLBACK_COMPLETED, message="update rolled back due to X")
    stub = FakeStub([conv(0, 1), conv(1, 1, 2, 2, converged=True)], statuses=[rolling, back])
    out = io.StringIO()
    with pytest.raises(converge.UpdateFailed, match=r"^web: update rolled back due to X$"):
        converge.wait(stub, ["svc"], HOSTS, out=out, tty=False)
    assert "verify: rollback: update rolled back due to X" in out.getvalue().splitlines()
    # `service rollback` waits for that very end.
    stub = FakeStub([conv(1, 1, 2, 2, converged=True)], statuses=[rolling, back])
    assert converge.wait(stub, ["svc"], HOSTS, out=io.StringIO(), tty=False, rollback=True) == 0


class FakeStub:
    """GetService/ListTasks answering from a script of convergence verdicts (and, if given,
    update statuses), one step per GetService."""

    def __init__(
        self,
        verdicts: list[cpb.ServiceConvergence],
        interrupt_at: int = -1,
        statuses: list[pb.UpdateStatus] | None = None,
    ) -> None:
        self.verdicts = verdicts
        self.statuses = statuses or [pb.UpdateStatus()]
        self.calls = 0
        self.interrupt_at = interrupt_at

    def GetService(self, req: Any) -> cpb.GetServiceResponse:
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        v = self.verdicts[min(self.calls, len(self.verdicts) - 1)]
        svc = service(1)
        svc.update_status.CopyFrom(self.statuses[min(self.calls, len(self.statuses) - 1)])
        self.calls += 1
        return cpb.GetServiceResponse(service=svc, convergence=v)

    def ListTasks(self, req: Any) -> cpb.ListTasksResponse:
        return cpb.ListTasksResponse(tasks=[task(1, RUNNING)])


def test_wait_prints_plain_lines_once_each_and_returns_when_converged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(converge, "POLL_S", 0.0)
    verdicts = [conv(0, 1, concerned=2), conv(1, 1, 1, 2), conv(1, 1, 1, 2),
                conv(1, 1, 2, 2, converged=True)]  # fmt: skip
    out = io.StringIO()
    assert converge.wait(FakeStub(verdicts), ["svc"], HOSTS, out=out, tty=False) == 0
    assert out.getvalue().splitlines() == [
        "web: overall progress: 0 out of 1 tasks",
        "1/1: running",
        "verify: waiting for tasks",
        "web: overall progress: 1 out of 1 tasks",
        "verify: 1 of 2 hosts programmed",
        "verify: Service converged",
    ]
    quiet = io.StringIO()
    assert converge.wait(FakeStub(verdicts), ["svc"], HOSTS, out=quiet, quiet=True) == 0
    assert quiet.getvalue() == ""


def test_wait_gives_up_after_its_timeout_saying_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(converge, "POLL_S", 0.01)
    stuck = [conv(1, 1, 1, 2, waiting=("h2: programmed 0 of 1 tasks",))]
    with pytest.raises(converge.NotConverged, match=r"web: h2: programmed 0 of 1 tasks"):
        converge.wait(FakeStub(stuck), ["svc"], HOSTS, out=io.StringIO(), timeout=0.05)


def test_a_timeout_in_the_monitor_window_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(converge, "POLL_S", 0.01)
    done = [conv(1, 1, 1, 1, converged=True)]
    with pytest.raises(converge.NotConverged, match=r"web: converged, in its --monitor window"):
        converge.wait(FakeStub(done), ["svc"], HOSTS, out=io.StringIO(), timeout=0.05, monitor=9)


def test_ctrl_c_leaves_the_change_going() -> None:
    out = io.StringIO()
    assert converge.wait(FakeStub([conv(0, 1)], interrupt_at=1), ["svc"], HOSTS, out=out) == 0
    assert "Operation continuing in background." in out.getvalue()
    assert "ovctl service ps svc" in out.getvalue()
