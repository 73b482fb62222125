"""Overlay TCP throughput between tasks on two hosts, beside a hand-built VXLAN.

Brings up a 2-host dev cluster (`ovctl dev`, hosts in network namespaces on a bridge), runs an
iperf3 server as a 2-replica service spread over both hosts, and measures task -> task
throughput over ovnet's data plane (veth -> bridge -> VXLAN -> underlay -> VXLAN -> bridge ->
veth). In the same run, between the same two host namespaces, it builds the physical limit by
hand: one `ip link add ... type vxlan` per host with one static FDB entry, and the bare
underlay itself, and measures both with the same iperf3 settings. Prints the figures and the
ratio, and writes them to JSON.

    .venv/bin/python -m bench.overlay_throughput [--seconds 5] [--repeat 3] [--out FILE]
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

HAND_VNI = 99
HAND_PORT = 4790


def sh(argv: list[str], timeout: float = 60) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def iperf(client_ns: str, server_ip: str, port: int, seconds: int) -> float:
    """Gbit/s received by the server, from iperf3's JSON report."""
    out = sh(
        ["ip", "netns", "exec", client_ns, "iperf3", "-J", "-c", server_ip, "-p", str(port),
         "-t", str(seconds), "-O", "1"],
        timeout=seconds + 30,
    )  # fmt: skip
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def wait_listening(ns: str, port: int) -> None:
    for _ in range(100):
        if sh(["ip", "netns", "exec", ns, "ss", "-Hltn", "sport", f"= :{port}"]).strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"iperf3 server in {ns} did not listen on {port}")


def run(seconds: int, repeat: int, out: Path) -> dict[str, object]:
    dev = DevCluster(
        name_prefix=f"ovb{os.getpid() % 100000}-",
        hosts=2,
        subnet="198.51.100.128/26",
        agent_args=["--reconcile-interval", "5"],
        die_with_parent=True,
    )
    servers: list[subprocess.Popen[bytes]] = []
    try:
        dev.up()
        h1, h2 = dev.host_ns("h1"), dev.host_ns("h2")
        # ovnet: an iperf3 server task on each host.
        for argv in (
            ["network", "create", "--subnet", "10.90.0.0/24", "perf"],
            ["service", "create", "-d", "--name", "iperf", "--network", "perf", "--replicas", "2",
             "--", "iperf3", "-s", "-p", "5201"],
        ):  # fmt: skip
            r = dev.ovctl(*argv)
            if r.returncode:
                raise RuntimeError(r.stderr)
        tasks: list[dict[str, Any]] = []
        for _ in range(300):
            ps = json.loads(dev.ovctl("service", "ps", "iperf", "--format", "json").stdout)
            tasks = [t for t in ps if t["status"]["state"] == "TASK_STATE_RUNNING"]
            if len(tasks) == 2:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"iperf tasks did not start: {ps}")
        nodes = {
            n["meta"]["id"]: n["description"]["hostname"]
            for n in json.loads(dev.ovctl("node", "ls", "--format", "json").stdout)
        }
        by_host = {nodes[str(t["node_id"])]: t for t in tasks}
        if set(by_host) != {"h1", "h2"}:
            raise RuntimeError(f"tasks not spread over both hosts: {sorted(by_host)}")
        src, dst = by_host["h1"], by_host["h2"]
        src_ns = Names(f"{dev.name_prefix}h1-").sandbox_ns(src["meta"]["id"])
        dst_ip = dst["networks"][0]["addresses"][0].split("/")[0]
        wait_listening(Names(f"{dev.name_prefix}h2-").sandbox_ns(dst["meta"]["id"]), 5201)

        # Hand-built VXLAN between the same two host namespaces, and the bare underlay.
        mtu = int(json.loads(sh(["ip", "-n", h1, "-j", "link", "show", "eth0"]))[0]["mtu"])
        for ns, me, peer, local in (
            (h1, "10.91.0.1", dev.host_addr("h2"), dev.host_addr("h1")),
            (h2, "10.91.0.2", dev.host_addr("h1"), dev.host_addr("h2")),
        ):
            vxlan = ["type", "vxlan", "id", str(HAND_VNI), "local", local]
            vxlan += ["dstport", str(HAND_PORT), "nolearning"]
            sh(["ip", "-n", ns, "link", "add", "ovbhand", "mtu", str(mtu - 50), *vxlan])
            sh(["ip", "-n", ns, "addr", "add", f"{me}/24", "dev", "ovbhand"])
            sh(["ip", "-n", ns, "link", "set", "ovbhand", "up"])
            sh(["bridge", "-n", ns, "fdb", "append", "00:00:00:00:00:00", "dev", "ovbhand",
                "dst", peer])  # fmt: skip
        server = ["ip", "netns", "exec", h2, "iperf3", "-s", "-p", "5202"]
        servers.append(
            subprocess.Popen(server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        wait_listening(h2, 5202)

        results: dict[str, list[float]] = {"ovnet": [], "hand_vxlan": [], "underlay": []}
        for _ in range(repeat):
            results["ovnet"].append(iperf(src_ns, dst_ip, 5201, seconds))
            results["hand_vxlan"].append(iperf(h1, "10.91.0.2", 5202, seconds))
            results["underlay"].append(iperf(h1, dev.host_addr("h2"), 5202, seconds))
        med = {k: statistics.median(v) for k, v in results.items()}
        report: dict[str, object] = {
            "bench": "overlay_throughput",
            "seconds": seconds,
            "repeat": repeat,
            "gbit_s": results,
            "median_gbit_s": med,
            "ratio_to_hand_vxlan": med["ovnet"] / med["hand_vxlan"],
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        }
        print(f"underlay (veth + bridge):   {med['underlay']:6.2f} Gbit/s")
        print(f"hand-built VXLAN:           {med['hand_vxlan']:6.2f} Gbit/s")
        print(f"ovnet task -> task:         {med['ovnet']:6.2f} Gbit/s")
        print(f"ovnet / hand-built VXLAN:   {report['ratio_to_hand_vxlan']:.2f} (goal >= 0.9)")
        write_results(out, report)
        print(f"wrote {out}")
        return report
    finally:
        for s in servers:
            s.kill()
            s.wait()
        dev.down()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench/results/overlay_throughput.json"))
    args = p.parse_args()
    run(args.seconds, args.repeat, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
