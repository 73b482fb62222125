"""Entering a network namespace, from a thread that is thrown away afterwards.

Network-namespace membership is per thread, and a socket (or a netlink or nftables context)
keeps the namespace it was created in for its whole life. So one process can own handles in
every sandbox: a short-lived thread enters the namespace, creates the handle and exits. The
thread is never switched back, so no thread of the process is ever left in a foreign namespace
by an error path. Python 3.11 has no os.setns, hence ctypes.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsGone(FileNotFoundError):
    """The namespace named does not exist (any more)."""


def netns_path(netns: str) -> str:
    """A path for ``netns``: a bare name means the one `ip netns` keeps in /run/netns."""
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


def enter_netns(netns: str | None) -> None:
    """Move the calling thread into ``netns`` (a path or a /run/netns name; None: stay).
    Only call this from a thread that is thrown away afterwards."""
    if netns is None:
        return
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsGone(f"network namespace {path} does not exist") from None
    except OSError as e:
        raise OSError(e.errno, f"cannot open network namespace {path}: {e.strerror}") from e
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot enter network namespace {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_thread(fn: Callable[[], T], name: str = "ovnet-netns") -> T:
    """Run ``fn`` in a fresh thread (which may change its own namespace) and return its result
    or re-raise its exception. Blocks the caller (use asyncio.to_thread from a loop)."""
    ok: list[T] = []
    err: list[BaseException] = []

    def target() -> None:
        try:
            ok.append(fn())
        except BaseException as e:
            err.append(e)

    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    t.join()
    if err:
        raise err[0]
    return ok[0]


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread inside ``netns`` (None: the caller's namespace, still in a
    fresh thread) and return its result or re-raise its exception."""

    def inside() -> T:
        enter_netns(netns)
        return fn()

    return run_in_thread(inside)


def netns_inode(netns: str) -> tuple[int, int] | None:
    """(device, inode) of the namespace behind ``netns``, or None if it does not exist: two
    handles made in the same namespace see the same pair, a re-created one a new pair."""
    try:
        st = os.stat(netns_path(netns))
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def error_in_new_netns(argv: Sequence[str], timeout: float = 10.0) -> str:
    """Run `argv` in a network namespace of its own (`unshare --net`: gone with the process,
    so a probe of what the kernel can do leaves nothing in this host's tables); what it said
    on failure, in one line ("" if it succeeded). OSError if it could not be run at all."""
    try:
        res = subprocess.run(
            ["unshare", "--net", *argv], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise OSError(f"{argv[0]} did not finish in {timeout:g} s") from e
    if res.returncode == 0:
        return ""
    return " ".join(res.stderr.split()) or f"exit {res.returncode}"
