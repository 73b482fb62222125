"""AES-GCM for gossip packets, through the system's libcrypto (OpenSSL 3) with ctypes.

Why not `cryptography`'s AESGCM, which the rest of the project uses for its certificates:
importing it maps that package's Rust extension (its own statically linked OpenSSL), 6.6 MB
of the agent's resident memory for one cipher, and 8+ MB once anything else of it is touched
(measured: bench/footprint.py, and `import cryptography.hazmat.primitives.ciphers.aead` alone
in a fresh interpreter). libcrypto.so.3 is already mapped in every agent: Python's own ssl
module (which asyncio imports) links it. A sealed packet costs a handful of C calls either way.

Each `AesGcm` keeps one encryption and one decryption context for its key and only sets a new
nonce per packet, as OpenSSL allows for GCM. Not for use from several threads at once (gossip
runs on the event loop's thread).
"""

from __future__ import annotations

import ctypes
from typing import Any

TAG_SIZE = 16
_EVP_CTRL_GCM_GET_TAG = 0x10
_EVP_CTRL_GCM_SET_TAG = 0x11


class InvalidTag(Exception):
    """The packet was not sealed under this key (or was altered)."""


def _load() -> Any:
    lib = ctypes.CDLL("libcrypto.so.3")
    ptr, cptr, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for name in ("EVP_aes_128_gcm", "EVP_aes_192_gcm", "EVP_aes_256_gcm", "EVP_CIPHER_CTX_new"):
        getattr(lib, name).restype = ptr
        getattr(lib, name).argtypes = []
    lib.EVP_CIPHER_CTX_free.argtypes = [ptr]
    lib.EVP_CIPHER_CTX_free.restype = None
    for name in ("EVP_EncryptInit_ex", "EVP_DecryptInit_ex"):
        getattr(lib, name).argtypes = [ptr, ptr, ptr, cptr, cptr]
        getattr(lib, name).restype = i
    for name in ("EVP_EncryptUpdate", "EVP_DecryptUpdate"):
        getattr(lib, name).argtypes = [ptr, ptr, ctypes.POINTER(i), cptr, i]
        getattr(lib, name).restype = i
    for name in ("EVP_EncryptFinal_ex", "EVP_DecryptFinal_ex"):
        getattr(lib, name).argtypes = [ptr, ptr, ctypes.POINTER(i)]
        getattr(lib, name).restype = i
    lib.EVP_CIPHER_CTX_ctrl.argtypes = [ptr, i, i, ptr]
    lib.EVP_CIPHER_CTX_ctrl.restype = i
    return lib


_lib = _load()
_CIPHERS = {16: _lib.EVP_aes_128_gcm, 24: _lib.EVP_aes_192_gcm, 32: _lib.EVP_aes_256_gcm}


def _context(init: Any, key: bytes) -> int:
    ctx = _lib.EVP_CIPHER_CTX_new()
    if not ctx:
        raise MemoryError("EVP_CIPHER_CTX_new failed")
    if init(ctx, _CIPHERS[len(key)](), None, key, None) != 1:
        _lib.EVP_CIPHER_CTX_free(ctx)
        raise RuntimeError("cannot set up AES-GCM in libcrypto")
    return int(ctx)


class AesGcm:
    """AES-GCM under one key (16, 24 or 32 bytes) with 12-byte nonces; the same contract as
    `cryptography`'s AESGCM: encrypt returns ciphertext + 16-byte tag, decrypt raises
    `InvalidTag` for anything the key did not seal."""

    __slots__ = ("_dec", "_enc")

    def __init__(self, key: bytes) -> None:
        self._enc = self._dec = 0  # before anything can raise: __del__ reads them
        if len(key) not in _CIPHERS:
            raise ValueError(f"an AES-GCM key is 16, 24 or 32 bytes, not {len(key)}")
        self._enc = _context(_lib.EVP_EncryptInit_ex, bytes(key))
        self._dec = _context(_lib.EVP_DecryptInit_ex, bytes(key))

    def __del__(self) -> None:
        for ctx in (self._enc, self._dec):
            if ctx:
                _lib.EVP_CIPHER_CTX_free(ctx)

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        ctx = self._enc
        n = ctypes.c_int()
        out = ctypes.create_string_buffer(len(data) + TAG_SIZE)
        ok = (
            _lib.EVP_EncryptInit_ex(ctx, None, None, None, nonce)
            & _lib.EVP_EncryptUpdate(ctx, None, ctypes.byref(n), aad, len(aad))
            & _lib.EVP_EncryptUpdate(ctx, out, ctypes.byref(n), data, len(data))
        )
        done = n.value
        tail = ctypes.addressof(out) + done
        ok &= _lib.EVP_EncryptFinal_ex(ctx, tail, ctypes.byref(n))
        done += n.value
        ok &= _lib.EVP_CIPHER_CTX_ctrl(
            ctx, _EVP_CTRL_GCM_GET_TAG, TAG_SIZE, ctypes.addressof(out) + done
        )
        if ok != 1 or done != len(data):
            raise RuntimeError("libcrypto AES-GCM encryption failed")
        return out.raw

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        if len(data) < TAG_SIZE or len(nonce) != 12:
            raise InvalidTag
        ctx = self._dec
        size = len(data) - TAG_SIZE
        tag = ctypes.create_string_buffer(data[size:], TAG_SIZE)
        n = ctypes.c_int()
        out = ctypes.create_string_buffer(size + TAG_SIZE)
        ok = (
            _lib.EVP_DecryptInit_ex(ctx, None, None, None, nonce)
            & _lib.EVP_DecryptUpdate(ctx, None, ctypes.byref(n), aad, len(aad))
            & _lib.EVP_DecryptUpdate(ctx, out, ctypes.byref(n), data[:size], size)
        )
        done = n.value
        ok &= _lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_GCM_SET_TAG, TAG_SIZE, tag)
        if ok != 1:
            raise RuntimeError("libcrypto AES-GCM decryption failed")
        # Final checks the tag: 1 when it matches, 0 when it does not.
        if _lib.EVP_DecryptFinal_ex(ctx, ctypes.addressof(out) + done, ctypes.byref(n)) != 1:
            raise InvalidTag
        return out.raw[: done + n.value]
