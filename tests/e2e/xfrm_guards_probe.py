"""Run by tests/e2e/test_xfrm_guards.py as root in a fresh network namespace (`unshare
--net`): "host A" (198.51.100.1) with a veth to "host B" (198.51.100.2, a nested fresh
namespace). Applies the agent's IPsec guards with no ring (the only kind this kernel takes: it
has no ESP), sends cleartext both ways, removes everything, and prints what happened as JSON
for the test to judge.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from ipaddress import IPv4Address
from typing import Any

from agent.dataplane import xfrm
from agent.dataplane.ipsec import XfrmTables, desired_tables, plan_tables, stages

REQID, PORT, PLAIN = 0x6F76_0001, 4790, 4789
A, B = IPv4Address("198.51.100.1"), IPv4Address("198.51.100.2")


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True)


def stat(name: str) -> int:
    """One counter of this namespace's /proc/net/xfrm_stat."""
    with open("/proc/net/xfrm_stat") as f:
        for line in f:
            k, v = line.split()
            if k == name:
                return int(v)
    raise KeyError(name)


def netns_of(pid: int | str) -> str:
    return subprocess.run(
        ["readlink", f"/proc/{pid}/ns/net"], capture_output=True, text=True, check=True
    ).stdout


def main() -> None:
    out: dict[str, Any] = {}
    peer = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        sh("ip link set lo up; ip link add v0 type veth peer name v1; ip link set v0 up")
        sh(f"ip addr add {A}/28 dev v0")
        while netns_of(peer.pid) == netns_of("self"):  # until the child has its own
            pass
        sh(f"ip link set v1 netns {peer.pid}")
        enter = ["nsenter", f"--net=/proc/{peer.pid}/ns/net"]
        subprocess.run([*enter, "sh", "-c", f"ip link set v1 up; ip addr add {B}/28 dev v1"])
        # Someone else's policy: never touched.
        sh(
            f"ip xfrm policy add src {A}/32 dst 198.51.100.9/32 proto udp dport 9999 dir out "
            "tmpl proto esp reqid 99 mode transport"
        )
        want = desired_tables(A, [B], [], PORT, encrypted=True)
        ops = plan_tables(want, xfrm.observe(REQID))
        early, late = stages(ops)
        xfrm.apply(early, REQID)
        got = xfrm.observe(REQID)
        out.update(ops=len(ops), late=len(late), same=got == want)
        out["again"] = len(plan_tables(want, got))

        # Cleartext in: B sends to A's encrypted port (dropped) and to the plain one.
        rx = {}
        for port in (PORT, PLAIN):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((str(A), port))
            s.settimeout(1.0)
            rx[port] = s
        before = stat("XfrmInTmplMismatch")
        send = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.sendto(b'secret', ('{A}', {PORT})); s.sendto(b'plain', ('{A}', {PLAIN}))"
        )
        subprocess.run([*enter, sys.executable, "-c", send], check=True)
        received: dict[int, str | None] = {}
        for port, s in rx.items():
            try:
                received[port] = s.recv(100).decode()
            except OSError:
                received[port] = None
        out["received"] = received
        out["in_dropped"] = stat("XfrmInTmplMismatch") - before

        # Cleartext out: A sends to B's encrypted port (the block policy refuses it).
        before = stat("XfrmOutPolBlock")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(b"secret", (str(B), PORT))
            out["sent_out"] = "sent"
        except OSError as e:
            out["sent_out"] = e.strerror
        out["out_blocked"] = stat("XfrmOutPolBlock") - before

        # Everything of the agent's goes; the foreign policy stays.
        early, late = stages(plan_tables(XfrmTables(), xfrm.observe(REQID)))
        xfrm.apply(early + late, REQID)
        out["left"] = len(xfrm.observe(REQID).policies)
        listing = subprocess.run(["ip", "xfrm", "policy", "list"], capture_output=True, text=True)
        out["foreign"] = "reqid 99" in listing.stdout
    finally:
        peer.kill()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
