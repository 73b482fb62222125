"""The dev cluster's host shell: iproute2, /proc and the environment of the daemons.

The only module of `ovctl dev` that runs `ip` or scans /proc. Every command here acts on names
the caller got from the pure plan (plan.py), so nothing outside a cluster's prefix is touched:
processes are found by the inode of their network namespace, never by name.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from osutil.netns import netns_inode
from osutil.proc import proc_start_time
from ovctl.devcluster.plan import NETNS_DIR, DevClusterError, is_cluster_daemon, parse_init_output
from ovctl.devcluster.procs import tail


def require_root() -> None:
    if os.geteuid() != 0:
        raise DevClusterError(
            "ovctl dev must run as root: it creates network namespaces, a bridge and veths "
            "(try sudo)"
        )


def _run(argv: Sequence[str], input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), input=input_text, capture_output=True, text=True, timeout=60, check=False
    )


def ip(*args: str, netns: str | None = None) -> str:
    """Run `ip`; DevClusterError with its stderr on failure."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    res = _run(argv)
    if res.returncode != 0:
        raise DevClusterError(f"`{' '.join(argv)}` failed: {res.stderr.strip()}")
    return res.stdout


def ip_batch(lines: Sequence[str], netns: str | None = None, force: bool = False) -> None:
    """Several `ip` commands in one process (each `ip` costs a few ms to start)."""
    if not lines:
        return
    argv = ["ip", *(["-n", netns] if netns else []), *(["-force"] if force else []), "-batch", "-"]
    res = _run(argv, "\n".join(lines) + "\n")
    if res.returncode != 0 and not force:
        raise DevClusterError(f"`ip {' / '.join(lines)}` failed: {res.stderr.strip()}")


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def list_links() -> list[str]:
    """Interface names in the root namespace."""
    res = _run(["ip", "-o", "link", "show"])
    names = []
    for line in res.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def root_ipv4_networks() -> list[tuple[str, IPv4Interface]]:
    """(interface, address) of every IPv4 address in the root namespace."""
    res = _run(["ip", "-j", "-4", "addr", "show"])
    out = []
    try:
        for link in json.loads(res.stdout or "[]"):
            for a in link.get("addr_info", []):
                out.append((link["ifname"], IPv4Interface(f"{a['local']}/{a['prefixlen']}")))
    except (ValueError, KeyError):
        pass
    return out


def link_is_up(name: str) -> bool:
    try:
        flags = Path(f"/sys/class/net/{name}/flags").read_text()
    except OSError:
        return False
    return bool(int(flags, 16) & 0x1)


def _ns_key(path: str | Path) -> tuple[int, int] | None:
    try:
        return netns_inode(str(path))
    except OSError:
        return None


def pids_in_netns(names: Iterable[str]) -> dict[int, int | None]:
    """PID -> start time of every process whose network namespace is one of the named ones.

    A process's namespace is the inode of /proc/PID/ns/net; a named namespace's is the inode
    of its bind mount /run/netns/NAME. Comparing them is how only what lives in our namespaces
    is found (a file there that is not a mount has another device, and matches nothing).
    """
    keys = {k for name in names if (k := _ns_key(NETNS_DIR / name)) is not None}
    keys.discard(_ns_key("/proc/1/ns/net"))  # never the root namespace, whatever happens
    if not keys:
        return {}
    found: dict[int, int | None] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if _ns_key(f"/proc/{entry.name}/ns/net") in keys:
            pid = int(entry.name)
            found[pid] = proc_start_time(pid)
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def orphaned_daemons(prefix: str) -> dict[str, dict[str, Any]]:
    """The etcd and manager(s) of ``prefix``'s cluster, found by command line, as state-file
    process records ("etcd", "manager-<pid>")."""
    found: dict[str, dict[str, Any]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = _cmdline(pid)
        if is_cluster_daemon(argv, prefix):
            key = "etcd" if Path(argv[0]).name == "etcd" else f"manager-{pid}"
            found[key] = {"pid": pid, "start": proc_start_time(pid), "argv": argv}
    return found


def make_ns(bridge: str, netns: str, veth: str, addr: IPv4Interface) -> None:
    """A namespace on the bridge: ``veth`` in the root namespace, its peer ``eth0`` inside at
    ``addr``, with eth0 and lo up."""
    ip("netns", "add", netns)
    ip_batch(
        [
            f"link add {veth} type veth peer name eth0 netns {netns}",
            f"link set {veth} master {bridge} up",
        ]
    )
    ip_batch(
        [f"addr add {addr} dev eth0", "link set eth0 up", "link set lo up"],
        netns=netns,
    )


def code_root() -> str:
    """The directory holding the ovctl, manager and agent packages this ovctl runs from."""
    return str(Path(__file__).resolve().parents[2])


def daemon_env() -> dict[str, str]:
    # The daemons must run the same code as this ovctl, whatever their working directory.
    path = os.environ.get("PYTHONPATH", "")
    return {
        "PYTHONPATH": code_root() + (os.pathsep + path if path else ""),
        "PYTHONUNBUFFERED": "1",
    }


def run_manager_init(argv: Sequence[str], log: Path, cwd: Path) -> dict[str, str]:
    """Run `ovnet-manager init` (``argv``), keep its output in ``log`` and return the join
    tokens it printed (role -> token); DevClusterError with the log tail if it failed."""
    try:
        res = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **daemon_env()},
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DevClusterError(f"`{' '.join(argv)}` did not finish within 60s") from None
    log.write_text(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}")
    tokens = parse_init_output(res.stdout)
    if res.returncode != 0 or "worker" not in tokens:
        raise DevClusterError(
            f"ovnet-manager init failed (exit status {res.returncode}; log {log}):\n{tail(log, 25)}"
        )
    return tokens
