"""F2 end to end: three hosts in network namespaces, a real etcd, manager and agents, and real
TCP between tasks over VXLAN.

One cluster serves the whole module (bringing it up costs a few seconds); every test makes its
own networks and services and removes them, and checks the kernel state of every host against
what the manager says should be there.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agent.dataplane.xfrm import NO_ESP, esp_unavailable
from tests.e2e.overlay import Overlay, TaskView, run, wait_for
from tests.support.cluster import E2ECluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

HTTP = [sys.executable, "-m", "http.server", "8080"]


@pytest.fixture(scope="module")
def ov() -> Iterator[Overlay]:
    dev = E2ECluster(
        # Not ovt<pid>-: other e2e modules of this run use that, and a dev cluster owns every
        # name that starts with its prefix.
        name_prefix=f"ovo{os.getpid() % 100000}-",
        hosts=3,
        subnet="198.51.100.64/26",
        manager_args=["--heartbeat-period", "0.5", "--heartbeat-grace", "3"],
        agent_args=["--reconcile-interval", "1", "--stop-timeout", "2"],
        die_with_parent=True,
    )
    try:
        dev.up()
        yield Overlay(dev)
    finally:
        dev.down()


def service(ov: Overlay, name: str, network: str, replicas: int, *extra: str) -> list[TaskView]:
    ov.ovctl(
        "service", "create", "-d", "--name", name, "--network", network,
        "--replicas", str(replicas), *extra, "--", *HTTP,
    )  # fmt: skip
    return ov.running(name, replicas)


def all_reach_all(ov: Overlay, tasks: list[TaskView], net_id: str) -> None:
    for src in tasks:
        for dst in tasks:
            if src.id == dst.id:
                continue
            ok = wait_for(
                f"{src.host}/{src.slot} -> {dst.host}/{dst.slot} ({dst.ips[net_id]})",
                functools.partial(ov.http_get, src, dst.ips[net_id]),
                timeout=15,
            )
            assert ok


def remove(ov: Overlay, services: list[str], networks: list[str]) -> None:
    """Remove services, then their networks once their last task has stopped."""
    ov.ovctl("service", "rm", *services)
    wait_for(
        f"networks {networks} removed",
        lambda: (
            ov.ovctl("network", "rm", *networks, check=False).returncode == 0
            or not set(networks) & {n["spec"]["name"] for n in ov.json("network", "ls")}
        ),
    )


def converged(ov: Overlay, service_name: str, net_id: str) -> bool:
    """Every host's FDB, neighbour table and veths match the manager's running tasks."""
    tasks = [t for t in ov.tasks(service_name) if t.desired == "TASK_STATE_RUNNING"]
    if any(t.state != "TASK_STATE_RUNNING" for t in tasks):
        return False
    for host in ov.dev.hosts:
        fdb, neigh, local = ov.expected_state(host, net_id, tasks)
        got = ov.host_state(host, net_id)
        if local == 0:
            if got["present"]:
                return False  # the network must be gone from a host with no task on it
            continue
        if got["fdb"] != fdb or got["neigh"] != neigh or len(got["veths"]) != local:
            return False
        if len(got["sandboxes"]) != sum(1 for t in tasks if t.host == host):
            return False
    return True


def test_tasks_on_three_hosts_reach_each_other_over_vxlan(ov: Overlay) -> None:
    ov.ovctl("network", "create", "--subnet", "10.61.0.0/24", "front")
    net_id = ov.network_id("front")
    vni = ov.json("network", "inspect", "front")[0]["vni"]
    tasks = service(ov, "web", "front", 3)
    assert sorted(t.host for t in tasks) == ["h1", "h2", "h3"], "spread one per host"
    # Capture VXLAN on h1's underlay while the tasks talk.
    cap = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ov.dev.host_ns('h1')}", "tcpdump", "-nn", "-l",
         "-c", "4", "-i", "eth0", "udp", "port", "4789", "and", f"udp[12:4] >> 8 = {vni}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        all_reach_all(ov, tasks, net_id)
        out, _ = cap.communicate(timeout=10)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    vnis = {int(v) for v in re.findall(r"vni (\d+)", out)}
    assert vnis == {vni}, out
    wait_for("kernel state", lambda: converged(ov, "web", net_id))
    ov.ovctl("service", "rm", "web")
    wait_for(
        "web's sandboxes gone",
        lambda: not any(ov.host_state(h, net_id)["present"] for h in ov.dev.hosts),
    )
    ov.ovctl("network", "rm", "front")


def test_networks_are_isolated_and_only_normal_networks_have_egress(ov: Overlay) -> None:
    ov.ovctl("network", "create", "--subnet", "10.62.0.0/24", "blue")
    ov.ovctl("network", "create", "--subnet", "10.63.0.0/24", "--internal", "red")
    blue_id, red_id = ov.network_id("blue"), ov.network_id("red")
    blue = service(ov, "bluesvc", "blue", 2)
    red = service(ov, "redsvc", "red", 2)
    # A server on the underlay, in a namespace of the test's own (never beyond this machine).
    client = ov.dev.add_client("egress")
    server = subprocess.Popen(
        ["ip", "netns", "exec", client.netns, *HTTP[:-1], "9090", "--bind", client.addr],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for("underlay server", lambda: run(
            ["ip", "netns", "exec", client.netns, "ss", "-Hltn", "sport", "= :9090"]
        ).strip())  # fmt: skip
        # Inside a network, tasks on different hosts talk; across networks they cannot.
        all_reach_all(ov, blue, blue_id)
        all_reach_all(ov, red, red_id)
        for src in blue:
            for dst in red:
                assert not ov.http_get(src, dst.ips[red_id]), "blue reached red"
        for src in red:
            for dst in blue:
                assert not ov.http_get(src, dst.ips[blue_id]), "red reached blue"
        # Egress: masqueraded through the host for a normal network, none for an internal one.
        for t in blue:
            assert wait_for(
                f"egress from {t.host}", functools.partial(ov.http_get, t, client.addr, 9090)
            )
        for t in red:
            assert not ov.http_get(t, client.addr, 9090), "an internal network reached out"
            routes = subprocess.run(
                ["ip", "-n", ov.sandbox(t), "route", "show", "default"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert routes.strip() == ""
    finally:
        server.kill()
        server.wait()
    remove(ov, ["bluesvc", "redsvc"], ["blue", "red"])


def test_scale_up_and_down_leaves_exactly_the_right_kernel_state(ov: Overlay) -> None:
    ov.ovctl("network", "create", "--subnet", "10.64.0.0/24", "scaled")
    net_id = ov.network_id("scaled")
    service(ov, "sc", "scaled", 3)
    wait_for("converged at 3", lambda: converged(ov, "sc", net_id))
    ov.ovctl("service", "scale", "-d", "sc=9")
    tasks = ov.running("sc", 9, timeout=60)
    wait_for("converged at 9", lambda: converged(ov, "sc", net_id))
    all_reach_all(ov, [t for t in tasks if t.slot in (1, 5, 9)], net_id)
    ov.ovctl("service", "scale", "-d", "sc=1")
    ov.running("sc", 1)
    wait_for("converged at 1", lambda: converged(ov, "sc", net_id), timeout=30)
    remove(ov, ["sc"], ["scaled"])


def test_drained_host_tasks_move_and_stay_reachable(ov: Overlay) -> None:
    ov.ovctl("network", "create", "--subnet", "10.65.0.0/24", "drainnet")
    net_id = ov.network_id("drainnet")
    service(ov, "dr", "drainnet", 3)
    ov.ovctl("node", "update", "--availability", "drain", "h2")
    try:
        tasks = wait_for(
            "tasks off h2",
            lambda: (ts := ov.running("dr", 3)) and all(t.host != "h2" for t in ts) and ts,
        )
        all_reach_all(ov, tasks, net_id)
        wait_for("converged after drain", lambda: converged(ov, "dr", net_id))
    finally:
        ov.ovctl("node", "update", "--availability", "active", "h2")
    remove(ov, ["dr"], ["drainnet"])


def test_agent_killed_during_scale_up_converges_and_repairs_drift(ov: Overlay) -> None:
    ov.ovctl("network", "create", "--subnet", "10.66.0.0/24", "crashnet")
    net_id = ov.network_id("crashnet")
    service(ov, "cr", "crashnet", 3)
    ov.ovctl("service", "scale", "-d", "cr=8")
    time.sleep(0.3)  # mid scale-up: some sandboxes built, some not
    ov.dev.kill_agent("h3")
    time.sleep(0.5)
    ov.dev.start_agent("h3")
    ov.running("cr", 8, timeout=60)
    wait_for("converged after the agent restart", lambda: converged(ov, "cr", net_id))
    # Read the tasks again: a restart slower than the heartbeat grace (a loaded machine) has the
    # node marked down meanwhile and its tasks replaced, so the list read before converging
    # may name tasks the restarted agent has since stopped.
    tasks = ov.running("cr", 8)
    all_reach_all(
        ov,
        [t for t in tasks if t.host == "h3"][:1] + [t for t in tasks if t.host != "h3"][:2],
        net_id,
    )

    # Drift: delete an FDB entry and a veth by hand; the periodic reconcile puts them back.
    names = ov.names("h1")
    ns = names.network_ns(net_id)
    before = ov.host_state("h1", net_id)
    mac, dst = next(iter(e for e in before["fdb"] if e[0] != "00:00:00:00:00:00"))
    run(["bridge", "-n", ns, "fdb", "del", mac, "dev", names.vxlan, "dst", dst])
    veth = sorted(before["veths"])[0]
    # Both deletions succeeded (run() raises otherwise). Reading the state back to see them
    # missing would race with the agent: a pass that happens to run in between (one a second,
    # plus passes on events) repairs them before the read.
    run(["ip", "-n", ns, "link", "del", veth])
    wait_for("drift repaired", lambda: ov.host_state("h1", net_id) == before, timeout=15)
    h1 = [t for t in tasks if t.host == "h1"]
    others = [t for t in tasks if t.host != "h1"]
    for t in h1:
        assert wait_for(
            "h1 task reachable again", functools.partial(ov.http_get, others[0], t.ips[net_id])
        )
    remove(ov, ["cr"], ["crashnet"])


def test_a_stopped_host_is_marked_down_and_its_tasks_rescheduled(ov: Overlay) -> None:
    ov.ovctl("network", "create", "--subnet", "10.67.0.0/24", "downnet")
    net_id = ov.network_id("downnet")
    service(ov, "dn", "downnet", 3)
    ov.dev.stop_host("h3")
    try:
        wait_for(
            "h3 down",
            lambda: ov.nodes()["h3"]["status"]["state"] == "NODE_STATE_DOWN",
            timeout=20,
        )
        tasks = wait_for(
            "3 tasks on h1/h2",
            lambda: (ts := ov.running("dn", 3)) and all(t.host != "h3" for t in ts) and ts,
            timeout=40,
        )
        all_reach_all(ov, tasks, net_id)
        for host in ("h1", "h2"):
            fdb, _neigh, _ = ov.expected_state(host, net_id, tasks)

            def forgot(host: str = host, fdb: set[tuple[str, str]] = fdb) -> bool:
                return bool(ov.host_state(host, net_id)["fdb"] == fdb)

            wait_for(f"{host} forgot h3's endpoints", forgot)
    finally:
        ov.dev.start_host("h3")
    wait_for("h3 ready", lambda: ov.nodes()["h3"]["status"]["state"] == "NODE_STATE_READY")
    remove(ov, ["dn"], ["downnet"])
    wait_for("h3 cleaned its leftovers", lambda: not ov.task_namespaces("h3"))


def test_exit_codes_restart_policy_and_logs_reach_the_user(ov: Overlay) -> None:
    # A task that prints and fails: its output reaches `service logs`, its exit code the task
    # status, and the restart policy bounds how often the orchestrator replaces it.
    ov.ovctl(
        "service", "create", "-d", "--name", "flaky", "--replicas", "1",
        "--restart-condition", "on-failure", "--restart-delay", "200ms",
        "--restart-max-attempts", "2", "--",
        "sh", "-c", "echo hello from $(hostname -I | cut -d' ' -f1); exit 3",
    )  # fmt: skip

    def three_failed() -> list[TaskView] | None:
        tasks = ov.tasks("flaky")
        failed = [t for t in tasks if t.state == "TASK_STATE_FAILED"]
        return failed if len(tasks) == 3 and len(failed) == 3 else None

    failed = wait_for("the first run and its 2 restarts, all failed", three_failed, timeout=40)
    time.sleep(1.0)  # no fourth attempt
    assert len(ov.tasks("flaky")) == 3
    for t in ov.json("service", "ps", "flaky"):
        assert t["status"]["exit_code"] == 3 and t["status"]["err"] == "exit status 3"
    logs = wait_for(
        "log lines",
        lambda: (
            (out := ov.ovctl("service", "logs", "flaky").stdout).count("hello from") >= 3 and out
        ),
    )
    assert all(f"flaky.{t.slot}.{t.id}" in logs for t in failed), logs
    # A command that does not exist fails the task with a reason a person can act on.
    ov.ovctl("service", "create", "-d", "--name", "typo", "--restart-condition", "none", "--",
             "no-such-command-xyz")  # fmt: skip
    task = wait_for(
        "typo failed",
        lambda: [t for t in ov.json("service", "ps", "typo") if t["status"]["err"]],
    )[0]
    assert task["status"]["state"] == "TASK_STATE_FAILED"
    assert "no-such-command-xyz" in task["status"]["err"], task["status"]
    ov.ovctl("service", "rm", "flaky", "typo")


def test_a_host_without_esp_never_carries_an_encrypted_network_in_clear(ov: Overlay) -> None:
    """This machine's kernel has no ESP (tests/uml covers encrypted networks where it has):
    the agents say so at registration, `network create` warns, and every task on the network
    fails saying why, with nothing of the network built on any host."""
    if esp_unavailable() != NO_ESP:
        pytest.skip(f"this kernel can do ESP ({esp_unavailable() or 'probe passed'})")
    created = ov.ovctl(
        "network", "create", "--opt", "encrypted", "--subnet", "10.67.0.0/24", "secnet"
    )
    assert f"warning: no Ready node can encrypt ({NO_ESP})" in created.stderr
    net_id = created.stdout.strip()
    ov.ovctl(
        "service", "create", "-d", "--name", "sec", "--network", "secnet", "--replicas", "2",
        "--restart-condition", "none", "--", *HTTP,
    )  # fmt: skip
    why = f"{NO_ESP}: network secnet needs IPsec"
    failed = wait_for(
        "both tasks failed",
        lambda: (
            len(ts := ov.json("service", "ps", "sec")) == 2
            and all(t["status"]["state"] == "TASK_STATE_FAILED" for t in ts)
            and ts
        ),
        timeout=30,
    )
    assert {t["status"]["err"] for t in failed} == {why}
    assert why in ov.ovctl("service", "ps", "sec").stdout
    for host in ("h1", "h2", "h3"):
        assert ov.names(host).network_ns(net_id) not in run(["ip", "netns", "list"])
    pretty = ov.ovctl("node", "inspect", "--pretty", "h1").stdout
    assert f"Unavailable:      ipsec: {NO_ESP}" in pretty
    remove(ov, ["sec"], ["secnet"])
