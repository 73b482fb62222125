"""Short-lived access tokens for the web view, as pure functions.

A token is ``v1.<expiry unix seconds>.<nonce>.<mac>``, the MAC an HMAC-SHA256 of the rest under
a key every manager derives from the cluster CA's private key (`derive_key`): every manager
holds that key already, so a token one manager issues is good on all of them, nothing new has
to be stored or shared, and a token of another cluster never passes. Tokens are not kept: one
is valid until it expires (default 10 minutes), which is why they are short-lived.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from security import pki

VERSION = "v1"
DEFAULT_TTL_S = 600
# Longer than anyone needs to look at a cluster from one `ovctl cluster ui-url`.
MAX_TTL_S = 24 * 3600
_INFO = b"ovnet web view token v1"


class TokenError(ValueError):
    """The token is malformed, forged or expired (the message says which, never the token)."""


def derive_key(ca_key: pki.PrivateKey) -> bytes:
    """The MAC key from the CA's private key: the same on every manager of the cluster."""
    secret = ca_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _mac(key: bytes, body: str) -> str:
    return _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())


def issue(key: bytes, now: float, ttl_s: float = DEFAULT_TTL_S) -> tuple[str, int]:
    """(a new token, its expiry in unix seconds)."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"a token's lifetime must be 1 to {MAX_TTL_S} seconds")
    expiry = int(now + ttl_s)
    body = f"{VERSION}.{expiry}.{_b64(secrets.token_bytes(12))}"
    return f"{body}.{_mac(key, body)}", expiry


def verify(key: bytes, token: str, now: float) -> int:
    """The token's expiry if it is genuine and not expired; TokenError otherwise."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != VERSION or not parts[1].isdigit() or len(token) > 200:
        raise TokenError("malformed token")
    body = ".".join(parts[:3])
    if not hmac.compare_digest(_mac(key, body), parts[3]):
        raise TokenError("token not issued by this cluster")
    expiry = int(parts[1])
    if expiry <= now:
        raise TokenError("token expired: get a new URL with `ovctl cluster ui-url`")
    return expiry
