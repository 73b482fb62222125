"""`ovctl doctor` through a real manager: the Doctor call asks every agent over its session
and gathers the ReportDoctor answers; the agents are the real session and daemon with fakes
for the kernel (tests/support/agent_fakes.py), whose drift a test sets."""

from __future__ import annotations

import json

import grpc
import pytest

from agent.dataplane import ops
from agent.lb.drift import LbDrift
from agent.lb.plan import LbSpec
from proto import control_pb2 as cpb
from tests.integration.agents import AgentPool, ScriptedAgent, run_sync
from tests.integration.conftest import ManagerCluster
from tests.support.wait import wait_for

FDB = ops.AddFdb(ns="it-n", mac="02:42:0a:00:00:05", dst="198.51.100.3", network_id="")


def _drift(agent: ScriptedAgent, managers: ManagerCluster) -> None:
    """One FDB entry missing on the network `app`, and a balancer chain lost a rule."""
    net_id = managers.ovctl_json("network", "inspect", "app")[0]["meta"]["id"]

    async def set_drift() -> None:
        dp = agent.fakes.dataplane
        dp.heal = False
        dp.drifted = [ops.AddFdb(ns="it-n", mac=FDB.mac, dst=FDB.dst, network_id=net_id)]
        agent.fakes.lb.specs["host"] = LbSpec()
        agent.fakes.lb.drifted["host"] = [
            LbDrift("table ip ovnet-lb in host chain p", "1 rules", "0 rules")
        ]

    run_sync(agent.loop, set_drift())


def _passed(agent: ScriptedAgent) -> bool:
    return agent.daemon.passed.is_set() and agent.daemon.last_desired is not None


def test_doctor_over_grpc_and_ovctl(managers: ManagerCluster, agents: AgentPool) -> None:
    hosts = [agents.add(managers.addrs, f"doc{i}") for i in range(2)]
    wait_for("both agents passed once", lambda: all(_passed(h) for h in hosts))
    managers.ovctl("network", "create", "app")
    wait_for("both Ready", lambda: managers.ovctl("node", "ls").stdout.count("Ready") == 2)
    stub = managers.stub()
    resp = stub.Doctor(cpb.DoctorRequest(), timeout=20)
    assert list(resp.rows) == []
    assert sorted((h.hostname, h.answered) for h in resp.hosts) == [("doc0", True), ("doc1", True)]
    assert managers.ovctl("doctor").returncode == 0

    _drift(hosts[0], managers)
    resp = stub.Doctor(cpb.DoctorRequest(), timeout=20)
    rows = sorted((r.host, r.network, r.kind, r.found) for r in resp.rows)
    assert rows == [("doc0", "", "nft", "0 rules"), ("doc0", "app", "fdb", "missing")]
    # Only the network asked for: the host's tables are left out.
    resp = stub.Doctor(cpb.DoctorRequest(network_refs=["app"]), timeout=20)
    assert [(r.host, r.kind) for r in resp.rows] == [("doc0", "fdb")]
    res = managers.ovctl("doctor", check=False)
    assert res.returncode == 1, res.stderr
    assert "doc0" in res.stdout and FDB.mac in res.stdout and "chain p" in res.stdout

    # A repair that cannot fix the FDB entry (the fake kernel keeps it drifted) fixes the
    # balancer table and exits 1; once the kernel heals (by the repair's pass, or a periodic
    # one before it), a repair exits 0 and nothing is left.
    res = managers.ovctl("doctor", "--repair", "--format", "json", check=False)
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert sorted((r["kind"], r["repaired"]) for r in out["rows"]) == [
        ("fdb", False),
        ("nft", True),
    ]
    hosts[0].fakes.dataplane.heal = True
    res = managers.ovctl("doctor", "--repair", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 drifted" in res.stdout
    assert managers.ovctl("doctor").returncode == 0


def test_unknown_network_and_a_stopped_agent(managers: ManagerCluster, agents: AgentPool) -> None:
    hosts = [agents.add(managers.addrs, f"doc{i}") for i in range(2)]
    wait_for("both agents passed once", lambda: all(_passed(h) for h in hosts))
    stub = managers.stub()
    with pytest.raises(grpc.RpcError) as e:
        stub.Doctor(cpb.DoctorRequest(network_refs=["nosuch"]), timeout=20)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "nosuch" in (e.value.details() or "")
    res = managers.ovctl("doctor", "nosuch", check=False)
    assert res.returncode == 1 and "nosuch" in res.stderr

    hosts[1].stop()
    # Whether its session is gone yet or not, it does not answer: listed, never skipped.
    resp = stub.Doctor(cpb.DoctorRequest(timeout_ms=1500), timeout=20)
    answered = {h.hostname: (h.answered, h.error) for h in resp.hosts}
    assert answered["doc0"] == (True, "")
    assert answered["doc1"][0] is False and answered["doc1"][1]
    res = managers.ovctl("doctor", "--timeout", "3", check=False)
    assert res.returncode == 1
    assert "doc1: did not answer" in res.stdout
