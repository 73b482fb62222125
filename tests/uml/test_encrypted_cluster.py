"""An encrypted network end to end in user-mode Linux: etcd, a manager and two agents in host
namespaces (the same code as `ovctl dev`, tests/uml/cluster_probe.py), keys rotating every
4 s. Tasks on both hosts reach each other over the encrypted network while the keys rotate,
with no failed request and several outbound SPIs used; `ovctl network inspect` shows both host
pairs "ok", and after ESP is dropped on h2's underlay it says "no ESP from h1" within 15 s.
What is on the wire (ESP only, injection refused, a plain network beside it) is checked by
tests/uml/test_encrypted_dataplane.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import uml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# /etc/netns is the host's own inside UML (hostfs root): the agents' per-sandbox files go to a
# tmpfs over it instead.
SCRIPT = r"""
set -euo pipefail
mkdir -p /etc/netns
mount -t tmpfs tmpfs /etc/netns
cd "$REPO"
PYTHONPATH="$REPO" "$PY" -m tests.uml.cluster_probe
"""


def test_encrypted_network_across_a_real_cluster_with_rotation_and_blocked_esp() -> None:
    result = uml.boot(
        SCRIPT,
        timeout=480,
        mem="1024M",
        env={"REPO": str(ROOT), "PY": sys.executable},
        modules=uml.OVERLAY_MODULES + uml.IPTABLES_MODULES,
    )
    assert result.returncode == 0, result.describe()
    line = next(x for x in result.output.splitlines() if x.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    print(f"UML cluster: {out}")
    # The user-mode kernel has ESP but no nftables for ip: the node says what it lacks.
    assert "ipsec" not in out["unavailable"], out
    assert "no nftables for IPv4" in out["unavailable"].get("nftables", ""), out
    assert out["hosts"] == ["h1", "h2"] and out["reach"] == [True, True], out
    assert out["links_ok"] == {"h1<-h2": "ok", "h2<-h1": "ok"}, out
    rot = out["rotation"]
    assert rot["failed"] == 0 and rot["ok"] >= 4 and rot["h1_out_spis"] >= 2, out
    assert out["links_blocked"]["h2<-h1"].startswith("no ESP from h1 for "), out
    assert out["links_blocked"]["h1<-h2"] == "ok", out
    assert out["reported_after_s"] <= 15, out
