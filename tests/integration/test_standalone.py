"""`ovctl run/ps/rm/logs` against a real manager, real etcd and real agent sessions (their
tasks scripted: tests/integration/agents.py); the kernel side is tests/e2e/test_run.py."""

from __future__ import annotations

import os
import subprocess
import threading

import grpc
import pytest

from proto import control_pb2 as cpb
from proto import objects_pb2 as pb
from tests.integration.agents import AgentPool
from tests.integration.conftest import OVCTL, REPO, ManagerCluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

RUNNING = pb.TASK_STATE_RUNNING


def task_of(m: ManagerCluster, name: str) -> pb.Task | None:
    """The newest task of the standalone task `name` (None: none, or no such name)."""
    try:
        tasks = m.stub().ListTasks(cpb.ListTasksRequest(service_refs=[name]), timeout=10).tasks
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return max(tasks, key=lambda t: t.meta.created_at_ms, default=None)


def running(m: ManagerCluster, name: str) -> pb.Task:
    def check() -> pb.Task | None:
        t = task_of(m, name)
        return t if t is not None and t.status.state == RUNNING else None

    task: pb.Task = wait_for(f"{name} running", check)
    return task


def test_run_places_maps_ports_per_node_and_refuses_what_cannot_be(
    managers: ManagerCluster, agents: AgentPool
) -> None:
    h1 = agents.add(managers.addrs, "h1")
    h2 = agents.add(managers.addrs, "h2")
    wait_for("registration", lambda: h1.node_id and h2.node_id)
    for n in (1, 2, 3):
        managers.ovctl("run", "-d", "--node", "h1", "--name", f"web{n}", "-p", f"808{n}:80",
                       "--", "sleep", "1d")  # fmt: skip
        # -d returns once the task runs (and its hosts have programmed it), not before.
        latest = task_of(managers, f"web{n}")
        assert latest is not None and latest.status.state == RUNNING
    assert {running(managers, f"web{n}").node_id for n in (1, 2, 3)} == {h1.node_id}
    keys = managers.object_keys("services")
    r = managers.ovctl("run", "-d", "--node", "h1", "--name", "web4", "-p", "8081:80",
                       "--", "sleep", "1d", check=False)  # fmt: skip
    assert r.returncode == 1
    assert "port 8081/tcp on node h1 is already taken by 'web1'" in r.stderr, r.stderr
    assert managers.object_keys("services") == keys, "nothing written"
    # A task that cannot start: -d says why, with docker's 125, and prints no ID.
    h2.fakes.executor.fail_start = "image 'nope' not found"
    r = managers.ovctl("run", "-d", "--node", "h2", "--name", "broken", "--", "x", check=False)
    h2.fakes.executor.fail_start = ""
    assert r.returncode == 125 and r.stdout == "", (r.stdout, r.stderr)
    assert "broken: " in r.stderr and "image 'nope' not found" in r.stderr, r.stderr
    managers.ovctl("rm", "-f", "broken")
    # The same port on the other node; without --node, the least loaded node (h2).
    managers.ovctl("run", "-d", "--node", "h2", "--name", "web5", "-p", "8081:80", "--", "x")
    managers.ovctl("run", "-d", "--name", "free", "-p", "80", "--", "x")
    assert running(managers, "free").node_id == h2.node_id
    free = managers.ovctl_json("service", "inspect", "free")[0]
    assert free["endpoint"]["ports"][0]["published_port"] == 32768
    assert free["endpoint"]["ports"][0]["publish_mode"] == "PUBLISH_MODE_HOST"
    # ps shows them (not service ls), with node and mapping.
    table = managers.ovctl("ps").stdout
    assert "web1" in table and "0.0.0.0:8081->80/tcp" in table and "h1" in table
    assert "0.0.0.0:32768->80/tcp" in table
    assert "web1" not in managers.ovctl("service", "ls").stdout
    assert len(managers.ovctl("ps", "-q").stdout.split()) == 5
    # Networks must be attachable.
    managers.ovctl("network", "create", "--subnet", "10.41.0.0/24", "closed")
    managers.ovctl("network", "create", "--subnet", "10.42.0.0/24", "--attachable", "open")
    r = managers.ovctl("run", "-d", "--network", "closed", "--", "x", check=False)
    assert r.returncode == 1
    assert "network closed is not attachable; create it with --attachable" in r.stderr
    managers.ovctl("run", "-d", "--name", "joined", "--network", "open", "--", "x")
    joined = managers.ovctl_json("service", "inspect", "joined")[0]
    assert joined["spec"]["endpoint"]["mode"] == "ENDPOINT_MODE_DNSRR"
    # Bad input: exit 2 before any call; unknown node and names: the manager's words.
    for bad in ("70000:80", "abc"):
        r = managers.ovctl("run", "-d", "-p", bad, "--", "x", check=False)
        assert r.returncode == 2, r.stderr
    r = managers.ovctl("run", "-d", "--node", "h9", "--", "x", check=False)
    assert r.returncode == 1 and "node 'h9' not found" in r.stderr
    r = managers.ovctl("run", "-d", "--name", "web1", "--", "x", check=False)
    assert r.returncode == 1 and "task 'web1' already exists" in r.stderr
    # rm: running ones need -f; unknown names and services are refused by name.
    r = managers.ovctl("rm", "web2", check=False)
    assert r.returncode == 1 and "web2 is running: stop and remove it with ovctl rm -f" in r.stderr
    r = managers.ovctl("rm", "nope", check=False)
    assert r.returncode == 1 and "no task 'nope'" in r.stderr
    managers.ovctl("service", "create", "-d", "--name", "svc", "--", "x")
    r = managers.ovctl("rm", "svc", check=False)
    assert r.returncode == 1 and "'svc' is a service" in r.stderr
    managers.ovctl("rm", "-f", "web1", "web2")
    wait_for("web1 gone", lambda: task_of(managers, "web1") is None)
    # Its port is free again on h1.
    managers.ovctl("run", "-d", "--node", "h1", "--name", "web6", "-p", "8081:80", "--", "x")


def test_attached_run_prints_the_output_and_exits_with_the_status(
    managers: ManagerCluster, agents: AgentPool
) -> None:
    host = agents.add(managers.addrs, "solo")
    wait_for("registration", lambda: host.node_id)
    result: dict[str, subprocess.CompletedProcess[str]] = {}

    def attached() -> None:
        result["run"] = managers.ovctl("run", "--name", "once", "--", "sh", "-c", "x", check=False)

    runner = threading.Thread(target=attached)
    runner.start()
    task = running(managers, "once")
    # `logs -f` of the same task, from another client.
    follower = subprocess.Popen(
        [*OVCTL, "--host", managers.host_arg, "logs", "-f", "once"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OVCTL_CONFIG": str(managers.context_file)},
    )
    try:
        host.publish(task.meta.id, "hello from the task\n")
        assert follower.stdout is not None
        assert follower.stdout.readline() == "hello from the task\n"
        host.finish(task.meta.id, pb.TASK_STATE_FAILED, exit_code=3)
        runner.join(30)
        assert not runner.is_alive()
    finally:
        follower.kill()
        follower.wait()
    run = result["run"]
    assert run.returncode == 3, (run.stdout, run.stderr)
    assert run.stdout == "hello from the task\n"
    assert "once" in managers.ovctl("ps", "-a").stdout
    assert "once" not in managers.ovctl("ps").stdout
    assert managers.ovctl("logs", "once").stdout == "hello from the task\n"
    managers.ovctl("rm", "once")
