"""Helpers for the overlay e2e tests: ovctl in JSON, waiting for tasks, and reading a host's
kernel state (FDB, neighbours, veths, namespaces) the way an operator would, with `ip -j`."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from agent.model import INGRESS_SANDBOX, Names, endpoint_mac
from tests.support import wait as support_wait
from tests.support.cluster import E2ECluster

# The e2e tier's `wait_for` (tests/support/wait.py) with this tier's defaults: kernel state and
# daemons in namespaces settle within seconds, and each check may run ovctl or `ip`, so 30 s,
# polled every 0.2 s.
wait_for = functools.partial(support_wait.wait_for, timeout=30.0, every=0.2)


def run(argv: list[str], timeout: float = 20.0, check: bool = True) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


@dataclass
class TaskView:
    id: str
    service: str
    slot: int
    node_id: str
    host: str
    state: str
    desired: str
    addrs: dict[str, str]  # network ID -> CIDR

    @property
    def ips(self) -> dict[str, str]:
        return {k: v.split("/")[0] for k, v in self.addrs.items()}


class Overlay:
    """ovctl and kernel views of a dev cluster."""

    def __init__(self, dev: E2ECluster) -> None:
        self.dev = dev

    def ovctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = self.dev.ovctl(*args)
        if check and r.returncode != 0:
            raise AssertionError(f"ovctl {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def json(self, *args: str) -> Any:
        return json.loads(self.ovctl(*args, "--format", "json").stdout)

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Hostname -> node."""
        return {n["description"]["hostname"]: n for n in self.json("node", "ls")}

    def tasks(self, service: str) -> list[TaskView]:
        hosts = {n["meta"]["id"]: h for h, n in self.nodes().items()}
        out = []
        for t in self.json("service", "ps", service):
            out.append(
                TaskView(
                    id=t["meta"]["id"],
                    service=t["service_name"],
                    slot=int(t["slot"]),
                    node_id=t["node_id"],
                    host=hosts.get(t["node_id"], ""),
                    state=t["status"]["state"],
                    desired=t["desired_state"],
                    addrs={a["network_id"]: a["addresses"][0] for a in t["networks"]},
                )
            )
        return out

    def running(self, service: str, count: int, timeout: float = 40.0) -> list[TaskView]:
        """Wait until exactly `count` tasks of the service run and no other is meant to."""

        def check() -> list[TaskView] | None:
            tasks = [t for t in self.tasks(service) if t.desired == "TASK_STATE_RUNNING"]
            if len(tasks) == count and all(t.state == "TASK_STATE_RUNNING" for t in tasks):
                return tasks
            return None

        return wait_for(f"{count} running tasks of {service}", check, timeout=timeout)

    def network_id(self, name: str) -> str:
        return str(self.json("network", "inspect", name)[0]["meta"]["id"])

    # ------------------------------------------------------------------ kernel views

    def names(self, host: str) -> Names:
        return Names(f"{self.dev.name_prefix}{host}-")

    def sandbox(self, task: TaskView) -> str:
        return self.names(task.host).sandbox_ns(task.id)

    def in_sandbox(
        self, task: TaskView, code: str, timeout: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.sandbox(task), sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def http_get(self, task: TaskView, ip: str, port: int = 8080) -> bool:
        code = (
            "import socket,sys\n"
            f"s=socket.create_connection(({ip!r},{port}),timeout=3)\n"
            "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
            "d=s.recv(64)\n"
            "sys.exit(0 if d.startswith(b'HTTP/1.0 200') else 1)\n"
        )
        return self.in_sandbox(task, code).returncode == 0

    def task_namespaces(self, host: str) -> set[str]:
        """The host's sandboxes and network namespaces, but for the ingress sandbox and the
        ingress network's, which every host keeps (the routing mesh)."""
        names = self.names(host)
        keep = {names.sandbox_ns(INGRESS_SANDBOX), names.network_ns(self.network_id("ingress"))}
        return {
            n
            for n in self.netns_list()
            if (names.is_sandbox_ns(n) or names.is_network_ns(n)) and n not in keep
        }

    def netns_list(self) -> set[str]:
        out = run(["ip", "netns", "list"])
        return {line.split()[0] for line in out.splitlines() if line.strip()}

    def host_state(self, host: str, network_id: str) -> dict[str, Any]:
        """What the host's data plane holds for one network: veths on the bridge, FDB
        entries on the VXLAN device (mac -> dst), neighbour entries (ip -> mac), sandboxes."""
        names = self.names(host)
        ns = names.network_ns(network_id)
        present = ns in self.netns_list()
        state: dict[str, Any] = {"present": present, "veths": set(), "fdb": set(), "neigh": set()}
        # Task sandboxes only: every host also has its ingress sandbox (the routing mesh's end).
        ingress = names.sandbox_ns(INGRESS_SANDBOX)
        sandboxes = {n for n in self.netns_list() if names.is_sandbox_ns(n) and n != ingress}
        state["sandboxes"] = sandboxes
        if not present:
            return state
        try:
            return self._network_state(state, names, ns)
        except AssertionError as e:
            if ns not in self.netns_list():
                # Removed between the listing and the dumps (the agent is fast): absent.
                return {**state, "present": False, "veths": set(), "fdb": set(), "neigh": set()}
            if "Cannot find device" in str(e):
                # Being taken apart (devices go before their namespace): still present.
                return {**state, "veths": set(), "fdb": set(), "neigh": set()}
            raise

    def _network_state(self, state: dict[str, Any], names: Names, ns: str) -> dict[str, Any]:
        links = json.loads(run(["ip", "-n", ns, "-j", "link", "show", "master", names.bridge]))
        state["veths"] = {lk["ifname"] for lk in links if lk["ifname"] != names.vxlan}
        fdb = json.loads(run(["bridge", "-n", ns, "-j", "fdb", "show", "dev", names.vxlan]))
        state["fdb"] = {
            (e["mac"], e["dst"])
            for e in fdb
            if e.get("dst") and "permanent" in e.get("state", "permanent")
        }
        neigh = json.loads(run(["ip", "-n", ns, "-j", "neigh", "show", "dev", names.vxlan]))
        state["neigh"] = {(e["dst"], e.get("lladdr", "")) for e in neigh}
        return state

    def expected_state(
        self, host: str, network_id: str, tasks: list[TaskView]
    ) -> tuple[set[tuple[str, str]], set[tuple[str, str]], int]:
        """FDB and neighbour entries a host must hold for the other hosts' tasks, and how many
        veths its own tasks need."""
        nodes = self.nodes()
        fdb: set[tuple[str, str]] = set()
        neigh: set[tuple[str, str]] = set()
        local = 0
        for t in tasks:
            if network_id not in t.ips:
                continue
            if t.host == host:
                local += 1
                continue
            vtep = nodes[t.host]["description"]["addr"]
            ip = t.ips[network_id]
            fdb.add((endpoint_mac(ip), vtep))
            fdb.add(("00:00:00:00:00:00", vtep))
            neigh.add((ip, endpoint_mac(ip)))
        return fdb, neigh, local
