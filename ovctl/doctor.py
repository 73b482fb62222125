"""`ovctl doctor [NETWORK...] [--repair] [--format table|json]`.

Every agent compares its kernel with what it should have programmed and the manager gathers
the differences (manager/doctor.py, agent/doctor.py): one row per (host, object, expected,
found). The exit status says whether the cluster is as it should be: 1 when anything drifted
(with --repair: when anything is still drifted after the repair), or when a host did not
answer (its drift is unknown); 0 otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ovctl import render
from proto import control_pb2 as cpb

Stub = Any
# How long the manager waits for the agents at most; a repair waits twice this (a check, a
# pass, a check), and both stay inside ovctl's own deadline.
MAX_WAIT_S = 10.0


def add_verb(groups: Any, verb: Callable[..., argparse.ArgumentParser]) -> None:
    """The top-level `doctor` verb, on the command tree's `groups`."""
    p = verb(
        groups,
        "doctor",
        doctor,
        "compare every host's kernel state with what it should be, and report the drift",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="make the agents reconcile now, and print what that fixed",
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("networks", nargs="*", metavar="NETWORK", help="only these networks")


def wait_ms(deadline: float, repair: bool) -> int:
    """How long the manager may wait for the agents within ovctl's call deadline."""
    share = deadline / (3 if repair else 1.5)
    return int(min(MAX_WAIT_S, share) * 1000)


def exit_status(resp: cpb.DoctorResponse) -> int:
    """1 when a row is not repaired or a host did not answer (or could not check), else 0."""
    if any(not r.repaired for r in resp.rows):
        return 1
    return 1 if any(not h.answered or h.error for h in resp.hosts) else 0


def doctor_text(resp: cpb.DoctorResponse, repair: bool) -> str:
    """The rows as a table, then a line per host that did not answer, then a summary."""
    headers = ["HOST", "NETWORK", "KIND", "OBJECT", "EXPECTED", "FOUND"]
    if repair:
        headers.append("REPAIRED")
    lines = []
    if resp.rows:
        rows = []
        for r in resp.rows:
            row = [r.host, r.network or "-", r.kind, r.object, r.expected, r.found]
            if repair:
                row.append("yes" if r.repaired else "no")
            rows.append(row)
        lines.append(render.table(headers, rows))
    for h in resp.hosts:
        if not h.answered:
            lines.append(f"{h.hostname}: did not answer ({h.error})")
        elif h.error:
            lines.append(f"{h.hostname}: could not check: {h.error}")
    answered = sum(1 for h in resp.hosts if h.answered and not h.error)
    drifted = sum(1 for r in resp.rows if not r.repaired)
    repaired = len(resp.rows) - drifted
    summary = f"{answered} of {len(resp.hosts)} hosts checked, {drifted} drifted"
    if repair:
        summary += f", {repaired} repaired"
    lines.append(summary)
    return "\n".join(lines)


def doctor(stub: Stub, args: argparse.Namespace) -> int:
    req = cpb.DoctorRequest(
        network_refs=args.networks,
        repair=args.repair,
        timeout_ms=wait_ms(args.timeout, args.repair),
    )
    resp = stub.Doctor(req)
    print(render.to_json(resp) if args.format == "json" else doctor_text(resp, args.repair))
    return exit_status(resp)
