"""Rolling updates that fail, against a real manager, real etcd and real agent sessions: the
failure action (pause, rollback), `service rollback`, and what `ovctl service update` says
when its update rolls back."""

from __future__ import annotations

import os
import subprocess

import pytest

from proto import control_pb2 as cpb
from proto import objects_pb2 as pb
from tests.integration.agents import AgentPool
from tests.integration.conftest import OVCTL, REPO, ManagerCluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

RUNNING = pb.TASK_STATE_RUNNING
S = pb.UpdateStatus


def running(m: ManagerCluster, service: str) -> list[pb.Task]:
    resp = m.stub().ListTasks(cpb.ListTasksRequest(service_refs=[service]), timeout=10)
    return [t for t in resp.tasks if t.desired_state == RUNNING and t.status.state == RUNNING]


def get(m: ManagerCluster, service: str) -> pb.Service:
    req = cpb.GetServiceRequest(service_ref=service)
    return m.stub().GetService(req, timeout=10).service


def status(m: ManagerCluster, service: str) -> int:
    return get(m, service).update_status.state


def create(m: ManagerCluster, name: str, *flags: str) -> list[pb.Task]:
    m.ovctl("service", "create", "-d", "--name", name, "--replicas", "2", "--env", "V=1",
            "--update-parallelism", "1", *flags, "--", "sleep", "1d")  # fmt: skip
    return wait_for("2 running", lambda: len(ts := running(m, name)) == 2 and ts)


def new_task(m: ManagerCluster, name: str) -> pb.Task:
    return wait_for(
        "a task of the new spec running",
        lambda: next((t for t in running(m, name) if "V=2" in t.spec.env), None),
    )


def test_a_failed_update_rolls_back_and_the_command_says_so(
    managers: ManagerCluster, agents: AgentPool
) -> None:
    host = agents.add(managers.addrs, "solo")
    wait_for("registration", lambda: host.node_id)
    # Scripted tasks are ready at once: the monitor period keeps the update open long enough
    # for the test to fail one of its tasks (as a crash 1 s after start would).
    create(managers, "api", "--update-failure-action", "rollback", "--update-monitor", "30s",
           "--rollback-monitor", "0s")  # fmt: skip
    # The update waits (no -d) while its first new task fails.
    update = subprocess.Popen(
        [*OVCTL, "--host", managers.host_arg, "service", "update", "--wait-timeout", "60",
         "--env-add", "V=2", "api"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "OVCTL_CONFIG": str(managers.context_file)},
    )  # fmt: skip
    try:
        bad = new_task(managers, "api")
        host.finish(bad.meta.id, pb.TASK_STATE_FAILED, exit_code=3)
        out, err = update.communicate(timeout=60)
    finally:
        update.kill()
    assert update.returncode == 1, (out, err)
    assert "update rolled back due to failure or early termination of task api." in err
    wait_for("rollback completed", lambda: status(managers, "api") == S.ROLLBACK_COMPLETED)
    svc = get(managers, "api")
    assert list(svc.spec.env) == ["V=1"] and svc.spec_version == 1
    assert svc.highest_spec_version == 2 and not svc.HasField("previous_spec")
    now = wait_for("2 running on V=1", lambda: len(ts := running(managers, "api")) == 2 and ts)
    assert all(list(t.spec.env) == ["V=1"] for t in now)
    assert bad.meta.id not in {t.meta.id for t in now}
    pretty = managers.ovctl("service", "inspect", "--pretty", "api").stdout
    assert "Update status:    rollback-completed" in pretty
    # Nothing left to roll back to.
    res = managers.ovctl("service", "rollback", "api", check=False)
    assert res.returncode == 1 and "has no previous spec to roll back to" in res.stderr


def test_pause_then_resume_then_manual_rollback(
    managers: ManagerCluster, agents: AgentPool
) -> None:
    host = agents.add(managers.addrs, "solo")
    wait_for("registration", lambda: host.node_id)
    # The delay keeps the second slot on V=1 while the first one's new task fails.
    create(managers, "web", "--update-monitor", "5s", "--update-delay", "1m")
    managers.ovctl("service", "update", "-d", "--env-add", "V=2", "web")
    assert status(managers, "web") == S.UPDATING
    host.finish(new_task(managers, "web").meta.id, pb.TASK_STATE_FAILED)
    wait_for("paused", lambda: status(managers, "web") == S.PAUSED)
    message = get(managers, "web").update_status.message
    assert message.startswith("update paused due to failure or early termination of task web.")
    # Paused: the restarted new task runs, the other slot stays on V=1.
    wait_for("one of each", lambda: sorted(t.spec.env[0] for t in running(managers, "web"))
             == ["V=1", "V=2"])  # fmt: skip
    # Any update resumes it (here: of the delay alone), and it completes.
    managers.ovctl("service", "update", "-d", "--update-delay", "0s", "web")
    assert status(managers, "web") == S.UPDATING
    wait_for("completed", lambda: status(managers, "web") == S.COMPLETED)
    assert all(list(t.spec.env) == ["V=2"] for t in running(managers, "web"))
    # `service rollback` (waiting) undoes the last change, the delay's, and returns once it
    # completed; the tasks stay (what they run did not change).
    ids = {t.meta.id for t in running(managers, "web")}
    res = managers.ovctl("service", "rollback", "-q", "--wait-timeout", "30", "web", check=False)
    if res.returncode != 0:  # the wait needs hosts' programmed views: show why not
        raise AssertionError(res.stderr)
    svc = get(managers, "web")
    assert svc.update_status.state == S.ROLLBACK_COMPLETED
    assert svc.update_status.message == "manually requested rollback"
    assert svc.spec.update_config.delay_ms == 60_000 and list(svc.spec.env) == ["V=2"]
    assert {t.meta.id for t in running(managers, "web")} == ids
