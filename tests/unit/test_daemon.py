"""`AgentDaemon.step()` with a fake of every collaborator: no root, no kernel, no manager.

What is checked is the daemon's part: exits reach the controller and the manager, the restart
policy runs with no manager, a task that turns unhealthy is withdrawn, stopped and reported,
a stop drains first (announce disabled -> drain delay -> stop -> endpoint and sandbox gone),
and a restarted agent adopts what still runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from agent import daemon as daemon_mod
from agent.daemon import DaemonOptions
from agent.executor.api import Adopted, ExitInfo, Running
from agent.health import CheckConfig, HealthState
from agent.session import Assignments
from proto import objects_pb2 as pb
from tests.support.agent_fakes import FakeBalancer, Fakes, FakeSession

RUN = pb.TASK_STATE_RUNNING


# ---------------------------------------------------------------------- the rig


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


class Rig:
    """One daemon with fakes all round, and the assignment set a test edits."""

    def __init__(
        self,
        tmp: Path,
        *,
        adopted: dict[str, Adopted] | None = None,
        drain_delay: float = 0.0,
    ) -> None:
        fakes = Fakes(adopted=adopted)
        self.events = fakes.events
        self.executor = fakes.executor
        self.dataplane = fakes.dataplane
        self.discovery = fakes.discovery
        self.health = fakes.health
        self.session = FakeSession()
        self.clock = Clock()
        self.daemon = fakes.daemon(
            self.session,
            tmp,
            options=DaemonOptions(drain_delay=drain_delay, stop_timeout=1.0),
            clock=self.clock,
        )
        a = self.session.assignments
        a.networks["n1"] = pb.Network(
            meta=pb.Meta(id="n1"),
            spec=pb.NetworkSpec(name="front"),
            subnet="10.0.1.0/24",
            gateway="10.0.1.1",
            vni=4096,
        )

    def service(self, policy: pb.RestartPolicy | None = None) -> None:
        self.session.assignments.services["s1"] = pb.Service(
            meta=pb.Meta(id="s1"),
            spec=pb.ServiceSpec(name="web", restart_policy=policy),
        )

    def assign(
        self,
        tid: str = "t1",
        *,
        state: int = pb.TASK_STATE_ASSIGNED,
        desired: int = RUN,
        check: pb.HealthCheck | None = None,
    ) -> pb.Task:
        t = pb.Task(
            meta=pb.Meta(id=tid),
            service_id="s1",
            service_name="web",
            slot=1,
            node_id="node1",
            desired_state=desired,  # type: ignore[arg-type]
            status=pb.TaskStatus(state=state),  # type: ignore[arg-type]
            spec=pb.TaskSpec(command=["/bin/true"], health_check=check),
            networks=[pb.NetworkAttachment(network_id="n1", addresses=["10.0.1.5/24"])],
        )
        self.session.assignments.tasks[tid] = t
        return t

    def seen(self, what: str) -> list[tuple[float, Any]]:
        return [(t, x) for t, w, x in self.events if w == what]


async def settle() -> None:
    """Let waiters and stops that are due run."""
    for _ in range(10):
        await asyncio.sleep(0)


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- tests


def test_a_task_starts_in_one_pass_and_reports_running(tmp_path: Path) -> None:
    async def go() -> None:
        rig = Rig(tmp_path)
        rig.service()
        rig.assign()
        await rig.daemon.step()
        assert rig.executor.starts == ["t1"]
        spec = rig.executor.specs["t1"]
        assert spec.command == ("/bin/true",)
        assert spec.netns == rig.daemon.host.names.sandbox_ns("t1")
        last = rig.session.last("t1")
        assert last.state == RUN and last.pid == 101
        assert rig.discovery.announced == {"t1": True}
        await rig.daemon.step()
        assert rig.executor.starts == ["t1"], "a running task is not started again"

    run(go())


def test_exit_is_reported_to_the_manager(tmp_path: Path) -> None:
    async def go() -> None:
        rig = Rig(tmp_path)
        rig.service(pb.RestartPolicy(condition=pb.RESTART_CONDITION_ANY))
        rig.assign("t1")
        rig.assign("t2")
        await rig.daemon.step()
        rig.executor.exit("t1", 3)
        rig.executor.exit("t2", 0)
        await settle()
        await rig.daemon.step()
        failed, done = rig.session.last("t1"), rig.session.last("t2")
        assert failed.state == pb.TASK_STATE_FAILED
        assert failed.exit_code == 3 and failed.err == "exit status 3"
        assert done.state == pb.TASK_STATE_COMPLETE and done.exit_code == 0
        # With a manager, restarting is the orchestrator's job: nothing starts again here.
        assert rig.executor.starts == ["t1", "t2"]
        assert rig.discovery.announced == {}

    run(go())


def test_a_start_failure_fails_the_task(tmp_path: Path) -> None:
    async def go() -> None:
        rig = Rig(tmp_path)
        rig.service()
        rig.assign()
        rig.executor.fail_start = "exec: 'nope': executable file not found in PATH"
        await rig.daemon.step()
        await rig.daemon.step()
        last = rig.session.last("t1")
        assert last.state == pb.TASK_STATE_FAILED and last.exit_code == -1
        assert "nope" in last.err and rig.executor.starts == []

    run(go())


@pytest.mark.parametrize(
    ("condition", "code", "restarts"),
    [
        (pb.RESTART_CONDITION_ON_FAILURE, 1, True),
        (pb.RESTART_CONDITION_ON_FAILURE, 0, False),
        (pb.RESTART_CONDITION_ANY, 0, True),
        (pb.RESTART_CONDITION_NONE, 1, False),
    ],
)
def test_restart_policy_without_a_manager(
    tmp_path: Path, condition: int, code: int, restarts: bool
) -> None:
    async def go() -> None:
        rig = Rig(tmp_path)
        rig.service(pb.RestartPolicy(condition=condition, delay_ms=5000))  # type: ignore[arg-type]
        rig.assign()
        await rig.daemon.step()
        rig.session.unreachable = True
        rig.executor.exit("t1", code)
        await settle()
        await rig.daemon.step()
        assert rig.executor.starts == ["t1"], "nothing restarts before the policy's delay"
        rig.clock.ms += 5000
        await rig.daemon.step()
        if restarts:
            assert rig.executor.starts == ["t1", "t1"]
            assert rig.daemon.controller.local["t1"].local_restarts == 1
            assert rig.session.states("t1")[-1] == RUN  # never reported as ended
            assert rig.discovery.announced == {"t1": True}  # same sandbox, same address
        else:
            assert rig.executor.starts == ["t1"]
            ended = pb.TASK_STATE_COMPLETE if code == 0 else pb.TASK_STATE_FAILED
            assert rig.session.last("t1").state == ended

    run(go())


def test_restart_policy_max_attempts(tmp_path: Path) -> None:
    async def go() -> None:
        rig = Rig(tmp_path)
        rig.service(pb.RestartPolicy(condition=pb.RESTART_CONDITION_ANY, max_attempts=1))
        rig.assign()
        await rig.daemon.step()
        rig.session.unreachable = True
        for _ in range(2):
            rig.executor.exit("t1", 2)
            await settle()
            await rig.daemon.step()
        assert rig.executor.starts == ["t1", "t1"]
        assert rig.session.last("t1").state == pb.TASK_STATE_FAILED

    run(go())


def test_unhealthy_task_is_withdrawn_then_stopped_and_failed(tmp_path: Path) -> None:
    async def go() -> None:
        rig = Rig(tmp_path, drain_delay=0.05)
        rig.service()
        check = pb.HealthCheck(command=["true"], retries=1)
        config = CheckConfig.from_proto(check)
        assert config is not None
        rig.assign(check=check)
        await rig.daemon.step()
        assert rig.discovery.announced == {"t1": True}  # no verdict yet: no health, serves
        assert "t1" in rig.health.watched()
        st = HealthState(config, started=time.monotonic())
        st.record(True, time.monotonic())
        rig.health.states["t1"] = st
        await rig.daemon.step()  # learns the verdict
        await rig.daemon.step()  # reports it
        assert rig.session.last("t1").health == pb.TASK_HEALTH_HEALTHY
        assert rig.discovery.announced == {"t1": True}

        st.record(False, time.monotonic(), "exit status 1: boom")
        assert st.health == pb.TASK_HEALTH_UNHEALTHY
        await rig.daemon.step()
        assert rig.discovery.announced == {"t1": False}, "withdrawn first"
        assert rig.seen("stop") == []
        await rig.daemon.step()  # the pass after the verdict stops it
        await settle()
        assert [x for _, x in rig.seen("stop")] == ["t1"]
        await rig.daemon.step()
        last = rig.session.last("t1")
        assert last.state == pb.TASK_STATE_FAILED
        assert last.err == "unhealthy: exit status 1: boom"
        assert "t1" not in rig.health.watched()
        (t_off, _), (t_stop, _) = rig.seen("announce")[-2], rig.seen("stop")[0]
        assert t_off <= t_stop

    run(go())


def test_stop_drains_before_the_task_goes(tmp_path: Path) -> None:
    async def go() -> None:
        drain = 0.2
        rig = Rig(tmp_path, drain_delay=drain)
        rig.service()
        rig.assign()
        await rig.daemon.step()
        assert rig.discovery.announced == {"t1": True}
        rig.assign(state=RUN, desired=pb.TASK_STATE_SHUTDOWN)
        await rig.daemon.step()
        # Announced disabled in the pass that decided the stop; the process still runs.
        assert rig.discovery.announced == {"t1": False}
        assert rig.seen("stop") == []
        await rig.daemon._stopping["t1"]
        await settle()
        await rig.daemon.step()
        assert rig.session.last("t1").state == pb.TASK_STATE_SHUTDOWN
        assert rig.discovery.announced == {}
        assert "t1" not in rig.dataplane.sandboxes

        t_off = next(t for t, x in rig.seen("announce") if x == {"t1": False})
        t_stop = rig.seen("stop")[0][0]
        t_gone = next(t for t, x in rig.seen("announce") if x == {})
        t_no_sandbox = next(t for t, x in rig.seen("sandboxes") if t > t_stop and "t1" not in x)
        assert t_stop - t_off >= drain * 0.9, "stopped before the drain delay"
        assert t_off < t_stop < t_gone and t_stop < t_no_sandbox

    run(go())


def test_what_the_host_programmed_is_reported_at_once_when_it_changes(tmp_path: Path) -> None:
    """The manager's convergence verdict rests on it: a task is in the view once this host's
    resolvers and balancers were given it, and out of it as soon as it drains."""

    async def go() -> None:
        rig = Rig(tmp_path, drain_delay=0.2)
        rig.service()
        rig.assign()

        def programmed() -> list[str]:
            view = rig.session.programmed() if rig.session.programmed else None
            assert view is not None
            return [t for s in view.services if s.service_id == "s1" for t in s.task_ids]

        await rig.daemon.step()  # the pass that starts it announces it (and programs nothing)
        assert programmed() == [] and rig.session.nudges == 1
        await rig.daemon.step()  # the next one serves what was announced
        assert programmed() == ["t1"] and rig.session.nudges == 2
        await rig.daemon.step()
        assert rig.session.nudges == 2, "an unchanged view is not sent again"
        rig.assign(state=RUN, desired=pb.TASK_STATE_SHUTDOWN)
        await rig.daemon.step()
        await rig.daemon.step()
        assert programmed() == [] and rig.session.nudges == 3
        await rig.daemon._stopping["t1"]

    run(go())


def test_a_stop_gives_the_task_its_services_grace_period(tmp_path: Path) -> None:
    async def go() -> None:
        rig = Rig(tmp_path, drain_delay=0)
        rig.service()
        rig.assign("t1")
        t2 = rig.assign("t2")
        t2.spec.stop_grace_period_ms = 2500
        await rig.daemon.step()
        rig.assign("t1", state=RUN, desired=pb.TASK_STATE_SHUTDOWN)
        rig.assign("t2", state=RUN, desired=pb.TASK_STATE_SHUTDOWN).spec.stop_grace_period_ms = 2500
        await rig.daemon.step()
        await asyncio.gather(*rig.daemon._stopping.values())
        # t1's service says nothing: the agent's --stop-timeout (1 s in this rig).
        assert rig.executor.stop_timeouts == {"t1": 1.0, "t2": 2.5}

    run(go())


def test_adoption_after_an_agent_restart(tmp_path: Path) -> None:
    async def go() -> None:
        adopted = {
            "t1": Adopted("t1", running=Running(4242)),
            "t2": Adopted("t2", exit=ExitInfo(0, None, "exit status 0")),
            "t3": Adopted("t3"),  # a leftover of a task no longer assigned
        }
        rig = Rig(tmp_path, adopted=adopted)
        rig.service()
        for tid in ("t1", "t2"):
            rig.assign(tid, state=RUN)
        rig.daemon._adopt()
        await rig.daemon.step()
        assert rig.executor.starts == [], "a running task is adopted, not started again"
        assert rig.discovery.announced == {"t1": True}
        assert rig.session.last("t2").state == pb.TASK_STATE_COMPLETE
        assert rig.executor.removed == ["t3"]
        assert "t3" not in rig.daemon.controller.local
        # Its exit still arrives, through the executor's wait.
        rig.executor.exit("t1", 9)
        await settle()
        await rig.daemon.step()
        assert rig.session.last("t1").state == pb.TASK_STATE_FAILED

    run(go())


def test_an_adopted_healthy_task_stays_healthy_until_its_first_check(tmp_path: Path) -> None:
    """A restarted agent carries the manager's HEALTHY verdict over for the tasks it adopts
    (else each would leave every balancer until its first check: the routing mesh refused a
    connection during a rolling agent upgrade); a task it did not adopt gets no such credit."""

    async def go() -> None:
        rig = Rig(tmp_path, adopted={"t1": Adopted("t1", running=Running(4242))})
        rig.service()
        check = pb.HealthCheck(command=["true"], retries=1)
        for tid in ("t1", "t2"):
            t = rig.assign(tid, state=RUN, check=check)
            t.status.health = pb.TASK_HEALTH_HEALTHY
            t.status.ready_ms = rig.clock.ms - 60_000
        rig.daemon._adopt()
        await rig.daemon.step()
        carried = rig.health.state("t1")
        assert carried is not None and carried.health == pb.TASK_HEALTH_HEALTHY
        assert abs((time.monotonic() - carried.healthy_since) - 60) < 5
        assert rig.health.state("t2") is None
        assert rig.discovery.announced["t1"] is True

    run(go())


def test_the_kernel_balancers_stay_until_gossip_has_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted agent knows no records before gossip syncs: rewriting the balancers then
    would leave published ports with no backend (refused). It waits, up to VIEW_WARMUP_S."""

    async def go() -> None:
        rig = Rig(tmp_path)
        rig.service()
        rig.assign(state=RUN)
        rig.discovery.synced = False
        lb = rig.daemon.lb
        assert isinstance(lb, FakeBalancer)
        await rig.daemon.step()
        assert lb.specs == {}, "balancers touched before gossip synced"
        rig.discovery.synced = True
        await rig.daemon.step()
        assert "host" in lb.specs
        # Without gossip at all (no manager yet): after the warm-up, what is known goes.
        late = Rig(tmp_path / "late")
        late.service()
        late.assign(state=RUN)
        late.discovery.synced = False
        monkeypatch.setattr(daemon_mod, "VIEW_WARMUP_S", 0.0)
        await late.daemon.step()
        assert isinstance(late.daemon.lb, FakeBalancer) and "host" in late.daemon.lb.specs

    run(go())


def test_run_resumes_from_the_kept_assignments_and_does_not_leave(tmp_path: Path) -> None:
    """A restarted agent with no manager starts from the set it kept on disk, adopts its
    running task, and on shutdown keeps its endpoints announced (live restore)."""

    async def go() -> None:
        first = Rig(tmp_path)
        first.service()
        first.assign(state=RUN)
        assert first.session.on_assignments is not None
        await first.session.on_assignments(first.session.assignments)
        assert (tmp_path / "assignments.pb").stat().st_mode & 0o777 == 0o600

        rig = Rig(tmp_path, adopted={"t1": Adopted("t1", running=Running(4242))})
        rig.session.assignments = Assignments()
        runner = asyncio.create_task(rig.daemon.run())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if rig.discovery.announced:
                break
        assert rig.discovery.announced == {"t1": True}
        assert "t1" in rig.session.assignments.tasks and rig.executor.starts == []
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert rig.discovery.left is False and rig.executor.closed

    run(go())


def test_wiring_hands_the_daemon_the_real_collaborators(tmp_path: Path) -> None:
    """The factory builds without root or sockets; the daemon hooks their callbacks."""
    from agent.discovery import Discovery
    from agent.dns.server import DnsServer
    from agent.executor import ContainerExecutor, ExecutorRouter, Podman, ProcessExecutor
    from agent.health import HealthMonitor
    from agent.lb.balancer import LoadBalancer
    from agent.model import HostConfig, Names
    from agent.wiring import Services, build_daemon

    async def go() -> None:
        session = FakeSession()
        daemon = build_daemon(
            HostConfig(vtep=ipaddress.IPv4Address("198.51.100.1"), names=Names("zz-")),
            session,
            tmp_path,
            Services(gossip_port=7946, dns_upstreams=[]),
            DaemonOptions(drain_delay=1.5),
            Podman(binary="/opt/podman", root="/tmp/x"),
        )
        router = daemon.executor
        assert isinstance(router, ExecutorRouter)
        assert isinstance(router.processes, ProcessExecutor)
        assert isinstance(router.containers, ContainerExecutor)
        assert router.containers.podman.root == "/tmp/x"
        assert router.containers.container_name("t1") == "zz-c-t1"
        assert isinstance(daemon.discovery, Discovery) and isinstance(daemon.dns, DnsServer)
        assert isinstance(daemon.lb, LoadBalancer) and isinstance(daemon.health, HealthMonitor)
        assert daemon.options.drain_delay == 1.5
        assert session.on_assignments is not None and session.gossip_status is not None
        assert daemon.discovery.on_change is not None

    run(go())


def test_a_call_cancelled_under_a_pass_does_not_end_the_agent(tmp_path: Path) -> None:
    """A gRPC call whose channel closes mid-way raises CancelledError in its caller, though
    nobody cancelled the caller. A pass hit by one is retried; the daemon's loop goes on (it
    used to end quietly, leaving a restarted agent that never converged)."""

    async def go() -> None:
        rig = Rig(tmp_path)
        rig.service()
        rig.assign()
        real = rig.session.report
        calls = 0

        async def report_once_cancelled(updates: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise asyncio.CancelledError
            await real(updates)

        rig.session.report = report_once_cancelled  # type: ignore[method-assign]
        runner = asyncio.create_task(rig.daemon.run())
        assert rig.session.on_assignments is not None
        await rig.session.on_assignments(rig.session.assignments)
        for _ in range(300):
            await asyncio.sleep(0.01)
            if rig.session.states("t1"):
                break
        assert not runner.done(), "the daemon's loop ended"
        assert calls >= 2 and rig.session.last("t1").state == RUN
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    run(go())
