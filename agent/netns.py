"""Doing things inside another network namespace from a thread of our own.

Network-namespace membership is per thread, and a socket keeps the namespace it was created in
for its whole life. So one agent process can own sockets in every sandbox: a short-lived thread
enters the sandbox's namespace, creates the socket and exits; the socket is then served from
the agent's main event loop like any other. The thread is thrown away rather than switched
back, so no thread of the process is ever left in a foreign namespace by an error path.

Python 3.11 has no os.setns, hence ctypes.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def netns_file(netns: str) -> str:
    """A path for `netns`: a bare name means the one `ip netns` keeps in /run/netns."""
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


def enter_netns(netns: str) -> None:
    """Move the calling thread into `netns` (a path or a /run/netns name). Only call this from a
    thread that is thrown away afterwards."""
    path = netns_file(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"cannot open network namespace {path}: {e.strerror}") from e
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot enter network namespace {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a fresh thread inside `netns`; return its result or re-raise its exception.

    Blocks the caller until the thread is done (use asyncio.to_thread from a loop)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            enter_netns(netns)
            result.append(fn())
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=target, name="ovnet-netns", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def socket_in_netns(netns: str | None, family: int, type: int, proto: int = 0) -> socket.socket:
    """A new socket that lives in `netns` (None: the caller's own namespace)."""
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
