"""The planner's exact output, pinned on 400 generated (desired, observed) pairs.

The digests in data/dataplane_plan_golden.json were recorded from the planner as it was before
the F6 split of `plan()` into named steps (one 323-line function then), so this test shows that
the split changed no op, no field and no order. The inputs are drift the other tests do not all
reach: half-applied plans, links of the wrong kind, MTU/master/MAC/address drift, stale FDB
entries, stray links, orphaned files, undesired or repeated endpoints, the ingress sandbox.

If the planner's output is changed on purpose, regenerate the file (from the repository root):
    .venv/bin/python -m tests.unit.test_dataplane_plan_golden \\
        > tests/unit/data/dataplane_plan_golden.json
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from dataclasses import fields, replace
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from agent.dataplane.observed import Link, Observed
from agent.dataplane.ops import Op
from agent.dataplane.plan import plan
from agent.dataplane.simulate import simulate
from agent.model import INGRESS_SANDBOX, DesiredState, LocalEndpoint, RemoteEndpoint, SandboxConfig
from tests.unit.test_dataplane_plan import HOST, net

GOLDEN = Path(__file__).parent / "data" / "dataplane_plan_golden.json"
CASES = 400


def desired_state(rnd: random.Random) -> DesiredState:
    nets = [
        net(i, internal=rnd.random() < 0.3)
        for i in sorted(rnd.sample(range(1, 5), rnd.randint(0, 3)))
    ]
    tasks = rnd.sample([f"t{i}" for i in range(6)] + [INGRESS_SANDBOX], rnd.randint(0, 4))
    sandboxes = []
    for t in sorted(tasks):
        eps = tuple(
            LocalEndpoint(
                t,
                f"net{rnd.randint(1, 5)}",  # net5 is never desired
                rnd.randint(0, 2),  # may repeat
                IPv4Interface(
                    f"10.{rnd.randint(1, 5)}.{rnd.choice([0, 0, 0, 9])}.{rnd.randint(2, 40)}/24"
                ),
            )
            for _ in range(rnd.randint(0, 3))
        )
        sandboxes.append(
            SandboxConfig(t, eps, egress=rnd.random() < 0.7, hostname=rnd.choice(["", t]))
        )
    remotes = {}
    for n in [*nets, net(5)][: rnd.randint(0, len(nets) + 1)]:
        vteps = rnd.randint(1, 3)
        remotes[n.id] = frozenset(
            RemoteEndpoint(
                n.id,
                IPv4Address(f"10.{n.vni - 4096}.1.{k + 1}"),
                IPv4Address(f"198.51.100.{10 + k % vteps}"),  # .11 is this host's own VTEP
            )
            for k in range(rnd.randint(0, 5))
        )
    return DesiredState(
        networks={n.id: n for n in nets},
        sandboxes={s.task_id: s for s in sandboxes},
        remotes=remotes,
    )


def drifted_links(rnd: random.Random, links: dict[str, Link]) -> dict[str, Link]:
    out = dict(links)
    for name in sorted(out):
        lk = out[name]
        match rnd.randint(0, 12):
            case 0:
                del out[name]
            case 1:
                out[name] = replace(lk, mtu=lk.mtu + 7)
            case 2:
                out[name] = replace(lk, kind="dummy")
            case 3:
                out[name] = replace(lk, up=False)
            case 4:
                out[name] = replace(lk, master="xx")
            case 5:
                out[name] = replace(lk, mac="02:00:00:00:00:01")
            case 6:
                out[name] = replace(lk, addresses=frozenset({IPv4Interface("10.9.9.9/24")}))
            case 7 if lk.vxlan is not None:
                out[name] = replace(lk, vxlan=replace(lk.vxlan, port=9999))
    if rnd.random() < 0.2:
        stray = rnd.choice(["eth0", "eth1", "gw0", "ovvabc", "ovgxyz", "ovx4097", "ovgw0"])
        out[stray] = Link(kind=rnd.choice(["veth", "vxlan", "bridge"]), mtu=1450)
    return out


def observed_state(rnd: random.Random, toward: DesiredState) -> Observed:
    """A (possibly half-applied) convergence toward `toward`, then drift."""
    obs = Observed()
    ops = plan(HOST, toward, obs)
    if rnd.random() < 0.5:
        for op in ops:
            if rnd.random() < 0.6:
                with contextlib.suppress(KeyError):  # its netns was not made
                    obs = simulate(HOST, obs, [op])
    else:
        obs = simulate(HOST, obs, ops)
    stale = ("02:42:0a:01:01:63", "198.51.100.99")
    networks = {
        k: replace(
            v,
            links=drifted_links(rnd, dict(v.links)),
            fdb=v.fdb if rnd.random() < 0.5 else frozenset(sorted(v.fdb)[:1]) | {stale},
            neigh=v.neigh if rnd.random() < 0.5 else frozenset(),
        )
        for k, v in obs.networks.items()
    }
    gateways = [None, IPv4Address("172.18.0.9")]
    sandboxes = {
        k: replace(
            v,
            links=drifted_links(rnd, dict(v.links)),
            lo_up=v.lo_up or rnd.random() < 0.5,
            default_gateway=rnd.choice([v.default_gateway, *gateways]),
        )
        for k, v in obs.sandboxes.items()
    }
    files = dict(obs.files)
    if files and rnd.random() < 0.5:
        files[sorted(files)[0]] = ("x", "y")
    if rnd.random() < 0.5:
        files[HOST.names.sandbox_ns("orphan")] = ("", "")
    return replace(
        obs,
        networks=networks,
        sandboxes=sandboxes,
        host_links=drifted_links(rnd, dict(obs.host_links)),
        files=files,
        nft=rnd.random() < 0.5,
        ip_forward=rnd.random() < 0.5,
    )


def canonical(op: Op) -> str:
    """An op as text that does not depend on set iteration order."""
    parts = []
    for f in fields(op):
        v = getattr(op, f.name)
        parts.append(f"{f.name}={sorted(map(str, v)) if isinstance(v, frozenset) else v!r}")
    return f"{type(op).__name__}({', '.join(parts)})"


def case_digest(i: int) -> str:
    rnd = random.Random(i)
    d0, d1 = desired_state(rnd), desired_state(rnd)
    obs = observed_state(rnd, d0)
    text = "\n--\n".join(
        "\n".join(canonical(op) for op in plan(HOST, d, obs)) for d in (d0, d1, DesiredState())
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_plan_output_matches_the_pinned_digests() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert len(golden) == CASES
    changed = [i for i in range(CASES) if case_digest(i) != golden[i]]
    assert not changed, f"plan() output changed for generated cases {changed[:10]}"


if __name__ == "__main__":
    print(json.dumps([case_digest(i) for i in range(CASES)], indent=0))
