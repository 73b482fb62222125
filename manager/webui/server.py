"""The web view's HTTPS listener in the manager's event loop, and its event hub.

TLS serves the manager's own certificate (renewals are picked up at the next handshake) and
asks for a client certificate without requiring one (CERT_OPTIONAL, verified against the
cluster root): the admin certificate opens the page, anything else needs a token. The data is
the leader's in-memory state; a follower holds none, so it serves the page with a notice
naming the leader (`ovctl cluster ui-url` always prints the leader's URL: the token RPC is
forwarded there like every Control call). The hub looks at the state's revision every 200 ms
and, when it moved, sends one full snapshot to every open stream (a burst of commits becomes
one event); a comment line every 15 s keeps idle streams (and proxies) alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from manager.ca import authz
from manager.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from manager.webui import assets, http, snapshot
from manager.webui import token as tokens
from osutil.hostport import split_hostport
from proto import control_pb2 as cpb
from security import pki

log = logging.getLogger(__name__)

COALESCE_S = 0.2
KEEPALIVE_S = 15.0
HEAD_TIMEOUT_S = 10.0
# (what changes when the page must change, how to build the page's data now)
View = tuple[Hashable, Callable[[], dict[str, Any]]]


class Hub:
    """The newest snapshot, and a wake-up for every open stream when it changes."""

    def __init__(self, view: Callable[[], View]) -> None:
        self.view = view
        self.key: Hashable = object()
        self.data: dict[str, Any] = {}
        self.seq = 0
        self._notified = 0
        # Open event streams: without any, nothing is rebuilt (a busy leader with nobody
        # looking pays nothing but a comparison every period).
        self.watchers = 0
        self.changed = asyncio.Condition()

    def refresh(self) -> bool:
        """Rebuild the snapshot if the state moved; True if it did."""
        key, build = self.view()
        if key == self.key and self.data:
            return False
        self.key, self.data = key, build()
        self.seq += 1
        return True

    async def run(self) -> None:
        while True:
            if self.watchers:
                self.refresh()
            if self.seq != self._notified:  # also a snapshot a request built meanwhile
                self._notified = self.seq
                async with self.changed:
                    self.changed.notify_all()
            await asyncio.sleep(COALESCE_S)

    async def wait_newer(self, seq: int, timeout: float) -> bool:
        """Wait until a snapshot newer than `seq` exists (False on timeout)."""
        async with self.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait_for(lambda: self.seq > seq), timeout)
        return self.seq > seq


class WebUI:
    """The listener, the hub, and the token RPC's body (`create_ui_token`)."""

    def __init__(
        self,
        listen: str,
        advertise_host: str,
        tls_files: tuple[Path, Path],
        root_pem: Callable[[], bytes],
        ca: Any,
        view: Callable[[], View],
    ) -> None:
        self.listen = listen
        self.advertise_host = advertise_host
        self.tls_files = tls_files
        self.root_pem = root_pem
        self.ca = ca
        self.key = tokens.derive_key(ca.root_key)
        self.hub = Hub(view)
        self.port = 0
        self._ctx: tuple[bytes, bytes, ssl.SSLContext] | None = None
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._peers = authz.PeerCache(ca.root)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        host, port = split_hostport(self.listen)
        self._server = await asyncio.start_server(
            self._handle, host or None, port, ssl=self._context(), limit=http.MAX_HEAD
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._task = asyncio.create_task(self.hub.run(), name="webui-hub")
        log.info("web view on https://%s:%d/", host or "*", self.port)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    @property
    def url(self) -> str:
        host = self.advertise_host
        return f"https://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def _context(self) -> ssl.SSLContext:
        """A server context for the certificate on disk now (rebuilt after a renewal)."""
        cert, key = (p.read_bytes() for p in self.tls_files)
        if self._ctx is not None and self._ctx[:2] == (cert, key):
            return self._ctx[2]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(*self.tls_files)
        ctx.load_verify_locations(cadata=self.root_pem().decode())
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.sni_callback = self._sni
        self._ctx = (cert, key, ctx)
        return ctx

    def _sni(self, sslobj: ssl.SSLObject, _name: str | None, ctx: ssl.SSLContext) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            new = self._context()
            if new is not ctx:
                sslobj.context = new

    # ------------------------------------------------------------------ the token RPC

    async def create_ui_token(self, req: cpb.CreateUiTokenRequest) -> cpb.CreateUiTokenResponse:
        ttl = req.ttl_s or tokens.DEFAULT_TTL_S
        try:
            tok, expiry = tokens.issue(self.key, time.time(), ttl)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        return cpb.CreateUiTokenResponse(
            url=f"{self.url}?token={tok}", expires_unix=expiry, token=tok
        )

    # ------------------------------------------------------------------ requests

    def _cert_role(self, writer: asyncio.StreamWriter) -> str | None:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            return None
        if self._peers.root is not self.ca.root:
            self._peers = authz.PeerCache(self.ca.root)
        try:
            pem = ssl.DER_cert_to_PEM_cert(der).encode()
            return self._peers.peer(pem, pki.utcnow()).role
        except Unauthenticated:
            return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("web view request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            req = http.parse_head(head)
        except asyncio.LimitOverrunError:
            writer.write(http.error_response(431, "request head too large"))
            return
        except http.HttpError as e:
            writer.write(http.error_response(e.status, e.message))
            return
        now = time.time()
        access = http.authorize(
            req, self._cert_role(writer), lambda t: tokens.verify(self.key, t, now), now
        )
        head_only = req.method == "HEAD"
        if access.status == 303:
            writer.write(http.redirect_with_cookie(req.path, access))
        elif access.status != 200:
            log.info("web view: %s %s refused (%d)", req.method, req.path, access.status)
            writer.write(http.error_response(access.status, access.reason, head_only=head_only))
        elif req.path == "/events" and not head_only:
            await self._stream(writer, access.expiry)
        else:
            writer.write(self._static(req.path, head_only))
        await writer.drain()

    def _static(self, path: str, head_only: bool) -> bytes:
        if path == "/snapshot.json":
            self.hub.refresh()
            body = json.dumps(self.hub.data).encode()
            return http.response(200, body, "application/json", head_only=head_only)
        asset = assets.ASSETS.get(path)
        if asset is None:
            return http.error_response(404, "not found", head_only=head_only)
        content_type, body = asset
        return http.response(200, body, content_type, head_only=head_only)

    async def _stream(self, writer: asyncio.StreamWriter, expiry: float) -> None:
        """Server-sent events: the current snapshot, then each newer one; closed when the
        token it was opened with expires (the page's EventSource then gets a 401)."""
        writer.write(http.stream_head())
        self.hub.refresh()
        self.hub.watchers += 1
        try:
            seq = -1
            while not expiry or time.time() < expiry:
                if self.hub.seq > seq:
                    seq = self.hub.seq
                    writer.write(http.event(self.hub.data))
                else:
                    writer.write(http.KEEPALIVE)
                await writer.drain()
                wait = KEEPALIVE_S if not expiry else min(KEEPALIVE_S, expiry - time.time())
                await self.hub.wait_newer(seq, max(0.0, wait))
        finally:
            self.hub.watchers -= 1


def advertise_host(ui_listen: str, advertise: str) -> str:
    """The host in printed URLs: the UI's listen host unless it is a wildcard, else the
    manager's advertised host."""
    host, _ = split_hostport(ui_listen)
    if host in ("", "0.0.0.0", "::"):
        host, _ = split_hostport(advertise)
    return host


def manager_view(mgr: Any) -> View:
    """The view of a manager (manager/server.py's Manager): the leader's state, or a notice."""
    leading = mgr.leading
    mid = mgr.opts.manager_id
    if leading is not None:
        state = leading.cluster.state
        return (id(state), state.revision), lambda: snapshot.build(
            state, manager_id=mid, leader=True
        )
    addr = mgr.leader_addr()
    return ("follower", addr), lambda: snapshot.not_leading(mid, addr)


class NoWebUI:
    """The token RPC's body on a leader that serves no web view."""

    async def create_ui_token(self, _req: cpb.CreateUiTokenRequest) -> cpb.CreateUiTokenResponse:
        raise FailedPrecondition(
            "the leading manager serves no web view: start it with --ui-listen ADDR"
        )
