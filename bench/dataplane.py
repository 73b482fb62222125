"""Data-plane benchmark: endpoint creation time and bulk remote-endpoint programming.

Runs as root, entirely inside network namespaces it creates (prefix ovb<pid>-) and removes:
a "host" netns with an underlay address on a veth plays the agent's host namespace.

(a) endpoint creation: N sandboxes (netns + veth into the network's bridge + address, MAC, MTU,
    lo up, resolv.conf/hosts), added one reconcile at a time; median/p90 of the reconcile
    (observe + plan + apply) and of the apply alone. Run once without and once with the
    gwbridge leg (egress).
(b) remote endpoints: one reconcile that programs R remote endpoints (FDB MAC + neighbour per
    endpoint, zero-MAC FDB per VTEP), then a no-op reconcile with all of them present; and,
    for comparison, the same requests through pyroute2's AsyncIPRoute with asyncio.gather.

    .venv/bin/python -m bench.dataplane [--endpoints 50] [--remotes 10000] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from agent.dataplane import nl
from agent.dataplane.kernel import DataPlane
from agent.model import (
    DesiredState,
    HostConfig,
    LocalEndpoint,
    Names,
    NetworkConfig,
    RemoteEndpoint,
    SandboxConfig,
    endpoint_mac,
)
from bench import write_results

PFX = f"ovb{os.getpid()}-"
HOST_NS = f"{PFX}h"
VTEP = IPv4Address("198.51.100.2")
NET = NetworkConfig(
    id="benchnet",
    name="bench",
    vni=4096,
    subnet=IPv4Network("10.64.0.0/10"),
    gateway=IPv4Address("10.64.0.1"),
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(v: float) -> float:
    return round(v * 1000, 3)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


def setup_host() -> None:
    sh("ip", "netns", "add", HOST_NS)
    sh("ip", "-n", HOST_NS, "link", "set", "lo", "up")
    sh("ip", "-n", HOST_NS, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1")  # no dummy
    sh("ip", "-n", HOST_NS, "link", "set", "ul1", "up")
    sh("ip", "-n", HOST_NS, "addr", "add", f"{VTEP}/24", "dev", "ul0")
    sh("ip", "-n", HOST_NS, "link", "set", "ul0", "up")


def teardown() -> None:
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if name.startswith(PFX):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def sandbox(k: int, egress: bool) -> SandboxConfig:
    ip = IPv4Interface(f"10.64.{1 + k // 250}.{1 + k % 250}/10")
    return SandboxConfig(
        task_id=f"task{k:05d}",
        endpoints=(LocalEndpoint(f"task{k:05d}", NET.id, 0, ip),),
        egress=egress,
        hostname=f"task{k}",
    )


def remote(k: int, vteps: int) -> RemoteEndpoint:
    ip = IPv4Address(int(IPv4Address("10.96.0.0")) + k + 1)
    return RemoteEndpoint(NET.id, ip, IPv4Address(f"198.51.100.{10 + k % vteps}"))


async def bench_endpoints(dp: DataPlane, n: int, egress: bool) -> dict[str, object]:
    sandboxes: dict[str, SandboxConfig] = {}
    total, applied = [], []
    for k in range(n):
        sb = sandbox(k, egress)
        sandboxes[sb.task_id] = sb
        d = DesiredState(networks={NET.id: NET}, sandboxes=dict(sandboxes))
        t = time.perf_counter()
        r = await dp.reconcile(d)
        total.append(time.perf_counter() - t)
        if not r.ok:
            raise SystemExit(f"endpoint {k}: {[str(f) for f in r.failures]}")
        applied.append(r.seconds)
    # The first one also builds the network (netns, bridge, VXLAN) and maybe the gwbridge.
    steady = total[1:]
    d = DesiredState(networks={NET.id: NET}, sandboxes=dict(sandboxes))
    t = time.perf_counter()
    r = await dp.reconcile(d)
    noop = time.perf_counter() - t
    assert r.ops == 0, r
    t = time.perf_counter()
    await dp.remove_all()
    removed = time.perf_counter() - t
    # Apply-only: how long the ops of one endpoint take (without observing n sandboxes).
    apply_only = []
    for k in range(1, min(n, 21)):
        from agent.dataplane.plan import plan

        d = DesiredState(networks={NET.id: NET}, sandboxes={"x": sandbox(0, egress)})
        await dp.reconcile(d)
        obs = await dp.observe()
        ops = plan(dp.host, DesiredState(networks={NET.id: NET}, sandboxes={
            "x": sandbox(0, egress), "y": sandbox(k, egress)}), obs)  # fmt: skip
        ops = [op for op in ops if getattr(op, "task_id", "") == "y"]
        t = time.perf_counter()
        r2 = await dp.apply(ops)
        apply_only.append(time.perf_counter() - t)
        assert r2.ok, [str(f) for f in r2.failures]
        await dp.remove_all()
    return {
        "endpoints": n,
        "egress": egress,
        "first_ms_incl_network": ms(total[0]),
        "reconcile_ms": {
            "median": ms(statistics.median(steady)),
            "p90": ms(percentile(steady, 90)),
            "max": ms(max(steady)),
        },
        "apply_only_ms": {
            "median": ms(statistics.median(apply_only)),
            "p90": ms(percentile(apply_only, 90)),
        },
        f"noop_reconcile_with_{n}_sandboxes_ms": ms(noop),
        f"remove_all_{n}_sandboxes_ms": ms(removed),
    }


async def bench_remotes(dp: DataPlane, n: int, vteps: int) -> dict[str, object]:
    rem = frozenset(remote(k, vteps) for k in range(n))
    sb = sandbox(0, False)
    d = DesiredState(networks={NET.id: NET}, sandboxes={sb.task_id: sb}, remotes={NET.id: rem})
    await dp.reconcile(DesiredState(networks={NET.id: NET}, sandboxes={sb.task_id: sb}))
    t = time.perf_counter()
    r = await dp.reconcile(d)
    program = time.perf_counter() - t
    if not r.ok:
        raise SystemExit(f"remotes: {[str(f) for f in r.failures[:5]]}")
    entries_ms = ms(r.seconds)
    noops = []
    for _ in range(5):
        t = time.perf_counter()
        r2 = await dp.reconcile(d)
        noops.append(time.perf_counter() - t)
        assert r2.ops == 0
    obs = await dp.observe()
    ns = dp.names.network_ns(NET.id)
    assert len(obs.networks[ns].neigh) == n and len(obs.networks[ns].fdb) == n + vteps
    # Half of them move to other VTEPs: delete + add per moved MAC.
    moved = frozenset(
        RemoteEndpoint(r.network_id, r.address, IPv4Address(f"198.51.100.{200 + k % vteps}"))
        if k % 2
        else r
        for k, r in enumerate(sorted(rem, key=lambda x: x.address))
    )
    t = time.perf_counter()
    r3 = await dp.reconcile(
        DesiredState(networks={NET.id: NET}, sandboxes={sb.task_id: sb}, remotes={NET.id: moved})
    )
    move = time.perf_counter() - t
    assert r3.ok, [str(f) for f in r3.failures[:5]]
    await dp.remove_all()
    return {
        "remote_endpoints": n,
        "vteps": vteps,
        "requests": r.ops,
        "program_reconcile_ms": ms(program),
        "program_apply_ms": entries_ms,
        "noop_reconcile_ms": {"median": ms(statistics.median(noops)), "max": ms(max(noops))},
        "move_half_reconcile_ms": ms(move),
        "move_half_ops": r3.ops,
    }


async def bench_pyroute2_gather(dp: DataPlane, n: int) -> dict[str, object]:
    """The same requests through pyroute2 AsyncIPRoute (asyncio.gather in chunks of 500).
    pyroute2 is a dev dependency only (the agent speaks rtnetlink itself: agent/dataplane/nl.py),
    imported here, not at the top, so the rest of the benchmark does not load it."""
    from pyroute2 import AsyncIPRoute

    sb = sandbox(0, False)
    await dp.reconcile(DesiredState(networks={NET.id: NET}, sandboxes={sb.task_id: sb}))
    ns = dp.names.network_ns(NET.id)
    ipr = AsyncIPRoute(use_socket=nl.open_sockets(ns)[0])
    (link,) = await ipr.link("get", ifname="ovvx0")
    idx = link["index"]
    rem = [remote(k, 10) for k in range(n)]

    async def one(r: RemoteEndpoint) -> None:
        mac = endpoint_mac(r.address)
        await ipr.fdb("replace", ifindex=idx, lladdr=mac, dst=str(r.vtep))
        await ipr.neigh("replace", ifindex=idx, dst=str(r.address), lladdr=mac, state=0x80 | 0x40)

    t = time.perf_counter()
    for lo in range(0, n, 500):
        await asyncio.gather(*(one(r) for r in rem[lo : lo + 500]))
    elapsed = time.perf_counter() - t
    ipr.close()
    await dp.remove_all()
    return {
        "remote_endpoints": n,
        "seconds": round(elapsed, 3),
        "ms_per_endpoint": round(elapsed * 1000 / n, 4),
    }


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    etc = Path(tempfile.mkdtemp(prefix="ovb-etc-netns-"))
    host = HostConfig(vtep=VTEP, names=Names(f"{PFX}a-"), etc_netns=etc)
    dp = DataPlane(host, host_netns=HOST_NS)
    try:
        no_egress = await bench_endpoints(dp, args.endpoints, egress=False)
        with_egress = await bench_endpoints(dp, args.endpoints, egress=True)
        remotes = await bench_remotes(dp, args.remotes, vteps=50)
        gather = await bench_pyroute2_gather(dp, min(args.remotes, 2000))
    finally:
        await dp.remove_all()
        await dp.close()
        shutil.rmtree(etc, ignore_errors=True)
    return {
        "benchmark": "dataplane",
        "endpoint_creation": no_egress,
        "endpoint_creation_with_egress": with_egress,
        "remote_endpoints": remotes,
        "pyroute2_gather_comparison": gather,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--endpoints", type=int, default=50)
    p.add_argument("--remotes", type=int, default=10000)
    p.add_argument("--out", type=Path, default=Path("bench/results/dataplane.json"))
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        setup_host()
        r = asyncio.run(main_async(args))
    finally:
        teardown()
    write_results(args.out, r)
    for key in ("endpoint_creation", "endpoint_creation_with_egress"):
        e = r[key]
        assert isinstance(e, dict)
        print(
            f"{key}: {e['endpoints']} endpoints one at a time: reconcile median "
            f"{e['reconcile_ms']['median']} ms, p90 {e['reconcile_ms']['p90']} ms; "
            f"apply only median {e['apply_only_ms']['median']} ms, "
            f"p90 {e['apply_only_ms']['p90']} ms"
        )
    rr = r["remote_endpoints"]
    assert isinstance(rr, dict)
    print(
        f"{rr['remote_endpoints']} remote endpoints ({rr['requests']} requests): "
        f"reconcile {rr['program_reconcile_ms']} ms (apply {rr['program_apply_ms']} ms); "
        f"no-op reconcile median {rr['noop_reconcile_ms']['median']} ms; "
        f"moving half to other VTEPs {rr['move_half_reconcile_ms']} ms"
    )
    g = r["pyroute2_gather_comparison"]
    assert isinstance(g, dict)
    print(
        f"pyroute2 AsyncIPRoute + gather: {g['remote_endpoints']} endpoints in {g['seconds']} s "
        f"({g['ms_per_endpoint']} ms each)"
    )
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
