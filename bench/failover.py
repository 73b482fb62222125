"""How fast a dead host's endpoints leave every other host's data plane, and come back.

Brings up a dev cluster of 5 hosts (`ovctl dev`: hosts in network namespaces on a bridge), runs
a 5-replica service spread one per host, stops the manager (so only gossip can change
anything), and then, round after round, kills one host (SIGKILL of its agent and tasks, its
link taken down) and polls every other host's VXLAN FDB every 20 ms until no entry points at
the dead host's VTEP; then starts it again and polls until every host has its entries back.
Prints the figures beside Serf's and Docker Swarm's on this machine (from the issue) and writes
JSON.

    .venv/bin/python -m bench.failover [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.model import Names
from bench import write_results
from ovctl.devcluster.cluster import DevCluster

HOSTS = 5
REFERENCE = {
    "serf_0.9.4_detect_sigkilled_agent_s": [5.3, 6.5],
    "swarm_sigkilled_host_tasks_in_dns_s": [13.1, 13.6],
}


def vteps_in_fdb(ns: str, vxlan: str) -> set[str]:
    out = subprocess.run(
        ["bridge", "-n", ns, "-j", "fdb", "show", "dev", vxlan],
        capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    try:
        return {e["dst"] for e in json.loads(out or "[]") if e.get("dst")}
    except ValueError:
        return set()


def poll(check: Any, timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.02)
    raise RuntimeError("timed out")


def run(rounds: int, out: Path) -> dict[str, Any]:
    dev = DevCluster(
        name_prefix=f"ovf{os.getpid() % 10000}-",
        hosts=HOSTS,
        subnet="198.51.100.128/26",
        manager_args=["--heartbeat-period", "0.5", "--heartbeat-grace", "600"],
        agent_args=["--reconcile-interval", "1"],
        die_with_parent=True,
    )
    detect: list[float] = []
    detect_first: list[float] = []
    restore: list[float] = []
    try:
        dev.up()
        r = dev.ovctl("network", "create", "--subnet", "10.99.0.0/24", "fnet")
        assert r.returncode == 0, r.stderr
        r = dev.ovctl("service", "create", "-d", "--name", "f", "--network", "fnet", "--replicas",
                      str(HOSTS), "--", sys.executable, "-m", "http.server", "8080")  # fmt: skip
        assert r.returncode == 0, r.stderr
        net_id = json.loads(dev.ovctl("network", "inspect", "fnet", "--format", "json").stdout)[0][
            "meta"
        ]["id"]
        hosts = dev.hosts
        ns = {h: Names(f"{dev.name_prefix}{h}-").network_ns(net_id) for h in hosts}
        vxlan = Names().vxlan
        vteps = {h: dev.host_addr(h) for h in hosts}

        def complete() -> bool:
            return all(
                vteps_in_fdb(ns[h], vxlan) == {vteps[o] for o in hosts if o != h} for h in hosts
            )

        poll(complete, 60)
        dev.stop_manager()
        for i in range(rounds):
            victim = hosts[(i % (HOSTS - 1)) + 1]
            others = [h for h in hosts if h != victim]
            seen: dict[str, float] = {}
            t0 = time.monotonic()
            dev.stop_host(victim)

            def forgot(
                others: list[str] = others,
                victim: str = victim,
                seen: dict[str, float] = seen,
                t0: float = t0,
            ) -> bool:
                for h in others:
                    if h not in seen and vteps[victim] not in vteps_in_fdb(ns[h], vxlan):
                        seen[h] = time.monotonic() - t0
                return len(seen) == len(others)

            poll(forgot)
            detect.append(max(seen.values()))
            detect_first.append(min(seen.values()))
            t1 = time.monotonic()
            dev.start_host(victim, wait=False)
            poll(complete)
            restore.append(time.monotonic() - t1)
            print(
                f"round {i + 1}: {victim} killed -> gone from every FDB after "
                f"{detect[-1]:.2f} s (first host {detect_first[-1]:.2f} s); started -> back "
                f"everywhere after {restore[-1]:.2f} s"
            )
            time.sleep(1.0)
    finally:
        dev.down()

    result: dict[str, Any] = {
        "machine": platform.node(),
        "hosts": HOSTS,
        "rounds": rounds,
        "detect_all_s": detect,
        "detect_first_s": detect_first,
        "restore_all_s": restore,
        "detect_all_median_s": statistics.median(detect),
        "detect_all_max_s": max(detect),
        "restore_all_median_s": statistics.median(restore),
        "reference": REFERENCE,
    }
    print()
    print(f"{'':44}{'median':>9}{'max':>9}")
    print(f"{'ovnet: dead host gone from every FDB':44}{result['detect_all_median_s']:9.2f}"
          f"{result['detect_all_max_s']:9.2f}")  # fmt: skip
    print(f"{'ovnet: restarted host back in every FDB':44}{result['restore_all_median_s']:9.2f}"
          f"{max(restore):9.2f}")  # fmt: skip
    print(f"{'Serf 0.9.4, 10 agents: SIGKILL detected':44}{'5.3-6.5 s':>18}")
    print(f"{'Docker Swarm: SIGKILLed host still in DNS':44}{'13.1-13.6 s':>18}")
    write_results(out, result)
    print(f"\nwritten to {out}")
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/failover.json"))
    args = p.parse_args()
    run(args.rounds, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
