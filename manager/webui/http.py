"""A small, strict HTTP/1.1 front for the web view, as pure functions: parse a request head,
decide who the caller is and what it may have, and frame responses and events.

Only what the page needs: GET (and HEAD) of a few fixed paths, one request per connection
(`Connection: close`), no bodies. Anything else is refused with a plain status. Access is the
admin certificate (verified by the TLS layer against the cluster root, its role read here) or
a token from `ovctl cluster ui-url`: in the URL once (answered by a redirect that moves it into
an HttpOnly, Secure, SameSite=Strict cookie, so it leaves the address bar and is sent with the
event stream), then in that cookie. Tokens never appear in a log line or a response body.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from security import pki

MAX_HEAD = 8192
COOKIE = "ovnet_ui"
REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
# Every response: no caching, no framing, no referrer (a URL may carry a token), and nothing
# loaded from anywhere but this manager.
SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    ),
)


class HttpError(Exception):
    """A request this server will not serve: answered with `status` and closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str] = field(default_factory=dict)

    def cookie(self, name: str) -> str:
        for part in self.headers.get("cookie", "").split(";"):
            k, sep, v = part.strip().partition("=")
            if sep and k == name:
                return v
        return ""


def parse_head(head: bytes) -> Request:
    """A request line and headers (up to the blank line); HttpError for anything else."""
    if len(head) > MAX_HEAD:
        raise HttpError(431, "request head too large")
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "non-ASCII request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(400, "malformed request line")
    method, target, _ = parts
    if method not in ("GET", "HEAD"):
        raise HttpError(405, f"method {method[:16]} not allowed")
    if not target.startswith("/"):
        raise HttpError(400, "the request target must be a path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        headers[name.lower()] = value.strip()
    url = urlsplit(target)
    return Request(method, url.path, parse_qs(url.query), headers)


@dataclass(frozen=True)
class Access:
    """The outcome of `authorize`: `status` 200 (serve), 303 (token accepted: set the cookie
    and redirect to the same path without the query), 401 or 403. `expiry` is the token's
    (0 for a certificate), after which an event stream is closed."""

    status: int
    reason: str = ""
    cookie: str = ""
    cookie_max_age: int = 0
    expiry: float = 0.0


def authorize(
    req: Request, cert_role: str | None, verify: Callable[[str], int], now: float
) -> Access:
    """Who may see the page: an admin certificate, or a valid token (query, then cookie).

    `cert_role` is the role of a client certificate the TLS layer verified (None without one);
    `verify` returns a token's expiry or raises ValueError."""
    if cert_role == pki.ROLE_ADMIN:
        return Access(200)
    in_query = req.query.get("token", [""])[0]
    token = in_query or req.cookie(COOKIE)
    if token:
        try:
            expiry = verify(token)
        except ValueError as e:
            return Access(401, str(e))
        if in_query:
            return Access(303, cookie=token, cookie_max_age=max(1, int(expiry - now)))
        return Access(200, expiry=float(expiry))
    if cert_role is not None:
        return Access(403, f"a {cert_role} certificate may not open the web view (admin only)")
    return Access(401, "no admin certificate and no token: get a URL with `ovctl cluster ui-url`")


def response(
    status: int,
    body: bytes = b"",
    content_type: str = "text/plain; charset=utf-8",
    headers: tuple[tuple[str, str], ...] = (),
    *,
    head_only: bool = False,
) -> bytes:
    """A complete response (one per connection)."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    all_headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *SECURITY_HEADERS,
        *headers,
    ]
    lines += [f"{k}: {v}" for k, v in all_headers]
    out = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return out if head_only else out + body


def error_response(status: int, message: str, *, head_only: bool = False) -> bytes:
    extra: tuple[tuple[str, str], ...] = ()
    if status == 401:
        extra = (("WWW-Authenticate", 'Bearer realm="ovnet"'),)
    return response(status, f"{status} {message}\n".encode(), headers=extra, head_only=head_only)


def redirect_with_cookie(path: str, access: Access) -> bytes:
    cookie = (
        f"{COOKIE}={access.cookie}; Max-Age={access.cookie_max_age}; Path=/; "
        "HttpOnly; Secure; SameSite=Strict"
    )
    return response(303, b"", headers=(("Location", path), ("Set-Cookie", cookie)))


def stream_head() -> bytes:
    """The head of a server-sent event stream (no length: it lasts until closed)."""
    lines = [
        "HTTP/1.1 200 OK",
        "Content-Type: text/event-stream; charset=utf-8",
        "Connection: close",
        *(f"{k}: {v}" for k, v in SECURITY_HEADERS),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def event(data: dict[str, Any], name: str = "snapshot") -> bytes:
    """One server-sent event; JSON has no raw newlines, so it fits one `data:` line."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


KEEPALIVE = b": keepalive\n\n"
