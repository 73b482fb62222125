"""Sealing gossip packets with AES-GCM under a keyring, and the replay window.

The cipher is libcrypto's, through agent/gossip/aead.py (see there why not `cryptography`).

Every datagram and stream frame is sealed whole: ``version (1) | nonce (12) | ciphertext |
tag (16)``. The version byte is authenticated too (as associated data), so a packet cannot be
re-labelled. Any key of the ring opens (the primary, keys[0], is tried first since it seals
nearly everything), which is what lets keys rotate without a flag day: the manager first adds
the new key everywhere, then makes it primary, then drops the old one.

Nonces are 96 random bits from the OS per packet. They are not drawn from the node's injected
`random.Random`: that generator is seeded for reproducible simulation, and two nodes (or two
lives of one node) sharing a seed must never share a nonce under one key; the nonce's value
never influences protocol behaviour, so simulations stay deterministic.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from agent.gossip.aead import AesGcm, InvalidTag
from agent.gossip.common import DecodeError

SEAL_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
_AAD = bytes((SEAL_VERSION,))


class SealFormatError(DecodeError):
    """Not a sealed packet at all: too short or an unknown version byte."""


class AuthError(DecodeError):
    """A well-formed sealed packet that no key of the ring opens (wrong key or tampered)."""


class Keyring:
    """The AES-GCM keys a node accepts; ``keys[0]`` (the primary) seals what it sends."""

    __slots__ = ("_aeads", "_keys")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if isinstance(keys, bytes | bytearray):
            raise ValueError("Keyring takes a sequence of keys, not one key")
        seen: list[bytes] = []
        for k in keys:
            if not isinstance(k, bytes | bytearray):
                raise ValueError(f"a gossip key must be bytes, got {type(k).__name__}")
            if len(k) not in (16, 24, 32):
                raise ValueError(f"a gossip key must be 16, 24 or 32 bytes, got {len(k)}")
            if bytes(k) not in seen:
                seen.append(bytes(k))
        if not seen:
            raise ValueError("a keyring needs at least one key")
        self._keys = tuple(seen)
        self._aeads = tuple(AesGcm(k) for k in self._keys)

    @property
    def keys(self) -> tuple[bytes, ...]:
        return self._keys

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keyring) and other._keys == self._keys

    def __hash__(self) -> int:
        return hash(self._keys)

    def __repr__(self) -> str:  # never print key material
        return f"Keyring(<{len(self._keys)} keys>)"


def seal(keyring: Keyring, plaintext: bytes, nonce: bytes | None = None) -> bytes:
    """Encrypt and authenticate ``plaintext`` under the primary key. ``nonce`` is for tests
    only (known-answer vectors); it must never repeat under one key."""
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    elif len(nonce) != NONCE_SIZE:
        raise ValueError("nonce must be 12 bytes")
    return _AAD + nonce + keyring._aeads[0].encrypt(nonce, plaintext, _AAD)


def open(keyring: Keyring, data: bytes) -> bytes:
    """The plaintext of a sealed packet; `SealFormatError` or `AuthError` (both
    `DecodeError`) otherwise. Never raises anything else, whatever ``data`` holds."""
    if len(data) < SEAL_OVERHEAD or data[0] != SEAL_VERSION:
        raise SealFormatError("not a sealed gossip packet")
    nonce = bytes(data[1 : 1 + NONCE_SIZE])
    body = bytes(data[1 + NONCE_SIZE :])
    for aead in keyring._aeads:
        try:
            return aead.decrypt(nonce, body, _AAD)
        except InvalidTag:
            continue
    raise AuthError("no key of the ring opens this packet")


class ReplayGuard:
    """Per-sender sliding windows of sequence numbers, one per epoch (a node's life).

    Each packet carries (sender, epoch, seq) inside the sealed payload; seq increases by one
    per packet within an epoch. A packet is accepted once: the window remembers the highest
    seq seen and a bitmap of the `window` below it; older ones are refused. A restarted
    sender has a new epoch, so its seq may start over; the last `epochs` epochs of each
    sender keep their windows (an older epoch's packets are then refused as replays too,
    unless that many restarts have happened since).

    Memory matters here: a simulated 1,000-node cluster holds up to a million windows in one
    process, so the current epoch's window is one flat list per sender and older epochs sit
    in a side table that is usually empty.
    """

    __slots__ = ("_epochs", "_mask", "_old", "_senders", "_window")

    def __init__(self, window: int = 256, epochs: int = 4) -> None:
        self._window = window
        self._mask = (1 << window) - 1
        self._epochs = epochs
        # sender -> [epoch, highest seq, bitmap (bit i: highest - i seen)]
        self._senders: dict[str, list[int]] = {}
        # sender -> older epochs' windows, oldest first
        self._old: dict[str, dict[int, list[int]]] = {}

    def accept(self, sender: str, epoch: int, seq: int) -> bool:
        """Record (sender, epoch, seq); False if it was seen or is too old to tell."""
        cur = self._senders.get(sender)
        if cur is None:
            self._senders[sender] = [epoch, seq, 1]
            return True
        if cur[0] != epoch:
            old = self._old.setdefault(sender, {})
            w = old.pop(epoch, None)
            old[cur[0]] = [cur[1], cur[2]]
            while len(old) >= self._epochs:
                del old[next(iter(old))]
            if w is None:
                self._senders[sender] = [epoch, seq, 1]
                return True
            self._senders[sender] = cur = [epoch, w[0], w[1]]
        top = cur[1]
        if seq > top:
            shift = seq - top
            cur[1] = seq
            cur[2] = ((cur[2] << shift) | 1) & self._mask if shift < self._window else 1
            return True
        back = top - seq
        if back >= self._window:
            return False
        bit = 1 << back
        if cur[2] & bit:
            return False
        cur[2] |= bit
        return True

    def forget(self, sender: str) -> None:
        self._senders.pop(sender, None)
        self._old.pop(sender, None)
