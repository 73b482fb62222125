"""Run inside UML by tests/uml/test_encrypted_cluster.py: a whole cluster (etcd, a manager,
two agents in host namespaces, as `ovctl dev` makes it) with an encrypted network and a
service spread over both hosts; then ESP is dropped on h2's underlay. Prints one JSON line of
what it saw for the test to judge.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from typing import Any

from ovctl.cli import main as ovctl_main
from tests.e2e.overlay import Overlay
from tests.support.cluster import E2ECluster
from tests.support.wait import wait_for

HTTP = [sys.executable, "-m", "http.server", "8080"]


def links(ov: Overlay) -> dict[str, str]:
    """The network's IPsec links as `network inspect` shows them. ovctl runs in this process
    (a new Python takes seconds to start on UML's one slow CPU, which would make the time it
    took to report a blocked link look seconds longer than it was)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = ovctl_main(["-H", ov.dev.manager_addr, "network", "inspect", "sec"])
    if rc != 0:
        raise AssertionError(f"ovctl network inspect sec: exit {rc}")
    doc = json.loads(buf.getvalue())[0]
    return {f"{x['node']}<-{x['peer']}": x["state"] for x in doc.get("ipsec", [])}


def addr_of(dev: E2ECluster, host: str) -> str:
    return str(dev.host_addr(host))


def outbound_spis(dev: E2ECluster, host: str, peer: str) -> set[str]:
    """SPIs of the host's SAs towards `peer` now."""
    text = dev.exec(
        host, ["ip", "xfrm", "state", "list", "dst", peer], capture_output=True, text=True
    ).stdout
    words = text.split()
    return {words[i + 1] for i, w in enumerate(words[:-1]) if w == "spi"}


def main() -> None:
    out: dict[str, Any] = {}
    dev = E2ECluster(
        name_prefix="ovu-",
        hosts=2,
        subnet="198.51.100.192/27",
        # Keys rotate every 4 s (a step every 2 s with the 1 s grace): the request loop
        # below spans several rotations.
        manager_args=["--heartbeat-period", "1", "--key-rotation-interval", "4"],
        agent_args=["--reconcile-interval", "1"],
        die_with_parent=True,
        ready_timeout=180,
    )
    try:
        started = time.monotonic()
        dev.up()
        out["up_s"] = round(time.monotonic() - started, 1)
        os.environ.update(dev.ovctl_env())  # the in-process ovctl's credentials
        ov = Overlay(dev)
        out["unavailable"] = ov.json("node", "inspect", "h1")[0]["description"].get(
            "unavailable", {}
        )
        ov.ovctl(
            "network", "create", "--opt", "encrypted", "--internal", "--subnet",
            "10.99.0.0/24", "sec",
        )  # fmt: skip
        ov.ovctl(
            "service", "create", "-d", "--name", "web", "--network", "sec", "--replicas", "2",
            "--max-replicas-per-node", "1", "--", *HTTP,
        )  # fmt: skip
        tasks = ov.running("web", 2, timeout=180)
        out["hosts"] = sorted(t.host for t in tasks)
        a, b = tasks
        out["reach"] = [
            wait_for(
                "a -> b",
                lambda: ov.http_get(a, b.addrs[next(iter(b.addrs))].split("/")[0]),
                timeout=60,
            ),
            wait_for(
                "b -> a",
                lambda: ov.http_get(b, a.addrs[next(iter(a.addrs))].split("/")[0]),
                timeout=60,
            ),
        ]
        out["links_ok"] = wait_for(
            "both hosts hear ESP",
            lambda: (ls := links(ov)) and set(ls.values()) == {"ok"} and len(ls) == 2 and ls,
            timeout=60,
        )
        # Requests both ways while the keys rotate: none may fail, and h1 must have sent
        # with several keys (its outbound SPIs to h2 change with each primary).
        ok = failed = 0
        spis: set[str] = set()
        until = time.monotonic() + 16
        while time.monotonic() < until:
            for src, dst in ((a, b), (b, a)):
                if ov.http_get(src, dst.addrs[next(iter(dst.addrs))].split("/")[0]):
                    ok += 1
                else:
                    failed += 1
            spis |= outbound_spis(dev, "h1", addr_of(dev, "h2"))
        out["rotation"] = {"ok": ok, "failed": failed, "h1_out_spis": len(spis)}
        dev.exec("h2", ["iptables-legacy", "-A", "INPUT", "-p", "esp", "-j", "DROP"], check=True)
        blocked = time.monotonic()
        out["links_blocked"] = wait_for(
            "h2 reports no ESP from h1",
            lambda: (ls := links(ov)) and ls.get("h2<-h1", "").startswith("no ESP from h1") and ls,
            timeout=60,
        )
        out["reported_after_s"] = round(time.monotonic() - blocked, 1)
    finally:
        dev.down()
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
