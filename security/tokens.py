"""Join tokens: ``OVNTKN-1-<ca digest>-<secret>``.

* ``OVNTKN`` names the format and ``1`` its version;
* the CA digest is the SHA-256 of the root CA certificate (DER), in lowercase base32 without
  padding (52 characters). A joining node compares it with the CA the manager shows before
  trusting that CA with anything, as Docker Swarm's ``SWMTKN-1-…`` tokens do;
* the secret is 20 random bytes (160 bits) in the same alphabet (32 characters). It decides the
  role: the cluster keeps one token per role (worker, manager), and rotating one replaces it
  so that the old secret stops working at once.

Tokens are compared in constant time; a malformed token says which part is wrong.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

PREFIX = "OVNTKN"
VERSION = "1"
SECRET_BYTES = 20
_DIGEST_LEN = 52
_SECRET_LEN = 32
_B32 = re.compile(r"^[a-z2-7]+$")


class TokenError(ValueError):
    """A join token that is not well formed; the message says which part is wrong."""


@dataclass(frozen=True)
class JoinToken:
    ca_digest: bytes
    secret: str

    def __str__(self) -> str:
        return f"{PREFIX}-{VERSION}-{b32(self.ca_digest)}-{self.secret}"


def b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes:
    pad = "=" * (-len(text) % 8)
    return base64.b32decode(text.upper() + pad)


def new_token(ca_digest: bytes, entropy: Callable[[int], bytes] = os.urandom) -> JoinToken:
    return JoinToken(ca_digest, b32(entropy(SECRET_BYTES)))


def parse(text: str) -> JoinToken:
    parts = text.strip().split("-")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise TokenError(
            f"not a join token: expected {PREFIX}-{VERSION}-<ca digest>-<secret> "
            "(print one with `ovctl cluster join-token worker`)"
        )
    _, version, dig, secret = parts
    if version != VERSION:
        raise TokenError(f"join token version {version!r} is not supported (this is {VERSION})")
    if len(dig) != _DIGEST_LEN or not _B32.match(dig):
        raise TokenError("the join token's CA digest is malformed (truncated when copied?)")
    if len(secret) != _SECRET_LEN or not _B32.match(secret):
        raise TokenError("the join token's secret is malformed (truncated when copied?)")
    return JoinToken(_unb32(dig), secret)


def same_secret(a: JoinToken, b: JoinToken) -> bool:
    return hmac.compare_digest(a.secret.encode(), b.secret.encode()) and hmac.compare_digest(
        a.ca_digest, b.ca_digest
    )
