"""Gossip benchmark: the real gossip core (`GossipNode`) on the discrete-event simulator.

Every node is a real `GossipNode` with the default `GossipTuning` (memberlist's LAN profile:
probe 1 s, gossip every 200 ms to 3 nodes) and real AES-GCM; only the network is simulated:
a LAN with 0.2 ms one-way delay plus up to 0.3 ms of jitter, and 0 % or 10 % datagram loss.
Times are simulated seconds, so the figures do not depend on this machine's speed (the wall
time each run took is reported too).

(a) propagation: one new entry put at a random node; the time until it is visible at 50 %,
    99 % and 99.99 % of the nodes, for N = 100 and 1000 at 0 % and 10 % loss. Several seeds
    and several entries per seed; the median (and the worst) is reported. Bytes/s per node
    (wire bytes: payload + 28 bytes of IPv4/UDP header per datagram) over the window of
    `--window` seconds from each put (mean and max over nodes), and in the steady state with
    no new entries.
(b) failure detection: a node is SIGKILLed (stops dead); the time until the first and the
    last live node hold it dead, and until every node hides its entries, at N = 5 and 100.

Printed beside ours: memberlist's convergence model (2.2 s at 200 ms / fanout 3), Serf 0.9.4
with 10 agents on this machine (detection 5.3-6.5 s, event spread 0.15-0.40 s) and the goal
(99.99 % of N = 1000 within 1.5 s, <= 330 kbps per node).

    .venv/bin/python -m bench.gossip [--quick] [--seeds 3] [--puts 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.gossip import simwatch
from agent.gossip.config import GossipTuning
from agent.gossip.sim import NetConfig, Simulator
from bench import write_results

NET = "bench"
FRACTIONS = (0.5, 0.99, 0.9999)
LAN = NetConfig(delay=0.0002, jitter=0.0003)

REFERENCE = {
    "memberlist_model_convergence_s": 2.2,
    "memberlist_model_note": "memberlist's convergence model at gossip 200 ms, fanout 3",
    "serf_0_9_4_10_agents_detection_s": [5.3, 6.5],
    "serf_0_9_4_10_agents_event_spread_s": [0.15, 0.40],
    "goal_99_99_at_1000_s": 1.5,
    "goal_kbps_per_node": 330,
}


def kbps(bytes_per_s: float) -> float:
    return round(bytes_per_s * 8 / 1000, 1)


def r3(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def median(values: list[float | None]) -> float | None:
    """Median of the runs; None (never reached) counts as +inf, so a median that is None
    means at least half the runs did not get there within the timeout."""
    if not values:
        return None
    ordered = sorted(values, key=lambda v: float("inf") if v is None else v)
    mid = ordered[(len(ordered) - 1) // 2 : len(ordered) // 2 + 1]
    if any(v is None for v in mid):
        return None
    return sum(v for v in mid if v is not None) / len(mid)


def worst(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else max(v for v in values if v)


def build(n: int, seed: int) -> tuple[Simulator, dict[str, Any]]:
    """A converged cluster of n nodes, all in network NET, joined through 3 seeds at random
    times within n/100 seconds (agents starting together; a 1,000-node join storm within
    one second is a different benchmark). Built without loss: the loss under test is
    switched on afterwards, so one bootstrap serves every loss rate."""
    wall = time.perf_counter()
    sim = Simulator(seed=seed, net=LAN)
    sim.add_nodes(n)
    for name in sim.names():
        sim.join_network(name, NET)
    sim.join_all(spread=max(1.0, n / 100))
    took = sim.wait_converged(timeout=300.0, step=0.5)
    if took is None:
        raise SystemExit(f"N={n} seed={seed}: membership did not converge in 300 s")
    # Let the join storm's broadcasts (alive + network participation) drain.
    sim.run_for(5.0)
    return sim, {
        "membership_converged_s": round(took, 2),
        "bootstrap_wall_s": round(time.perf_counter() - wall, 2),
    }


def bench_propagation(
    n: int, losses: list[float], seeds: list[int], puts: int, window: float
) -> list[dict[str, Any]]:
    """One result per loss rate; every seed's cluster is measured at each loss in turn."""
    acc: dict[float, dict[str, Any]] = {
        loss: {
            "fr": {f: [] for f in FRACTIONS},
            "during_mean": [],
            "during_max": [],
            "steady_mean": [],
            "steady_max": [],
            "during_dgram_max": [],
            "steady_dgram_max": [],
            "wall": [],
            "sim_s": [],
            "pp_frames": 0,
            "pp_bytes": 0,
        }
        for loss in losses
    }
    boots = []
    for seed in seeds:
        sim, boot = build(n, seed)
        boots.append(boot)
        pick = random.Random(seed)
        for loss in losses:
            a = acc[loss]
            wall, sim_start, tr0 = time.perf_counter(), sim.now, sim.traffic()
            sim.net = replace(LAN, loss=loss)
            sim.run_for(2.0)
            snap, t0 = sim.traffic(), sim.now
            sim.run_for(5.0)
            rates = list(sim.rates(snap, sim.now - t0).values())
            a["steady_mean"].append(statistics.fmean(r.bytes for r in rates))
            a["steady_max"].append(max(r.bytes for r in rates))
            a["steady_dgram_max"].append(max(r.bytes - r.stream_bytes for r in rates))
            for k in range(puts):
                writer = pick.choice(sim.live())
                snap, t0 = sim.traffic(), sim.now
                key = f"ep/{loss}/{k}"
                fr = simwatch.propagation(sim, writer, NET, key, f"{key} of {writer}".encode())
                for f in FRACTIONS:
                    a["fr"][f].append(fr[f])
                sim.run_until(max(sim.now, t0 + window))
                rates = list(sim.rates(snap, sim.now - t0).values())
                a["during_mean"].append(statistics.fmean(r.bytes for r in rates))
                a["during_max"].append(max(r.bytes for r in rates))
                a["during_dgram_max"].append(max(r.bytes - r.stream_bytes for r in rates))
                sim.run_for(2.0)
            a["wall"].append(round(time.perf_counter() - wall, 2))
            a["sim_s"].append(round(sim.now - sim_start, 2))
            for name, tr in sim.traffic().items():
                before = tr0.get(name)
                if before is not None:
                    a["pp_frames"] += tr.streams - before.streams
                    a["pp_bytes"] += tr.stream_bytes - before.stream_bytes
    return [_prop_result(n, loss, acc[loss], window, boots) for loss in losses]


def _prop_result(
    n: int, loss: float, a: dict[str, Any], window: float, boots: list[dict[str, Any]]
) -> dict[str, Any]:
    per_fraction: dict[float, list[float | None]] = a["fr"]
    return {
        "n": n,
        "loss": loss,
        "runs": len(per_fraction[FRACTIONS[0]]),
        "median_s": {str(f): r3(median(v)) for f, v in per_fraction.items()},
        "worst_s": {str(f): r3(worst(v)) for f, v in per_fraction.items()},
        "all_s": {str(f): [r3(x) for x in v] for f, v in per_fraction.items()},
        "kbps_per_node_during_window": {
            "window_s": window,
            "mean": kbps(statistics.fmean(a["during_mean"])),
            "max": kbps(max(a["during_max"])),
            "max_without_push_pull": kbps(max(a["during_dgram_max"])),
        },
        "kbps_per_node_steady": {
            "mean": kbps(statistics.fmean(a["steady_mean"])),
            "max": kbps(max(a["steady_max"])),
            "max_without_push_pull": kbps(max(a["steady_dgram_max"])),
        },
        "push_pull_frames": a["pp_frames"],
        "push_pull_frame_bytes_mean": round(a["pp_bytes"] / a["pp_frames"])
        if a["pp_frames"]
        else None,
        "bootstrap": boots,
        "measure_wall_s": a["wall"],
        "measure_sim_s": a["sim_s"],
        "wall_per_sim_s": round(sum(a["wall"]) / sum(a["sim_s"]), 3),
    }


def bench_detection(n: int, seeds: list[int]) -> dict[str, Any]:
    firsts: list[float | None] = []
    lasts: list[float | None] = []
    hidden: list[float | None] = []
    for seed in seeds:
        sim, _ = build(n, seed)
        for name in sim.live():
            sim.put(name, NET, f"ep/{name}", name.encode())
        sim.run_for(3.0)
        pick = random.Random(seed)
        victim = pick.choice(sim.live()[sim.seed_count :])
        sim.run_for(pick.random())  # a random phase of the probe cycle
        det = simwatch.detect_kill(sim, victim, timeout=30.0)
        firsts.append(det.first)
        lasts.append(det.last)
        hidden.append(det.entries_gone_last)
    return {
        "n": n,
        "runs": len(seeds),
        "first_s": {"median": r3(median(firsts)), "all": [r3(x) for x in firsts]},
        "last_s": {"median": r3(median(lasts)), "worst": r3(worst(lasts))},
        "entries_hidden_everywhere_s": {
            "median": r3(median(hidden)),
            "worst": r3(worst(hidden)),
        },
        "all_last_s": [r3(x) for x in lasts],
    }


def fmt(v: float | None) -> str:
    return "never" if v is None else f"{v:.3f}"


def print_table(r: dict[str, Any]) -> None:
    cfg = r["config"]
    print(
        f"gossip core on the simulator: real GossipNodes, default config (probe "
        f"{cfg['probe_interval']} s, gossip {cfg['gossip_interval'] * 1000:.0f} ms to "
        f"{cfg['gossip_nodes']} nodes); simulated LAN: {LAN.delay * 1000:.1f} ms one way "
        f"+ jitter up to {LAN.jitter * 1000:.1f} ms; times are simulated seconds"
    )
    print()
    print("propagation of one new entry (s, median of runs; worst in brackets)")
    print(f"{'N':>6} {'loss':>5} {'runs':>4}  {'50 %':>15} {'99 %':>15} {'99.99 %':>15}")
    for p in r["propagation"]:
        cells = [f"{fmt(p['median_s'][str(f)])} [{fmt(p['worst_s'][str(f)])}]" for f in FRACTIONS]
        print(
            f"{p['n']:>6} {p['loss'] * 100:>4.0f}% {p['runs']:>4}  "
            + " ".join(f"{c:>15}" for c in cells)
        )
    print()
    print(
        "sent per node (kbit/s on the wire: datagrams + 28 B IPv4/UDP header each, plus "
        "push-pull stream payload)"
    )
    print(
        f"{'N':>6} {'loss':>5}  {'window after a put: mean':>24} {'max':>7} {'max w/o pp':>10}"
        f"   {'steady: mean':>12} {'max':>7} {'max w/o pp':>10}"
    )
    for p in r["propagation"]:
        w, st = p["kbps_per_node_during_window"], p["kbps_per_node_steady"]
        print(
            f"{p['n']:>6} {p['loss'] * 100:>4.0f}%  {w['mean']:>24} {w['max']:>7} "
            f"{w['max_without_push_pull']:>10}   {st['mean']:>12} {st['max']:>7} "
            f"{st['max_without_push_pull']:>10}"
        )
    for p in r["propagation"]:
        print(
            f"  N={p['n']} loss {p['loss'] * 100:.0f}%: push-pull frames "
            f"{p['push_pull_frame_bytes_mean']} B on average ({p['push_pull_frames']} in "
            f"{sum(p['measure_sim_s']):.0f} simulated s); simulator speed "
            f"{p['wall_per_sim_s']} s wall per simulated s; membership converged "
            f"{[b['membership_converged_s'] for b in p['bootstrap']]} s after the joins began"
        )
    ref = r["reference"]
    print(
        f"  reference: memberlist model {ref['memberlist_model_convergence_s']} s "
        f"(200 ms, fanout 3); Serf 0.9.4, 10 agents: event spread "
        f"{ref['serf_0_9_4_10_agents_event_spread_s'][0]}-"
        f"{ref['serf_0_9_4_10_agents_event_spread_s'][1]} s; goal: 99.99 % of N=1000 "
        f"<= {ref['goal_99_99_at_1000_s']} s at <= {ref['goal_kbps_per_node']} kbps per node"
    )
    print()
    print("failure detection after SIGKILL (s, median; worst in brackets)")
    print(f"{'N':>6} {'runs':>4}  {'first node':>12} {'last node':>18} {'entries hidden':>18}")
    for d in r["detection"]:
        print(
            f"{d['n']:>6} {d['runs']:>4}  {fmt(d['first_s']['median']):>12} "
            f"{fmt(d['last_s']['median']) + ' [' + fmt(d['last_s']['worst']) + ']':>18} "
            f"{fmt(d['entries_hidden_everywhere_s']['median']) + ' [' + fmt(d['entries_hidden_everywhere_s']['worst']) + ']':>18}"  # noqa: E501
        )
    s = ref["serf_0_9_4_10_agents_detection_s"]
    print(f"  reference: Serf 0.9.4, 10 agents: detection {s[0]}-{s[1]} s; target < 3 s")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="N=100 only, 1 seed, 2 entries")
    p.add_argument("--seeds", type=int, default=3, help="clusters per configuration")
    p.add_argument("--puts", type=int, default=3, help="entries measured per cluster")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--losses", type=float, nargs="+", default=[0.0, 0.1])
    p.add_argument("--detect-sizes", type=int, nargs="+", default=[5, 100])
    p.add_argument("--detect-seeds", type=int, default=5)
    p.add_argument("--window", type=float, default=2.0, help="bandwidth window after a put (s)")
    p.add_argument("--out", type=Path, default=Path("bench/results/gossip.json"))
    args = p.parse_args()
    if args.quick:
        args.sizes, args.seeds, args.puts, args.detect_seeds = [100], 1, 2, 3
    wall = time.perf_counter()
    seeds = list(range(1, args.seeds + 1))
    prop = []
    for n in args.sizes:
        print(f"propagation N={n} ...", file=sys.stderr, flush=True)
        prop.extend(bench_propagation(n, args.losses, seeds, args.puts, args.window))
    det = []
    for n in args.detect_sizes:
        print(f"detection N={n} ...", file=sys.stderr, flush=True)
        det.append(bench_detection(n, list(range(1, args.detect_seeds + 1))))
    cfg = GossipTuning()
    r: dict[str, Any] = {
        "benchmark": "gossip",
        "network": {"delay_s": LAN.delay, "jitter_s": LAN.jitter, "simulated": True},
        "config": {
            k: getattr(cfg, k)
            for k in ("probe_interval", "probe_timeout", "gossip_interval", "gossip_nodes")
        },
        "propagation": prop,
        "detection": det,
        "reference": REFERENCE,
        "wall_s": round(time.perf_counter() - wall, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_results(args.out, r)
    print_table(r)
    print(f"\nwall time {r['wall_s']} s; results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
