"""F3 end to end: five hosts learn each other's endpoints through gossip, not from a manager.

With every manager stopped the overlay keeps working, a task its agent restarts is announced
again, a restarted agent relearns everything from its peers, a killed host's endpoints vanish
from every other host and come back with it. Nothing in these tests can come from a manager:
it is stopped before anything is checked.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.model import endpoint_mac
from ovctl.devcluster.shell import pids_in_netns
from tests.e2e.overlay import Overlay, TaskView, run, wait_for
from tests.support.cluster import E2ECluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

HOSTS = ["h1", "h2", "h3", "h4", "h5"]
HTTP = [sys.executable, "-m", "http.server", "8080"]
ZERO_MAC = "00:00:00:00:00:00"


@pytest.fixture(scope="module")
def ov() -> Iterator[Overlay]:
    dev = E2ECluster(
        name_prefix=f"ovg{os.getpid() % 100000}-",
        hosts=len(HOSTS),
        subnet="198.51.100.192/27",  # shared with test_devcluster (never at once)
        # A long grace: the manager must not be what removes a dead host's endpoints.
        manager_args=["--heartbeat-period", "0.5", "--heartbeat-grace", "30"],
        agent_args=["--reconcile-interval", "1", "--stop-timeout", "2"],
        die_with_parent=True,
    )
    try:
        dev.up()
        yield Overlay(dev)
    finally:
        dev.down()


def expected_fdb(
    ov: Overlay, host: str, net_id: str, tasks: list[TaskView]
) -> set[tuple[str, str]]:
    """The FDB a host must hold for the other hosts' tasks, from the dev cluster's own plan
    (no manager is asked)."""
    out: set[tuple[str, str]] = set()
    for t in tasks:
        if t.host != host:
            vtep = ov.dev.host_addr(t.host)
            out |= {(endpoint_mac(t.ips[net_id]), vtep), (ZERO_MAC, vtep)}
    return out


def fdb(ov: Overlay, host: str, net_id: str) -> set[tuple[str, str]]:
    return set(ov.host_state(host, net_id)["fdb"])


def task_pid(ov: Overlay, t: TaskView) -> int:
    pids = sorted(pids_in_netns([ov.sandbox(t)]))
    return pids[0] if pids else 0


def fdb_is(ov: Overlay, host: str, net_id: str, want: set[tuple[str, str]]) -> bool:
    return fdb(ov, host, net_id) == want


def gossip_status(ov: Overlay, host: str) -> dict[str, Any]:
    out = run([sys.executable, "-m", "agent.main", "--gossip-status", "--state-dir",
               str(ov.dev.state_dir / host)])  # fmt: skip
    return json.loads(out)  # type: ignore[no-any-return]


def alive_members(ov: Overlay, host: str) -> int:
    return sum(m["state"] == "alive" for m in gossip_status(ov, host).get("members", []))


def test_endpoints_come_from_gossip_and_survive_the_managers(ov: Overlay) -> None:
    ov.ovctl("network", "create", "--subnet", "10.70.0.0/24", "gnet")
    net_id = ov.network_id("gnet")
    ingress_id = ov.network_id("ingress")
    ov.ovctl(
        "service", "create", "-d", "--name", "g", "--network", "gnet", "--replicas", "5",
        "--restart-condition", "on-failure", "--restart-delay", "200ms", "--", *HTTP,
    )  # fmt: skip
    tasks = ov.running("g", 5)
    assert sorted(t.host for t in tasks) == HOSTS
    by_host = {t.host: t for t in tasks}
    ov.dev.stop_manager()
    try:
        for host in HOSTS:
            want = expected_fdb(ov, host, net_id, tasks)
            wait_for(f"{host}'s FDB from gossip", functools.partial(fdb_is, ov, host, net_id, want))
        for src in ("h1", "h4"):
            for dst in tasks:
                if dst.host != src:
                    assert wait_for(
                        f"{src} -> {dst.host} with no manager",
                        functools.partial(ov.http_get, by_host[src], dst.ips[net_id]),
                        timeout=10,
                    )

        # A task dies; its agent restarts it in place (no manager to replace it) and announces
        # it again.
        victim = by_host["h2"]
        old = task_pid(ov, victim)
        os.kill(old, signal.SIGKILL)
        wait_for("h2's task restarted", lambda: task_pid(ov, victim) not in (0, old))
        assert wait_for(
            "h1 reaches h2's restarted task",
            functools.partial(ov.http_get, by_host["h1"], victim.ips[net_id]),
            timeout=15,
        )

        # A restarted agent relearns its peers and their endpoints from gossip alone: its
        # kernel entries are wiped while it is down.
        ov.dev.kill_agent("h3")
        ns = ov.names("h3").network_ns(net_id)
        run(["bridge", "-n", ns, "fdb", "flush", "dev", ov.names("h3").vxlan])
        assert not fdb(ov, "h3", net_id)
        ov.dev.start_agent("h3", wait=False)
        want = expected_fdb(ov, "h3", net_id, tasks)
        wait_for("h3 relearned the FDB", lambda: fdb(ov, "h3", net_id) == want, timeout=20)
        wait_for("h3's gossip view lists 5 alive members", lambda: alive_members(ov, "h3") == 5)
        status = gossip_status(ov, "h3")
        # Its network, and the ingress network every host is on (the routing mesh).
        assert sorted(n["network_id"] for n in status["networks"]) == sorted([net_id, ingress_id])
    finally:
        ov.dev.start_manager()
    ov.running("g", 5)
    ov.ovctl("service", "rm", "g")
    wait_for("gnet removed", lambda: ov.ovctl("network", "rm", "gnet", check=False).returncode == 0)


def test_a_killed_hosts_endpoints_vanish_everywhere_and_come_back(ov: Overlay) -> None:
    ov.ovctl("network", "create", "--subnet", "10.71.0.0/24", "knet")
    net_id = ov.network_id("knet")
    ov.ovctl("service", "create", "-d", "--name", "k", "--network", "knet", "--replicas", "5",
             "--", *HTTP)  # fmt: skip
    tasks = ov.running("k", 5)
    others = [h for h in HOSTS if h != "h5"]
    for host in HOSTS:
        want = expected_fdb(ov, host, net_id, tasks)
        wait_for(f"{host}'s FDB", functools.partial(fdb_is, ov, host, net_id, want))
    # Only gossip can remove h5's entries now.
    ov.dev.stop_manager()
    try:
        vtep = ov.dev.host_addr("h5")
        t0 = time.monotonic()
        ov.dev.stop_host("h5")
        gone: dict[str, float] = {}

        def all_forgot() -> bool:
            for h in others:
                if h not in gone and not any(dst == vtep for _, dst in fdb(ov, h, net_id)):
                    gone[h] = time.monotonic() - t0
            return len(gone) == len(others)

        wait_for("every host forgot h5's endpoints", all_forgot, timeout=20, every=0.05)
        print(
            "\nkilled host's endpoints gone from FDB: "
            + ", ".join(f"{h} {s:.2f} s" for h, s in sorted(gone.items()))
        )
        h5 = next(t for t in tasks if t.host == "h5")
        for h in others:
            assert h5.ips[net_id] not in {ip for ip, _ in ov.host_state(h, net_id)["neigh"]}
        t1 = time.monotonic()
        ov.dev.start_host("h5", wait=False)
        for host in others:
            want = expected_fdb(ov, host, net_id, tasks)
            wait_for(f"{host} has h5 again", functools.partial(fdb_is, ov, host, net_id, want))
        print(f"h5's endpoints back on every host {time.monotonic() - t1:.2f} s after its start")
        assert wait_for(
            "h1 reaches h5's task again",
            functools.partial(
                ov.http_get, next(t for t in tasks if t.host == "h1"), h5.ips[net_id]
            ),
            timeout=15,
        )
    finally:
        ov.dev.start_manager()
    ov.ovctl("service", "rm", "k")
    wait_for("knet removed", lambda: ov.ovctl("network", "rm", "knet", check=False).returncode == 0)
