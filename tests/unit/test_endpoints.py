"""Endpoint records (what hosts gossip), the remote endpoints derived from them, restarts done
by the agent while no manager is reachable, and the assignment set kept on disk."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agent import discovery
from agent.controller import Local, Sandbox, decide
from agent.discovery import Discovery, peer_addrs, tuning_from_options
from agent.endpoints import BadRecord, EndpointRecord, local_records, remotes
from agent.gossip import GossipNode, GossipTuning, Keyring
from agent.session import Assignments
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

RUN = pb.TASK_STATE_RUNNING


def task(tid: str, addr: str = "10.0.1.5/24", net: str = "n1", slot: int = 1) -> pb.Task:
    return pb.Task(
        meta=pb.Meta(id=tid),
        service_id="s1",
        service_name="web",
        slot=slot,
        node_id="node1",
        desired_state=RUN,
        status=pb.TaskStatus(state=RUN),
        networks=[pb.NetworkAttachment(network_id=net, addresses=[addr], aliases=["www"])],
    )


def record(task_id: str, addr: str, vtep: str, net: str = "n1") -> EndpointRecord:
    return EndpointRecord(
        network_id=net,
        addr=addr,
        mac="02:42:0a:00:01:05",
        vtep=vtep,
        node_id="x",
        task_id=task_id,
        task_name=f"web.1.{task_id}",
        service_id="s1",
        service_name="web",
        slot=1,
    )


def test_local_records_carry_what_dns_and_lb_need() -> None:
    svc = pb.Service(
        meta=pb.Meta(id="s1"),
        endpoint=pb.Endpoint(virtual_ips=[pb.VirtualIP(network_id="n1", addr="10.0.1.2/24")]),
    )
    recs = local_records([task("t1")], {"s1": svc}, "node1", "198.51.100.11")
    rec = recs[("n1", "t1")]
    assert (rec.addr, rec.mac, rec.vtep, rec.vip) == (
        "10.0.1.5/24",
        "02:42:0a:00:01:05",
        "198.51.100.11",
        "10.0.1.2",
    )
    assert (rec.task_name, rec.service_name, rec.aliases, rec.enabled) == (
        "web.1.t1",
        "web",
        ("www",),
        True,
    )
    assert EndpointRecord.decode(rec.encode()) == rec


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"[]",
        b'{"addr":"10.0.0.1/24"}',
        record("t", "nope", "198.51.100.1").encode(),
    ],
)
def test_bad_records_are_refused(data: bytes) -> None:
    with pytest.raises(BadRecord):
        EndpointRecord.decode(data)


def test_remotes_skip_own_vtep_and_pick_one_owner_per_address() -> None:
    recs = [
        record("a", "10.0.1.5/24", "198.51.100.12"),
        # The same address claimed by a rescheduled task on another host: one winner, the same
        # on every host (greatest task ID).
        record("b", "10.0.1.5/24", "198.51.100.13"),
        record("c", "10.0.1.6/24", "198.51.100.11"),  # ours
        record("d", "10.0.2.6/24", "198.51.100.12", net="n2"),  # a network we are not on
    ]
    out = remotes(recs, ["n1"], "198.51.100.11")
    assert set(out) == {"n1"}
    assert [(str(r.address), str(r.vtep)) for r in out["n1"]] == [("10.0.1.5", "198.51.100.13")]


def policy(condition: int, max_attempts: int = 0, delay_ms: int = 0) -> pb.RestartPolicy:
    return pb.RestartPolicy(
        condition=condition,  # type: ignore[arg-type]
        max_attempts=max_attempts,
        delay_ms=delay_ms,
    )


def test_without_a_manager_an_exited_task_restarts_in_place_after_the_delay() -> None:
    lo = Local(exited=True, exit_code=137, exited_ms=1000, reported=RUN, sandbox=Sandbox.READY)
    pols = {"s1": policy(pb.RESTART_CONDITION_ON_FAILURE, delay_ms=500)}
    d = decide({"t1": task("t1")}, {"t1": lo}, 1200, autonomous=True, policies=pols)
    # Waiting for the delay: the sandbox (and address) stays, nothing is reported.
    assert d.restart == [] and d.sandboxes == {"t1"} and d.reports == {}
    d = decide({"t1": task("t1")}, {"t1": lo}, 1500, autonomous=True, policies=pols)
    assert d.restart == ["t1"] and d.reports == {}
    # With a manager the exit is reported and the orchestrator replaces the task.
    d = decide({"t1": task("t1")}, {"t1": lo}, 1500, autonomous=False, policies=pols)
    assert d.restart == [] and d.reports["t1"].state == pb.TASK_STATE_FAILED


def test_without_a_manager_a_task_lost_with_its_host_restarts_once_its_sandbox_is_back() -> None:
    # The host died: the process is gone and no exit was recorded.
    lo = Local(reported=RUN)
    pols = {"s1": policy(pb.RESTART_CONDITION_ON_FAILURE)}
    d = decide({"t1": task("t1")}, {"t1": lo}, 5, autonomous=True, policies=pols)
    assert d.restart == [] and d.sandboxes == {"t1"} and d.reports == {}
    lo.sandbox = Sandbox.READY
    d = decide({"t1": task("t1")}, {"t1": lo}, 5, autonomous=True, policies=pols)
    assert d.restart == ["t1"]
    # With a manager it is reported lost (and replaced by the orchestrator).
    d = decide({"t1": task("t1")}, {"t1": lo}, 5, policies=pols)
    assert d.reports["t1"].state == pb.TASK_STATE_FAILED


@pytest.mark.parametrize(
    ("condition", "code", "restarts", "max_attempts", "expected"),
    [
        (pb.RESTART_CONDITION_ANY, 0, 0, 0, True),
        (pb.RESTART_CONDITION_ON_FAILURE, 0, 0, 0, False),
        (pb.RESTART_CONDITION_NONE, 1, 0, 0, False),
        (pb.RESTART_CONDITION_ON_FAILURE, 1, 2, 2, False),
        (pb.RESTART_CONDITION_ON_FAILURE, 1, 1, 2, True),
    ],
)
def test_local_restart_follows_the_policy(
    condition: int, code: int, restarts: int, max_attempts: int, expected: bool
) -> None:
    lo = Local(
        exited=True, exit_code=code, local_restarts=restarts, reported=RUN, sandbox=Sandbox.READY
    )
    pols = {"s1": policy(condition, max_attempts)}
    d = decide({"t1": task("t1")}, {"t1": lo}, 10, autonomous=True, policies=pols)
    assert (d.restart == ["t1"]) is expected
    assert ("t1" in d.reports) is not expected


def test_assignment_snapshot_round_trips() -> None:
    a = Assignments()
    a.apply(
        dpb.AssignmentsMessage(
            type=dpb.ASSIGNMENTS_TYPE_COMPLETE,
            results_in=7,
            changes=[
                dpb.Assignment(task=task("t1")),
                dpb.Assignment(network=pb.Network(meta=pb.Meta(id="n1"))),
                dpb.Assignment(service=pb.Service(meta=pb.Meta(id="s1"))),
                dpb.Assignment(
                    gossip=dpb.GossipConfig(meta=pb.Meta(id="gossip"), keys=[b"k" * 32])
                ),
            ],
        )
    )
    b = Assignments()
    b.apply(dpb.AssignmentsMessage.FromString(a.snapshot().SerializeToString()))
    assert (b.tasks, b.networks, b.services, b.gossip, b.seq) == (
        a.tasks,
        a.networks,
        a.services,
        a.gossip,
        7,
    )


def test_gossip_status_file_is_rewritten_only_when_it_changed(tmp_path: Path) -> None:
    d = Discovery("198.51.100.1", 7946, tmp_path)
    node = GossipNode(
        "n1", ("198.51.100.1", 7946), Keyring([bytes(32)]), d.config, random.Random(1), 0.0
    )
    d.node = node
    d.save()
    path = tmp_path / discovery.STATUS_FILE
    first = path.stat().st_ino
    assert json.loads(path.read_text())["members"][0]["node_id"] == "n1"
    d.save()  # nothing changed but the time: not written again
    assert path.stat().st_ino == first
    node.join_network(0.0, "net")  # changed: written at once
    d.save()
    second = path.stat().st_ino
    assert second != first and json.loads(path.read_text())["networks"][0]["network_id"] == "net"
    saved = d._saved_status
    assert saved is not None
    d._saved_status = (saved[0], saved[1] - discovery.STATUS_REFRESH)  # an old write
    d.save()  # unchanged, but its updated_ms is refreshed now and then
    assert path.stat().st_ino != second


def test_gossip_options_and_addresses() -> None:
    cfg = tuning_from_options({"probe_interval": "0.8", "gossip_nodes": "4"})
    assert cfg.probe_interval == 0.8 and cfg.gossip_nodes == 4
    assert cfg.gossip_interval == GossipTuning().gossip_interval
    with pytest.raises(ValueError, match="unknown gossip option 'nope'"):
        tuning_from_options({"nope": "1"})
    with pytest.raises(ValueError, match="gossip_nodes"):
        tuning_from_options({"gossip_nodes": "many"})
    assert tuning_from_options({"eager_push": "false"}).eager_push is False
    with pytest.raises(ValueError, match="not a boolean"):
        tuning_from_options({"eager_push": "maybe"})
    with pytest.raises(ValueError, match="probe_timeout must be shorter"):
        tuning_from_options({"probe_interval": "0.5"})
    assert peer_addrs(["198.51.100.1:7946", "[2001:db8::1]:7946"], "seed") == [
        ("198.51.100.1", 7946),
        ("2001:db8::1", 7946),
    ]
    assert peer_addrs(["nonsense", "h:x", "198.51.100.2:7947"], "seed") == [("198.51.100.2", 7947)]


def test_session_is_unreachable_only_once_every_manager_failed_to_answer() -> None:
    from agent.session import AgentSession
    from security import pki
    from security.credentials import NodeCredentials

    now = pki.utcnow()
    root, root_key = pki.new_root("cluster", now)
    key = pki.new_key()
    cert = pki.issue(root, root_key, pki.make_csr(key), node_id="n1", role="worker", now=now)
    creds = NodeCredentials(pki.cert_pem(root), pki.cert_pem(cert), pki.key_pem(key))
    s = AgentSession(
        ["198.51.100.1:4242", "198.51.100.2:4242"], pb.NodeDescription(), credentials=creds
    )
    assert not s.unreachable
    s.failed_attempts = 1
    assert not s.unreachable  # one manager left to try
    s.failed_attempts = 2
    assert s.unreachable
    s.connected.set()
    assert not s.unreachable
