"""Sockets inside another network namespace, made from a thread of our own.

A socket keeps the namespace it was created in for its whole life, so one agent process can own
sockets in every sandbox (the DNS listeners, health checks' connections, upstream forwarding):
a short-lived thread enters the sandbox's namespace, creates the socket and exits; the socket is
then served from the agent's main event loop like any other. Entering the namespace is
`osutil.netns` (the one way to do it); this module only adds the socket-making the agent needs.
"""

from __future__ import annotations

import asyncio
import socket

from osutil.netns import run_in_netns


def socket_in_netns(netns: str | None, family: int, type: int, proto: int = 0) -> socket.socket:
    """A new socket that lives in `netns` (a path or a /run/netns name; None: the caller's own
    namespace)."""
    if netns is None:
        return socket.socket(family, type, proto)
    return run_in_netns(netns, lambda: socket.socket(family, type, proto))


async def asocket_in_netns(
    netns: str | None, family: int, type: int, proto: int = 0
) -> socket.socket:
    """socket_in_netns without blocking the event loop on the thread hop."""
    if netns is None:
        return socket.socket(family, type, proto)
    return await asyncio.to_thread(socket_in_netns, netns, family, type, proto)
