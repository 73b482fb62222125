"""Throughput of an encrypted overlay network against a plain one, in user-mode Linux.

    .venv/bin/python -m bench.encryption [--seconds 5] [--json PATH]

This machine's kernel has no ESP, so the figures come from Debian's user-mode-linux kernel
(one CPU, generic C crypto: no AES-NI inside UML), with the agent's own data plane in two host
namespaces (bench/uml_host.py): one task each on an encrypted and a plain network. iperf3 (TCP,
one stream) runs from h1's task to h2's, over each network, in the same boot; the ratio
encrypted / plain is the figure to watch (the issue's goal: >= 0.5). Labelled UML in the
README: absolute numbers on a real kernel are another matter.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from bench import uml, write_results
from bench.uml_host import ADDR, BED, pair_config, sandbox

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "encryption.json"
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = (
    BED
    + r"""
nsenter --net=/run/netns/"$S2" iperf3 -s -D -p 5201 --logfile "$UML_IO/iperf-server.log"
sleep 1
for net in plain sec plain sec; do
    dst=$([ $net = sec ] && echo "$SEC_DST" || echo "$PLAIN_DST")
    client=(nsenter --net=/run/netns/"$S1" iperf3 -c "$dst" -p 5201 -t "$SECONDS_EACH" -J)
    echo "IPERF $net $("${client[@]}" | tr -d '\n')"
done
touch out1/stop out2/stop
"""
)


def run(seconds: int) -> dict[str, Any]:
    reason = uml.available()
    if reason is not None:
        raise SystemExit(f"bench.encryption: user-mode-linux cannot start here: {reason}")
    key = [(1, secrets.token_hex(32))]
    files = {f"{h}-g1.json": pair_config(h, 1, key) for h in ("h1", "h2")}
    env = {
        "REPO": str(ROOT),
        "PY": sys.executable,
        "S1": sandbox("h1"),
        "S2": sandbox("h2"),
        "SEC_DST": ADDR["h2", "sec"],
        "PLAIN_DST": ADDR["h2", "plain"],
        "SECONDS_EACH": str(seconds),
    }
    result = uml.boot(SCRIPT, timeout=120 + 8 * seconds, files=files, env=env)
    if result.returncode != 0:
        raise SystemExit(f"bench.encryption: the UML run failed:\n{result.describe()}")
    runs: dict[str, list[float]] = {"plain": [], "sec": []}
    for line in result.output.splitlines():
        if line.startswith("IPERF "):
            _, net, doc = line.split(" ", 2)
            runs[net].append(json.loads(doc)["end"]["sum_received"]["bits_per_second"] / 1e6)
    plain, sec = max(runs["plain"]), max(runs["sec"])
    return {
        "where": "user-mode-linux 6.1 (1 CPU), agent data plane, iperf3 TCP 1 stream",
        "seconds_each": seconds,
        "plain_mbit_s": [round(x, 1) for x in runs["plain"]],
        "encrypted_mbit_s": [round(x, 1) for x in runs["sec"]],
        "ratio_best": round(sec / plain, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=int, default=5, help="per iperf3 run (2 per network)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args()
    res = run(args.seconds)
    print(
        f"UML: plain {max(res['plain_mbit_s']):.0f} Mbit/s, encrypted "
        f"{max(res['encrypted_mbit_s']):.0f} Mbit/s: encrypted / plain = {res['ratio_best']}"
    )
    write_results(args.json, res)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
