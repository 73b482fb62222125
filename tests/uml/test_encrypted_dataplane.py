"""Encrypted overlay networks on the wire, with the agent's own data plane, in user-mode Linux
(this machine's kernel has no ESP).

Inside one UML instance: hosts h1 (198.51.100.1) and h2 (.2) are network namespaces on a
bridge (the underlay), h3 (.3) is a stranger on it. In h1 and h2 runs the real DataPlane with
its IPsec stage (bench/uml_host.py, a JSON file standing in for the manager and
gossip): one task each on an encrypted network and on a plain one. Checked:

- tasks talk across hosts on both networks; on the wire the encrypted network is ESP only (no
  UDP to its VXLAN port, the payload never seen) while the plain one beside it is VXLAN in
  clear; the SAs' counters grew;
- a plaintext VXLAN packet for the encrypted VNI injected by h3 is dropped and counted (the
  same packet for the plain network is delivered: the injection itself is well formed);
- the manager's key rotation (two steps, three keys, all SPIs seen on the wire) under a
  stream of datagrams loses none;
- ESP blocked on h2's underlay (iptables) is reported by h2's watch ("silent since").

The control plane's side (keys on the session, reports in `network inspect`) is tested
against a real manager in tests/unit/test_dispatcher.py and tests/integration.
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.dataplane.ipsec import spi_for
from agent.model import endpoint_mac
from bench import uml
from bench.uml_host import ADDR, BED, H1, H2, pair_config, sandbox

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
H3 = "198.51.100.3"  # a stranger on the underlay
KEYS = [(tag, secrets.token_hex(32)) for tag in (1, 2, 3)]
# The manager's rotation: step 1 adds a key (accepted only), step 2 makes it primary.
RINGS = [[0], [0, 1], [1, 0], [1, 0, 2], [2, 1]]
ROTATION_SENDS = 400


def config(host: str, gen: int) -> str:
    return pair_config(host, gen, [KEYS[i] for i in RINGS[gen - 1]])


def vxlan_packet(vni: int, dst: str, src: str, port: int, payload: bytes) -> bytes:
    """A VXLAN payload (header + inner Ethernet/IPv4/UDP frame) as a host would send it."""
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    head = (0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", *head))
    words = struct.unpack("!10H", bytes(ip))
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    ip[10:12] = struct.pack("!H", ~total & 0xFFFF)
    eth = bytes.fromhex(endpoint_mac(dst).replace(":", "")) + bytes.fromhex("02aabbccddee")
    return struct.pack("!II", 0x08000000, vni << 8) + eth + b"\x08\x00" + bytes(ip) + udp


SCRIPT = BED + r"""
echo "APPLIED $(cat out1/applied-1) $(cat out2/applied-1)"
echo "STATES1 $(ip -n h1 -s xfrm state | tr '\n' ' ')"
echo "PROBE basic $($UML_TOOLS probe "$SPEC_BASIC")"
echo "STATES2 $(ip -n h1 -s xfrm state | tr '\n' ' ')"
xstat XSTAT_BEFORE
echo "PROBE inject $($UML_TOOLS probe "$SPEC_INJECT")"
xstat XSTAT_AFTER
$UML_TOOLS probe "$SPEC_ROTATE" >rotate.json &
probe=$!
sleep 1
for g in 2 3 4 5; do
    setcfg 1 $g
    setcfg 2 $g
    waitgen 1 $g
    waitgen 2 $g
    sleep 0.5
done
wait $probe
echo "PROBE rotate $(cat rotate.json)"
echo "STATUS_OPEN $(cat out2/status.json)"
ip netns exec h2 iptables-legacy -A INPUT -p esp -j DROP
sleep 16
echo "STATUS_BLOCKED $(cat out2/status.json)"
echo "STATUS_OTHER $(cat out1/status.json)"
touch out1/stop out2/stop
wait
grep -h -i "error\|traceback" out1/log out2/log || true
"""


def _lines(output: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in output.splitlines():
        key, _, rest = line.partition(" ")
        if key == "PROBE":
            key, _, rest = rest.partition(" ")
        out[key] = rest
    return out


def _xstat(text: str) -> dict[str, int]:
    words = text.split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}


def test_encrypted_network_on_the_wire_rotation_injection_and_blocked_esp() -> None:
    secret, clear = f"OVNET-SEC-{secrets.token_hex(6)}", f"OVNET-PLAIN-{secrets.token_hex(6)}"
    injected = f"OVNET-INJECT-{secrets.token_hex(6)}"
    s1, s2 = sandbox("h1"), sandbox("h2")
    basic = {
        "capture": [{"iface": "v1"}],
        "markers": [secret, clear],
        "listen": [{"ns": s2, "port": 5000}, {"ns": s2, "port": 5001}],
        "ping": [{"ns": s1, "dst": ADDR["h2", "sec"], "count": 3}],
        "send": [
            {"ns": s1, "dst": ADDR["h2", "sec"], "port": 5000, "text": secret, "count": 3},
            {"ns": s1, "dst": ADDR["h2", "plain"], "port": 5001, "text": clear, "count": 3},
        ],
    }
    inject = {
        "listen": [{"ns": s2, "port": 5002}, {"ns": s2, "port": 5003}],
        "send": [
            {
                "ns": "h3",
                "dst": H2,
                "port": 4790,
                "hex": vxlan_packet(
                    4097, ADDR["h2", "sec"], ADDR["h1", "sec"], 5002, injected.encode()
                ).hex(),
                "count": 3,
            },
            {
                "ns": "h3",
                "dst": H2,
                "port": 4789,
                "hex": vxlan_packet(
                    4098, ADDR["h2", "plain"], ADDR["h1", "plain"], 5003, injected.encode()
                ).hex(),
                "count": 3,
            },
        ],
        "settle": 0.5,
    }
    rotate = {
        "capture": [{"iface": "v1"}],
        "listen": [{"ns": s2, "port": 5004}],
        "send": [
            {
                "ns": s1,
                "dst": ADDR["h2", "sec"],
                "port": 5004,
                "text": "rot",
                "count": ROTATION_SENDS,
            }
        ],
        "settle": 1.0,
    }
    files = {f"{h}-g{g}.json": config(h, g) for h in ("h1", "h2") for g in range(1, 6)}
    env = {
        "REPO": str(ROOT),
        "PY": sys.executable,
        "SPEC_BASIC": json.dumps(basic),
        "SPEC_INJECT": json.dumps(inject),
        "SPEC_ROTATE": json.dumps(rotate),
    }
    result = uml.boot(
        SCRIPT,
        timeout=240,
        files=files,
        env=env,
        # No nfnetlink: the data plane must carry on without nftables (nothing here needs it).
        modules=uml.OVERLAY_MODULES + uml.IPTABLES_MODULES,
    )
    assert result.returncode == 0, result.describe()
    out = _lines(result.output)
    applied = out["APPLIED"]
    assert applied.count('"failures": []') == 2 and applied.count('"unbuilt": {}') == 2, applied

    # Both networks carry traffic between the hosts' tasks...
    b: dict[str, Any] = json.loads(out["basic"])
    assert None not in b["ping"][0], b
    assert len(b["received"][f"{s2}:5000"]) == 3 and len(b["received"][f"{s2}:5001"]) == 3, b
    # ...the encrypted one as ESP only, the plain one as VXLAN in clear.
    wire = b["capture"][0]
    assert wire["markers"][secret] == 0 and wire["markers"][clear] == 3, wire
    assert wire["udp_ports"].get("4790", 0) == 0 and wire["udp_ports"].get("4789", 0) >= 3, wire
    out_spi, in_spi = spi_for(_ip(H1), _ip(H2), 1), spi_for(_ip(H2), _ip(H1), 1)
    assert wire["esp_spis"].get(f"0x{out_spi:x}", 0) >= 6, wire  # 3 pings + 3 datagrams
    assert wire["esp_spis"].get(f"0x{in_spi:x}", 0) >= 3, wire  # the ping replies
    before, after = _packets(out["STATES1"], out_spi), _packets(out["STATES2"], out_spi)
    assert after - before >= 6, (before, after)

    # Cleartext for the encrypted VNI never reaches the task, and the kernel counts it; the
    # same injection on the plain network does (so the packet itself was well formed).
    inj = json.loads(out["inject"])
    assert inj["received"][f"{s2}:5002"] == [], inj
    assert len(inj["received"][f"{s2}:5003"]) == 3, inj
    x0, x1 = _xstat(out["XSTAT_BEFORE"]), _xstat(out["XSTAT_AFTER"])
    assert x1["XfrmInTmplMismatch"] - x0["XfrmInTmplMismatch"] == 3, (x0, x1)

    # Rotation through three keys under a stream of datagrams: nothing lost, every key used.
    rot = json.loads(out["rotate"])
    assert len(rot["received"][f"{s2}:5004"]) == ROTATION_SENDS, len(rot["received"][f"{s2}:5004"])
    spis = rot["capture"][0]["esp_spis"]
    for tag in (1, 2, 3):
        assert spis.get(f"0x{spi_for(_ip(H1), _ip(H2), tag):x}", 0) > 0, (tag, spis)

    # ESP dropped on h2's underlay: h2 says it hears no ESP from h1; h1 still hears h2.
    assert _silent(out["STATUS_OPEN"]) == {H1: False}, out["STATUS_OPEN"]
    assert _silent(out["STATUS_BLOCKED"]) == {H1: True}, out["STATUS_BLOCKED"]
    assert _silent(out["STATUS_OTHER"]) == {H2: False}, out["STATUS_OTHER"]


def _ip(text: str) -> Any:
    from ipaddress import IPv4Address

    return IPv4Address(text)


def _packets(states: str, spi: int) -> int:
    """The packet count of the SA with `spi` in one-line `ip -s xfrm state` text."""
    words = states.split()
    at = next(i for i, w in enumerate(words) if w.startswith(f"0x{spi:08x}"))
    counts = [w for w in words[at:] if w.endswith("(packets)") and w[0].isdigit()]
    return int(counts[0].split("(")[0])


def _silent(status: str) -> dict[str, bool]:
    doc = json.loads(status)
    return {p["addr"]: int(p.get("silent_since_ms", 0)) != 0 for p in doc["peers"]}
