"""Image tasks against process tasks: time to serve through the mesh, and what each costs.

Brings up a dev cluster of 3 hosts whose agents run podman on the tests' private store
(bench/images.py), and a client namespace on the underlay. Then, in one run:

* converge: each round times, from just before `ovctl service create` (3 replicas publishing a
  port through the routing mesh) until every host's published port has answered from all 3
  replicas, polled every 20 ms from the client. Rounds alternate a process service
  (scripts/whoami.py) and an image service (the test image's own command: busybox httpd and a
  CGI script), so both meet the same cluster; each service is removed after its round.
* overhead: 10 replicas on one host, once as processes and once as containers: the agent's
  RSS before and with them, and per task the RSS of what runs it (the shim; for a container
  also the attached `podman run` and conmon) apart from the workload itself.

    .venv/bin/python -m bench.containers [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import images, write_results
from bench.footprint import cmdline, descendants, mem_of, ppid_map, python_pid, wait_running
from bench.mesh import ask
from ovctl.cli import main as ovctl_main
from ovctl.devcluster.cluster import DevCluster

HOSTS = 3
REPLICAS = 3
DENSE = 10
WHOAMI = [sys.executable, str(Path(__file__).parent.parent / "scripts/whoami.py"), "8080"]
KINDS = ("process", "image")


def ovctl(dev: DevCluster, *args: str) -> str:
    r = dev.ovctl(*args)
    if r.returncode != 0:
        raise RuntimeError(f"ovctl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def workload(kind: str, image: str) -> list[str]:
    """`service create` arguments for the kind: both serve port 8080 and say who answered."""
    return ["--image", image] if kind == "image" else ["--", *WHOAMI]


def converge(dev: DevCluster, n: int, kind: str, image: str, client: str) -> dict[str, float]:
    name, port = f"{kind[0]}{n}", 18300 + n
    addrs = [dev.host_addr(h) for h in dev.hosts]
    seen: dict[str, set[str]] = {a: set() for a in addrs}
    t0 = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = ovctl_main(["-H", dev.manager_addr, "service", "create", "-d", "--name", name,
                         "--replicas", str(REPLICAS), "--publish", f"{port}:8080",
                         *workload(kind, image)])  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"service create {name} failed ({rc})")
    created = time.monotonic() - t0
    while not all(len(s) >= REPLICAS for s in seen.values()):
        if time.monotonic() - t0 > 90:
            raise RuntimeError(f"{kind} round {n}: not converged after 90 s: {seen}")
        for addr in addrs:
            for _ in range(4 if len(seen[addr]) < REPLICAS else 0):
                if got := ask(client, addr, port):
                    seen[addr].add(got)
        time.sleep(0.02)
    done = time.monotonic() - t0
    ovctl(dev, "service", "rm", name)
    return {"ovctl_create_s": created, "mesh_s": done}


def task_costs(state_dir: Path, kind: str) -> list[dict[str, int]]:
    """Per running task of the host: RSS (kB) of its shim, podman run, conmon and workload."""
    root = state_dir / ("containers/tasks" if kind == "image" else "tasks")
    parents = ppid_map()
    out = []
    for rec_path in sorted(root.glob("*/shim.json")):
        shim = int(json.loads(rec_path.read_text())["shim_pid"])
        costs: dict[str, int] = defaultdict(int)
        for pid in [shim, *descendants(parents, shim)]:
            m = mem_of(pid)
            if m is None:
                continue
            argv = cmdline(pid)
            exe = os.path.basename(argv[0]) if argv else ""
            role = "shim" if pid == shim else exe if exe in ("podman", "conmon") else "workload"
            costs[role] += m.rss_kb
        out.append(dict(costs))
    return out


def overhead(dev: DevCluster, kind: str, image: str) -> dict[str, Any]:
    host = dev.hosts[0]
    agent = python_pid(dev.pid(host) or 0, "agent.main")
    time.sleep(2)
    before = mem_of(agent)
    name = f"dense-{kind}"
    ovctl(dev, "service", "create", "-d", "--name", name, "--replicas", str(DENSE),
          "--constraint", f"node.hostname=={host}", *workload(kind, image))  # fmt: skip
    wait_running(dev, name, DENSE)
    time.sleep(3)
    after = mem_of(agent)
    costs = task_costs(dev.state_dir / host, kind)
    ovctl(dev, "service", "rm", name)
    deadline = time.monotonic() + 60
    while task_costs(dev.state_dir / host, kind) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert before is not None and after is not None
    roles = sorted({r for c in costs for r in c})
    per_task = {r: statistics.median(c.get(r, 0) for c in costs) for r in roles}
    runtime = sum(v for r, v in per_task.items() if r != "workload")
    return {
        "tasks": len(costs),
        "agent_rss_before_kb": before.rss_kb,
        "agent_rss_with_tasks_kb": after.rss_kb,
        "agent_rss_per_task_kb": (after.rss_kb - before.rss_kb) / DENSE,
        "per_task_rss_kb": per_task,
        "per_task_runtime_rss_kb": runtime,
    }


def run(rounds: int, out: Path) -> dict[str, Any]:
    podman = images.Podman()
    image = images.ensure_image(podman)
    dev = DevCluster(
        name_prefix=f"ovb{os.getpid() % 10000}-",
        hosts=HOSTS,
        subnet="198.51.100.128/26",
        manager_args=["--heartbeat-period", "0.5"],
        agent_args=["--reconcile-interval", "1", "--stop-timeout", "2", *podman.agent_args()],
        die_with_parent=True,
    )
    results: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    costs: dict[str, dict[str, Any]] = {}
    try:
        dev.up()
        os.environ.update(dev.ovctl_env())
        client = dev.add_client("bench").netns
        for n in range(rounds):
            for kind in KINDS:
                r = converge(dev, n, kind, image, client)
                results[kind].append(r)
                print(f"round {n + 1} {kind:7}: every replica through the mesh on every host "
                      f"after {r['mesh_s']:.3f} s", flush=True)  # fmt: skip
                time.sleep(1.0)
        for kind in KINDS:
            costs[kind] = overhead(dev, kind, image)
            c = costs[kind]
            before, after = c["agent_rss_before_kb"] / 1024, c["agent_rss_with_tasks_kb"] / 1024
            agent = f"{before:.1f} -> {after:.1f}"
            print(f"{DENSE} {kind} tasks on one host: agent RSS {agent} MB; per task "
                  f"{c['per_task_runtime_rss_kb'] / 1024:.1f} MB to run it "
                  f"(median kB by role: {c['per_task_rss_kb']})", flush=True)  # fmt: skip
    finally:
        dev.down()
    med = {k: statistics.median(r["mesh_s"] for r in results[k]) for k in KINDS}
    ratio = med["image"] / med["process"]
    print(f"\nmedian of {rounds}: process {med['process']:.3f} s, image {med['image']:.3f} s "
          f"(image/process {ratio:.2f})")  # fmt: skip
    report = {
        "bench": "containers",
        "hosts": HOSTS,
        "replicas": REPLICAS,
        "rounds": results,
        "median_mesh_s": med,
        "image_over_process": ratio,
        "overhead": costs,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_results(out, report)
    print(f"wrote {out}")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/containers.json"))
    a = p.parse_args()
    run(a.rounds, a.out)


if __name__ == "__main__":
    main()
