"""A request client for the service e2e tests, run inside a sandbox or a client namespace.

    python loadclient.py count HOST PORT N        # N requests, one connection each
    python loadclient.py loop HOST PORT STOPFILE  # requests until STOPFILE exists
    python loadclient.py each PORT HOST...        # per PORT read on stdin, one to each HOST

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
    with socket.socket() as s:
        s.settimeout(3)
        try:
            s.connect((host, port))
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except OSError as e:
            # The local port finds the connection in conntrack (which backend it went to).
            raise OSError(f"{e!r} from port {s.getsockname()[1]}") from e
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        raise OSError(f"bad answer {head[:40]!r}")
    server, peer = body.decode().split()
    return server, peer


def each(hosts: list[str]) -> None:
    """Per port read on stdin, one request to each host; prints the answers (or errors) as a
    JSON list. Started before the change under test, so that its requests go out the moment
    a line comes (no process start between a command's return and the first request)."""
    for line in sys.stdin:
        got = []
        for h in hosts:
            try:
                got.append(one(h, int(line))[0])
            except (OSError, ValueError) as e:
                got.append(f"{h}: {e!r}")
        print(json.dumps(got), flush=True)


def main() -> None:
    if sys.argv[1] == "each":
        each(sys.argv[2:])
        return
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
