"""Sealing gossip packets (AES-GCM under a keyring) and the per-sender replay window."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.gossip.common import DecodeError
from agent.gossip.crypto import (
    SEAL_OVERHEAD,
    AuthError,
    Keyring,
    ReplayGuard,
    SealFormatError,
    open,
    seal,
)

K1 = bytes(range(32))
K2 = bytes(range(100, 116))
K3 = bytes(range(200, 224))


@pytest.mark.parametrize(
    "keys",
    [[], [b"short"], [b"x" * 33], ["not bytes" * 4], K1],
    ids=["empty", "short", "long", "str", "one-bytes-object"],
)
def test_keyring_rejects_bad_keys(keys: object) -> None:
    with pytest.raises(ValueError):
        Keyring(keys)  # type: ignore[arg-type]


def test_keyring_accepts_aes_sizes_dedupes_and_hides_keys() -> None:
    kr = Keyring([K1, K2, K3, K1])
    assert kr.keys == (K1, K2, K3) and kr.primary == K1 and len(kr) == 3
    assert K1.hex() not in repr(kr) and "3 keys" in repr(kr)
    assert kr == Keyring([K1, K2, K3]) and kr != Keyring([K2, K1, K3])


def test_seal_open_roundtrip_and_overhead() -> None:
    kr = Keyring([K1])
    for size in (0, 1, 100, 1400):
        pt = bytes(i % 251 for i in range(size))
        data = seal(kr, pt)
        assert len(data) == size + SEAL_OVERHEAD
        assert open(kr, data) == pt


def test_nonces_are_fresh_per_packet() -> None:
    kr = Keyring([K1])
    a, b = seal(kr, b"same"), seal(kr, b"same")
    assert a[1:13] != b[1:13] and a != b


def test_known_answer_against_plain_aesgcm() -> None:
    """The format is version | nonce | AES-GCM(ciphertext+tag) with the version as AAD."""
    nonce = bytes(12)
    data = seal(Keyring([K1]), b"hello", nonce=nonce)
    assert data == b"\x01" + nonce + AESGCM(K1).encrypt(nonce, b"hello", b"\x01")
    with pytest.raises(ValueError):
        seal(Keyring([K1]), b"x", nonce=b"123")


def test_primary_seals_and_any_key_opens() -> None:
    old, new = Keyring([K1]), Keyring([K2])
    rotating = Keyring([K2, K1])  # new primary, old still accepted
    assert open(rotating, seal(old, b"from an old node")) == b"from an old node"
    assert open(new, seal(rotating, b"sealed with K2")) == b"sealed with K2"
    with pytest.raises(AuthError):
        open(old, seal(rotating, b"K2 is unknown to old"))


def test_wrong_key_tamper_truncation_version() -> None:
    kr = Keyring([K1])
    data = seal(kr, b"payload" * 10)
    with pytest.raises(AuthError):
        open(Keyring([K3]), data)
    for i in (0 + 1, 5, 20, len(data) - 1):  # flip a bit anywhere after the version byte
        bad = bytearray(data)
        bad[i] ^= 0x04
        with pytest.raises(AuthError):
            open(kr, bytes(bad))
    with pytest.raises(AuthError):
        open(kr, data[:-1])
    for short in (b"", b"\x01", data[: SEAL_OVERHEAD - 1]):
        with pytest.raises(SealFormatError):
            open(kr, short)
    with pytest.raises(SealFormatError):
        open(kr, b"\x02" + data[1:])
    # Both are DecodeErrors: the node catches one type for every bad packet.
    assert issubclass(AuthError, DecodeError) and issubclass(SealFormatError, DecodeError)


def test_replay_guard_accepts_each_sequence_number_once() -> None:
    g = ReplayGuard(window=64, epochs=2)
    assert g.accept("a", 1, 10)
    assert not g.accept("a", 1, 10)
    assert g.accept("a", 1, 12)
    assert g.accept("a", 1, 11)  # late but inside the window
    assert not g.accept("a", 1, 11)
    assert g.accept("b", 1, 10)  # windows are per sender
    assert g.accept("a", 1, 11 + 64)
    assert not g.accept("a", 1, 11)  # fell out of the window: too old to tell, refused
    assert g.accept("a", 1, 12 + 1)  # 13 was never seen and is still inside


def test_replay_guard_big_jump_resets_bitmap() -> None:
    g = ReplayGuard(window=64)
    assert g.accept("a", 7, 1)
    assert g.accept("a", 7, 10_000)
    assert not g.accept("a", 7, 1)
    assert g.accept("a", 7, 9_999)


def test_replay_guard_epochs() -> None:
    g = ReplayGuard(window=64, epochs=3)
    assert g.accept("a", 1, 5)
    assert g.accept("a", 2, 1)  # restarted: seq starts over under a new epoch
    assert not g.accept("a", 1, 5)  # the old life's packets are still refused
    assert g.accept("a", 1, 6)  # (a late packet of the old life is fine)
    assert not g.accept("a", 2, 1)
    assert g.accept("a", 3, 1)
    assert g.accept("a", 4, 1)  # now epoch 1 (the oldest) is forgotten
    assert g.accept("a", 1, 5)
    g.forget("a")
    assert g.accept("a", 4, 1)
