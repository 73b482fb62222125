"""Drift of a balancer's table: what nft lists against what the last applied spec renders.

nft lists rules in its own words (it drops a protocol match a reject implies, writes
priorities by name), so rule texts do not compare; the shape does: which chains the table
has and how many rules each holds. A rule deleted by hand, a chain or the whole table gone
all show; a rule edited in place does not (say so if you rely on it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CHAIN = re.compile(r"^\s*chain (\S+) \{(.*)\}\s*$")
_SETUP = ("type ", "policy ")


@dataclass(frozen=True)
class LbDrift:
    """One chain (or the table) of a balancer that differs from what it should hold."""

    object: str
    expected: str
    found: str


def rendered_chains(script: str) -> dict[str, int]:
    """Chain name -> rule count of a script from plan.render_full (one line per chain)."""
    out: dict[str, int] = {}
    for line in script.splitlines():
        m = _CHAIN.match(line)
        if m is None:
            continue
        stmts = [s.strip() for s in m.group(2).split(";")]
        out[m.group(1)] = sum(1 for s in stmts if s and not s.startswith(_SETUP))
    return out


def listed_chains(listing: str) -> dict[str, int]:
    """Chain name -> rule count of `nft list table` output."""
    out: dict[str, int] = {}
    chain: str | None = None
    for raw in listing.splitlines():
        line = raw.strip()
        if chain is None:
            if line.startswith("chain ") and line.endswith("{"):
                chain = line.split()[1]
                out[chain] = 0
            continue
        if line == "}":
            chain = None
        elif line and not line.startswith(_SETUP):
            out[chain] += 1
    return out


def chain_drift(table: str, where: str, script: str, listing: str | None) -> list[LbDrift]:
    """The chains of `table` in `where` whose rules differ (`listing` None: no table)."""
    want = rendered_chains(script)
    obj = f"table ip {table} in {where}"
    if listing is None:
        return [LbDrift(obj, f"{len(want)} chains", "missing")]
    have = listed_chains(listing)
    out = []
    for name in sorted(want.keys() | have.keys()):
        w, h = want.get(name), have.get(name)
        if w == h:
            continue
        expected = "absent" if w is None else f"{w} rules"
        found = "missing" if h is None else f"{h} rules"
        out.append(LbDrift(f"{obj} chain {name}", expected, found))
    return out
