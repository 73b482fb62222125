"""`ovctl dev`'s cluster for real: hosts in network namespaces on a bridge, etcd, a manager and
one agent per host; a host that dies is marked Down and comes back; `down()` leaves nothing.

Prefixes start with "ovtd"/"ovte" so that no other test's "ovt<pid>-" names fall under them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from osutil.proc import pid_alive, proc_stat
from ovctl.devcluster.plan import NETNS_DIR, DevClusterError
from ovctl.devcluster.shell import list_links, list_netns, pids_in_netns
from tests.support.cluster import E2ECluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

RUN = os.getpid() % 100000
PREFIX = f"ovtd{RUN}-"
SUBNET = "198.51.100.192/27"
NUL = b"\0"

# Outcome of a TCP connection attempt from a namespace: "refused" proves the address answered.
_PROBE = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except ConnectionRefusedError:
    print("refused")
except (TimeoutError, OSError) as e:
    print(type(e).__name__)
"""


def probe(cluster: E2ECluster, src: str, dst: str, port: int = 9, timeout: float = 1.0) -> str:
    r = cluster.exec(
        src,
        [sys.executable, "-c", _PROBE, dst, str(port), str(timeout)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.stdout.strip() or r.stderr.strip()


def leftovers(prefix: str, paths: list[Path], pids: list[int]) -> list[str]:
    """Everything with the prefix that still exists: namespaces, links, files, processes."""
    found = [f"netns {n}" for n in list_netns() if n.startswith(prefix)]
    found += [f"link {n}" for n in list_links() if n.startswith(prefix)]
    found += [f"path {p}" for p in paths if p.exists()]
    if Path("/etc/netns").is_dir():
        found += [f"path {p}" for p in Path("/etc/netns").glob(f"{prefix}*")]
    found += [f"pid {pid}" for pid in pids if pid_alive(pid)]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            st = proc_stat(int(entry.name))
            if prefix.encode() in cmdline and st is not None and st.state != "Z":
                found.append(f"process {entry.name}: {cmdline.replace(NUL, b' ').decode()}")
    return found


def test_up_hosts_talk_stop_start_and_down_leaves_nothing() -> None:
    cluster = E2ECluster(
        PREFIX,
        hosts=2,
        subnet=SUBNET,
        heartbeat_period_ms=300,
        die_with_parent=True,
        ready_timeout=30,
    )
    sleeper: subprocess.Popen[bytes] | None = None
    pids: list[int] = []
    etcd_dir = cluster.log_path("etcd").parent
    try:
        started = time.monotonic()
        assert cluster.up() is True
        print(f"dev up (2 hosts): {time.monotonic() - started:.2f}s")
        assert cluster.manager_addr.startswith("198.51.100.193:")
        assert cluster.hosts == ["h1", "h2"]
        assert cluster.host_addr("h2") == "198.51.100.204"
        assert cluster.node_states() == {"h1": "READY", "h2": "READY"}
        nodes = cluster.ovctl("node", "ls", "--format", "json")
        assert nodes.returncode == 0, nodes.stderr
        assert "198.51.100.203" in nodes.stdout

        # The underlay: hosts reach each other and the bridge, and nothing beyond it.
        assert probe(cluster, "h1", cluster.host_addr("h2")) == "refused"
        assert probe(cluster, "h2", cluster.host_addr("h1")) == "refused"
        routes = cluster.exec("h1", ["ip", "-4", "route"], capture_output=True, text=True)
        assert "default" not in routes.stdout and "198.51.100.192/27" in routes.stdout
        client = cluster.add_client("cli")
        assert client.addr == "198.51.100.222"
        assert probe(cluster, "cli", cluster.host_addr("h1")) == "refused"

        # The same cluster again is not an error; another one with this prefix is.
        assert cluster.up() is False
        with pytest.raises(DevClusterError, match="in use"):
            E2ECluster(PREFIX, hosts=1, subnet=SUBNET).up()
        with pytest.raises(DevClusterError, match="overlaps"):
            E2ECluster(f"ovte{RUN}-", hosts=1, subnet="198.51.100.192/28").up()

        # A process in h1's namespace survives an agent crash; the agent comes back.
        sleeper = cluster.popen("h1", ["sleep", "300"], start_new_session=True)
        agent1 = cluster.pid("h1")
        assert agent1 is not None
        cluster.kill_agent("h1")
        assert not pid_alive(agent1)
        assert sleeper.poll() is None
        cluster.start_agent("h1")
        assert cluster.pid("h1") not in (None, agent1)

        # A host dies: everything in its namespaces is killed, it is unreachable, and the
        # manager marks it Down after missed heartbeats (3 x 300 ms).
        agent2 = cluster.pid("h2")
        assert agent2 is not None
        began = time.monotonic()
        cluster.stop_host("h2")
        assert not pid_alive(agent2)
        assert not pids_in_netns([cluster.host_ns("h2")])
        assert probe(cluster, "h1", cluster.host_addr("h2"), timeout=0.5) != "refused"
        cluster.wait_node_state("DOWN", ["h2"], timeout=15)
        print(f"h2 Down after {time.monotonic() - began:.2f}s")
        # h1 is Ready (again, if its restart above outlasted the 0.9 s grace).
        cluster.wait_node_state("READY", ["h1"], timeout=15)
        cluster.start_host("h2")
        assert cluster.node_states() == {"h1": "READY", "h2": "READY"}
        assert probe(cluster, "h1", cluster.host_addr("h2")) == "refused"
        nodes_after = cluster.ovctl("node", "ls", "-q").stdout.split()
        assert len(nodes_after) == 2, "a restarted host keeps its node (same state dir)"

        pids = [cluster.pid(d) or 0 for d in ("etcd", "manager", "h1", "h2")] + [sleeper.pid]
        assert all(pids)
        status = cluster.status()
        assert [h["agent"]["running"] for h in status["hosts"]] == [True, True]
    finally:
        started = time.monotonic()
        teardown = cluster.down()
        print(f"dev down: {time.monotonic() - started:.2f}s, {teardown}")
        if sleeper is not None:
            sleeper.wait(5)
    assert teardown.processes >= 5  # etcd, manager, two agents, the sleeper
    assert not leftovers(PREFIX, [cluster.state_dir, etcd_dir], pids)
    assert cluster.down().netns == []  # idempotent


def test_down_from_another_process_without_a_state_file() -> None:
    """`ovctl dev down` finds everything by the prefix alone, even the root-ns daemons."""
    prefix = f"ovte{RUN}-"
    cluster = E2ECluster(prefix, hosts=1, subnet="198.51.100.224/28", die_with_parent=True)
    etcd_dir = cluster.log_path("etcd").parent
    try:
        cluster.up()
        pids = [cluster.pid(d) or 0 for d in ("etcd", "manager", "h1")]
        assert all(pids)
        ip_netns = subprocess.run(
            ["ip", "netns", "add", f"{cluster.host_ns('h1')}-t-extra"], check=True
        )
        assert ip_netns.returncode == 0
        cluster.state_file.unlink()
        res = subprocess.run(
            [sys.executable, "-m", "ovctl", "dev", "down", "--prefix", prefix],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert "removed" in res.stdout
        assert not leftovers(prefix, [cluster.state_dir, etcd_dir], pids)
    finally:
        cluster.down()
    assert not (NETNS_DIR / f"{prefix}h1").exists()


def test_failed_up_cleans_up_and_shows_the_agent_log() -> None:
    prefix = f"ovtf{RUN}-"
    cluster = E2ECluster(
        prefix,
        hosts=1,
        subnet="198.51.100.240/28",
        agent_args=["--no-such-flag"],
        die_with_parent=True,
        ready_timeout=20,
    )
    etcd_dir = cluster.log_path("etcd").parent
    try:
        with pytest.raises(DevClusterError, match=r"agent-h1 exited(.|\n)*--no-such-flag"):
            cluster.up()
        assert not leftovers(prefix, [cluster.state_dir, etcd_dir], [])
    finally:
        cluster.down()
