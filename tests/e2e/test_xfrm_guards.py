"""The IPsec guards on this machine's kernel, which has xfrm policies but no ESP: the agent's
policies go in through `ip -batch`, read back as planned, are found again by reqid beside a
foreign one (left alone), and really keep cleartext off an encrypted network's port both ways
(the kernel drops and counts it). ESP itself is tested in user-mode Linux (tests/uml).

Each case runs in throwaway network namespaces (`unshare --net`): nothing touches the host's
xfrm tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

ROOT = Path(__file__).resolve().parents[2]


def test_the_guards_keep_cleartext_off_the_encrypted_port_both_ways() -> None:
    res = subprocess.run(
        ["unshare", "--net", sys.executable, "-m", "tests.e2e.xfrm_guards_probe"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # The two guards, planned and applied in the early stage; read back exactly; idempotent.
    assert (out["ops"], out["late"], out["same"], out["again"]) == (2, 0, True, 0)
    # Cleartext to the encrypted port never arrives, and the kernel counts it; the plain
    # VXLAN port beside it works.
    assert out["received"] == {"4790": None, "4789": "plain"}
    assert out["in_dropped"] == 1
    # Nothing leaves in clear for a peer without SAs.
    assert out["sent_out"] == "Operation not permitted" and out["out_blocked"] == 1
    assert out["left"] == 0 and out["foreign"] is True
