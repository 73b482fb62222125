"""`service create` and `stack deploy` until "converged": what waiting for the truth costs.

Brings up a dev cluster of 3 hosts and a client namespace on the underlay. Each round times,
with ovctl's code run in this process (a Python start is not counted):

* converged: `service create` (3 replicas of an HTTP server, a port published through the
  routing mesh), which returns once the manager says every host programmed the replicas;
  right after it returns, one request to each host's published port (all must answer:
  `answered_at_return`);
* mesh (the peer, measured the same way as bench.mesh): `service create -d`, then polling every
  host's published port every 20 ms until each has answered from all 3 replicas;
* stack: `stack deploy` of a 3-service, 2-network compose file (a healthcheck, an alias, a
  host-mode port, a placement constraint) until every service converged.

Services and the stack are removed between rounds. Prints medians and the ratio
converged / mesh, and writes JSON.

    .venv/bin/python -m bench.converge [--rounds 5] [--out FILE]
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
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import write_results
from bench.mesh import REPLICAS, WHOAMI, ask, ovctl
from ovctl.cli import main as ovctl_main
from ovctl.devcluster.cluster import DevCluster

HOSTS = 3
CHECK = "import socket; socket.create_connection(('127.0.0.1', 8080), 1)"


def compose_file(directory: Path) -> Path:
    """The stack of tests/e2e/test_stack.py, without what it has to test the loader."""
    whoami = json.dumps(WHOAMI)
    path = directory / "stack.yml"
    path.write_text(f"""\
services:
  web:
    command: {whoami}
    networks: [front]
    ports: ["18880:8080"]
    healthcheck:
      test: ["CMD", "{sys.executable}", "-c", "{CHECK}"]
      interval: 300ms
      retries: 2
    deploy:
      replicas: 2
  api:
    command: {whoami}
    networks:
      front:
        aliases: [gateway]
      back: {{}}
    ports:
      - {{target: 8080, published: 18890, mode: host}}
  db:
    command: {whoami}
    networks: [back]
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      placement:
        constraints: [node.hostname!=h1]
        max_replicas_per_node: 1
networks:
  front: {{}}
  back:
    internal: true
""")
    return path


def timed(dev: DevCluster, *args: str) -> float:
    """Seconds `ovctl ARGS` takes, run in this process, output dropped."""
    t0 = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = ovctl_main(["-H", dev.manager_addr, *args])
    if rc != 0:
        raise RuntimeError(f"ovctl {' '.join(args)} failed ({rc})")
    return time.monotonic() - t0


def mesh_round(dev: DevCluster, name: str, port: int, client: str) -> float:
    """`service create -d`, then until every host's port answered from every replica."""
    addrs = [dev.host_addr(h) for h in dev.hosts]
    seen: dict[str, set[str]] = {a: set() for a in addrs}
    t0 = time.monotonic()
    timed(dev, "service", "create", "-d", "--name", name, "--replicas", str(REPLICAS),
          "--publish", f"{port}:8080", "--", *WHOAMI)  # fmt: skip
    while not all(len(s) >= REPLICAS for s in seen.values()):
        if time.monotonic() - t0 > 60:
            raise RuntimeError(f"{name}: the mesh did not answer from every replica: {seen}")
        for a in addrs:
            for _ in range(4 if len(seen[a]) < REPLICAS else 0):
                if got := ask(client, a, port):
                    seen[a].add(got)
        time.sleep(0.02)
    return time.monotonic() - t0


def one_round(dev: DevCluster, n: int, client: str, stack: Path) -> dict[str, float]:
    name, port = f"conv{n}", 18200 + n
    converged = timed(dev, "service", "create", "-q", "--name", name, "--replicas",
                      str(REPLICAS), "--publish", f"{port}:8080", "--", *WHOAMI)  # fmt: skip
    answered = sum(1 for h in dev.hosts if ask(client, dev.host_addr(h), port))
    ovctl(dev, "service", "rm", name)
    mesh = mesh_round(dev, f"mesh{n}", 18300 + n, client)
    ovctl(dev, "service", "rm", f"mesh{n}")
    deployed = timed(dev, "stack", "deploy", "-q", "-c", str(stack), f"st{n}")
    ovctl(dev, "stack", "rm", f"st{n}")
    return {
        "converged_s": converged,
        "answered_at_return": answered,
        "mesh_s": mesh,
        "stack_deploy_s": deployed,
    }


def run(rounds: int, out: Path) -> dict[str, Any]:
    dev = DevCluster(
        name_prefix=f"ovc{os.getpid() % 10000}-",
        hosts=HOSTS,
        subnet="198.51.100.128/26",
        manager_args=["--heartbeat-period", "0.5"],
        agent_args=["--reconcile-interval", "1", "--drain-delay", "1"],
        die_with_parent=True,
    )
    results: list[dict[str, float]] = []
    try:
        dev.up()
        os.environ.update(dev.ovctl_env())  # the in-process ovctl's credentials
        client = dev.add_client("bench").netns
        with tempfile.TemporaryDirectory(prefix="ovbench-") as tmp:
            stack = compose_file(Path(tmp))
            for n in range(rounds):
                r = one_round(dev, n, client, stack)
                results.append(r)
                print(
                    f"round {n + 1}: service create -> converged {r['converged_s']:.3f} s "
                    f"({r['answered_at_return']:.0f}/{HOSTS} hosts answered at once); mesh "
                    f"(create -d, polled) {r['mesh_s']:.3f} s; stack deploy -> converged "
                    f"{r['stack_deploy_s']:.3f} s",
                    flush=True,
                )
                time.sleep(1.0)
    finally:
        dev.down()
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    ratio = med["converged_s"] / med["mesh_s"]
    print(
        f"\nmedian of {rounds}: service create -> converged {med['converged_s']:.3f} s, "
        f"mesh {med['mesh_s']:.3f} s (converged/mesh {ratio:.2f}), stack deploy -> converged "
        f"{med['stack_deploy_s']:.3f} s; hosts answering right after the create returned: "
        f"{min(r['answered_at_return'] for r in results):.0f}/{HOSTS} at worst"
    )
    report = {
        "bench": "converge",
        "hosts": HOSTS,
        "replicas": REPLICAS,
        "rounds": results,
        "median": med,
        "converged_over_mesh": ratio,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_results(out, report)
    print(f"wrote {out}")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/converge.json"))
    a = p.parse_args()
    run(a.rounds, a.out)


if __name__ == "__main__":
    main()
