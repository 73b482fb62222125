"""The routing mesh's allocations and health-gated rolling updates, against a real manager,
real etcd and real agent sessions (scripted agents: no sandboxes)."""

from __future__ import annotations

import functools
import ipaddress
import time

import grpc
import pytest

from proto import control_pb2 as cpb
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb
from tests.integration.agents import AgentPool, ScriptedAgent, run_sync
from tests.integration.conftest import ManagerCluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

RUNNING = pb.TASK_STATE_RUNNING


def restart_leader(m: ManagerCluster) -> None:
    """Stop and start the (only) manager; return once it leads and serves."""
    m.procs[0].stop()
    m.procs[0].start()
    m.wait_leader()

    def serving() -> bool:
        try:
            m.stub().ListNetworks(cpb.ListNetworksRequest(), timeout=5)
        except grpc.RpcError:
            return False
        return True

    wait_for("the restarted manager leading", serving)


def networks(m: ManagerCluster) -> dict[str, pb.Network]:
    resp = m.stub().ListNetworks(cpb.ListNetworksRequest(), timeout=10)
    return {n.spec.name: n for n in resp.networks}


def live(m: ManagerCluster, service: str) -> list[pb.Task]:
    resp = m.stub().ListTasks(cpb.ListTasksRequest(service_refs=[service]), timeout=10)
    return [t for t in resp.tasks if t.desired_state == RUNNING]


def node(m: ManagerCluster, ref: str) -> pb.Node:
    return m.stub().GetNode(cpb.GetNodeRequest(node_ref=ref), timeout=10).node


def ingress_addr(n: pb.Node) -> str:
    return n.attachments[0].addresses[0] if n.attachments else ""


def test_default_ingress_network_is_made_once(managers: ManagerCluster) -> None:
    ing = networks(managers)["ingress"]
    assert ing.spec.ingress and ing.subnet == "10.0.0.0/24" and ing.gateway == "10.0.0.1"
    marker = managers.etcd.prefix.rstrip("/").encode() + b"/ingress/created"
    assert managers.dump()[marker][1] == ing.meta.id.encode()
    # A user who removes it keeps it removed, across a new leader's start.
    managers.ovctl("network", "rm", "ingress")
    restart_leader(managers)
    assert "ingress" not in networks(managers)
    # Publishing through the mesh now says how to get one back.
    res = managers.ovctl(
        "service", "create", "-d", "--name", "web", "-p", "8080:80", "--", "true", check=False
    )
    assert res.returncode == 1
    assert (
        "no ingress network to publish port 8080/tcp on: create one with "
        "`ovctl network create --ingress ingress`"
    ) in res.stderr
    # ... and a host-mode port or no port at all does not need one.
    managers.ovctl(
        "service",
        "create",
        "-d",
        "--name",
        "hostmode",
        "-p",
        "published=8081,target=80,mode=host",
        "--",
        "true",
    )
    managers.ovctl("network", "create", "--ingress", "mesh")
    managers.ovctl("service", "create", "-d", "--name", "web", "-p", "8080:80", "--", "true")


def test_publishing_tasks_and_every_node_get_ingress_addresses(
    managers: ManagerCluster, agents: AgentPool
) -> None:
    hosts = [agents.add(managers.addrs, f"host{i}") for i in range(2)]
    wait_for("registration", lambda: all(h.node_id for h in hosts))
    ing = networks(managers)["ingress"]
    subnet = ipaddress.ip_network(ing.subnet)
    addrs = wait_for(
        "nodes' ingress addresses",
        lambda: (
            all(ingress_addr(node(managers, h.node_id)) for h in hosts)
            and [ingress_addr(node(managers, h.node_id)) for h in hosts]
        ),
    )
    assert len(set(addrs)) == 2 and all(ipaddress.ip_interface(a) in subnet for a in addrs)
    assert all(node(managers, h.node_id).attachments[0].network_id == ing.meta.id for h in hosts)
    doc = managers.ovctl_json("node", "inspect", "host0")[0]
    assert doc["attachments"][0]["addresses"] == [ingress_addr(node(managers, hosts[0].node_id))]
    assert (
        "Ingress address:  10.0.0." in managers.ovctl("node", "inspect", "--pretty", "host0").stdout
    )

    managers.ovctl("network", "create", "app")
    managers.ovctl(
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "app,alias=www",
        "--replicas",
        "2",
        "-p",
        "8080:80",
        "--",
        "sleep",
        "1d",
    )
    managers.ovctl(
        "service", "create", "-d", "--name", "quiet", "--network", "app", "--", "sleep", "1d"
    )
    app = networks(managers)["app"]
    ts = wait_for("tasks", lambda: len(live(managers, "web")) == 2 and live(managers, "web"))
    for t in ts:
        # The service's own network first, with its aliases; then the ingress one, without.
        assert [a.network_id for a in t.networks] == [app.meta.id, ing.meta.id]
        assert list(t.networks[0].aliases) == ["www"] and list(t.networks[1].aliases) == []
        assert ipaddress.ip_interface(t.networks[1].addresses[0]) in subnet
    held = [t.networks[1].addresses[0] for t in ts] + addrs
    assert len(set(held)) == len(held)
    (quiet,) = wait_for("quiet task", lambda: live(managers, "quiet"))
    assert [a.network_id for a in quiet.networks] == [app.meta.id]

    # Every node hears of the publishing service, with or without a task of it; the
    # non-publishing one only where its task runs.
    web_id = managers.stub().GetService(cpb.GetServiceRequest(service_ref="web")).service.meta.id
    for h in hosts:
        services = h.session.assignments.services
        wait_for("mesh service", functools.partial(services.__contains__, web_id))
        assert ing.meta.id in h.session.assignments.networks
        assert list(h.session.assignments.node) == [h.node_id]

    # The ingress network cannot go while the mesh is in use; nothing is written.
    before = managers.dump()
    with pytest.raises(grpc.RpcError) as err:
        managers.stub().RemoveNetwork(cpb.RemoveNetworkRequest(network_ref="ingress"), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "service(s) web (port 8080/tcp) publish ports in ingress mode" in str(
        err.value.details()
    )
    assert managers.dump() == before

    # Dropping the published port replaces the tasks without the ingress attachment.
    managers.ovctl("service", "update", "-d", "--publish-rm", "80", "web")
    wait_for(
        "tasks replaced without ingress",
        lambda: (
            len(live(managers, "web")) == 2
            and all(len(t.networks) == 1 for t in live(managers, "web"))
        ),
        timeout=20,
    )
    svc = managers.stub().GetService(cpb.GetServiceRequest(service_ref="web")).service
    assert svc.spec_version == 2
    wait_for(
        "mesh service withdrawn",
        lambda: all(web_id not in h.session.assignments.services for h in hosts if not h.task_ids),
    )
    # Once the old tasks are gone the network can be removed, with the nodes' addresses.
    wait_for(
        "ingress removed",
        lambda: managers.ovctl("network", "rm", "ingress", check=False).returncode == 0,
        timeout=20,
    )
    assert all(not node(managers, h.node_id).attachments for h in hosts)
    wait_for(
        "ingress network withdrawn from agents",
        lambda: all(ing.meta.id not in h.session.assignments.networks for h in hosts),
    )
    # A new ingress network: every node gets an address on it again.
    managers.ovctl("network", "create", "--ingress", "mesh2")
    mesh2 = networks(managers)["mesh2"]
    wait_for(
        "addresses on the new ingress network",
        lambda: all(
            node(managers, h.node_id).attachments
            and node(managers, h.node_id).attachments[0].network_id == mesh2.meta.id
            for h in hosts
        ),
    )


def test_node_addresses_survive_a_new_leader_and_are_released_with_the_node(
    etcd,
    spawn_process,
    agents: AgentPool,  # type: ignore[no-untyped-def]
) -> None:
    # The ingress network gets the pool's only /29: 5 addresses besides the gateway.
    m = ManagerCluster(
        etcd, spawn_process, **{"default-pool": "10.98.0.0/29", "default-pool-size": "29"}
    )
    m.add()
    m.wait_leader()
    try:
        assert networks(m)["ingress"].subnet == "10.98.0.0/29"
        first = [agents.add(m.addrs, f"h{i}") for i in range(4)]
        wait_for(
            "4 addresses",
            lambda: all(h.node_id and ingress_addr(node(m, h.node_id)) for h in first),
        )
        # A new leader rebuilds its allocator from etcd, nodes' addresses included: the next
        # node gets the one address left, not one a node holds.
        restart_leader(m)
        fifth = agents.add(m.addrs, "h4")
        wait_for("5th", lambda: fifth.node_id and ingress_addr(node(m, fifth.node_id)))
        held = [ingress_addr(node(m, h.node_id)) for h in [*first, fifth]]
        assert sorted(held) == [f"10.98.0.{i}/29" for i in range(2, 7)]
        # Full: a sixth node registers and waits without one.
        sixth = agents.add(m.addrs, "h5")
        wait_for(
            "6th ready",
            lambda: sixth.node_id and node(m, sixth.node_id).status.state == pb.NODE_STATE_READY,
        )
        time.sleep(1.5)  # a periodic pass or two
        assert not node(m, sixth.node_id).attachments
        # Removing a node frees its address, and the waiting node gets it.
        freed = ingress_addr(node(m, first[0].node_id))
        first[0].stop()
        wait_for("h0 down", lambda: node(m, first[0].node_id).status.state == pb.NODE_STATE_DOWN)
        m.ovctl("node", "rm", "h0")
        wait_for("freed address", lambda: ingress_addr(node(m, sixth.node_id)) == freed)
    finally:
        m.close()


def _report(agent: ScriptedAgent, task_id: str, health: pb.TaskHealth, ready: bool) -> None:
    now = int(time.time() * 1000)
    status = pb.TaskStatus(
        state=RUNNING,
        health=health,
        ready_ms=now if ready else 0,
        timestamp_ms=now,  # type: ignore[arg-type]
    )
    run_sync(
        agent.loop, agent.session.report([dpb.TaskStatusUpdate(task_id=task_id, status=status)])
    )


def test_health_flags_round_trip_and_updates_wait_for_health(
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
        "--update-parallelism",
        "1",
        "--update-delay",
        "1s",
        "--health-cmd",
        "test -e /tmp/ok",
        "--health-interval",
        "2s",
        "--health-timeout",
        "500ms",
        "--health-retries",
        "4",
        "--health-start-period",
        "5s",
        "--",
        "sleep",
        "1d",
    )
    spec = managers.ovctl_json("service", "inspect", "api")[0]["spec"]
    assert spec["health_check"] == {
        "command": ["sh", "-c", "test -e /tmp/ok"],
        "tcp_port": 0,
        "interval_ms": "2000",
        "timeout_ms": "500",
        "retries": 4,
        "start_period_ms": "5000",
    }
    assert spec["update_config"] == {
        "parallelism": "1",
        "delay_ms": "1000",
        "failure_action": "UPDATE_FAILURE_ACTION_PAUSE",
        "max_failure_ratio": 0.0,
        "order": "UPDATE_ORDER_STOP_FIRST",
    }
    first = wait_for("2 tasks", lambda: len(live(managers, "api")) == 2 and live(managers, "api"))
    for t in first:
        assert list(t.spec.health_check.command) == ["sh", "-c", "test -e /tmp/ok"]
        assert t.spec.health_check.retries == 4
    # Bad health checks are refused with a message to act on, and nothing is written.
    before = managers.dump()
    res = managers.ovctl("service", "update", "-d", "--health-timeout", "3s", "api", check=False)
    assert res.returncode == 1 and "exceeds its interval" in res.stderr
    assert managers.dump() == before

    # A new health check is a new task spec: a rolling update, one slot at a time, each new
    # task holding the next until it is healthy (the scripted agent says only "running").
    wait_for("running", lambda: all(t.status.state == RUNNING for t in live(managers, "api")))
    managers.ovctl("service", "update", "-d", "--health-retries", "6", "api")

    def new_tasks() -> list[pb.Task]:
        return [t for t in live(managers, "api") if t.spec_version == 2]

    (fresh,) = wait_for(
        "first replacement running",
        lambda: [t for t in new_tasks() if t.status.state == RUNNING],
    )
    time.sleep(2.5)  # well past the 1 s delay: only health can be holding the update
    assert len(new_tasks()) == 1
    assert "(starting)" not in managers.ovctl("service", "ps", "api").stdout
    _report(host, fresh.meta.id, pb.TASK_HEALTH_STARTING, ready=False)
    wait_for("health shown", lambda: "(starting)" in managers.ovctl("service", "ps", "api").stdout)
    time.sleep(1.5)
    assert len(new_tasks()) == 1
    t0 = time.monotonic()
    _report(host, fresh.meta.id, pb.TASK_HEALTH_HEALTHY, ready=True)
    wait_for("second batch", lambda: len(new_tasks()) == 2)
    waited = time.monotonic() - t0
    # The second batch starts once the delay after readiness is over, not at the next
    # periodic pass after it.
    assert 0.9 <= waited < 3.0, waited
    second = next(t for t in new_tasks() if t.meta.id != fresh.meta.id)
    wait_for(
        "second running",
        lambda: any(
            t.meta.id == second.meta.id and t.status.state == RUNNING for t in live(managers, "api")
        ),
    )
    _report(host, second.meta.id, pb.TASK_HEALTH_HEALTHY, ready=True)

    # --no-healthcheck removes it (another task spec change).
    managers.ovctl("service", "update", "-d", "--no-healthcheck", "api")
    svc = managers.stub().GetService(cpb.GetServiceRequest(service_ref="api")).service
    assert not svc.spec.HasField("health_check") and svc.spec_version == 3
