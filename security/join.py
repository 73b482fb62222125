"""Joining the cluster with a token, and renewing a certificate, from the node's side.

A node starts with nothing but a join token (``OVNTKN-1-<ca digest>-<secret>``, see
security/tokens.py). To join it

1. opens a plain TLS connection to a manager's join listener and reads the chain the manager
   presents ([manager cert, root]) *without* verifying it: nothing is trusted yet;
2. trusts the root only if its SHA-256 equals the digest in the token (so a man in the middle,
   or a manager of another cluster, is caught before the node sends its secret);
3. sends the token and a CSR over TLS verified against that root, and gets a certificate whose
   CN is its new node ID and whose OU is the token's role.

From then on the node talks to managers with those credentials (security/credentials.py) and
renews the certificate over its own mTLS channel before it expires (`renew`). A manager joining
an existing cluster goes through the same `join`.

Errors: `JoinError` is final (wrong token, another cluster's CA, a refusal): retrying cannot help,
the operator must act. `ManagerUnreachable` (a ConnectionError) is passing: nobody answered, try
again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from osutil.hostport import split_hostport
from proto import ca_pb2, ca_pb2_grpc
from security import certinfo, tokens
from security.credentials import MANAGER_CHANNEL_OPTIONS, NodeCredentials

if TYPE_CHECKING:
    from cryptography import x509

# Signing and verifying (security/pki.py, i.e. `cryptography`) is imported by the functions
# that do it, not here: an agent imports this module for its session and must not carry
# `cryptography` until it joins or renews (see security/certinfo.py).

# gRPC codes that mean "nobody answered (yet)": worth retrying, unlike every other refusal.
NO_ANSWER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class JoinError(Exception):
    """Joining failed for a reason retrying cannot fix; the message says what to do."""


class ManagerUnreachable(ConnectionError):
    """No manager answered at the join address (down, starting, or wrong address): retry."""


def _der_chain(sslobj: ssl.SSLObject) -> list[bytes]:
    """The peer's chain as sent, unverified (Python 3.13 made this public)."""
    getter = getattr(sslobj, "get_unverified_chain", None)
    if getter is not None:  # 3.13+: a list of DER bytes
        return [bytes(c) for c in getter()]
    inner = sslobj._sslobj  # type: ignore[attr-defined]  # 3.10-3.12
    return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in inner.get_unverified_chain()]  # type: ignore[attr-defined]


async def fetch_root(join_addr: str, timeout: float) -> x509.Certificate:
    """The root CA the manager at `join_addr` presents, NOT verified: the caller must compare
    its digest with what it trusts (the join token) before using it."""
    from cryptography import x509

    from security import pki

    try:
        host, port = split_hostport(join_addr)
    except ValueError as e:
        raise JoinError(f"the join address {e}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # trust comes from the token's digest, checked by the caller
    ctx.set_alpn_protocols(["h2"])
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=certinfo.MANAGER_SAN),
            timeout,
        )
    except ssl.SSLError as e:
        raise JoinError(
            f"{join_addr} does not answer as an ovnet join listener (TLS failed: {e.reason}); "
            "the join address is a manager's join port (its --listen port + 1 by default)"
        ) from None
    except (OSError, TimeoutError) as e:
        raise ManagerUnreachable(f"no manager answers at {join_addr}: {e or 'timed out'}") from None
    try:
        sslobj = writer.get_extra_info("ssl_object")
        chain = [x509.load_der_x509_certificate(der) for der in _der_chain(sslobj)]
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):  # ssl.SSLError is an OSError
            await asyncio.wait_for(writer.wait_closed(), 1)
    for cert in reversed(chain):
        if cert.subject == cert.issuer and pki.signed_by(cert, cert):
            return cert
    raise JoinError(
        f"the manager at {join_addr} did not present its root CA (is {join_addr} the join "
        "listener, the manager's --listen port + 1 by default?)"
    )


def _fingerprint(digest: bytes) -> str:
    """In the token's own alphabet, so that a person can compare it with the token's text."""
    return "sha256:" + tokens.b32(digest)


def _refusal(addr: str, e: grpc.aio.AioRpcError) -> Exception:
    """What a person should read when the manager refuses to issue a certificate."""
    details = e.details() or e.code().name
    code = e.code()
    if code in NO_ANSWER:
        return ManagerUnreachable(f"no manager answers at {addr}: {code.name} {details}")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return JoinError(
            f"the manager at {addr} refused the join token: {details}; print the current one "
            "with `ovctl cluster join-token worker`"
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return JoinError(f"{addr} does not issue certificates: is it a manager's join listener?")
    return JoinError(f"the manager at {addr} refused to issue a certificate: {details}")


async def join(join_addr: str, token: str, timeout: float = 10) -> NodeCredentials:
    """Join the cluster with `token` through the manager's join listener at `join_addr`.
    Raises JoinError (final) or ManagerUnreachable (try again)."""
    from security import pki

    try:
        tok = tokens.parse(token)
    except tokens.TokenError as e:
        raise JoinError(str(e)) from None
    root = await fetch_root(join_addr, timeout)
    got = pki.digest(root)
    if got != tok.ca_digest:
        raise JoinError(
            f"the manager at {join_addr} presents CA {_fingerprint(got)}, but the join token "
            f"expects {_fingerprint(tok.ca_digest)}: a different cluster, or someone in between"
        )
    root_pem = pki.cert_pem(root)
    key = pki.new_key()
    req = ca_pb2.IssueNodeCertificateRequest(token=token.strip(), csr=pki.make_csr(key))
    async with grpc.aio.secure_channel(
        join_addr, grpc.ssl_channel_credentials(root_pem), options=MANAGER_CHANNEL_OPTIONS
    ) as channel:
        try:
            resp = await ca_pb2_grpc.NodeCAStub(channel).IssueNodeCertificate(req, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise _refusal(join_addr, e) from None
    try:
        cert = pki.load_cert(resp.certificate)
    except certinfo.CertError as e:
        raise JoinError(f"the manager at {join_addr} sent an unusable certificate: {e}") from None
    if not pki.signed_by(cert, root):
        raise JoinError(
            f"the manager at {join_addr} sent a certificate not signed by the cluster's root CA"
        )
    if not pki.matches_key(cert, key):
        raise JoinError(f"the manager at {join_addr} sent a certificate for another key")
    creds = NodeCredentials(root_pem, pki.cert_pem(cert), pki.key_pem(key), verified=True)
    if resp.node_id and resp.node_id != creds.node_id:
        raise JoinError(
            f"the manager at {join_addr} sent a certificate for {creds.node_id!r} "
            f"but named the node {resp.node_id!r}"
        )
    return creds


async def renew(
    channel: grpc.aio.Channel, creds: NodeCredentials, timeout: float = 10
) -> NodeCredentials:
    """A new key and certificate for the same node and role, asked over `channel` (this node's
    own mTLS channel to a manager). Raises grpc.aio.AioRpcError if the manager refuses or does
    not answer, pki.CertError if what it sends is not a certificate for this node."""
    from security import pki

    key = pki.new_key()
    resp = await ca_pb2_grpc.NodeCAStub(channel).RenewNodeCertificate(
        ca_pb2.RenewNodeCertificateRequest(csr=pki.make_csr(key)), timeout=timeout
    )
    cert = pki.load_cert(resp.certificate)
    root = creds.root
    if resp.root_ca and pki.digest(pki.load_cert(resp.root_ca)) != pki.digest(root):
        raise pki.CertError("the manager answered with another root CA than this node's")
    if not pki.signed_by(cert, root):
        raise pki.CertError("the renewed certificate is not signed by the cluster's root CA")
    if not pki.matches_key(cert, key):
        raise pki.CertError("the renewed certificate is for another key")
    new = pki.info(cert)
    old = creds.info
    if (new.node_id, new.role) != (old.node_id, old.role):
        raise pki.CertError(
            f"the renewed certificate is for {new.role} {new.node_id!r}, "
            f"not {old.role} {old.node_id!r}"
        )
    return NodeCredentials(creds.root_pem, pki.cert_pem(cert), pki.key_pem(key), verified=True)


async def renew_anywhere(addrs: Sequence[str], creds: NodeCredentials) -> NodeCredentials:
    """`renew` over a channel of its own to each manager in turn, until one answers: for when
    no session is up (a certificate must not lapse while waiting for one) and for the agent's
    renewal helper process. Raises the last refusal, or ConnectionError with no address."""
    last: Exception | None = None
    for addr in addrs:
        channel = grpc.aio.secure_channel(
            addr, creds.channel_credentials(), options=MANAGER_CHANNEL_OPTIONS
        )
        try:
            return await renew(channel, creds, timeout=5)
        except grpc.aio.AioRpcError as e:
            last = e
        finally:
            await channel.close()
    if last is None:
        raise ConnectionError("no manager to renew the certificate with")
    raise last
