"""F12 end to end: `ovctl doctor` finds drift made by hand, `--repair` fixes it.

A real etcd, manager and three agents (E2ECluster). A global service on a network publishes a
port through the routing mesh, so every host holds FDB entries for the other hosts' tasks and
a chain of the published port in its load-balancing table. On one host a test deletes one FDB
entry of the network's VXLAN device and the one rule of that chain, by hand; `ovctl doctor`
must exit 1 and show both, `ovctl doctor --repair` must show them repaired, the kernel must hold
them again, and a second `ovctl doctor` must exit 0.

The agents run with `--reconcile-interval 3600`: the periodic pass would repair the FDB entry
within seconds by itself, before doctor looks (passes still run on every event, which is why
the service has no health check and the test waits for the cluster to be quiet first).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.lb.plan import port_name
from tests.e2e.overlay import Overlay, run, wait_for
from tests.support.cluster import E2ECluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

HERE = Path(__file__).parent
WHOAMI = [sys.executable, str(HERE.parent.parent / "scripts/whoami.py"), "8080"]
PORT = 18091
HOST = "h1"


@pytest.fixture(scope="module")
def ov() -> Iterator[Overlay]:
    dev = E2ECluster(
        name_prefix=f"ovdr{os.getpid() % 100000}-",
        hosts=3,
        # Shared with test_mesh/test_gossip/test_devcluster: modules run one after another.
        subnet="198.51.100.192/27",
        manager_args=["--heartbeat-period", "0.5", "--heartbeat-grace", "3"],
        die_with_parent=True,
    )
    dev.agent_args = ["--reconcile-interval", "3600", "--stop-timeout", "2"]
    try:
        dev.up()
        ov = Overlay(dev)
        ov.ovctl("network", "create", "--subnet", "10.83.0.0/24", "docnet")
        yield ov
    finally:
        dev.down()


def doctor(ov: Overlay, *args: str) -> tuple[int, dict[str, Any]]:
    r = ov.ovctl("doctor", "--format", "json", *args, check=False)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def host_exec(ov: Overlay, argv: list[str]) -> str:
    r = ov.dev.exec(HOST, argv, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, f"{argv}: {r.stderr}"
    return str(r.stdout)


def port_rules(ov: Overlay, table: str) -> list[dict[str, Any]]:
    """The rules of the published port's chain in HOST's load-balancing table."""
    out = host_exec(ov, ["nft", "-j", "-a", "list", "chain", "ip", table, port_name("tcp", PORT)])
    return [i["rule"] for i in json.loads(out)["nftables"] if "rule" in i]


def test_doctor_finds_and_repairs_hand_made_drift(ov: Overlay) -> None:
    ov.ovctl(
        "service", "create", "-d", "--name", "docweb", "--mode", "global",
        "--network", "docnet", "--publish", f"{PORT}:8080", "--", *WHOAMI,
    )  # fmt: skip
    tasks = ov.running("docweb", 3)
    net_id = ov.network_id("docnet")
    names = ov.names(HOST)
    fdb, _, _ = ov.expected_state(HOST, net_id, tasks)
    wait_for(f"{HOST}'s FDB on docnet", lambda: fdb <= ov.host_state(HOST, net_id)["fdb"] or None)
    wait_for(f"{HOST}'s published port chain", lambda: len(port_rules(ov, names.lb_table)) == 1)
    # Quiet: nothing drifted before the test's hand touches the kernel.
    wait_for("no drift to start with", lambda: doctor(ov)[0] == 0 or None)

    ns = names.network_ns(net_id)
    mac, dst = sorted(m for m in fdb if m[0] != "00:00:00:00:00:00")[0]
    run(["bridge", "-n", ns, "fdb", "del", mac, "dev", names.vxlan, "dst", dst])
    assert (mac, dst) not in ov.host_state(HOST, net_id)["fdb"]
    chain = port_name("tcp", PORT)
    (rule,) = port_rules(ov, names.lb_table)
    host_exec(
        ov, ["nft", "delete", "rule", "ip", names.lb_table, chain, "handle", str(rule["handle"])]
    )
    assert port_rules(ov, names.lb_table) == []

    code, resp = doctor(ov)
    assert code == 1, resp
    rows = [r for r in resp["rows"] if r["host"] == HOST]
    fdb_rows = [r for r in rows if r["kind"] == "fdb" and mac in r["object"] and dst in r["object"]]
    nft_rows = [r for r in rows if r["kind"] == "nft" and f"chain {chain}" in r["object"]]
    assert len(fdb_rows) == 1 and fdb_rows[0]["found"] == "missing", resp
    assert fdb_rows[0]["network"] == "docnet"
    assert len(nft_rows) == 1 and nft_rows[0]["found"] == "0 rules", resp
    assert len(resp["rows"]) == 2, resp  # nothing else drifted, on no host
    assert all(h["answered"] for h in resp["hosts"]) and len(resp["hosts"]) == 3
    table = ov.ovctl("doctor", check=False)
    print(table.stdout)  # shown with -rP
    assert table.returncode == 1 and "HOST" in table.stdout and mac in table.stdout

    repair = ov.ovctl("doctor", "--repair", check=False)
    print(repair.stdout)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    code, resp = doctor(ov)
    assert code == 0 and resp["rows"] == [], resp
    # Drift again, for the JSON of a repair.
    run(["bridge", "-n", ns, "fdb", "del", mac, "dev", names.vxlan, "dst", dst])
    code, resp = doctor(ov, "--repair")
    assert code == 0, resp
    assert len(resp["rows"]) == 1 and resp["rows"][0]["repaired"], resp
    assert (mac, dst) in ov.host_state(HOST, net_id)["fdb"]
    assert len(port_rules(ov, names.lb_table)) == 1

    code, resp = doctor(ov)
    assert code == 0 and resp["rows"] == [], resp


def test_doctor_unknown_network(ov: Overlay) -> None:
    r = ov.ovctl("doctor", "nosuchnet", check=False)
    assert r.returncode == 1 and "nosuchnet" in r.stderr
