"""Smoke test of the nspawn bed: three booted Debian 12 nodes that Ansible reaches by SSH.

Checks what a later Ansible test relies on: each node runs systemd (``running``), has its own
hostname and address and an sshd; node1 reaches node3 over the bridge; ``ansible all -m ping``
from the bridge namespace succeeds on all three through real SSH with checked host keys;
files go in and come out; services in a node can build what an ovnet agent builds (a bridge
and nftables rules, a writable ip_forward). Then the bed is closed and nothing of it may
remain: namespaces, mounts, cgroups, processes, the run's dir and its record.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.nodes import bed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _leftovers(node_bed: bed.NodeBed, pids: list[int]) -> list[str]:
    """What of ``node_bed`` is still there after close(), described for the assertion."""
    found: list[str] = []
    netns = Path("/run/netns")
    if netns.is_dir():
        found += [f"netns {p.name}" for p in netns.iterdir() if p.name.startswith(node_bed.prefix)]
    found += [f"mount {m}" for m in bed._mounts_under(node_bed.workdir)]
    for hierarchy in bed.cgroup_hierarchies():
        if hierarchy.own.is_dir():
            found += [
                f"cgroup {p}" for p in hierarchy.own.iterdir() if p.name.startswith(node_bed.prefix)
            ]
    found += [f"process {pid}" for pid in pids if bed._proc_start(pid) is not None]
    if node_bed.workdir.exists():
        found.append(f"dir {node_bed.workdir}")
    if (bed.STATE_DIR / f"{node_bed.prefix}.json").exists():
        found.append("run record")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"root-namespace link {line}" for line in links.splitlines() if "veth-n" in line]
    return found


def test_three_nodes_boot_and_answer_ansible(
    node_rootfs: bed.Rootfs, node_bed_factory: Callable[..., bed.NodeBed]
) -> None:
    t0 = time.monotonic()
    node_bed = node_bed_factory(3)
    t_boot = time.monotonic() - t0
    node1, node2, node3 = node_bed.nodes

    for node in node_bed.nodes:
        assert node.run(["hostname"]).stdout.strip() == node.name
        assert node.run(["systemctl", "is-system-running"]).stdout.strip() == "running"
        assert node.run(["systemctl", "is-active", "ssh"]).stdout.strip() == "active"
        addresses = node.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert f"{node.address}/" in addresses

    # The bridge carries node-to-node traffic, and names resolve from /etc/hosts.
    node1.run(["ping", "-c", "1", "-W", "2", node3.address])
    node1.run(["ping", "-c", "1", "-W", "2", node3.name])

    node2.put_file("/etc/ovnet/bed-check", "hello from the test\n", mode=0o600)
    assert node2.read_file("/etc/ovnet/bed-check") == "hello from the test\n"
    assert node2.run(["stat", "-c", "%a", "/etc/ovnet/bed-check"]).stdout.strip() == "600"

    # A service in the node (not just our nsenter, which keeps the host's capabilities) can
    # do what an ovnet agent does: nspawn must grant CAP_NET_ADMIN and a writable
    # /proc/sys/net for that.
    agent_like = (
        "ip link add ovtbr0 type bridge && ip link del ovtbr0"
        " && nft add table inet ovtcheck && nft delete table inet ovtcheck"
        " && sysctl -qw net.ipv4.ip_forward=1"
    )
    node3.run(["systemd-run", "--wait", "--quiet", "--pipe", "sh", "-c", agent_like])

    # Ansible over real SSH from the bridge namespace, host keys checked.
    inventory = node_bed.write_inventory()
    t_ansible = time.monotonic()
    result = node_bed.control_run(
        [str(bed.ansible_command("ansible")), "-i", str(inventory), "all", "-m", "ping", "-o"],
        env=node_bed.ansible_env(),
        timeout=120,
    )
    t_ansible = time.monotonic() - t_ansible
    for node in node_bed.nodes:
        assert f"{node.name} | SUCCESS" in result.stdout, result.stdout + result.stderr

    pids = [n.process.pid for n in node_bed.nodes if n.process is not None]
    pids += [n.leader for n in node_bed.nodes if n.leader is not None]
    node_bed.close()
    assert _leftovers(node_bed, pids) == []

    print(
        f"\nnodes bed: rootfs {'built' if node_rootfs.built else 'cached'} in "
        f"{node_rootfs.seconds:.1f} s"
        + (f" ({node_rootfs.size_bytes / 1e6:.0f} MB)" if node_rootfs.size_bytes else "")
        + f"; 3 nodes up in {t_boot:.1f} s (boot to running {node_bed.timings['boot']:.1f} s);"
        f" ansible ping {t_ansible:.1f} s; shutdown {node_bed.timings['shutdown']:.1f} s"
    )
