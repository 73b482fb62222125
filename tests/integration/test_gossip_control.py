"""The manager's side of gossip, with real managers on a real etcd.

Agents here are bare Dispatcher clients (no agent code): they join with the worker token (a
worker certificate), register with a gossip port, hold a session, and heartbeat with a gossip
report, which is all the manager sees of an agent.

- Every session carries one GossipConfig: a 32-byte key (the one stored in etcd) and the other
  gossiping nodes as seeds; a node that joins later shows up in the others' seeds.
- The key survives a manager restart and a change of leader.
- The heartbeat's gossip report is served by GetNode and shown by `ovctl node inspect`.
- The dev cluster can stop and start its manager (etcd and the agents keep running).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from ovctl.devcluster.cluster import DevCluster
from ovctl.devcluster.plan import (
    DevClusterError,
    manager_argv,
    manager_files,
    manager_init_argv,
    parse_init_output,
)
from ovctl.devcluster.procs import free_ports
from proto import control_pb2 as cpb
from proto import control_pb2_grpc
from proto import objects_pb2 as pb
from security.credentials import MANAGER_CHANNEL_OPTIONS
from tests.integration.bare_agent import GOSSIP_PORT, BareAgent
from tests.integration.conftest import ManagerCluster
from tests.support.etcd import EtcdHandle
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


def stored_key(m: ManagerCluster) -> bytes:
    ring = pb.Keyring()
    ring.ParseFromString(m.dump()[m.etcd.key("keys/gossip")][1])
    assert len(ring.keys) == 1
    return bytes(ring.keys[0].key)


def seeded(agents: list[BareAgent], me: BareAgent) -> Callable[[], bool]:
    """Whether `me` has every other agent, and only those, as its seeds."""
    return lambda: me.seeds() == {(a.node_id, a.addr) for a in agents if a is not me}


def test_sessions_carry_the_stored_key_and_the_other_nodes_as_seeds(
    managers: ManagerCluster, bare_agents: list[BareAgent]
) -> None:
    for i in (1, 2, 3):
        bare_agents.append(
            BareAgent(managers.addrs, managers.join(), f"g{i}", f"198.51.100.{10 + i}")
        )
    for a in bare_agents:
        wait_for(f"{a.ip}'s seeds", seeded(bare_agents, a))
    key = stored_key(managers)
    assert len(key) == 32
    assert {a.key() for a in bare_agents} == {key}
    assert all(list(a.gossip.keys) == [key] for a in bare_agents if a.gossip)
    # A latecomer: everyone's seeds grow by it, and it gets the others.
    bare_agents.append(BareAgent(managers.addrs, managers.join(), "g4", "198.51.100.14"))
    for a in bare_agents:
        wait_for(f"{a.ip}'s seeds", seeded(bare_agents, a))
    # Once settled, heartbeats and unrelated commits resend nothing.
    received = [a.configs_received for a in bare_agents]
    managers.ovctl("network", "create", "idle")
    time.sleep(1.0)
    assert [a.configs_received for a in bare_agents] == received


def test_the_key_survives_restarts_and_leader_changes(
    managers: ManagerCluster, bare_agents: list[BareAgent]
) -> None:
    bare_agents.append(BareAgent(managers.addrs, managers.join(), "g1", "198.51.100.21"))
    wait_for("a gossip config", lambda: bare_agents[0].gossip is not None)
    key = bare_agents[0].key()
    assert stored_key(managers) == key
    # SIGKILL and restart: the new leader reads the same key.
    m0 = managers.procs[0]
    m0.kill()
    bare_agents[0].gossip = None
    m0.start()
    wait_for("a gossip config after restart", lambda: bare_agents[0].gossip is not None)
    assert bare_agents[0].key() == key
    # A second manager takes over from the first: still the same key.
    managers.add()
    managers.wait_leader(addr=managers.addrs[1])
    bare_agents[0].gossip = None
    m0.stop()
    wait_for(
        "m1 leading",
        lambda: managers.wait_leader(addr=managers.addrs[1]) == "m1",
    )
    wait_for("a gossip config from m1", lambda: bare_agents[0].gossip is not None)
    assert bare_agents[0].key() == key and stored_key(managers) == key


def test_get_node_and_node_inspect_show_the_gossip_report(
    managers: ManagerCluster, bare_agents: list[BareAgent]
) -> None:
    g1 = BareAgent(managers.addrs, managers.join(), "g1", "198.51.100.31")
    g2 = BareAgent(managers.addrs, managers.join(), "g2", "198.51.100.32")
    bare_agents += [g1, g2]
    net_id = managers.ovctl("network", "create", "front").stdout.strip()
    now = int(time.time() * 1000)
    g1.report = pb.GossipStatus(
        updated_ms=now,
        last_sync_ms=now - 120_000,  # "2 minutes ago" however slow the machine
        members=[
            pb.GossipMember(node_id=g1.node_id, addr=g1.addr, state="alive", incarnation=1),
            pb.GossipMember(node_id=g2.node_id, addr=g2.addr, state="suspect", incarnation=4),
        ],
        networks=[pb.GossipNetworkView(network_id=net_id, entries=7, peers=[g2.node_id])],
        dropped={"auth": 5},
        packets_in=40,
        packets_out=41,
        bytes_in=4096,
        bytes_out=5000,
    )
    stub = managers.stub()
    resp = wait_for(
        "g1's gossip report at the manager",
        lambda: (r := stub.GetNode(cpb.GetNodeRequest(node_ref="g1"))).gossip.updated_ms and r,
    )
    assert resp.gossip == g1.report
    assert not stub.GetNode(cpb.GetNodeRequest(node_ref="g2")).HasField("gossip")
    (doc,) = managers.ovctl_json("node", "inspect", "g1")
    assert doc["description"]["gossip_port"] == GOSSIP_PORT
    assert [m["state"] for m in doc["gossip"]["members"]] == ["alive", "suspect"]
    assert doc["gossip"]["networks"][0] == {
        "network_id": net_id,
        "entries": 7,
        "peers": [g2.node_id],
    }
    text = managers.ovctl("node", "inspect", "--pretty", "g1").stdout
    assert "Hostname:         g1" in text
    assert "Last sync:  2 minutes ago" in text
    assert "Dropped:    auth=5" in text and "4.0 KiB" in text
    member = next(line.split() for line in text.splitlines() if g2.addr in line)
    assert member == ["g2", f"({g2.node_id[:12]})", g2.addr, "suspect", "4"]
    network = next(line.split(maxsplit=2) for line in text.splitlines() if "front" in line)
    assert network == ["front", "7", f"g2 ({g2.node_id[:12]})"]


def test_dev_cluster_stops_and_starts_its_manager(etcd: EtcdHandle, tmp_path: Path) -> None:
    """Only the manager part of a dev cluster (no namespaces): its manager is initialized and
    started on loopback under this test's etcd prefix and recorded as `up` would record it."""
    state_dir = tmp_path / "dev"
    state_dir.mkdir(mode=0o700)
    extra = ["--prefix", etcd.prefix.rstrip("/")]
    cluster = DevCluster(
        name_prefix="ovgc-",
        hosts=1,
        state_dir=state_dir,
        manager_args=extra,
        die_with_parent=True,
    )
    port, join_port = free_ports(2)
    addr, join = f"127.0.0.1:{port}", f"127.0.0.1:{join_port}"
    cluster._state.update(manager_addr=addr, join_addr=join)
    cluster._state["etcd"]["client_port"] = etcd.port
    cluster._init_cluster(addr)
    assert set(cluster._state["tokens"]) == {"worker", "manager"}
    assert (state_dir / "ca.kek").stat().st_mode & 0o777 == 0o600
    argv = manager_argv(
        sys.executable,
        addr,
        etcd.endpoint,
        500,
        "ovgc-manager",
        extra,
        files=cluster.files,
        join_listen=join,
    )
    cluster._spawn_manager(argv)
    admin = cluster.credentials()
    try:
        cluster.wait_manager()
        first_pid = cluster.pid("manager")
        # As `ovctl dev stop manager` / `start manager` do it: from the state file.
        other = DevCluster.load(state_dir, die_with_parent=True)
        other.stop_manager()
        assert cluster.pid("manager") is None and other.pid("manager") is None
        with (
            grpc.secure_channel(
                addr, admin.channel_credentials(), options=MANAGER_CHANNEL_OPTIONS
            ) as ch,
            pytest.raises(grpc.RpcError),
        ):
            control_pb2_grpc.ControlStub(ch).ListNodes(cpb.ListNodesRequest(), timeout=1)
        other.start_manager()
        assert other.pid("manager") not in (None, first_pid)
        # The restarted manager keeps its certificate and the cluster; ovctl reaches it with
        # the admin credentials init wrote.
        res = other.ovctl("cluster", "info", "--format", "json")
        assert res.returncode == 0, res.stderr
        assert '"leader_id": "ovgc-manager"' in res.stdout
        with pytest.raises(DevClusterError, match="already runs"):
            other.start_manager()
    finally:
        DevCluster.load(state_dir).stop_manager()


def test_init_command_lines_share_the_manager_files(tmp_path: Path) -> None:
    files = manager_files(tmp_path)
    init = manager_init_argv("/py", "127.0.0.1:1", "127.0.0.1:2", "ovgc-manager", files)
    serve = manager_argv(
        "/py", "127.0.0.1:1", "127.0.0.1:2", 500, "ovgc-manager", files=files, join_listen="x:3"
    )
    assert init[3] == "init" and "--admin-dir" in init and "--join-listen" not in init
    for flag in ("--state-dir", "--ca-key-file", "--prefix", "--listen"):
        assert init[init.index(flag) + 1] == serve[serve.index(flag) + 1]
    assert parse_init_output("worker token: A\nmanager token: B\n") == {
        "worker": "A",
        "manager": "B",
    }
