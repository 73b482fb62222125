"""Services, tasks and nodes against a real manager, real etcd and real agent sessions."""

from __future__ import annotations

import time
from collections import Counter

import grpc
import pytest

from manager.state import task_name
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb
from tests.integration.agents import AgentPool
from tests.integration.conftest import ManagerCluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

RUNNING = pb.TASK_STATE_RUNNING


def tasks(m: ManagerCluster, service: str) -> list[pb.Task]:
    return list(m.stub().ListTasks(cpb.ListTasksRequest(service_refs=[service]), timeout=10).tasks)


def live(m: ManagerCluster, service: str) -> list[pb.Task]:
    return [t for t in tasks(m, service) if t.desired_state == RUNNING]


def running(m: ManagerCluster, service: str) -> list[pb.Task]:
    return [t for t in live(m, service) if t.status.state == RUNNING]


def test_service_lifecycle_without_nodes(managers: ManagerCluster) -> None:
    managers.ovctl("network", "create", "--subnet", "10.40.0.0/24", "app")
    svc_id = managers.ovctl(
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "app",
        "--replicas",
        "3",
        "--publish",
        "8080:80",
        "--env",
        "A=1",
        "--stop-grace-period",
        "20s",
        "--",
        "python3",
        "-m",
        "http.server",
        "80",
    ).stdout.strip()
    assert len(svc_id) == 25
    wait_for("3 tasks", lambda: len(live(managers, "web")) == 3)
    ts = live(managers, "web")
    assert sorted(t.slot for t in ts) == [1, 2, 3]
    # Each task has its own address on the network, and none is the VIP or the gateway.
    svc = managers.stub().GetService(cpb.GetServiceRequest(service_ref="web"), timeout=10).service
    vip = svc.endpoint.virtual_ips[0].addr
    addrs = [t.networks[0].addresses[0] for t in ts]
    assert len({*addrs, vip}) == 4 and all(a.startswith("10.40.0.") for a in addrs)
    assert "10.40.0.1/24" not in [*addrs, vip]
    assert list(ts[0].spec.command) == ["python3", "-m", "http.server", "80"]
    assert ts[0].spec.stop_grace_period_ms == 20_000  # what the agent gives its stop
    # No node: tasks wait for one and say why.
    wait_for(
        "unschedulable message",
        lambda: all("no suitable node" in t.status.message for t in live(managers, "web")),
    )
    table = managers.ovctl("service", "ls").stdout
    assert "web" in table and "0/3" in table and "8080->80/tcp" in table

    managers.ovctl("service", "scale", "-d", "web=5")
    wait_for("5 tasks", lambda: len(live(managers, "web")) == 5)
    managers.ovctl("service", "scale", "-d", "web=2")
    wait_for("2 tasks", lambda: len(live(managers, "web")) == 2)

    managers.ovctl("service", "rm", "web")
    wait_for("tasks deleted", lambda: not managers.object_keys("tasks"))
    # All of the service's addresses are free again: the networks can go, the ingress network
    # too now that nothing publishes through it.
    managers.ovctl("network", "rm", "app", "ingress")
    assert not managers.object_keys("networks") and not managers.object_keys("services")


BAD_SERVICES = [
    (["--name", "x", "--network", "nosuch", "--", "true"], "not found", "NOT_FOUND"),
    (["--name", "taken", "--", "true"], "already exists", "ALREADY_EXISTS"),
    (["--name", "x", "--replicas", "100000", "--", "true"], "replicas", "INVALID_ARGUMENT"),
    (
        ["--name", "x", "--constraint", "node.zone=a", "--", "true"],
        "node.zone=a",
        "INVALID_ARGUMENT",
    ),
    (
        ["--name", "x", "--constraint", "node.labels.zone==", "--", "true"],
        "node.labels.zone",
        "INVALID_ARGUMENT",
    ),
    (["--name", "x", "--publish", "9000:80", "--", "true"], "9000", "FAILED_PRECONDITION"),
    (["--name", "bad_name!", "--", "true"], "bad_name!", "INVALID_ARGUMENT"),
    (["--name", "s" * 64, "--", "true"], "at most 63", "INVALID_ARGUMENT"),
    (["--name", "x", "--env", "=novalue", "--", "true"], "=novalue", "INVALID_ARGUMENT"),
]


@pytest.mark.parametrize(
    ("args", "fragment", "code"), BAD_SERVICES, ids=[c + "-" + f[:20] for _, f, c in BAD_SERVICES]
)
def test_bad_service_refused_and_nothing_written(
    managers: ManagerCluster, args: list[str], fragment: str, code: str
) -> None:
    managers.ovctl(
        "service", "create", "-d", "--name", "taken", "--publish", "9000:80", "--", "true"
    )
    wait_for("task of 'taken'", lambda: len(live(managers, "taken")) == 1)
    wait_for("settled", lambda: "no suitable node" in live(managers, "taken")[0].status.message)
    before = managers.dump()
    res = managers.ovctl("service", "create", "-d", *args, check=False)
    assert res.returncode != 0, res.stdout
    assert fragment in res.stderr, res.stderr
    assert code in res.stderr or code not in ("INTERNAL",)
    assert managers.dump() == before


def test_bad_requests_over_grpc_have_the_right_codes(managers: ManagerCluster) -> None:
    stub = managers.stub()
    managers.ovctl("network", "create", "busy")
    managers.ovctl("service", "create", "-d", "--name", "api", "--network", "busy", "--", "true")
    before = managers.dump()

    def code_of(fn: object, req: object) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as err:
            fn(req, timeout=10)  # type: ignore[operator]
        assert err.value.details(), "every refusal carries a message"
        return err.value.code()

    assert (
        code_of(
            stub.CreateService,
            cpb.CreateServiceRequest(spec=pb.ServiceSpec(name="", command=["true"])),
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(stub.CreateService, cpb.CreateServiceRequest(spec=pb.ServiceSpec(name="nocmd")))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(stub.RemoveNetwork, cpb.RemoveNetworkRequest(network_ref="busy"))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (
        code_of(stub.RemoveService, cpb.RemoveServiceRequest(service_ref="nope"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert code_of(stub.GetNode, cpb.GetNodeRequest(node_ref="nope")) == grpc.StatusCode.NOT_FOUND
    svc = stub.GetService(cpb.GetServiceRequest(service_ref="api"), timeout=10).service
    stale = cpb.UpdateServiceRequest(service_ref="api", version=svc.meta.version - 1, spec=svc.spec)
    assert code_of(stub.UpdateService, stale) == grpc.StatusCode.FAILED_PRECONDITION
    renamed = pb.ServiceSpec()
    renamed.CopyFrom(svc.spec)
    renamed.name = "other"
    assert (
        code_of(
            stub.UpdateService,
            cpb.UpdateServiceRequest(service_ref="api", version=svc.meta.version, spec=renamed),
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert managers.dump() == before
    res = managers.ovctl("network", "rm", "busy", check=False)
    assert res.returncode != 0 and "in use by service(s) api" in res.stderr
    res = managers.ovctl("service", "scale", "-d", "nope=3", check=False)
    assert res.returncode != 0 and "not found" in res.stderr
    res = managers.ovctl("service", "scale", "-d", "api=-1", check=False)
    assert res.returncode != 0
    assert managers.dump() == before


def test_spread_drain_and_node_down(managers: ManagerCluster, agents: AgentPool) -> None:
    hosts = [agents.add(managers.addrs, f"host{i}") for i in range(3)]
    wait_for("registration", lambda: all(h.node_id for h in hosts))
    managers.ovctl("network", "create", "app")
    managers.ovctl(
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "app",
        "--replicas",
        "3",
        "--",
        "sleep",
        "infinity",
    )
    wait_for("3 running", lambda: len(running(managers, "web")) == 3)
    assert sorted(Counter(t.node_id for t in running(managers, "web")).values()) == [1, 1, 1]
    assert "3/3" in managers.ovctl("service", "ls").stdout
    nodes = managers.ovctl_json("node", "ls")
    assert isinstance(nodes, list) and len(nodes) == 3

    # Drain: host0's task moves away and keeps its slot.
    managers.ovctl("node", "update", "--availability", "drain", "host0")
    moved = wait_for(
        "tasks moved off the drained node",
        lambda: (
            len(ts := running(managers, "web")) == 3
            and all(t.node_id != hosts[0].node_id for t in ts)
            and ts
        ),
    )
    assert sorted(t.slot for t in moved) == [1, 2, 3]
    wait_for("drained node's assignments emptied", lambda: not hosts[0].task_ids)

    # A host dies: it is marked down and its task is rescheduled on the survivor.
    hosts[1].stop()
    wait_for("node marked down", lambda: "Down" in managers.ovctl("node", "ls").stdout, timeout=10)
    wait_for(
        "rescheduled on the last node",
        lambda: (
            len(running(managers, "web")) == 3
            and {t.node_id for t in running(managers, "web")} == {hosts[2].node_id}
        ),
    )
    # It comes back: nothing moves back by itself (as in Swarm), but it is Ready again.
    hosts[1].start()
    wait_for("node ready again", lambda: managers.ovctl("node", "ls").stdout.count("Ready") == 3)


def test_restart_policy(managers: ManagerCluster, agents: AgentPool) -> None:
    host = agents.add(managers.addrs, "solo")
    wait_for("registration", lambda: host.node_id)
    managers.ovctl(
        "service",
        "create",
        "-d",
        "--name",
        "flaky",
        "--restart-condition",
        "on-failure",
        "--restart-max-attempts",
        "2",
        "--",
        "false",
    )
    managers.ovctl(
        "service", "create", "-d", "--name", "once", "--restart-condition", "none", "--", "true"
    )
    for _ in range(3):
        cur = wait_for("a running flaky task", lambda: running(managers, "flaky"))[0]
        host.finish(cur.meta.id, pb.TASK_STATE_FAILED, exit_code=1)
        gone = cur.meta.id
        wait_for(
            "failure recorded",
            lambda: all(t.meta.id != gone for t in running(managers, "flaky")),  # noqa: B023
        )
    # One original and two restarts, then the slot is given up.
    wait_for("three attempts", lambda: len(tasks(managers, "flaky")) == 3)
    assert not running(managers, "flaky")
    assert all(t.status.state == pb.TASK_STATE_FAILED for t in tasks(managers, "flaky"))

    done = wait_for("once running", lambda: running(managers, "once"))[0]
    host.finish(done.meta.id, pb.TASK_STATE_COMPLETE)
    wait_for("once finished", lambda: not running(managers, "once"))
    assert len(tasks(managers, "once")) == 1


def test_global_service_constraints_and_logs(managers: ManagerCluster, agents: AgentPool) -> None:
    a = agents.add(managers.addrs, "zone-a-1", labels={"zone": "a"})
    b = agents.add(managers.addrs, "zone-b-1", labels={"zone": "b"})
    wait_for("registration", lambda: a.node_id and b.node_id)
    managers.ovctl(
        "service", "create", "-d", "--name", "mon", "--mode", "global", "--", "sleep", "1d"
    )
    managers.ovctl(
        "service",
        "create",
        "-d",
        "--name",
        "zoned",
        "--replicas",
        "2",
        "--constraint",
        "node.labels.zone==a",
        "--",
        "sleep",
        "1d",
    )
    wait_for("global on both", lambda: len(running(managers, "mon")) == 2)
    wait_for("zoned running", lambda: len(running(managers, "zoned")) == 2)
    assert {t.node_id for t in running(managers, "zoned")} == {a.node_id}
    # A new node gets a global task as soon as it joins.
    c = agents.add(managers.addrs, "zone-a-2", labels={"zone": "a"})
    wait_for("global on the new node", lambda: len(running(managers, "mon")) == 3)
    assert c.node_id in {t.node_id for t in running(managers, "mon")}

    task = running(managers, "mon")[0]
    owner = next(h for h in (a, b, c) if h.node_id == task.node_id)
    owner.publish(task.meta.id, "hello from the task\n")
    out = managers.ovctl("service", "logs", "mon").stdout
    assert "hello from the task" in out and "mon." in out


def test_update_replaces_tasks_only_when_the_task_spec_changes(
    managers: ManagerCluster, agents: AgentPool
) -> None:
    host = agents.add(managers.addrs, "solo")
    wait_for("registration", lambda: host.node_id)
    managers.ovctl(
        "service",
        "create",
        "-d",
        "--name",
        "api",
        "--replicas",
        "2",
        "--env",
        "V=1",
        "--update-parallelism",
        "1",
        "--",
        "sleep",
        "1d",
    )
    two = wait_for("2 running", lambda: len(ts := running(managers, "api")) == 2 and ts)
    first = {t.meta.id for t in two}
    # Scaling is not a task change: the running tasks stay.
    managers.ovctl("service", "update", "-d", "--replicas", "3", "api")
    wait_for("3 running", lambda: len(running(managers, "api")) == 3)
    assert first <= {t.meta.id for t in running(managers, "api")}
    # An environment change replaces every task, one slot at a time, keeping slot numbers.
    managers.ovctl("service", "update", "-d", "--env-add", "V=2", "api")
    # One snapshot per check: two reads could pass on an old task still running in the
    # first and the new ones only in the second.
    now = wait_for(
        "all tasks on the new spec",
        lambda: (
            len(ts := running(managers, "api")) == 3 and all("V=2" in t.spec.env for t in ts) and ts
        ),
        timeout=20,
    )
    assert sorted(t.slot for t in now) == [1, 2, 3]
    assert not first & {t.meta.id for t in now}
    assert all(t.spec_version == 2 for t in now)
    svc = managers.ovctl_json("service", "inspect", "api")[0]
    assert svc["spec"]["env"] == ["V=2"] and svc["spec_version"] == "2"


def test_node_rm_rules(managers: ManagerCluster, agents: AgentPool) -> None:
    a = agents.add(managers.addrs, "keep")
    b = agents.add(managers.addrs, "gone")
    wait_for("registration", lambda: a.node_id and b.node_id)
    managers.ovctl(
        "service", "create", "-d", "--name", "web", "--replicas", "2", "--", "sleep", "1d"
    )
    wait_for("2 running", lambda: len(running(managers, "web")) == 2)
    before = managers.dump()
    res = managers.ovctl("node", "rm", "gone", check=False)
    assert res.returncode != 0 and "is not down" in res.stderr and "--force" in res.stderr
    assert managers.dump() == before
    b.stop()
    wait_for("node down", lambda: "Down" in managers.ovctl("node", "ls").stdout)
    managers.ovctl("node", "rm", "gone")
    assert "gone" not in managers.ovctl("node", "ls").stdout
    wait_for(
        "tasks moved to the remaining node",
        lambda: (
            {t.node_id for t in running(managers, "web")} == {a.node_id}
            and len(running(managers, "web")) == 2
        ),
    )
    res = managers.ovctl("node", "update", "--availability", "drain", "gone", check=False)
    assert res.returncode != 0 and "not found" in res.stderr


def test_service_logs_since_and_per_line_timestamps(
    managers: ManagerCluster, agents: AgentPool
) -> None:
    """Each line keeps the time it was written: --since cuts between two lines of one task,
    before --tail counts; -t prints each line's time; a follower skips a line older than
    --since that arrives late; a negative since_ms is refused."""
    host = agents.add(managers.addrs, "solo")
    wait_for("registration", lambda: host.node_id)
    managers.ovctl("service", "create", "-d", "--name", "chatty", "--", "sleep", "1d")
    (task,) = wait_for("running", lambda: running(managers, "chatty"))
    t0 = (int(time.time()) - 60) * 1000
    host.publish(task.meta.id, "a\n", timestamp_ms=t0)
    host.publish(task.meta.id, "b\n", timestamp_ms=t0 + 5000)
    host.publish(task.meta.id, "c\n", "stderr", timestamp_ms=t0 + 5250)
    name = f"{task_name(task)}@solo | "

    def stamp(ms: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + (
            f".{ms % 1000:03d}000000Z"
        )

    got = managers.ovctl("service", "logs", "-t", "chatty")
    assert got.stdout == f"{stamp(t0)} {name}a\n{stamp(t0 + 5000)} {name}b\n"
    assert got.stderr == f"{stamp(t0 + 5250)} {name}c\n"
    # Between a and b: only b and c, whichever way the time is given (a Unix time, RFC 3339,
    # a duration before now).
    since = t0 + 1000
    rfc3339 = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since // 1000)) + ".5Z"
    for value in (f"{since / 1000:.3f}", rfc3339, f"{int(time.time() * 1000) - since}ms"):
        out = managers.ovctl("service", "logs", "--since", value, "chatty")
        assert (out.stdout, out.stderr) == (f"{name}b\n", f"{name}c\n"), value
    # since first, then tail: the last line of those since.
    out = managers.ovctl("service", "logs", "--since", rfc3339, "--tail", "1", "chatty")
    assert (out.stdout, out.stderr) == ("", f"{name}c\n")
    bad = managers.ovctl("service", "logs", "--since", "yesterday", "chatty", check=False)
    assert bad.returncode == 2 and "argument --since: invalid since 'yesterday'" in bad.stderr

    stub = managers.stub()
    request = cpb.ServiceLogsRequest(service_ref="chatty", since_ms=-1)
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.ServiceLogs(request, timeout=10))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "since_ms -1 is negative" in (refused.value.details() or "")

    # Following since `since`: a line stamped before it that arrives now is skipped.
    request = cpb.ServiceLogsRequest(service_ref="chatty", follow=True, since_ms=since)
    stream = stub.ServiceLogs(request, timeout=30)
    assert [next(stream).data, next(stream).data] == [b"b\n", b"c\n"]
    host.publish(task.meta.id, "late and old\n", timestamp_ms=t0 + 100)
    host.publish(task.meta.id, "new\n")
    assert next(stream).data == b"new\n"
    stream.cancel()
