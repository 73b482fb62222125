"""A request client for the service e2e tests, run inside a sandbox or a client namespace.

    python loadclient.py count HOST PORT N        # N requests, one connection each
    python loadclient.py loop HOST PORT STOPFILE  # requests until STOPFILE exists

Prints one JSON object: {"answers": {replica address: count}, "peers": {client address as
the replica saw it: count}, "failures": n, "errors": [first few], "requests": n}.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections import Counter


def one(host: str, port: int) -> tuple[str, str]:
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        raise OSError(f"bad answer {head[:40]!r}")
    server, peer = body.decode().split()
    return server, peer


def main() -> None:
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    answers: Counter[str] = Counter()
    peers: Counter[str] = Counter()
    errors: list[str] = []
    failures = requests = 0

    def go() -> None:
        nonlocal failures, requests
        requests += 1
        try:
            server, peer = one(host, port)
            answers[server] += 1
            peers[peer] += 1
        except (OSError, ValueError) as e:
            failures += 1
            if len(errors) < 5:
                errors.append(f"{time.time():.3f} {e!r}")

    if mode == "count":
        for _ in range(int(sys.argv[4])):
            go()
    else:
        stop = sys.argv[4]
        while not os.path.exists(stop):
            go()
            time.sleep(0.01)
    print(
        json.dumps(
            {
                "answers": answers,
                "peers": peers,
                "failures": failures,
                "errors": errors,
                "requests": requests,
            }
        )
    )


if __name__ == "__main__":
    main()
