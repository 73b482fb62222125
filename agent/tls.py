"""A node's TLS identity: joining the cluster with a token, keeping and renewing the certificate.

A node starts with nothing but a join token (``OVNTKN-1-<ca digest>-<secret>``, see
manager/ca/tokens.py). To join it

1. opens a plain TLS connection to a manager's join listener and reads the chain the manager
   presents ([manager cert, root]) *without* verifying it: nothing is trusted yet;
2. trusts the root only if its SHA-256 equals the digest in the token (so a man in the middle,
   or a manager of another cluster, is caught before the node sends its secret);
3. sends the token and a CSR over TLS verified against that root, and gets a certificate whose
   CN is its new node ID and whose OU is the token's role.

From then on every channel to the managers is mutual TLS with that certificate
(`NodeCredentials.channel_credentials`), checked against the server name ``ovnet-manager`` that
only managers' certificates carry (`MANAGER_CHANNEL_OPTIONS`). The certificate is renewed over
the node's own mTLS channel before it expires (`renew`).

The managers refuse a bad client certificate in the TLS handshake, where gRPC can say no more
than "Socket closed"; `diagnose` looks at the local certificate to say why, in words an operator
can act on.

Errors: `JoinError` is final (wrong token, another cluster's CA, a refusal): retrying cannot help,
the operator must act. `ManagerUnreachable` (a ConnectionError) is passing: nobody answered, try
again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from manager.ca import pki, tokens
from proto import ca_pb2, ca_pb2_grpc

CREDS_DIRNAME = "tls"
CA_FILE = "ca.pem"
CERT_FILE = "node.crt"
KEY_FILE = "node.key"
# A file written but not yet renamed into place (see NodeCredentials.save).
_PENDING = ".new"

MANAGER_CHANNEL_OPTIONS: list[tuple[str, str]] = [
    ("grpc.ssl_target_name_override", pki.MANAGER_SAN)
]

# gRPC codes that mean "nobody answered (yet)": worth retrying, unlike every other refusal.
_NO_ANSWER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class JoinError(Exception):
    """Joining failed for a reason retrying cannot fix; the message says what to do."""


class ManagerUnreachable(ConnectionError):
    """No manager answered at the join address (down, starting, or wrong address): retry."""


@dataclass(frozen=True)
class NodeCredentials:
    """The cluster root, this node's certificate and its private key, all PEM."""

    root_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return pki.load_cert(self.cert_pem)

    @property
    def root(self) -> x509.Certificate:
        return pki.load_cert(self.root_pem)

    @property
    def info(self) -> pki.CertInfo:
        return pki.info(self.cert)

    @property
    def node_id(self) -> str:
        return self.info.node_id

    @property
    def role(self) -> str:
        return self.info.role

    @property
    def not_after(self) -> dt.datetime:
        return self.info.not_after

    def validate(self) -> None:
        """Raise pki.CertError unless the three parts belong together: the certificate is the
        key's and the root signed it (its dates are not checked: an expired certificate is
        still this node's identity, which `diagnose` reports)."""
        cert, root, key = self.cert, self.root, pki.load_key(self.key_pem)
        if not pki.matches_key(cert, key):
            raise pki.CertError("the certificate is not for this private key")
        if not pki.signed_by(cert, root):
            raise pki.CertError("the certificate was not issued by the root CA stored with it")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )

    def save(self, directory: Path) -> None:
        """Write ca.pem, node.crt and node.key (0600, directory 0700). Every file is first
        written whole beside its final name, then renamed; the certificate is renamed last, so
        that a crash in between leaves a new key with a pending certificate, which `load`
        completes (never a certificate with a key that is not its own)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        files = [(CA_FILE, self.root_pem), (KEY_FILE, self.key_pem), (CERT_FILE, self.cert_pem)]
        for name, data in files:
            _write_private(directory / (name + _PENDING), data)
        for name, _ in files:
            os.replace(directory / (name + _PENDING), directory / name)
        _fsync_dir(directory)

    @classmethod
    def load(cls, directory: Path) -> NodeCredentials | None:
        """The saved credentials; None when this node has none; pki.CertError when they are
        unusable (corrupt, incomplete, or not belonging together)."""
        paths = {n: directory / n for n in (CA_FILE, CERT_FILE, KEY_FILE)}
        present = [n for n, p in paths.items() if p.exists()]
        if not present:
            return None
        if len(present) != len(paths):
            missing = ", ".join(sorted(set(paths) - set(present)))
            raise pki.CertError(f"{directory} is incomplete: {missing} missing")
        creds = cls(*(paths[n].read_bytes() for n in (CA_FILE, CERT_FILE, KEY_FILE)))
        try:
            creds.validate()
        except pki.CertError:
            # A save interrupted between renames: finish it if the pending files fit.
            pending = _load_pending(directory, creds)
            if pending is None:
                raise
            pending.save(directory)
            creds = pending
        for n in paths:
            (directory / (n + _PENDING)).unlink(missing_ok=True)
        return creds


def _load_pending(directory: Path, current: NodeCredentials) -> NodeCredentials | None:
    def part(name: str, have: bytes) -> bytes:
        p = directory / (name + _PENDING)
        return p.read_bytes() if p.exists() else have

    cand = NodeCredentials(
        part(CA_FILE, current.root_pem), part(CERT_FILE, current.cert_pem), current.key_pem
    )
    try:
        cand.validate()
    except pki.CertError:
        return None
    return cand


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def join_addr(manager_addr: str) -> str:
    """The join listener of the manager at `manager_addr`: same host, the next port."""
    host, sep, port = manager_addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65535:
        raise ValueError(f"{manager_addr!r} is not HOST:PORT")
    return f"{host}:{int(port) + 1}"


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise JoinError(f"{addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


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
    host, port = _split(join_addr)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # trust comes from the token's digest, checked by the caller
    ctx.set_alpn_protocols(["h2"])
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=pki.MANAGER_SAN),
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
    if code in _NO_ANSWER:
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
    except pki.CertError as e:
        raise JoinError(f"the manager at {join_addr} sent an unusable certificate: {e}") from None
    if not pki.signed_by(cert, root):
        raise JoinError(
            f"the manager at {join_addr} sent a certificate not signed by the cluster's root CA"
        )
    if not pki.matches_key(cert, key):
        raise JoinError(f"the manager at {join_addr} sent a certificate for another key")
    creds = NodeCredentials(root_pem, pki.cert_pem(cert), pki.key_pem(key))
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
    return NodeCredentials(creds.root_pem, pki.cert_pem(cert), pki.key_pem(key))


def diagnose(creds: NodeCredentials | None, now: dt.datetime) -> str:
    """Why a manager might refuse this node's TLS handshake, judged from the local credentials:
    "" when nothing is wrong with them (the cause is elsewhere: network, another cluster...)."""
    if creds is None:
        return "this node has no certificate: start it with --join-token"
    try:
        creds.validate()
        pki.check(creds.cert, creds.root, now)
    except pki.CertError as e:
        msg = str(e)
        if "expired" in msg:
            return (
                f"this node's certificate expired at {creds.not_after.isoformat()} (it was not "
                "renewed in time): remove its tls directory and join again with --join-token"
            )
        if "not valid before" in msg:
            return (
                f"this node's certificate is not valid before "
                f"{creds.info.not_before.isoformat()} and the clock here says {now.isoformat()}: "
                "is this host's clock right?"
            )
        return f"this node's certificate is unusable: {msg}"
    return ""
