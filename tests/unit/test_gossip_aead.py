"""agent/gossip/aead.py (libcrypto through ctypes) against `cryptography`'s AESGCM: the same
bytes for the same key, nonce, data and associated data, each opens the other's, and anything
altered or sealed under another key is refused."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.gossip.aead import AesGcm, InvalidTag


@pytest.mark.parametrize("key_size", [16, 24, 32])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1400, 70_000])
def test_same_bytes_as_cryptography_and_each_opens_the_other(key_size: int, size: int) -> None:
    key, nonce, data = os.urandom(key_size), os.urandom(12), os.urandom(size)
    ours, theirs = AesGcm(key), AESGCM(key)
    sealed = ours.encrypt(nonce, data, b"\x01")
    assert sealed == theirs.encrypt(nonce, data, b"\x01")
    assert len(sealed) == size + 16
    assert ours.decrypt(nonce, sealed, b"\x01") == data
    assert theirs.decrypt(nonce, sealed, b"\x01") == data


def test_altered_or_foreign_packets_are_refused_and_the_key_keeps_working() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    a = AesGcm(key)
    sealed = a.encrypt(nonce, b"endpoint map", b"\x01")
    for i in (0, len(sealed) // 2, len(sealed) - 1):
        bad = bytearray(sealed)
        bad[i] ^= 0x40
        with pytest.raises(InvalidTag):
            a.decrypt(nonce, bytes(bad), b"\x01")
    with pytest.raises(InvalidTag):
        a.decrypt(nonce, sealed, b"\x02")  # other associated data
    with pytest.raises(InvalidTag):
        a.decrypt(os.urandom(12), sealed, b"\x01")  # other nonce
    with pytest.raises(InvalidTag):
        AesGcm(os.urandom(32)).decrypt(nonce, sealed, b"\x01")  # other key
    with pytest.raises(InvalidTag):
        a.decrypt(nonce, sealed[:10], b"\x01")  # shorter than a tag
    assert a.decrypt(nonce, sealed, b"\x01") == b"endpoint map"


def test_key_sizes_other_than_aes_are_refused() -> None:
    for n in (0, 15, 31, 33):
        with pytest.raises(ValueError, match="16, 24 or 32"):
            AesGcm(b"k" * n)
