"""One "host" of tests/uml/test_encrypted_dataplane.py, run inside UML in that host's network
namespace: the agent's real data plane (agent.dataplane.kernel.DataPlane, with its IPsec stage
and ESP watch) driven by a JSON file instead of a manager and gossip.

    python -m tests.uml.dataplane_host CONFIG OUTDIR

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
