"""Smoke test of the UML bed: VXLAN over ESP transport mode between two namespaces, for real.

Inside one UML instance: hosts ``a`` (198.51.100.1) and ``b`` (.2) are network namespaces
whose veths sit on a bridge in UML's root namespace (the underlay). Each has VXLAN VNI 4097
(dstport 4789, learning off, static FDB and neighbour entries) with 10.99.0.x/24 on top. The
test first proves the capture sees plain VXLAN and the payload (else "no payload on the wire"
later would prove nothing), then installs one ``rfc4106(gcm(aes))`` SA per direction and
policies selecting only UDP to 4789 between the two underlay addresses, and checks: the overlay
still carries pings and datagrams, the underlay shows ESP with both SPIs and no UDP to 4789,
the payload never appears in captured bytes, and the SAs' packet counters grew.

`NET_BED` (the bash that builds it) and `parse_xfrm_states` are reused by other UML tests.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import pytest

from bench import uml

pytestmark = pytest.mark.slow

VNI = 4097
SPI_AB, SPI_BA = 0x1001, 0x2001

# Bash defining the bed; expects KEY_AB and KEY_BA (0x + 40 hex digits: AES-128 key + salt).
NET_BED = r"""
set -euo pipefail
A=198.51.100.1 B=198.51.100.2
SPI_AB=0x1001 SPI_BA=0x2001 REQID=4097
ip -batch - <<EOT
link add br0 type bridge
link set br0 up
netns add a
netns add b
link add va type veth peer name eth0 netns a address 02:00:00:00:00:01
link add vb type veth peer name eth0 netns b address 02:00:00:00:00:02
link set va master br0 up
link set vb master br0 up
EOT
# ns me peer: underlay address, VXLAN 4097 without learning, static FDB + neighbour
bed_host() {
    local ns=$1 me=$2 peer=$3
    ip -n "$ns" -batch - <<EOT
link set lo up
link set eth0 up
addr add 198.51.100.$me/28 dev eth0
link add vx0 address 02:99:00:00:00:0$me type vxlan id 4097 dstport 4789 \
    local 198.51.100.$me dev eth0 nolearning
addr add 10.99.0.$me/24 dev vx0
link set vx0 up
neigh add 10.99.0.$peer lladdr 02:99:00:00:00:0$peer dev vx0 nud permanent
EOT
    bridge -n "$ns" -batch - <<EOT
fdb append 00:00:00:00:00:00 dev vx0 dst 198.51.100.$peer
fdb add 02:99:00:00:00:0$peer dev vx0 dst 198.51.100.$peer
EOT
}
# ns me peer spi_out key_out spi_in key_in: one SA per direction, policies for VXLAN only
bed_xfrm() {
    local ns=$1 me=$2 peer=$3 sa="reqid $REQID mode transport aead rfc4106(gcm(aes))"
    local vxlan="proto udp dport 4789" tmpl="proto esp reqid $REQID mode transport"
    ip -n "$ns" -batch - <<EOT
xfrm state add src $me dst $peer proto esp spi $4 $sa $5 128
xfrm state add src $peer dst $me proto esp spi $6 $sa $7 128
xfrm policy add src $me/32 dst $peer/32 $vxlan dir out priority 1000 tmpl src $me dst $peer $tmpl
xfrm policy add src $peer/32 dst $me/32 $vxlan dir in priority 1000 tmpl src $peer dst $me $tmpl
EOT
}
bed_host a 1 2
bed_host b 2 1
"""

_SCRIPT = r"""
bed_probe() { echo "PROBE $1 $($UML_TOOLS probe "$SPEC")"; }
bed_states() { echo "STATES $1"; ip -n "$2" -s xfrm state; echo "END"; }
bed_probe plain
bed_xfrm a $A $B $SPI_AB $KEY_AB $SPI_BA $KEY_BA
bed_xfrm b $B $A $SPI_BA $KEY_BA $SPI_AB $KEY_AB
bed_states a-before a
bed_states b-before b
bed_probe esp
bed_states a-after a
bed_states b-after b
"""

_STATE_HEAD = re.compile(r"^src (\S+) dst (\S+)$")
_SPI = re.compile(r"\bspi (0x[0-9a-f]+)")
_CURRENT = re.compile(r"^\s*(\d+)\(bytes\), (\d+)\(packets\)")


def parse_xfrm_states(text: str) -> dict[str, dict[str, Any]]:
    """``ip -s xfrm state`` text (iproute2 6.1 has no JSON for xfrm) -> {spi: fields}.

    Fields: src, dst, bytes and packets (from "lifetime current").
    """
    states: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] = {}
    in_lifetime = False
    for line in text.splitlines():
        if head := _STATE_HEAD.match(line):
            current = {"src": head[1], "dst": head[2]}
        elif spi := _SPI.search(line):
            states[f"0x{int(spi[1], 16):x}"] = current
        elif "lifetime current:" in line:
            in_lifetime = True
        elif in_lifetime and (counts := _CURRENT.match(line)):
            current["bytes"], current["packets"] = int(counts[1]), int(counts[2])
            in_lifetime = False
    return states


def _sections(output: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The script's PROBE lines (name -> JSON) and STATES blocks (name -> text)."""
    probes: dict[str, Any] = {}
    states: dict[str, str] = {}
    block: list[str] | None = None
    name = ""
    for line in output.splitlines():
        if line.startswith("PROBE "):
            _, name, payload = line.split(" ", 2)
            probes[name] = json.loads(payload)
        elif line.startswith("STATES "):
            name, block = line.split(" ", 1)[1], []
        elif line == "END" and block is not None:
            states[name], block = "\n".join(block), None
        elif block is not None:
            block.append(line)
    return probes, states


def test_vxlan_over_esp_between_two_namespaces() -> None:
    marker = f"OVNET-SECRET-{secrets.token_hex(8)}"
    sends = 3
    spec = {
        "capture": [{"iface": "va"}],
        "markers": [marker],
        "listen": [{"ns": "b", "port": 5000}],
        "ping": [{"ns": "a", "dst": "10.99.0.2", "count": 3}],
        "send": [{"ns": "a", "dst": "10.99.0.2", "port": 5000, "text": marker, "count": sends}],
    }
    env = {
        "KEY_AB": "0x" + secrets.token_hex(20),
        "KEY_BA": "0x" + secrets.token_hex(20),
        "SPEC": json.dumps(spec),
    }
    result = uml.boot(NET_BED + _SCRIPT, timeout=90, env=env)
    assert result.returncode == 0, result.describe()
    probes, states = _sections(result.output)
    assert set(probes) == {"plain", "esp"}, result.describe()

    plain, esp = probes["plain"], probes["esp"]
    # Without IPsec the capture must see VXLAN and the payload: it can see what it looks for.
    assert None not in plain["ping"][0], plain
    assert len(plain["received"]["b:5000"]) == sends, plain
    assert plain["capture"][0]["udp_4789"] > 0, plain
    assert plain["capture"][0]["markers"][marker] == sends, plain

    # With ESP: the overlay still works...
    assert None not in esp["ping"][0], esp
    assert esp["received"]["b:5000"] == [f"10.99.0.1 {marker}"] * sends, esp
    # ...and the underlay carries ESP in both directions, no VXLAN and never the payload.
    wire = esp["capture"][0]
    assert wire["esp_spis"].get(f"0x{SPI_AB:x}", 0) >= sends + 3, wire
    assert wire["esp_spis"].get(f"0x{SPI_BA:x}", 0) >= 3, wire
    assert wire["udp_4789"] == 0, wire
    assert wire["markers"][marker] == 0, wire

    # The SAs counted it: a's outbound and b's inbound SA for a->b, b's outbound for replies.
    for host, spi, least in (("a", SPI_AB, sends + 3), ("b", SPI_AB, sends + 3), ("b", SPI_BA, 3)):
        before = parse_xfrm_states(states[f"{host}-before"])[f"0x{spi:x}"]
        after = parse_xfrm_states(states[f"{host}-after"])[f"0x{spi:x}"]
        assert after["packets"] - before["packets"] >= least, (host, hex(spi), before, after)
        assert after["bytes"] > before["bytes"], (host, hex(spi), before, after)
