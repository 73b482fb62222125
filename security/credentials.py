"""A node's TLS identity: its credentials on disk, on a channel, and what is wrong with them.

Every node (manager, worker) and operator (admin) holds the cluster root, its certificate and
its private key (`NodeCredentials`). Every channel to a manager is mutual TLS with them
(`NodeCredentials.channel_credentials`), checked against the server name ``ovnet-manager`` that
only managers' certificates carry (`MANAGER_CHANNEL_OPTIONS`), never against the address dialled.

The managers refuse a bad client certificate in the TLS handshake, where gRPC can say no more
than "Socket closed"; `diagnose` looks at the local certificate to say why, in words an operator
can act on. Getting credentials in the first place (joining) and renewing them is security/join.py.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from osutil.files import atomic_write, fsync_dir
from security import certinfo

if TYPE_CHECKING:
    from cryptography import x509

CREDS_DIRNAME = "tls"
CA_FILE = "ca.pem"
CERT_FILE = "node.crt"
KEY_FILE = "node.key"
# A file written but not yet renamed into place (see NodeCredentials.save).
_PENDING = ".new"

# Managers are named by their certificates' SAN, never by address (see security/pki.py).
MANAGER_CHANNEL_OPTIONS: list[tuple[str, str]] = [
    ("grpc.ssl_target_name_override", certinfo.MANAGER_SAN)
]


@dataclass(frozen=True)
class NodeCredentials:
    """The cluster root, this node's certificate and its private key, all PEM.

    Reading who the certificate is for (`info`, `node_id`, `role`, `not_after`) needs no
    `cryptography` (security/certinfo.py); checking that the three belong together
    (`validate`) does, and loads it. `verified` says that check was made (by `load`, `join`,
    `renew`, or the agent's start-up helper), so that `diagnose` need not repeat it."""

    root_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    verified: bool = field(default=False, compare=False, kw_only=True)

    @property
    def cert(self) -> x509.Certificate:
        from security import pki

        return pki.load_cert(self.cert_pem)

    @property
    def root(self) -> x509.Certificate:
        from security import pki

        return pki.load_cert(self.root_pem)

    @property
    def info(self) -> certinfo.CertInfo:
        return certinfo.read(self.cert_pem)

    @property
    def node_id(self) -> str:
        return self.info.node_id

    @property
    def role(self) -> str:
        return self.info.role

    @property
    def not_after(self) -> dt.datetime:
        return self.info.not_after

    def validate(self) -> NodeCredentials:
        """Raise CertError unless the three parts belong together: the certificate is the
        key's and the root signed it (its dates are not checked: an expired certificate is
        still this node's identity, which `diagnose` reports). Returns them marked
        `verified`."""
        from security import pki

        cert, root, key = self.cert, self.root, pki.load_key(self.key_pem)
        if not pki.matches_key(cert, key):
            raise pki.CertError("the certificate is not for this private key")
        if not pki.signed_by(cert, root):
            raise pki.CertError("the certificate was not issued by the root CA stored with it")
        return NodeCredentials(self.root_pem, self.cert_pem, self.key_pem, verified=True)

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
            atomic_write(directory / (name + _PENDING), data, mode=0o600, durable=True)
        for name, _ in files:
            os.replace(directory / (name + _PENDING), directory / name)
        fsync_dir(directory)

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
            raise certinfo.CertError(f"{directory} is incomplete: {missing} missing")
        creds = cls.read(directory)
        try:
            creds = creds.validate()
        except certinfo.CertError:
            # A save interrupted between renames: finish it if the pending files fit.
            pending = _load_pending(directory, creds)
            if pending is None:
                raise
            pending.save(directory)
            creds = pending
        for n in paths:
            (directory / (n + _PENDING)).unlink(missing_ok=True)
        return creds

    @classmethod
    def read(cls, directory: Path, *, verified: bool = False) -> NodeCredentials:
        """The three files as they are, unchecked (`load` checks them; the agent reads what
        its start-up helper has just loaded and checked: `verified`)."""
        parts = (directory / n for n in (CA_FILE, CERT_FILE, KEY_FILE))
        return cls(*(p.read_bytes() for p in parts), verified=verified)


def _load_pending(directory: Path, current: NodeCredentials) -> NodeCredentials | None:
    def part(name: str, have: bytes) -> bytes:
        p = directory / (name + _PENDING)
        return p.read_bytes() if p.exists() else have

    cand = NodeCredentials(
        part(CA_FILE, current.root_pem), part(CERT_FILE, current.cert_pem), current.key_pem
    )
    try:
        return cand.validate()
    except certinfo.CertError:
        return None


def diagnose(creds: NodeCredentials | None, now: dt.datetime) -> str:
    """Why a manager might refuse this node's TLS handshake, judged from the local credentials:
    "" when nothing is wrong with them (the cause is elsewhere: network, another cluster...).
    Credentials already `verified` are not checked cryptographically again: an agent whose
    manager is away diagnoses every failed attempt, and must not load `cryptography` for it."""
    if creds is None:
        return "this node has no certificate: start it with --join-token"
    try:
        if not creds.verified:
            creds.validate()
        certinfo.check_claims(creds.info, certinfo.read(creds.root_pem).cluster_id, now)
    except certinfo.CertError as e:
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
