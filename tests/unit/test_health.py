"""The health verdict machine (agent/health.py) and how the agent reports and acts on it."""

from __future__ import annotations

from agent.controller import Local, Sandbox, decide, exit_status
from agent.health import DEFAULT_INTERVAL, DEFAULT_RETRIES, CheckConfig, HealthState
from proto import objects_pb2 as pb


def test_no_check_in_the_spec_means_no_check() -> None:
    assert CheckConfig.from_proto(pb.HealthCheck()) is None
    cfg = CheckConfig.from_proto(pb.HealthCheck(tcp_port=80))
    assert cfg is not None and cfg.interval == DEFAULT_INTERVAL and cfg.retries == DEFAULT_RETRIES
    cfg = CheckConfig.from_proto(
        pb.HealthCheck(command=["true"], interval_ms=300, timeout_ms=200, retries=5)
    )
    assert cfg == CheckConfig(command=("true",), interval=0.3, timeout=0.2, retries=5)


def test_starting_then_healthy_then_unhealthy_after_retries_in_a_row() -> None:
    st = HealthState(CheckConfig(tcp_port=80, retries=2), started=0.0)
    assert st.health == pb.TASK_HEALTH_STARTING
    assert st.record(True, 1.0) and st.health == pb.TASK_HEALTH_HEALTHY
    assert st.healthy_since == 1.0
    assert not st.record(False, 2.0, "refused") and st.health == pb.TASK_HEALTH_HEALTHY
    assert not st.record(True, 3.0), "a success resets the count"
    assert not st.record(False, 4.0, "refused")
    assert st.record(False, 5.0, "refused again") and st.health == pb.TASK_HEALTH_UNHEALTHY
    assert st.last_error == "refused again" and st.healthy_since == 0.0


def test_failures_in_the_start_period_do_not_count_until_the_task_was_healthy() -> None:
    st = HealthState(CheckConfig(tcp_port=80, retries=1, start_period=10.0), started=0.0)
    for t in range(9):
        st.record(False, float(t), "not yet")
    assert st.health == pb.TASK_HEALTH_STARTING and st.failures == 0
    st.record(False, 11.0, "still not")
    assert st.health == pb.TASK_HEALTH_UNHEALTHY


def running_task(task_id: str = "t1") -> pb.Task:
    t = pb.Task(service_id="s")
    t.meta.id = task_id
    t.desired_state = pb.TASK_STATE_RUNNING
    t.status.state = pb.TASK_STATE_RUNNING
    return t


def test_a_health_change_of_a_running_task_is_reported_once() -> None:
    tasks = {"t1": running_task()}
    lo = Local(pid=42, sandbox=Sandbox.READY, reported=pb.TASK_STATE_RUNNING)
    lo.health = pb.TASK_HEALTH_STARTING
    lo.reported_health = (pb.TASK_HEALTH_STARTING, 0)
    assert decide(tasks, {"t1": lo}, 1000).reports == {}
    lo.health, lo.ready_ms = pb.TASK_HEALTH_HEALTHY, 900
    st = decide(tasks, {"t1": lo}, 1000).reports["t1"]
    assert (st.state, st.health, st.ready_ms, st.pid) == (
        pb.TASK_STATE_RUNNING, pb.TASK_HEALTH_HEALTHY, 900, 42,
    )  # fmt: skip
    lo.reported_health = (st.health, st.ready_ms)
    assert decide(tasks, {"t1": lo}, 1100).reports == {}


def test_an_unhealthy_task_is_stopped_and_reported_failed_as_unhealthy() -> None:
    tasks = {"t1": running_task()}
    lo = Local(pid=42, sandbox=Sandbox.READY, reported=pb.TASK_STATE_RUNNING)
    lo.health, lo.unhealthy = pb.TASK_HEALTH_UNHEALTHY, "connect refused"
    d = decide(tasks, {"t1": lo}, 1000)
    assert d.stop == ["t1"] and "t1" in d.sandboxes
    lo.pid, lo.exited, lo.exit_code = 0, True, 143
    st = decide(tasks, {"t1": lo}, 2000).reports["t1"]
    assert st.state == pb.TASK_STATE_FAILED and st.err == "unhealthy: connect refused"
    assert exit_status(Local(exit_code=0), 1).state == pb.TASK_STATE_COMPLETE


def test_a_new_way_into_the_task_keeps_the_verdict() -> None:
    """A container's checks move from `podman exec` to nsenter once its main process is known:
    the check goes on with its verdict (a reset would take the task out of every balancer
    until its next pass); a changed check starts over."""
    import asyncio

    from agent.executor.api import Exec
    from agent.health import HealthMonitor

    async def go() -> None:
        mon = HealthMonitor(lambda _: None)
        config = CheckConfig(command=("true",), interval=0.05)
        mon.watch("t1", config, "/run/netns/x", "10.0.0.2", via=Exec(("env",)))
        for _ in range(100):
            st = mon.state("t1")
            if st is not None and st.health == pb.TASK_HEALTH_HEALTHY:
                break
            await asyncio.sleep(0.02)
        before = mon.state("t1")
        assert before is not None and before.health == pb.TASK_HEALTH_HEALTHY
        mon.watch("t1", config, "/run/netns/x", "10.0.0.2", via=Exec(("env", "-u", "X")))
        assert mon.state("t1") is before and before.health == pb.TASK_HEALTH_HEALTHY
        other = CheckConfig(command=("false",), interval=0.05)
        mon.watch("t1", other, "/run/netns/x", "10.0.0.2", via=Exec(("env",)))
        after = mon.state("t1")
        assert after is not before and after is not None
        assert after.health == pb.TASK_HEALTH_STARTING
        await mon.close()

    asyncio.run(go())
