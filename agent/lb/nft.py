"""nftables from Python, in-process, inside a chosen network namespace.

Why our own ctypes binding of libnftables instead of running ``nft -f``: starting the nft
process costs ~15-20 ms, the whole budget of a one-backend update. Measured with a
10,000-backend service (bench/nft.py): the one-backend script (element add + rule replace)
takes ~0.5 ms in-process against ~20 ms through the process; a full replace ~46 ms
against ~63 ms. (Debian's python3-nftables would do too, but it lives outside the venv.)

Why the context is created inside the namespace and then used from any thread: libnftables
(1.0.6 here) opens its netlink socket once, in ``nft_ctx_new``, and keeps it for the
context's life (the library has no other ``mnl_socket_open`` call). Measured: a context made
by a thread that had setns()'d into namespace N, then driven from a thread in the root
namespace, created its table in N and not in the root namespace. A socket stays in the
namespace it was made in whatever thread uses it, so one short-lived thread per namespace
suffices: no long-lived worker thread per sandbox is needed.

The flip side: the context's socket pins the namespace, so it keeps working after the
namespace's name is gone (``ip netns del``) and would silently program a namespace nobody
can see. ``run`` therefore checks that /run/netns/NAME still names the same namespace
(same nsfs inode, `osutil.netns.netns_inode`) and raises NetnsGone otherwise.

Calls into libnftables are serialized by one process-wide lock: the library does not
promise that distinct contexts may run concurrently, and each call is short.

When libnftables cannot be loaded, ``nft -f -`` is run instead (through ``nsenter --net``).
"""

from __future__ import annotations

import asyncio
import ctypes
import socket
import subprocess
import threading
from typing import Any

import osutil.netns

LIBNFTABLES = "libnftables.so.1"
LIBNFTABLES_PATH = "/usr/lib/x86_64-linux-gnu/libnftables.so.1"

_lib_lock = threading.Lock()  # serializes every libnftables call (see module docstring)
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None


class NftError(Exception):
    """nft refused a script; the message is nft's own error text."""


class NetnsGone(NftError, osutil.netns.NetnsGone):
    """The target network namespace no longer exists (or its name now names another one).
    Both an NftError (the script was not run) and osutil's NetnsGone (a FileNotFoundError)."""


def _load_lib() -> ctypes.CDLL | None:
    """libnftables with its signatures declared, or None (reason in _lib_error)."""
    global _lib, _lib_error
    with _lib_lock:
        if _lib is not None or _lib_error is not None:
            return _lib
        lib: ctypes.CDLL | None = None
        for name in (LIBNFTABLES, LIBNFTABLES_PATH):
            try:
                lib = ctypes.CDLL(name, use_errno=True)
                break
            except OSError as e:
                _lib_error = str(e)
        if lib is None:
            return None
        vp = ctypes.c_void_p
        for fn, restype, argtypes in (
            ("nft_ctx_new", vp, [ctypes.c_uint32]),
            ("nft_ctx_free", None, [vp]),
            ("nft_ctx_buffer_output", ctypes.c_int, [vp]),
            ("nft_ctx_buffer_error", ctypes.c_int, [vp]),
            ("nft_ctx_get_output_buffer", ctypes.c_char_p, [vp]),
            ("nft_ctx_get_error_buffer", ctypes.c_char_p, [vp]),
            ("nft_run_cmd_from_buffer", ctypes.c_int, [vp, ctypes.c_char_p]),
        ):
            f: Any = getattr(lib, fn)
            f.restype = restype
            f.argtypes = argtypes
        _lib, _lib_error = lib, None
        return lib


def libnftables_available() -> bool:
    return _load_lib() is not None


NETLINK_NETFILTER = 12


def _require_nfnetlink() -> None:
    """NftError unless this namespace's kernel speaks nfnetlink. libnftables, asked for a
    context where it cannot open its netlink socket, prints "Unable to initialize Netlink
    socket" and exits the whole process (measured in user-mode Linux without nfnetlink): the
    agent must find out first, and carry on without nftables."""
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER).close()
    except OSError as e:
        raise NftError(f"this kernel has no nftables (nfnetlink: {e.strerror})") from None


NO_NFT_USES = "service VIPs, the routing mesh and egress do not work here"


def nftables_unavailable() -> str:
    """Why this host cannot have the agent's nftables tables ("" if it can): an IPv4 table
    added in a throwaway namespace (`unshare --net nft`, nothing left behind). Kernels built
    without nf_tables for ip (Debian's user-mode-linux) say "Operation not supported"."""
    try:
        err = osutil.netns.error_in_new_netns(["nft", "add", "table", "ip", "ovnet-probe"])
    except OSError as e:
        return f"cannot check for nftables ({e}): {NO_NFT_USES}"
    return f"this host's kernel has no nftables for IPv4 (nft: {err}): {NO_NFT_USES}" if err else ""


class Nft:
    """One nftables context acting in one network namespace (None: the caller's)."""

    def __init__(self, netns: str | None, *, backend: str = "auto") -> None:
        """``backend``: "lib" (libnftables), "process" (``nft -f -``) or "auto" (lib when
        it loads)."""
        if backend not in ("auto", "lib", "process"):
            raise ValueError(f"unknown backend {backend!r}")
        self.netns = netns
        self.path = osutil.netns.netns_path(netns) if netns is not None else None
        self._lock = threading.Lock()
        self._ctx: int | None = None
        self._inode: tuple[int, int] | None = None
        lib = _load_lib() if backend != "process" else None
        if backend == "lib" and lib is None:
            raise NftError(f"libnftables unavailable: {_lib_error}")
        self.backend = "lib" if lib is not None else "process"
        if self.path is not None:
            self._inode = osutil.netns.netns_inode(self.path)
            if self._inode is None:
                raise NetnsGone(f"network namespace {self.path} does not exist")
        if lib is not None:
            self._ctx = self._new_ctx(lib)

    def _new_ctx(self, lib: ctypes.CDLL) -> int:
        def make() -> int:
            _require_nfnetlink()
            with _lib_lock:
                ctx = lib.nft_ctx_new(0)
                if not ctx:
                    raise NftError("nft_ctx_new failed")
                lib.nft_ctx_buffer_output(ctx)
                lib.nft_ctx_buffer_error(ctx)
                return int(ctx)

        if self.path is None:
            return make()
        try:
            ctx = osutil.netns.run_in_netns(self.path, make)
        except osutil.netns.NetnsGone as e:
            raise NetnsGone(str(e)) from None
        # The inode seen by the thread that made the socket, not one stat()ed earlier: the
        # name could have been re-pointed in between.
        self._inode = osutil.netns.netns_inode(self.path)
        return ctx

    def alive(self) -> bool:
        """Does our namespace still exist under its name (and is it still the same one)?"""
        return self.path is None or osutil.netns.netns_inode(self.path) == self._inode

    def run(self, script: str) -> str:
        """Run ``script`` as one transaction; nft's output (for list commands)."""
        if not self.alive():
            raise NetnsGone(f"network namespace {self.path} is gone")
        if self.backend == "process":
            return self._run_process(script)
        with self._lock:
            if self._ctx is None:
                raise NftError("nft context closed")
            lib = _lib
            assert lib is not None
            with _lib_lock:
                rc = lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
                out = lib.nft_ctx_get_output_buffer(self._ctx) or b""
                err = lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if rc != 0:
            raise NftError(err.decode(errors="replace").strip() or f"nft failed ({rc})")
        return str(out.decode(errors="replace"))

    def _run_process(self, script: str) -> str:
        argv = ["nft", "-f", "-"]
        if self.path is not None:
            argv = ["nsenter", f"--net={self.path}", *argv]
        r = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            if not self.alive():
                raise NetnsGone(f"network namespace {self.path} is gone")
            raise NftError(r.stderr.strip() or f"nft failed ({r.returncode})")
        return r.stdout

    async def arun(self, script: str) -> str:
        """``run`` in a worker thread, so that the event loop keeps serving meanwhile."""
        return await asyncio.to_thread(self.run, script)

    def close(self) -> None:
        with self._lock:
            ctx, self._ctx = self._ctx, None
        if ctx is not None and _lib is not None:
            with _lib_lock:
                _lib.nft_ctx_free(ctx)

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
