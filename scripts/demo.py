"""The main job: a 3-host cluster in network namespaces, a service spread over it, and traffic
between its tasks across hosts over the VXLAN overlay.

Runs `ovctl dev up` (an underlay bridge on 198.51.100.0/26, three hosts as network namespaces,
a private etcd, a manager, and an agent inside each host), then drives `ovctl` the way a Docker
Swarm user would, printing every command and its output: an overlay network, a 3-replica
`python3 -m http.server` service spread one task per host, an HTTP request from the task on
one host to the task on another host by overlay IP (and the VXLAN packets on the underlay that
carried it), scaling, draining a host, a refused request, and removal. `ovctl dev down` at the
end removes everything, even when a step fails.

The service publishes port 8080 through the routing mesh: from a client namespace on the
underlay, requests to every host's address are answered, spread over the replicas on all three
hosts; and a task finds the others by name through its embedded resolver (127.0.0.11).
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.model import Names  # noqa: E402

BIN = Path(sys.executable).parent
PREFIX = os.environ.get("OVNET_DEMO_PREFIX", "ovdemo-")


def sh(argv: list[str], *, show: bool = True, check: bool = True) -> str:
    if show:
        print(f"\n$ {shlex.join(argv)}", flush=True)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if show:
        sys.stdout.write(res.stdout)
        sys.stdout.write(res.stderr)
    if check and res.returncode != 0:
        if not show:
            sys.stdout.write(res.stdout + res.stderr)
        raise SystemExit(f"{shlex.join(argv)} failed with exit status {res.returncode}")
    return res.stdout


def ovctl(*args: str, show: bool = True, expect_fail: bool = False) -> str:
    argv = [str(BIN / "ovctl"), *args]
    if expect_fail:
        print(f"\n$ {shlex.join(['ovctl', *args])}", flush=True)
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        sys.stdout.write(res.stdout + res.stderr)
        print(f"(exit status {res.returncode}, as expected)")
        if res.returncode == 0:
            raise SystemExit("expected this command to fail")
        return res.stdout
    if show:
        print(f"\n$ {shlex.join(['ovctl', *args])}", flush=True)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if show:
        sys.stdout.write(res.stdout + res.stderr)
    if res.returncode != 0:
        if not show:
            sys.stdout.write(res.stdout + res.stderr)
        raise SystemExit(f"ovctl {' '.join(args)} failed with exit status {res.returncode}")
    return res.stdout


def running(service: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = json.loads(ovctl("service", "ps", service, "--format", "json", show=False))
        live = [t for t in tasks if t["desired_state"] == "TASK_STATE_RUNNING"]
        if len(live) == count and all(t["status"]["state"] == "TASK_STATE_RUNNING" for t in live):
            return live
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {count} running tasks of {service}")


def hostnames() -> dict[str, str]:
    nodes = json.loads(ovctl("node", "ls", "--format", "json", show=False))
    return {n["meta"]["id"]: n["description"]["hostname"] for n in nodes}


def routing_mesh() -> None:
    """12 requests to port 8080 of each host's underlay address, from a client namespace on
    the underlay: which replica answered each."""
    from ovctl.devcluster.cluster import DevCluster

    dev = DevCluster.load(PREFIX)
    client = dev.clients.get("demo") or dev.add_client("demo")
    code = (
        "import collections,sys,urllib.request\n"
        "c=collections.Counter()\n"
        "for _ in range(12):\n"
        "    c[urllib.request.urlopen(f'http://{sys.argv[1]}:8080/',timeout=5).read().split()[0]"
        ".decode()]+=1\n"
        "print(sys.argv[1], '->', dict(c))\n"
    )
    print(
        f"\nThe routing mesh: port 8080 published on every host, asked from {client.netns} "
        f"({client.addr}) on the underlay; each answer names the replica that served it:"
    )
    for host in dev.hosts:
        sh(["ip", "netns", "exec", client.netns, "python3", "-c", code, dev.host_addr(host)])


def main() -> int:
    env_ctx = REPO / ".demo-context.yaml"
    os.environ["OVCTL_CONFIG"] = str(env_ctx)  # point ovctl at the dev cluster, not ~/.config
    try:
        sh([str(BIN / "ovctl"), "dev", "up", "--prefix", PREFIX, "--hosts", "3"])
        sh([str(BIN / "ovctl"), "dev", "status", "--prefix", PREFIX])
        ovctl("node", "ls")
        ovctl("network", "create", "--subnet", "10.10.0.0/24", "front")
        # scripts/whoami.py: an HTTP server that answers with the replica's own address.
        ovctl(
            "service", "create", "-d", "--name", "web", "--network", "front", "--replicas", "3",
            "--publish", "8080:8080", "--health-tcp", "8080", "--",
            "python3", str(REPO / "scripts/whoami.py"), "8080",
        )  # fmt: skip
        tasks = running("web", 3)
        ovctl("service", "ps", "web")
        hosts = hostnames()
        by_host = {hosts[t["node_id"]]: t for t in tasks}
        print(f"\nOne task per host: {sorted(by_host)}")
        src, dst = by_host["h1"], by_host["h2"]
        dst_ip = dst["networks"][0]["addresses"][0].split("/")[0]
        sandbox = Names(f"{PREFIX}h1-").sandbox_ns(src["meta"]["id"])
        print(
            f"\nAn HTTP request from web.{src['slot']} on h1 (netns {sandbox}) to "
            f"web.{dst['slot']} on h2 at {dst_ip}, over the overlay:"
        )
        host_ns = f"/run/netns/{PREFIX}h1"
        cap = subprocess.Popen(
            ["nsenter", f"--net={host_ns}", "tcpdump", "-nn", "-l", "-c", "40", "-i", "eth0",
             "udp", "port", "4789"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        time.sleep(0.5)
        try:
            code = (
                "import urllib.request;"
                f"r=urllib.request.urlopen('http://{dst_ip}:8080/',timeout=5);"
                "print(r.status, r.reason, 'from', r.read().decode().split()[0])"
            )
            sh(["ip", "netns", "exec", sandbox, "python3", "-c", code])
            time.sleep(0.5)
        finally:
            cap.terminate()
            out, _ = cap.communicate(timeout=10)
        # tcpdump prints each VXLAN packet as the outer line followed by the inner one.
        lines = out.splitlines()
        pairs = [
            f"{outer}\n    {inner}"
            for outer, inner in itertools.pairwise(lines)
            if "vni" in outer and ".8080" in inner
        ]
        print("\nThe same request on h1's underlay (tcpdump on eth0): TCP inside VXLAN")
        print("\n".join(pairs[:4]) or "(no packet captured)")
        print("\nNames, from the same task (its resolv.conf points at 127.0.0.11):")
        sh(["ip", "netns", "exec", sandbox, "getent", "hosts", "web"])
        sh(["ip", "netns", "exec", sandbox, "getent", "ahostsv4", "tasks.web"])
        routing_mesh()
        ovctl("service", "scale", "-d", "web=6")
        running("web", 6)
        ovctl("service", "ps", "web")
        ovctl("node", "update", "--availability", "drain", "h3")
        deadline = time.monotonic() + 60
        while any(hosts[t["node_id"]] == "h3" for t in running("web", 6)):
            if time.monotonic() > deadline:
                raise SystemExit("h3's tasks did not move")
            time.sleep(0.5)
        ovctl("service", "ps", "--filter", "desired-state=running", "web")
        print("\nBad input gets a clear error and a non-zero exit status:")
        ovctl("network", "create", "--subnet", "10.10.0.128/25", "clash", expect_fail=True)
        ovctl("service", "rm", "web")
        # The network is released once the last task has stopped.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rm = [str(BIN / "ovctl"), "network", "rm", "front"]
            res = subprocess.run(rm, capture_output=True)
            if res.returncode == 0:
                break
            time.sleep(0.3)
        ovctl("network", "ls")
        print("\ndemo finished: real etcd, manager and agents; real namespaces, VXLAN and TCP")
        return 0
    finally:
        sh([str(BIN / "ovctl"), "dev", "down", "--prefix", PREFIX], check=False)
        env_ctx.unlink(missing_ok=True)


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
