"""The pure parts of bench.footprint: /proc text parsing, CPU percent, the process tree, and
the summary's arithmetic (the cluster part runs only as the benchmark itself)."""

from __future__ import annotations

import os

import pytest

from bench.footprint import (
    SLEEPER,
    Mem,
    Window,
    by_thread_name,
    cpu_percent,
    descendants,
    mem_from,
    parse_kb_fields,
    role_of,
    summarize,
)
from osutil.proc import proc_cpu_ticks

STATUS = """Name:\tpython
PPid:\t42
VmRSS:\t   75532 kB
RssAnon:\t   40000 kB
Threads:\t10
"""
ROLLUP = """55d0-7ffd ---p 00000000 00:00 0    [rollup]
Rss:               75532 kB
Pss:               51234 kB
Pss_Anon:          39000 kB
Private_Clean:      1000 kB
Private_Dirty:     40000 kB
"""


def test_parse_kb_fields_takes_only_the_keys_asked() -> None:
    assert parse_kb_fields(STATUS, ["VmRSS", "PPid", "VmSwap"]) == {"VmRSS": 75532, "PPid": 42}


def test_mem_from_status_and_rollup() -> None:
    assert mem_from(STATUS, ROLLUP) == Mem(75532, 51234, 41000)
    # No smaps_rollup (older kernel, or not readable): RSS stands in for the other two.
    assert mem_from(STATUS, None) == Mem(75532, 75532, 75532)


def test_cpu_percent_of_one_core() -> None:
    assert cpu_percent(100, 160, 60.0, 100) == 1.0
    assert cpu_percent(5, 5, 0.0, 100) == 0.0


def test_descendants_walks_the_tree_parents_first() -> None:
    parents = {10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 14: 13}
    assert descendants(parents, 10) == [11, 12, 13, 14]
    assert descendants(parents, 99) == []


def test_role_of() -> None:
    shim = ["/venv/bin/python", "-I", "-S", "/x/agent/executor/shim.py", "/t", "5", "--", "ip"]
    assert role_of(shim) == "shim"
    assert role_of(["/usr/bin/python3.11", *SLEEPER[1:]]) == "task"
    assert role_of(["/usr/sbin/nft", "-f", "-"]) == "nft"


def test_by_thread_name_counts_ended_threads_from_the_total() -> None:
    before = {100: ("python", 50), 101: ("event_engine", 10), 102: ("event_engine", 5)}
    after = {100: ("python", 56), 101: ("event_engine", 8 + 10), 103: ("python", 1)}
    got = by_thread_name(before, after, 10.0, 65, 65 + 6 + 8 + 1 + 3)
    # 100 ticks/s (Linux's USER_HZ): 6 ticks over 10 s is 0.6 % of one core.
    want = {"event_engine": 0.8, "main": 0.6, "(ended threads)": 0.3, "python": 0.1}
    assert got == pytest.approx(want)
    assert list(got) == list(want)  # busiest first


def window(agent: Mem, cpu: float) -> Window:
    return Window(
        seconds=60.0,
        cpu_pct={"agent": cpu, "manager": 0.5},
        cpu_with_children_pct={"agent": cpu, "manager": 0.5},
        cpu_by_thread_pct={"agent": {}, "manager": {}},
        mem={"agent": agent, "manager": Mem(58 * 1024, 30 * 1024, 25 * 1024)},
        rss_max_kb={"agent": agent.rss_kb, "manager": 58 * 1024},
    )


def test_summarize_per_task_overhead() -> None:
    idle0 = window(Mem(70 * 1024, 50 * 1024, 40 * 1024), 0.9)
    idle2 = window(Mem(72 * 1024, 51 * 1024, 41 * 1024), 1.1)
    procs = [
        {"pid": 1, "role": "shim", "rss_kb": 10240, "pss_kb": 4096, "private_kb": 4096},
        {"pid": 2, "role": "task", "rss_kb": 9216, "pss_kb": 3072, "private_kb": 3072},
        {"pid": 3, "role": "shim", "rss_kb": 10240, "pss_kb": 5120, "private_kb": 4096},
        {"pid": 4, "role": "task", "rss_kb": 9216, "pss_kb": 3072, "private_kb": 3072},
    ]
    s = summarize(idle0, idle2, procs, 2)
    assert s["agent_idle_rss_mb"] == 70.0
    assert s["agent_growth_per_task_mb"] == 1.0
    assert (s["shims"], s["shim_rss_mb"], s["shim_pss_mb"]) == (2, 10.0, 4.5)
    assert s["per_task_overhead_rss_mb"] == 11.0
    assert s["per_task_overhead_pss_mb"] == 5.0
    assert (s["agent_idle_cpu_pct"], s["agent_2_tasks_cpu_pct"]) == (0.9, 1.1)


def test_proc_cpu_ticks_of_this_process_and_its_threads() -> None:
    pid = os.getpid()
    total = proc_cpu_ticks(pid)
    assert total is not None and total >= 0
    main = proc_cpu_ticks(pid, thread=pid)
    assert main is not None and main <= (proc_cpu_ticks(pid) or 0)
    assert (proc_cpu_ticks(pid, children=True) or 0) >= total
    assert proc_cpu_ticks(pid, thread=2**22 + 7) is None
