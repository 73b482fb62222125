"""The standard gRPC health check and server reflection on real managers (manager/health.py).

- The leader says SERVING for the server and each ovnet service; a follower SERVING for the
  server and Control (it forwards them) but NOT_SERVING for the Dispatcher (it sends agents to
  the leader); the join listener answers the same without a client certificate.
- A manager whose etcd is gone says NOT_SERVING within a few seconds, to Check and to a Watch
  stream already open, and SERVING again once etcd is back.
- Reflection on the control listener lists ovnet's services and hands out their descriptors;
  the join listener does not serve it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from ovctl.devcluster.etcd import EtcdServer
from security.credentials import MANAGER_CHANNEL_OPTIONS
from tests.integration.conftest import ManagerCluster
from tests.support.etcd import EtcdHandle
from tests.support.procs import ProcessSpawner
from tests.support.wait import wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CONTROL, DISPATCHER, NODE_CA = "ovnet.v1.Control", "ovnet.v1.Dispatcher", "ovnet.v1.NodeCA"


def check(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(resp.status)


def statuses(channel: grpc.Channel) -> dict[str, str]:
    name = health_pb2.HealthCheckResponse.ServingStatus.Name
    return {s: name(check(channel, s)) for s in ("", CONTROL, DISPATCHER, NODE_CA)}


def join_channel(managers: ManagerCluster, i: int = 0) -> grpc.Channel:
    """A channel to manager `i`'s join listener with no client certificate (a balancer's view)."""
    root = (managers.admin_dir / "ca.pem").read_bytes()
    return grpc.secure_channel(
        managers.join_addrs[i], grpc.ssl_channel_credentials(root), options=MANAGER_CHANNEL_OPTIONS
    )


def test_leader_and_follower_health(managers: ManagerCluster) -> None:
    leader = {"": "SERVING", CONTROL: "SERVING", DISPATCHER: "SERVING", NODE_CA: "SERVING"}
    assert wait_for("the leader's health", lambda: statuses(managers.channel()) == leader)
    with pytest.raises(grpc.RpcError) as err:
        check(managers.channel(), "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # Without a client certificate, on the join listener: the same answer.
    with join_channel(managers) as anonymous:
        assert statuses(anonymous) == leader

    managers.add()
    managers.wait_leader(addr=managers.addrs[1])
    follower = {**leader, DISPATCHER: "NOT_SERVING"}
    wait_for(
        "the follower's health",
        lambda: statuses(managers.channel(managers.addrs[1])) == follower,
    )


class Watcher:
    """A Health.Watch stream read on a thread, every status kept in `seen`."""

    def __init__(self, channel: grpc.Channel, service: str = "") -> None:
        stub = health_pb2_grpc.HealthStub(channel)
        self.call = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=120)
        self.seen: list[int] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for resp in self.call:
                self.seen.append(int(resp.status))
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(timeout=5)


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    opened: list[Watcher] = []
    try:
        yield opened
    finally:
        for w in opened:
            w.close()


def test_not_serving_while_etcd_is_gone(
    etcd_fresh: EtcdServer, spawn_process: ProcessSpawner, watchers: list[Watcher]
) -> None:
    cluster = ManagerCluster(EtcdHandle(etcd_fresh, "/ovnet/"), spawn_process)
    try:
        cluster.add()
        cluster.wait_leader()
        channel = cluster.channel()
        wait_for("SERVING", lambda: check(channel) == SERVING)
        watcher = Watcher(channel)
        watchers.append(watcher)
        wait_for("the watch's first status", lambda: watcher.seen == [SERVING])

        etcd_fresh.kill()
        wait_for("NOT_SERVING without etcd", lambda: check(channel) == NOT_SERVING, timeout=5)
        assert check(channel, CONTROL) == NOT_SERVING
        wait_for("the watch to see it", lambda: watcher.seen[-1:] == [NOT_SERVING], timeout=5)

        etcd_fresh.start()
        wait_for("SERVING with etcd back", lambda: check(channel) == SERVING, timeout=30)
        wait_for("the watch to see that too", lambda: watcher.seen[-1:] == [SERVING])
        assert watcher.seen[:2] == [SERVING, NOT_SERVING]
    finally:
        cluster.close()


def test_reflection_lists_and_describes_control(managers: ManagerCluster) -> None:
    db = ProtoReflectionDescriptorDatabase(managers.channel())
    services = set(db.get_services())
    assert {CONTROL, DISPATCHER, NODE_CA, "grpc.health.v1.Health"} <= services
    assert db.FindFileContainingSymbol(CONTROL).name == "proto/control.proto"
    # The descriptor is complete: a pool resolves the service and its messages through it.
    pool = descriptor_pool.DescriptorPool(db)
    method = pool.FindServiceByName(CONTROL).methods_by_name["CreateNetwork"]
    assert method.input_type.full_name == "ovnet.v1.CreateNetworkRequest"
    assert "spec" in method.input_type.fields_by_name

    # Not on the join listener: a caller without a certificate gets health only.
    with join_channel(managers) as anonymous:
        with pytest.raises(grpc.RpcError) as err:
            list(ProtoReflectionDescriptorDatabase(anonymous).get_services())
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
