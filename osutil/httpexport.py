"""A minimal HTTP/1.1 endpoint on a daemon's own event loop, for read-only documents: the
Prometheus metrics of the manager and the agent (`--metrics-listen ADDR`).

Why not prometheus_client's own server: it answers from a thread of its own, while ovnet's
metrics are read at scrape time from state the event loop owns (the leader's cluster state,
the gossip view, the resolver's counters); read from another thread they would race with the
loop changing them. Served here, a scrape is one callback between two steps of the loop, and
a daemon gets no extra thread for it.

Only what a scraper needs: GET and HEAD of fixed paths (the query string is ignored), one
request per connection (`Connection: close`), no request body. Anything else gets a plain
status. Standard library only (see osutil/__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from osutil.hostport import split_hostport

log = logging.getLogger(__name__)

# A path's document: (content type, body), made at each request.
Render = Callable[[], tuple[str, bytes]]

MAX_HEAD = 8192
READ_TIMEOUT_S = 10.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}


def respond(head: bytes, routes: Mapping[str, Render]) -> bytes:
    """The whole response to a request head (request line and headers), as bytes."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _frame(400, "text/plain", b"bad request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    render = routes.get(target.decode("ascii", "replace"))
    if render is None:
        return _frame(404, "text/plain", b"not found\n")
    if method not in (b"GET", b"HEAD"):
        return _frame(405, "text/plain", b"method not allowed\n", allow="GET, HEAD")
    try:
        ctype, body = render()
    except Exception:
        # A bug in a collector must not end the daemon, nor go unnoticed.
        log.exception("rendering %s failed", target.decode("ascii", "replace"))
        return _frame(500, "text/plain", b"internal error\n")
    return _frame(200, ctype, body, head_only=method == b"HEAD")


def _frame(
    status: int, ctype: str, body: bytes, *, head_only: bool = False, allow: str = ""
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {ctype}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if allow:
        lines.append(f"Allow: {allow}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)


async def _client(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, routes: Mapping[str, Render]
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        writer.write(respond(head, routes))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
        pass  # a client that went away or never finished its request: nothing to answer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def serve(addr: str, routes: Mapping[str, Render]) -> asyncio.Server:
    """Listen on `addr` (HOST:PORT) and answer `routes` (path -> render). ValueError for a
    malformed address, OSError when it cannot be bound (in use, not a local address)."""
    host, port = split_hostport(addr)
    return await asyncio.start_server(
        lambda r, w: _client(r, w, routes), host, port, limit=MAX_HEAD, reuse_address=True
    )
