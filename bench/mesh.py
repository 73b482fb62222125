"""Service create → every replica answering through the published port on every host, and
`tasks.SERVICE` complete in every host's resolver.

Brings up a dev cluster of 3 hosts (`ovctl dev`: hosts in network namespaces on a bridge), an
overlay network with a global "probe" service (one idle task per host, whose sandboxes ask
the resolvers), and a client namespace on the underlay. Each round then times, from just
before `ovctl service create` (3 replicas of an HTTP server that says which replica answered,
a port published through the routing mesh) until:

* mesh: from the client, every host's published port has answered from all 3 replicas;
* dns: every host's resolver (asked from the probe task on that host) returns 3 addresses for
  `tasks.SERVICE`;

polling every 20 ms with sockets made inside the namespaces (no process per probe), and with
`ovctl service create` run in this process (so a Python start is not counted). The
service is removed between rounds. Prints the median of the rounds beside Docker Swarm's figure
on this machine (from the issue) and writes JSON.

    .venv/bin/python -m bench.mesh [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from dnslib import DNSRecord

from agent.model import Names
from agent.netns import socket_in_netns
from ovctl.cli import main as ovctl_main
from ovctl.devcluster.cluster import DevCluster

HOSTS = 3
REPLICAS = 3
WHOAMI = [sys.executable, str(Path(__file__).parent.parent / "scripts/whoami.py"), "8080"]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(1e9)"]
REFERENCE = {"swarm_20.10_tasks_dns_complete_3_hosts_s": 2.67}
GOAL_S = 0.5


def ovctl(dev: DevCluster, *args: str) -> str:
    r = dev.ovctl(*args)
    if r.returncode != 0:
        raise RuntimeError(f"ovctl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def ask(netns: str, addr: str, port: int) -> str | None:
    """One request to addr:port from inside netns: the answering replica's address."""
    try:
        s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        s.settimeout(0.5)
        s.connect((addr, port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        ok = head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))  # busybox httpd says 1.1
        return body.split()[0].decode() if ok and body else None
    except OSError:
        return None
    finally:
        s.close()


def tasks_answer(netns: str, name: str) -> int:
    """How many addresses the sandbox's resolver gives for `name` (0 on any failure)."""
    try:
        s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return 0
    try:
        s.settimeout(0.5)
        s.sendto(DNSRecord.question(name).pack(), ("127.0.0.11", 53))
        return len(DNSRecord.parse(s.recv(4096)).rr)
    except (OSError, ValueError):
        return 0
    finally:
        s.close()


def one_round(dev: DevCluster, n: int, client: str, probes: dict[str, str]) -> dict[str, float]:
    name, port = f"web{n}", 18100 + n
    addrs = {h: dev.host_addr(h) for h in dev.hosts}
    seen: dict[str, set[str]] = {h: set() for h in dev.hosts}
    mesh_done: float | None = None
    dns_done: dict[str, float] = {}
    t0 = time.monotonic()
    # ovctl's own code, in this process: the figure is the cluster's, not a Python start's.
    with contextlib.redirect_stdout(io.StringIO()):
        rc = ovctl_main(["-H", dev.manager_addr, "service", "create", "-d", "--name", name,
                         "--network", "bnet", "--replicas", str(REPLICAS), "--publish",
                         f"{port}:8080", "--", *WHOAMI])  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"service create {name} failed ({rc})")
    created = time.monotonic() - t0
    while mesh_done is None or len(dns_done) < len(probes):
        if time.monotonic() - t0 > 60:
            raise RuntimeError(f"round {n}: not converged after 60 s: {seen} {dns_done}")
        if mesh_done is None:
            for h, addr in addrs.items():
                for _ in range(4 if len(seen[h]) < REPLICAS else 0):
                    got = ask(client, addr, port)
                    if got:
                        seen[h].add(got)
            if all(len(s) >= REPLICAS for s in seen.values()):
                mesh_done = time.monotonic() - t0
        for h, ns in probes.items():
            if h not in dns_done and tasks_answer(ns, f"tasks.{name}") >= REPLICAS:
                dns_done[h] = time.monotonic() - t0
        time.sleep(0.02)
    ovctl(dev, "service", "rm", name)
    return {
        "ovctl_create_s": created,
        "mesh_s": mesh_done,
        "dns_s": max(dns_done.values()),
        "both_s": max(mesh_done, *dns_done.values()),
    }


def run(rounds: int, out: Path) -> dict[str, Any]:
    dev = DevCluster(
        name_prefix=f"ovs{os.getpid() % 10000}-",
        hosts=HOSTS,
        subnet="198.51.100.128/26",
        manager_args=["--heartbeat-period", "0.5"],
        agent_args=["--reconcile-interval", "1"],
        die_with_parent=True,
    )
    results: list[dict[str, float]] = []
    try:
        dev.up()
        # The in-process ovctl calls use the cluster's admin credentials (its context file).
        os.environ.update(dev.ovctl_env())
        ovctl(dev, "network", "create", "--subnet", "10.98.0.0/24", "bnet")
        ovctl(dev, "service", "create", "-d", "--name", "probe", "--network", "bnet", "--mode",
              "global", "--", *SLEEPER)  # fmt: skip
        client = dev.add_client("bench").netns
        nodes = {n["meta"]["id"]: n["description"]["hostname"]
                 for n in json.loads(ovctl(dev, "node", "ls", "--format", "json"))}  # fmt: skip
        probes: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while len(probes) < HOSTS and time.monotonic() < deadline:
            for t in json.loads(ovctl(dev, "service", "ps", "probe", "--format", "json")):
                if t["status"]["state"] == "TASK_STATE_RUNNING":
                    host = nodes[t["node_id"]]
                    probes[host] = Names(f"{dev.name_prefix}{host}-").sandbox_ns(t["meta"]["id"])
            time.sleep(0.2)
        if len(probes) < HOSTS:
            raise RuntimeError(f"probe tasks not running on every host: {probes}")
        for n in range(rounds):
            r = one_round(dev, n, client, probes)
            results.append(r)
            print(
                f"round {n + 1}: mesh {r['mesh_s']:.3f} s, tasks.* {r['dns_s']:.3f} s, "
                f"both {r['both_s']:.3f} s (the create call itself {r['ovctl_create_s']:.3f} s)",
                flush=True,
            )
            time.sleep(1.0)
    finally:
        dev.down()
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(
        f"\nmedian of {rounds}: both {med['both_s']:.3f} s (mesh {med['mesh_s']:.3f} s, "
        f"tasks.* {med['dns_s']:.3f} s); goal <= {GOAL_S} s; Docker Swarm 20.10 here: "
        f"{REFERENCE['swarm_20.10_tasks_dns_complete_3_hosts_s']} s for tasks.* alone"
    )
    report = {
        "bench": "mesh",
        "hosts": HOSTS,
        "replicas": REPLICAS,
        "rounds": results,
        "median": med,
        "goal_s": GOAL_S,
        "reference": REFERENCE,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/mesh.json"))
    a = p.parse_args()
    run(a.rounds, a.out)


if __name__ == "__main__":
    main()
