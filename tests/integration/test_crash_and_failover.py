"""Crash safety and high availability with real manager processes.

- A manager SIGKILLed while services are being created leaves etcd consistent: every service is
  complete (object + name key + allocations) or absent, and after a restart the reconciler
  finishes the rest (tasks for every service, none for a missing one, no address held twice).
- With two managers, stopping the leader (SIGKILL or SIGTERM) lets the other take over within a
  few seconds, with nothing lost or duplicated.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import Counter
from typing import Any

import grpc
import pytest

from proto import control_pb2 as cpb
from proto import objects_pb2 as pb
from tests.integration.conftest import ManagerCluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


def decode_all(m: ManagerCluster) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        "networks": {},
        "services": {},
        "tasks": {},
        "nodes": {},
        "attachments": {},
        "names": {},
    }
    types = {
        "networks": pb.Network,
        "services": pb.Service,
        "tasks": pb.Task,
        "nodes": pb.Node,
        "attachments": pb.Attachment,
    }
    for key, (_, value) in m.dump().items():
        parts = key.decode()[len(m.etcd.prefix) :].split("/")
        if parts[0] == "objects":
            obj = types[parts[1]]()
            obj.ParseFromString(value)
            out[parts[1]][parts[2]] = obj
        elif parts[0] == "names":
            out["names"][f"{parts[1]}/{parts[2]}"] = value.decode()
    return out


def assert_consistent(m: ManagerCluster) -> dict[str, dict[str, Any]]:
    s = decode_all(m)
    services: dict[str, pb.Service] = s["services"]
    tasks: dict[str, pb.Task] = s["tasks"]
    networks: dict[str, pb.Network] = s["networks"]
    # Every name key points at an existing object of that name, and every object has its name.
    for key, obj_id in s["names"].items():
        kind, name = key.split("/", 1)
        obj = s[kind].get(obj_id)
        assert obj is not None, f"name {key} points at missing {obj_id}"
        assert obj.spec.name == name
    for kind in ("services", "networks"):
        for obj_id, obj in s[kind].items():
            assert s["names"].get(f"{kind}/{obj.spec.name}") == obj_id
    # No address handed out twice on any network (VIPs, task IPs, nodes' and containers'
    # attachments alike).
    held: Counter[tuple[str, str]] = Counter()
    for svc in services.values():
        for vip in svc.endpoint.virtual_ips:
            held[(vip.network_id, vip.addr)] += 1
    attached = [a.network for a in s["attachments"].values()]
    attached += [a for n in s["nodes"].values() for a in n.attachments]
    for att in [*attached, *(a for t in tasks.values() for a in t.networks)]:
        for addr in att.addresses:
            held[(att.network_id, addr)] += 1
            net = networks[att.network_id]
            assert ipaddress.ip_interface(addr).ip in ipaddress.ip_network(net.subnet)
    dup = [k for k, n in held.items() if n > 1]
    assert not dup, f"addresses held twice: {dup[:5]}"
    ports = Counter(
        (p.protocol, p.published_port) for svc in services.values() for p in svc.endpoint.ports
    )
    assert all(n == 1 for n in ports.values())
    return s


@pytest.mark.slow
def test_sigkill_while_creating_200_services(managers: ManagerCluster) -> None:
    managers.ovctl("network", "create", "--subnet", "10.60.0.0/20", "bulk")
    stub = managers.stub()
    created: list[str] = []
    errors: list[str] = []

    def create_all() -> None:
        for i in range(200):
            spec = pb.ServiceSpec(
                name=f"s{i}",
                command=["true"],
                networks=[pb.NetworkAttachmentConfig(target="bulk")],
                endpoint=pb.EndpointSpec(ports=[pb.PortConfig(target_port=80)]),
            )
            try:
                stub.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=5)
                created.append(spec.name)
            except grpc.RpcError as e:
                errors.append(e.code().name)
                return

    worker = threading.Thread(target=create_all)
    worker.start()
    wait_for("some services created", lambda: len(created) >= 60)
    managers.procs[0].kill()
    worker.join(30)
    assert errors, "the kill should have interrupted the creation loop"
    n_done = len(created)
    assert n_done < 200

    # Straight after the crash: consistent, and every acknowledged service is there.
    s = assert_consistent(managers)
    services: dict[str, pb.Service] = s["services"]
    names = {svc.spec.name for svc in services.values()}
    assert set(created) <= names
    # At most the one in flight when the kill came is stored without its reply.
    assert len(names) - n_done <= 1

    # Restart: the reconciler finishes the half-done work (each service gets its task).
    managers.procs[0].start()
    managers.wait_leader()
    wait_for(
        "one task per stored service",
        lambda: len(decode_all(managers)["tasks"]) == len(names),
        timeout=30,
    )
    s = assert_consistent(managers)
    tasks: dict[str, pb.Task] = s["tasks"]
    assert Counter(t.service_id for t in tasks.values()) == Counter(
        {sid: 1 for sid in s["services"]}
    )
    # And it keeps working: the rest can be created.
    for i in range(len(names), len(names) + 5):
        managers.ovctl(
            "service", "create", "-d", "--name", f"s{i}", "--network", "bulk", "--", "true"
        )
    assert_consistent(managers)


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_leader_failover(managers: ManagerCluster, how: str) -> None:
    second = managers.add()
    assert second.running
    first_leader = managers.wait_leader()
    assert first_leader == "m0"
    # A follower forwards Control calls to the leader.
    out = managers.ovctl("network", "create", "before", host=managers.addrs[1])
    net_id = out.stdout.strip()
    managers.ovctl(
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "2",
        "--",
        "true",
        host=managers.addrs[1],
    )
    before = assert_consistent(managers)

    t0 = time.monotonic()
    if how == "sigkill":
        managers.procs[0].kill()
    else:
        managers.procs[0].stop()
    wait_for("m1 leading", lambda: managers.wait_leader(addr=managers.addrs[1]) == "m1", timeout=15)
    # The new leader serves reads and writes.
    wait_for(
        "a write through the new leader",
        lambda: (
            managers.ovctl(
                "network", "create", "after", host=managers.addrs[1], check=False
            ).returncode
            == 0
        ),
        timeout=15,
    )
    took = time.monotonic() - t0
    print(f"failover after {how}: new leader serving writes in {took:.2f}s")
    assert took < 10
    after = assert_consistent(managers)
    assert net_id in after["networks"]
    assert set(before["services"]) == set(after["services"])
    # Nothing duplicated: still two tasks for web, the same ones.
    assert set(before["tasks"]) == set(after["tasks"])
    # ovctl with both addresses keeps working while the first is down.
    assert "web" in managers.ovctl("service", "ls").stdout


def test_agents_follow_the_new_leader(managers: ManagerCluster) -> None:
    from tests.integration.agents import AgentPool

    managers.add()
    pool = AgentPool(join_token=managers.worker_token)
    try:
        # Each agent is told only of the first manager; it learns the others from its session.
        hosts = [pool.add([managers.addrs[0]], f"h{i}") for i in range(2)]
        wait_for("registration", lambda: all(h.node_id for h in hosts))
        managers.ovctl(
            "service", "create", "-d", "--name", "web", "--replicas", "2", "--", "sleep", "1d"
        )

        def running_ids() -> set[str]:
            resp = managers.stub(managers.addrs[-1]).ListTasks(
                cpb.ListTasksRequest(service_refs=["web"]), timeout=10
            )
            return {
                t.meta.id
                for t in resp.tasks
                if t.status.state == pb.TASK_STATE_RUNNING
                and t.desired_state == pb.TASK_STATE_RUNNING
            }

        before = wait_for("2 running", lambda: len(running_ids()) == 2 and running_ids())
        managers.procs[0].kill()
        wait_for("m1 leads", lambda: managers.wait_leader(addr=managers.addrs[1]) == "m1")
        # Both agents find the new leader (they learnt its address from their session) and their
        # nodes stay Ready; the same two tasks keep running, none is duplicated or replaced.
        wait_for(
            "agents reconnected",
            lambda: all(h.session.connected.is_set() for h in hosts),
            timeout=15,
        )
        nodes = managers.stub(managers.addrs[1]).ListNodes(cpb.ListNodesRequest(), timeout=10)
        assert all(n.status.state == pb.NODE_STATE_READY for n in nodes.nodes)
        time.sleep(2)  # several heartbeat periods: nothing is marked down or rescheduled
        assert running_ids() == before
        assert all(h.session.connected.is_set() for h in hosts)
    finally:
        pool.close()


def test_manager_rides_out_an_etcd_restart(etcd_fresh, spawn_process) -> None:  # type: ignore[no-untyped-def]
    from tests.support.etcd import EtcdHandle

    cluster = ManagerCluster(EtcdHandle(etcd_fresh, "/ovnet/"), spawn_process)
    try:
        cluster.add()
        cluster.wait_leader()
        cluster.ovctl("network", "create", "keep")
        etcd_fresh.stop()
        # While etcd is away, a write is refused with a message saying why, not INTERNAL.
        res = cluster.ovctl("--timeout", "15", "network", "create", "during", check=False)
        print(f"while etcd is down: {res.stderr.strip()}")
        assert res.returncode != 0
        assert "INTERNAL" not in res.stderr and (
            "etcd" in res.stderr or "leader" in res.stderr or "UNAVAILABLE" in res.stderr
        ), res.stderr
        etcd_fresh.start()
        wait_for(
            "writes accepted again",
            lambda: cluster.ovctl("network", "create", "after", check=False).returncode == 0,
            timeout=30,
        )
        names = sorted(n["spec"]["name"] for n in cluster.ovctl_json("network", "ls"))
        # "ingress" is the default routing-mesh network the leader makes.
        assert names == ["after", "ingress", "keep"]
    finally:
        cluster.close()
