"""One "host" of the two-host UML bed (tests/uml/test_encrypted_dataplane.py,
bench.encryption), run inside UML in that host's network namespace: the agent's real data
plane (agent.dataplane.kernel.DataPlane, with its IPsec stage and ESP watch) driven by a JSON
file instead of a manager and gossip.

    python -m bench.uml_host CONFIG OUTDIR

Every 0.1 s: when CONFIG changed, one reconcile of the desired state it describes, then
OUTDIR/applied-GEN is written (its failures, as JSON); the IPsec report goes to
OUTDIR/status.json each second. OUTDIR/stop ends it.

CONFIG: {"gen": N, "me": VTEP, "prefix": "h1-", "keys": [[tag, hex], ...] (primary first),
"networks": [{"id", "vni", "subnet", "encrypted"}], "tasks": [{"id", "nets": [[net, cidr]]}],
"remotes": [[net, address, vtep]]}. Networks are internal (the user-mode kernel has no
nftables for ip, which egress would need).
"""

from __future__ import annotations

import asyncio
import json
import sys
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from agent.dataplane.kernel import DataPlane
from agent.model import (
    DesiredState,
    HostConfig,
    IpsecKey,
    LocalEndpoint,
    Names,
    NetworkConfig,
    RemoteEndpoint,
    SandboxConfig,
)

# The two-host bed: h1 and h2 on 198.51.100.0/28, one task each on an encrypted and a plain
# network (internal: no egress, which needs nftables).
H1, H2 = "198.51.100.1", "198.51.100.2"
SEC = {"id": "sec", "vni": 4097, "subnet": "10.99.0.0/24", "encrypted": True}
PLAIN = {"id": "plain", "vni": 4098, "subnet": "10.98.0.0/24", "encrypted": False}
ADDR = {
    ("h1", "sec"): "10.99.0.11",
    ("h2", "sec"): "10.99.0.12",
    ("h1", "plain"): "10.98.0.11",
    ("h2", "plain"): "10.98.0.12",
}


# Bash that builds the bed inside UML and starts both hosts on generation 1: needs REPO and
# PY in the environment and files h1-g1.json / h2-g1.json (pair_config) in its directory;
# `setcfg H GEN` and `waitgen H GEN` move a host to another generation.
BED = r"""
set -euo pipefail
ip link add br0 type bridge
ip link set br0 up
for i in 1 2 3; do
    ip netns add h$i
    ip link add v$i type veth peer name eth0 netns h$i
    ip link set v$i master br0 up
    ip -n h$i link set lo up
    ip -n h$i link set eth0 up
    ip -n h$i addr add 198.51.100.$i/28 dev eth0
done
setcfg() { cp h$1-g$2.json h$1.tmp && mv h$1.tmp h$1.json; }
waitgen() {
    for _ in $(seq 300); do [ -e out$1/applied-$2 ] && return 0; sleep 0.1; done
    echo "TIMEOUT h$1 gen $2"; cat out$1/log; return 1
}
xstat() { echo "$1 $(ip netns exec h2 cat /proc/net/xfrm_stat | tr -s ' \t\n' ' ')"; }
for h in 1 2; do
    mkdir out$h
    setcfg $h 1
    # nsenter, not `ip netns exec`: the namespaces the data plane names must be mounted
    # where everyone sees them, not in a mount namespace of the exec's own.
    (cd "$REPO" && nsenter --net=/run/netns/h$h env PYTHONPATH="$REPO" \
        "$PY" -m bench.uml_host "$UML_IO/h$h.json" "$UML_IO/out$h" \
        >"$UML_IO/out$h/log" 2>&1) &
done
waitgen 1 1
waitgen 2 1
"""


def sandbox(host: str) -> str:
    """The task sandbox's netns name on `host` of the bed."""
    return Names(f"{host}-").sandbox_ns(f"task{host}")


def pair_config(host: str, gen: int, keys: list[tuple[int, str]]) -> str:
    """CONFIG for `host` ("h1" or "h2") of the bed, generation `gen`, with the ring `keys`
    ([tag, hex key], primary first)."""
    me, peer = (H1, H2) if host == "h1" else (H2, H1)
    other = "h2" if host == "h1" else "h1"
    return json.dumps(
        {
            "gen": gen,
            "me": me,
            "prefix": f"{host}-",
            "keys": keys,
            "networks": [SEC, PLAIN],
            "tasks": [
                {
                    "id": f"task{host}",
                    "nets": [[n, f"{ADDR[host, n]}/24"] for n in ("sec", "plain")],
                }
            ],
            "remotes": [[n, ADDR[other, n], peer] for n in ("sec", "plain")],
        }
    )


def desired(cfg: dict[str, Any]) -> DesiredState:
    nets = {
        n["id"]: NetworkConfig(
            id=n["id"],
            name=n["id"],
            vni=n["vni"],
            subnet=IPv4Network(n["subnet"]),
            gateway=next(IPv4Network(n["subnet"]).hosts()),
            internal=True,
            encrypted=n["encrypted"],
        )
        for n in cfg["networks"]
    }
    boxes = {
        t["id"]: SandboxConfig(
            task_id=t["id"],
            endpoints=tuple(
                LocalEndpoint(t["id"], net, i, IPv4Interface(addr))
                for i, (net, addr) in enumerate(t["nets"])
            ),
            egress=False,
            hostname=t["id"],
        )
        for t in cfg["tasks"]
    }
    remotes: dict[str, set[RemoteEndpoint]] = {}
    for net, addr, vtep in cfg["remotes"]:
        remotes.setdefault(net, set()).add(
            RemoteEndpoint(net, IPv4Address(addr), IPv4Address(vtep))
        )
    return DesiredState(
        networks=nets,
        sandboxes=boxes,
        remotes={k: frozenset(v) for k, v in remotes.items()},
        ipsec_keys=tuple(IpsecKey(tag, bytes.fromhex(key)) for tag, key in cfg["keys"]),
    )


async def main(config: Path, out: Path) -> None:
    cfg = json.loads(config.read_text())
    host = HostConfig(
        vtep=IPv4Address(cfg["me"]),
        names=Names(cfg["prefix"]),
        # Not the machine's /etc/netns: UML's root is the host's filesystem.
        etc_netns=out / "etc-netns",
    )
    dp = DataPlane(host)
    last, ticks = "", 0
    try:
        while not (out / "stop").exists():
            text = config.read_text()
            if text != last:
                cfg = json.loads(text)
                result = await dp.reconcile(desired(cfg))
                report = {
                    "failures": [str(f) for f in result.failures],
                    "unbuilt": result.unbuilt,
                    "problems": result.problems,
                }
                (out / f"applied-{cfg['gen']}").write_text(json.dumps(report))
                last = text
            ticks += 1
            if ticks % 10 == 0:
                st = dp.ipsec_status()
                doc = MessageToDict(st, preserving_proto_field_name=True) if st else None
                (out / "status.json").write_text(json.dumps(doc))
            await asyncio.sleep(0.1)
    finally:
        await dp.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
