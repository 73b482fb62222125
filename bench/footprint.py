"""The agent's and manager's footprint on one host: memory idle with 0 and 10 tasks, what each
task costs, and CPU while nothing happens.

Brings up a dev cluster of 1 host (`ovctl dev`: the host in a network namespace on a bridge,
etcd, a manager, an agent, each with its default settings), and measures it twice:

* idle with 0 tasks: after a short settle, for ``--idle-seconds`` (60 by default) it samples
  every second the RSS of the agent and the manager (VmRSS from /proc/PID/status; Pss and the
  private part from /proc/PID/smaps_rollup, since the shims share the interpreter's pages) and
  takes their CPU time (utime + stime from /proc/PID/stat) at the start and the end;
* idle with 10 tasks: an overlay network and a service of 10 replicas of a sleeping process,
  once every task runs; the same window. Every process under the agent (its shims, the tasks,
  anything else) is listed with its RSS, Pss and private memory.

The per-task overhead is each task's shim (median RSS, Pss, private) and the agent's own growth
per task ((RSS with 10 - RSS with 0) / 10). CPU is in percent of one core, also split by thread
(main = the event loop; event_engine etc. = gRPC's; "(ended threads)" = short-lived ones, such
as a reconcile pass's netns threads). The dev cluster's heartbeat period is 1 s (the manager's
default is 5 s, and agents beat twice per period): `--heartbeat-period 5` shows a production
host. Prints the figures beside the issue's targets and writes JSON. The cluster is removed
even on failure.

    .venv/bin/python -m bench.footprint [--idle-seconds 60] [--tasks 10] [--heartbeat-period 1]
        [--agent-arg=--flag=value ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osutil.proc import proc_cpu_ticks

if TYPE_CHECKING:
    from ovctl.devcluster import DevCluster

SLEEPER = [sys.executable, "-c", "import time; time.sleep(1e9)"]
# From the issue (F6): today's figures and the targets.
REFERENCE = {"agent_idle_rss_mb": 78.0, "agent_idle_cpu_pct": 1.0, "shim_rss_mb": 10.5}
TARGET = {"agent_idle_rss_mb": 60.0, "agent_idle_cpu_pct": 0.5}
CLK_TCK = os.sysconf("SC_CLK_TCK")
KB_PER_MB = 1024.0


# -- pure parsing (unit-tested in tests/unit/test_bench_footprint.py) --


def parse_kb_fields(text: str, keys: Iterable[str]) -> dict[str, int]:
    """``Key:  123 kB`` lines of /proc/PID/status or smaps_rollup -> {key: kB} for ``keys``
    (a key missing from the text, as in a kernel thread's status, is left out)."""
    wanted = set(keys)
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if sep and key in wanted:
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


@dataclass(frozen=True)
class Mem:
    """One process's memory in kB: resident (VmRSS), proportional (Pss: shared pages divided
    among their users) and private (pages only this process maps)."""

    rss_kb: int
    pss_kb: int
    private_kb: int


def mem_from(status: str, smaps_rollup: str | None) -> Mem:
    """A Mem from /proc/PID/status and (if readable) /proc/PID/smaps_rollup texts."""
    rss = parse_kb_fields(status, ["VmRSS"]).get("VmRSS", 0)
    if smaps_rollup is None:
        return Mem(rss, rss, rss)
    r = parse_kb_fields(smaps_rollup, ["Pss", "Private_Clean", "Private_Dirty"])
    return Mem(rss, r.get("Pss", rss), r.get("Private_Clean", 0) + r.get("Private_Dirty", 0))


def cpu_percent(ticks_before: int, ticks_after: int, wall_s: float, clk_tck: int) -> float:
    """CPU used between two readings of utime + stime, in percent of one core."""
    return 100.0 * (ticks_after - ticks_before) / clk_tck / wall_s if wall_s > 0 else 0.0


def descendants(parents: Mapping[int, int], root: int) -> list[int]:
    """Every PID below ``root`` in a {pid: ppid} map, parents before children."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = sorted(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return out


def role_of(argv: list[str]) -> str:
    """What a process under the agent is: "shim", "task" (the sleeper) or its program name."""
    if any(a.endswith("shim.py") for a in argv[:4]):
        return "shim"
    if argv[-len(SLEEPER) + 1 :] == SLEEPER[1:]:
        return "task"
    return Path(argv[0]).name if argv else "?"


def median_mem(mems: list[Mem]) -> Mem:
    return Mem(
        int(statistics.median(m.rss_kb for m in mems)),
        int(statistics.median(m.pss_kb for m in mems)),
        int(statistics.median(m.private_kb for m in mems)),
    )


# -- /proc readers --


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def mem_of(pid: int) -> Mem | None:
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return None
    return mem_from(status, _read(f"/proc/{pid}/smaps_rollup"))


def cmdline(pid: int) -> list[str]:
    raw = _read(f"/proc/{pid}/cmdline") or ""
    return [a for a in raw.split("\0") if a]


def ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            status = _read(f"/proc/{name}/status")
            ppid = parse_kb_fields(status or "", ["PPid"]).get("PPid")
            if ppid is not None:
                out[int(name)] = ppid
    return out


def python_pid(pid: int, module: str) -> int:
    """The Python process of a daemon: ``pid`` itself, or its child if ``pid`` is a launcher
    (nsenter, when it forks) that did not exec the interpreter in place."""
    for p in [pid, *descendants(ppid_map(), pid)]:
        if module in cmdline(p):
            return p
    raise RuntimeError(f"no process running {module} at or under PID {pid}: {cmdline(pid)}")


# -- measuring --


@dataclass
class Window:
    """One idle window: RSS samples, CPU percent per daemon, and the wall time it took."""

    seconds: float
    cpu_pct: dict[str, float]
    cpu_with_children_pct: dict[str, float]  # plus the children it waited for (ip, nft, ...)
    cpu_by_thread_pct: dict[str, dict[str, float]]  # per daemon: thread name -> percent
    mem: dict[str, Mem]  # the median sample per daemon
    rss_max_kb: dict[str, int]


def thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """{thread ID: (thread name, CPU ticks so far)} of every thread of ``pid``."""
    out: dict[int, tuple[str, int]] = {}
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(f"/proc/{pid}/task"):
            ticks = proc_cpu_ticks(pid, thread=int(name))
            comm = (_read(f"/proc/{pid}/task/{name}/comm") or "?").strip()
            if ticks is not None:
                out[int(name)] = (comm, ticks)
    return out


def by_thread_name(
    before: Mapping[int, tuple[str, int]],
    after: Mapping[int, tuple[str, int]],
    wall_s: float,
    total_before: int,
    total_after: int,
) -> dict[str, float]:
    """CPU percent per thread name over a window (threads born during it count from 0; the
    first thread's name is the process's, so it is called "main"). What threads that ended
    during the window used is only in the process's total: it is "(ended threads)"."""
    out: dict[str, float] = {}
    first = min(after, default=0)
    for tid, (comm, ticks) in after.items():
        name = "main" if tid == first else comm
        pct = cpu_percent(before.get(tid, (comm, 0))[1], ticks, wall_s, CLK_TCK)
        out[name] = out.get(name, 0.0) + pct
    ended = cpu_percent(total_before, total_after, wall_s, CLK_TCK) - sum(out.values())
    if ended > 0:
        out["(ended threads)"] = ended
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def idle_window(pids: Mapping[str, int], seconds: float) -> Window:
    """Sample every daemon's memory each second and its CPU time at both ends of the window."""
    before = {k: proc_cpu_ticks(p) or 0 for k, p in pids.items()}
    before_c = {k: proc_cpu_ticks(p, children=True) or 0 for k, p in pids.items()}
    before_t = {k: thread_ticks(p) for k, p in pids.items()}
    samples: dict[str, list[Mem]] = {k: [] for k in pids}
    t0 = time.monotonic()
    while True:
        for k, p in pids.items():
            m = mem_of(p)
            if m is None:
                raise RuntimeError(f"{k} (PID {p}) died during the idle window")
            samples[k].append(m)
        left = t0 + seconds - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(1.0, left))
    wall = time.monotonic() - t0
    after = {k: proc_cpu_ticks(p) or 0 for k, p in pids.items()}
    after_c = {k: proc_cpu_ticks(p, children=True) or 0 for k, p in pids.items()}
    after_t = {k: thread_ticks(p) for k, p in pids.items()}
    return Window(
        seconds=wall,
        cpu_pct={k: cpu_percent(before[k], after[k], wall, CLK_TCK) for k in pids},
        cpu_with_children_pct={
            k: cpu_percent(before_c[k], after_c[k], wall, CLK_TCK) for k in pids
        },
        cpu_by_thread_pct={
            k: by_thread_name(before_t[k], after_t[k], wall, before[k], after[k]) for k in pids
        },
        mem={k: median_mem(v) for k, v in samples.items()},
        rss_max_kb={k: max(m.rss_kb for m in v) for k, v in samples.items()},
    )


def under_agent(agent: int) -> list[dict[str, Any]]:
    """Every process below the agent, with its role and memory."""
    out = []
    for pid in descendants(ppid_map(), agent):
        m = mem_of(pid)
        if m is not None:
            out.append({"pid": pid, "role": role_of(cmdline(pid)), **asdict(m)})
    return out


def wait_running(dev: DevCluster, service: str, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    running = 0
    while time.monotonic() < deadline:
        r = dev.ovctl("service", "ps", service, "--format", "json")
        if r.returncode == 0:
            tasks = json.loads(r.stdout or "[]")
            running = sum(t["status"]["state"] == "TASK_STATE_RUNNING" for t in tasks)
            if running >= n:
                return
        time.sleep(0.5)
    raise RuntimeError(f"only {running}/{n} tasks of {service} running after {timeout:.0f} s")


def ovctl(dev: DevCluster, *args: str) -> None:
    r = dev.ovctl(*args)
    if r.returncode != 0:
        raise RuntimeError(f"ovctl {' '.join(args)}: {r.stderr.strip()}")


def mb(kb: float) -> float:
    return kb / KB_PER_MB


def fmt_mem(m: Mem) -> str:
    return f"RSS {mb(m.rss_kb):5.1f} MB (Pss {mb(m.pss_kb):5.1f}, private {mb(m.private_kb):5.1f})"


def print_window(title: str, w: Window) -> None:
    print(f"{title} ({w.seconds:.0f} s):")
    for k in w.mem:
        cpu = f"CPU {w.cpu_pct[k]:.2f} % ({w.cpu_with_children_pct[k]:.2f} % with children)"
        print(f"  {k:8} {fmt_mem(w.mem[k])}, max RSS {mb(w.rss_max_kb[k]):5.1f} MB, {cpu}")
        threads = ", ".join(f"{n} {pct:.2f}" for n, pct in w.cpu_by_thread_pct[k].items() if pct)
        print(f"  {'':8} CPU % by thread: {threads or '-'}")


def summarize(
    idle0: Window, idle_n: Window, procs: list[dict[str, Any]], tasks: int
) -> dict[str, Any]:
    """The headline figures from the two windows and the processes under the agent."""
    shims = [Mem(p["rss_kb"], p["pss_kb"], p["private_kb"]) for p in procs if p["role"] == "shim"]
    task_procs = [
        Mem(p["rss_kb"], p["pss_kb"], p["private_kb"]) for p in procs if p["role"] == "task"
    ]
    shim = median_mem(shims) if shims else Mem(0, 0, 0)
    task = median_mem(task_procs) if task_procs else Mem(0, 0, 0)
    a0, an = idle0.mem["agent"], idle_n.mem["agent"]
    return {
        "agent_idle_rss_mb": mb(a0.rss_kb),
        "agent_idle_pss_mb": mb(a0.pss_kb),
        f"agent_{tasks}_tasks_rss_mb": mb(an.rss_kb),
        "agent_growth_per_task_mb": mb(an.rss_kb - a0.rss_kb) / tasks,
        "shims": len(shims),
        "shim_rss_mb": mb(shim.rss_kb),
        "shim_pss_mb": mb(shim.pss_kb),
        "shim_private_mb": mb(shim.private_kb),
        "task_rss_mb": mb(task.rss_kb),
        "per_task_overhead_rss_mb": mb(shim.rss_kb) + mb(an.rss_kb - a0.rss_kb) / tasks,
        "per_task_overhead_pss_mb": mb(shim.pss_kb) + mb(an.pss_kb - a0.pss_kb) / tasks,
        "agent_idle_cpu_pct": idle0.cpu_pct["agent"],
        "agent_idle_cpu_with_children_pct": idle0.cpu_with_children_pct["agent"],
        "manager_idle_cpu_pct": idle0.cpu_pct["manager"],
        f"agent_{tasks}_tasks_cpu_pct": idle_n.cpu_pct["agent"],
        f"manager_{tasks}_tasks_cpu_pct": idle_n.cpu_pct["manager"],
        "manager_idle_rss_mb": mb(idle0.mem["manager"].rss_kb),
    }


def measure(args: argparse.Namespace) -> tuple[Window, Window, list[dict[str, Any]]]:
    """Bring a 1-host dev cluster up, take both idle windows, and remove it (even on failure).
    The dev cluster is imported here, so that the pure parts load without it."""
    from ovctl.devcluster import DevCluster

    dev = DevCluster(
        name_prefix=f"ovp{os.getpid() % 10000}-",
        hosts=1,
        subnet=args.subnet,
        heartbeat_period_ms=int(args.heartbeat_period * 1000),
        agent_args=args.agent_arg,
        manager_args=args.manager_arg,
        die_with_parent=True,
    )
    try:
        dev.up()
        pids = {
            "agent": python_pid(_need(dev.pid(dev.hosts[0]), "agent"), "agent.main"),
            "manager": python_pid(_need(dev.pid("manager"), "manager"), "manager.main"),
        }
        print(f"cluster up: agent PID {pids['agent']}, manager PID {pids['manager']}; "
              f"settling {args.settle:.0f} s", flush=True)  # fmt: skip
        time.sleep(args.settle)
        idle0 = idle_window(pids, args.idle_seconds)
        print_window("idle, 0 tasks", idle0)
        ovctl(dev, "network", "create", "--subnet", "10.97.0.0/24", "fpnet")
        ovctl(dev, "service", "create", "-d", "--name", "idle", "--network", "fpnet",
              "--replicas", str(args.tasks), "--", *SLEEPER)  # fmt: skip
        wait_running(dev, "idle", args.tasks)
        time.sleep(args.settle)
        idle_n = idle_window(pids, args.idle_seconds)
        print_window(f"idle, {args.tasks} tasks", idle_n)
        return idle0, idle_n, under_agent(pids["agent"])
    finally:
        dev.down()


def print_summary(s: Mapping[str, Any], procs: list[dict[str, Any]], tasks: int) -> None:
    roles: dict[str, int] = {}
    for p in procs:
        roles[p["role"]] = roles.get(p["role"], 0) + 1
    print(f"  under the agent: {', '.join(f'{n} {r}' for r, n in sorted(roles.items()))}")
    print(
        f"\nagent RSS idle {s['agent_idle_rss_mb']:.1f} MB (target <= "
        f"{TARGET['agent_idle_rss_mb']:.0f}, issue: {REFERENCE['agent_idle_rss_mb']:.0f}); "
        f"with {tasks} tasks {s[f'agent_{tasks}_tasks_rss_mb']:.1f} MB\n"
        f"per task: shim RSS {s['shim_rss_mb']:.1f} MB (Pss {s['shim_pss_mb']:.1f}, private "
        f"{s['shim_private_mb']:.1f}; issue: {REFERENCE['shim_rss_mb']}) + agent "
        f"{s['agent_growth_per_task_mb']:.2f} MB = {s['per_task_overhead_rss_mb']:.1f} MB RSS "
        f"({s['per_task_overhead_pss_mb']:.1f} MB Pss); the task itself {s['task_rss_mb']:.1f} MB\n"
        f"idle CPU: agent {s['agent_idle_cpu_pct']:.2f} % (target <= "
        f"{TARGET['agent_idle_cpu_pct']}, issue: ~{REFERENCE['agent_idle_cpu_pct']:.0f}), manager "
        f"{s['manager_idle_cpu_pct']:.2f} %; with {tasks} tasks: agent "
        f"{s[f'agent_{tasks}_tasks_cpu_pct']:.2f} %, manager "
        f"{s[f'manager_{tasks}_tasks_cpu_pct']:.2f} %"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    idle0, idle_n, procs = measure(args)
    s = summarize(idle0, idle_n, procs, args.tasks)
    print_summary(s, procs, args.tasks)
    report = {
        "bench": "footprint",
        "hosts": 1,
        "tasks": args.tasks,
        "idle_seconds": args.idle_seconds,
        "heartbeat_period_s": args.heartbeat_period,
        "agent_args": args.agent_arg,
        "manager_args": args.manager_arg,
        "summary": s,
        "idle_0_tasks": asdict(idle0),
        f"idle_{args.tasks}_tasks": asdict(idle_n),
        "under_agent": procs,
        "reference": REFERENCE,
        "target": TARGET,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


def _need(pid: int | None, what: str) -> int:
    if pid is None:
        raise RuntimeError(f"the {what} is not running")
    return pid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--idle-seconds", type=float, default=60.0, help="each idle window's length")
    p.add_argument("--settle", type=float, default=5.0, help="wait before each window (start-up)")
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--subnet", default="198.51.100.128/26", help="the dev cluster's underlay")
    p.add_argument(
        "--heartbeat-period",
        type=float,
        default=1.0,
        help="agents' heartbeat period in s: the dev cluster's 1 (the manager's default is 5)",
    )
    p.add_argument("--agent-arg", action="append", default=[], help="extra agent flag (repeat)")
    p.add_argument("--manager-arg", action="append", default=[], help="extra manager flag")
    p.add_argument("--out", type=Path, default=Path("bench/results/footprint.json"))
    a = p.parse_args(argv)
    if a.tasks < 1 or a.idle_seconds <= 0:
        p.error("--tasks must be >= 1 and --idle-seconds > 0")
    return a


def main() -> None:
    run(parse_args())


if __name__ == "__main__":
    main()
