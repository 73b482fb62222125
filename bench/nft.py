"""nftables load-balancer benchmark: one VIP service with 10,000 backends.

Runs as root inside a network namespace it creates (prefix ovb<pid>-nft) and deletes.
Times (median of several runs, render + apply):
  (a) the full ruleset (atomic table replace) of the service,
  (b) adding one backend to it (render_update: one element + the rule's new modulus),
  (c) removing one backend from the middle (the last backend moves into its index),
through our in-process libnftables binding and, for comparison, through the `nft` process.
Also (b) through LoadBalancer.apply (its thread hop and bookkeeping included).
Goals: add one <= 20 ms, full <= 100 ms.

    .venv/bin/python -m bench.nft [--backends 10000] [--runs 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent.lb.balancer import LoadBalancer
from agent.lb.nft import Nft, libnftables_available
from agent.lb.plan import LbSpec, LbState, render_full, render_update
from bench import write_results

NS = f"ovb{os.getpid()}-nft"
TABLE = "ovnet-lb"
VIP = "10.200.0.1"
GOAL_ADD_MS = 20.0
GOAL_FULL_MS = 100.0


def ip(i: int) -> str:
    """The i-th backend address in 10.64.0.0/10 (never .0 or .255)."""
    return f"10.{64 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"


def ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values), 3),
        "min_ms": round(min(values), 3),
        "max_ms": round(max(values), 3),
    }


def bench_backend(backend: str, n: int, runs: int) -> dict[str, object]:
    backends = [ip(i) for i in range(n)]
    spec = LbSpec(vips={VIP: tuple(backends)})
    nft: Nft | None = None
    t0 = time.perf_counter()
    nft = Nft(NS, backend=backend)
    ctx_ms = (time.perf_counter() - t0) * 1000
    try:
        full_ms, render_full_ms = [], []
        state: LbState | None = None
        for _ in range(runs):
            t0 = time.perf_counter()
            script, state = render_full(TABLE, spec)
            t1 = time.perf_counter()
            nft.run(script)
            t2 = time.perf_counter()
            render_full_ms.append((t1 - t0) * 1000)
            full_ms.append((t2 - t0) * 1000)
        assert state is not None
        add_ms, remove_ms, add_script_lines = [], [], 0
        current = list(backends)
        extra = n
        for r in range(runs):
            current.append(ip(extra))
            extra += 1
            s = LbSpec(vips={VIP: tuple(current)})
            t0 = time.perf_counter()
            script, state = render_update(TABLE, state, s)
            nft.run(script)
            add_ms.append((time.perf_counter() - t0) * 1000)
            add_script_lines = len(script.splitlines())
            current.pop(len(current) // 3 + r)
            s = LbSpec(vips={VIP: tuple(current)})
            t0 = time.perf_counter()
            script, state = render_update(TABLE, state, s)
            nft.run(script)
            remove_ms.append((time.perf_counter() - t0) * 1000)
        listed = check_size(state)
        return {
            "backend": backend,
            "context_ms": round(ctx_ms, 3),
            "full": summary(full_ms)
            | {"render_median_ms": round(statistics.median(render_full_ms), 3)},
            "add_one": summary(add_ms) | {"script_lines": add_script_lines},
            "remove_one": summary(remove_ms),
            "elements_in_kernel": listed,
        }
    finally:
        nft.close()


def check_size(state: LbState) -> int:
    """How many elements the kernel's map holds; must equal the state's (sanity)."""
    out = subprocess.run(
        ["ip", "netns", "exec", NS, "nft", "-j", "list", "map", "ip", TABLE, "v_10_200_0_1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    maps = [x["map"] for x in json.loads(out)["nftables"] if "map" in x]
    got = len(maps[0].get("elem", []))
    want = len(state.vip_map()[VIP])
    if got != want:
        raise AssertionError(f"kernel map holds {got} elements, state says {want}")
    return got


def bench_balancer(n: int, runs: int) -> dict[str, object]:
    async def go() -> dict[str, object]:
        lb = LoadBalancer(TABLE)
        current = [ip(i) for i in range(n)]
        try:
            await lb.apply("bench", NS, LbSpec(vips={VIP: tuple(current)}))
            times = []
            for r in range(runs):
                current.append(ip(n + 1000 + r))
                await lb.apply("bench", NS, LbSpec(vips={VIP: tuple(current)}))
                times.append(lb.last_apply_ms["bench"])
            return {"add_one": summary(times), "stats": vars(lb.stats)}
        finally:
            await lb.close()

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backends", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", type=Path, default=Path("bench/results/nft.json"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.nft needs root (it creates a network namespace)", file=sys.stderr)
        return 2

    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        results: dict[str, object] = {
            "bench": "nft",
            "backends": args.backends,
            "runs": args.runs,
            "kernel": platform.release(),
            "nft": subprocess.run(
                ["nft", "--version"], capture_output=True, text=True
            ).stdout.strip(),
            "goals_ms": {"add_one": GOAL_ADD_MS, "full": GOAL_FULL_MS},
        }
        modes = (["lib"] if libnftables_available() else []) + ["process"]
        for mode in modes:
            results[mode] = bench_backend(mode, args.backends, args.runs)
        if "lib" in modes:
            results["load_balancer"] = bench_balancer(args.backends, args.runs)
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)

    print(f"nftables LB, one VIP with {args.backends} backends (median of {args.runs})")
    print(f"{'via':<10} {'full ms':>9} {'add one ms':>11} {'remove one ms':>14} {'ctx ms':>8}")
    for mode in modes:
        r = results[mode]
        assert isinstance(r, dict)
        print(
            f"{mode:<10} {r['full']['median_ms']:>9.2f} {r['add_one']['median_ms']:>11.2f} "
            f"{r['remove_one']['median_ms']:>14.2f} {r['context_ms']:>8.2f}"
        )
    if "load_balancer" in results:
        lbr = results["load_balancer"]
        assert isinstance(lbr, dict)
        print(f"LoadBalancer.apply add one: {lbr['add_one']['median_ms']:.2f} ms")
    best = results[modes[0]]
    assert isinstance(best, dict)
    ok_add = best["add_one"]["median_ms"] <= GOAL_ADD_MS
    ok_full = best["full"]["median_ms"] <= GOAL_FULL_MS
    results["goals_met"] = {"add_one": ok_add, "full": ok_full}
    print(
        f"goals: add one <= {GOAL_ADD_MS} ms: {'met' if ok_add else 'MISSED'}; "
        f"full <= {GOAL_FULL_MS} ms: {'met' if ok_full else 'MISSED'}"
    )
    write_results(args.json, results)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
