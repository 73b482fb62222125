"""The cluster's certificate authority at run time: the root CA and join tokens in etcd, the
NodeCA service, and the operator's key-encryption key (KEK).

etcd holds, under the cluster prefix:

    ca/root            RootCA: the root certificate and its key, encrypted under the KEK
    ca/tokens          JoinTokens: the current worker and manager tokens
    ca/removed/<id>    a tombstone per removed node (written by Control.RemoveNode)

Every manager holds the KEK (``--ca-key-file`` or ``OVNET_CA_PASSPHRASE``), so any of them can
issue certificates: joining and renewing do not depend on which manager leads. The checks a
join token goes through, and the messages, are pure functions (`check_join_token`) so that each
way of getting it wrong is tested without a network.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509

from manager.ca.authz import Peer
from manager.cluster import new_id, now_ms
from manager.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated
from manager.store import Store
from manager.store.etcd import Put, absent
from proto import ca_pb2
from security import pki, tokens
from security.credentials import NodeCredentials

log = logging.getLogger(__name__)

ROOT_KEY = ("ca", "root")
TOKENS_KEY = ("ca", "tokens")
REMOVED_DIR = ("ca", "removed")
JOIN_ROLES = (pki.ROLE_WORKER, pki.ROLE_MANAGER)
KEK_ENV = "OVNET_CA_PASSPHRASE"
DEFAULT_KEK_FILE = Path("/etc/ovnet/ca.kek")


class CAError(Exception):
    """A manager cannot start its CA (not initialized, wrong KEK, unsafe KEK file...); the message
    tells the operator what to do."""


# ------------------------------------------------------------------------------ pure cores


def new_cluster(
    kek: bytes, now: dt.datetime, cluster_id: str = ""
) -> tuple[ca_pb2.RootCA, ca_pb2.JoinTokens, x509.Certificate, pki.PrivateKey]:
    """A new root CA (key encrypted under `kek`) and one join token per role."""
    cid = cluster_id or new_id()
    root, key = pki.new_root(cid, now)
    msg = ca_pb2.RootCA(
        certificate=pki.cert_pem(root),
        key=pki.encrypt_key(key, kek),
        cluster_id=cid,
        created_at_ms=int(now.timestamp() * 1000),
    )
    digest = pki.digest(root)
    toks = ca_pb2.JoinTokens(
        worker=str(tokens.new_token(digest)), manager=str(tokens.new_token(digest))
    )
    return msg, toks, root, key


def rotated(toks: ca_pb2.JoinTokens, role: str, ca_digest: bytes) -> ca_pb2.JoinTokens:
    """`toks` with a new token for `role`: the old one stops working as soon as this is stored."""
    check_join_role(role)
    out = ca_pb2.JoinTokens()
    out.CopyFrom(toks)
    setattr(out, role, str(tokens.new_token(ca_digest)))
    return out


def check_join_role(role: str) -> None:
    if role not in JOIN_ROLES:
        raise InvalidArgument(
            f"no join token for role {role!r}: there is one for {' and '.join(JOIN_ROLES)}"
        )


def check_join_token(text: str, ca_digest: bytes, toks: ca_pb2.JoinTokens) -> str:
    """The role a join token grants, or the error saying why it grants nothing:
    malformed -> INVALID_ARGUMENT, another cluster's CA -> FAILED_PRECONDITION (both digests
    named), a secret that is not current -> UNAUTHENTICATED."""
    try:
        presented = tokens.parse(text)
    except tokens.TokenError as e:
        raise InvalidArgument(str(e)) from None
    if presented.ca_digest != ca_digest:
        raise FailedPrecondition(
            f"the join token is for the cluster CA with digest {tokens.b32(presented.ca_digest)}, "
            f"but this manager's CA has digest {tokens.b32(ca_digest)}: the token belongs to "
            "another cluster"
        )
    for role in JOIN_ROLES:
        current = getattr(toks, role)
        if not current:
            continue
        try:
            if tokens.same_secret(presented, tokens.parse(current)):
                return role
        except tokens.TokenError:
            log.error("the stored %s join token is malformed; rotate it", role)
    raise Unauthenticated("the join token is not valid for this cluster (rotated, or mistyped)")


# ------------------------------------------------------------------------------ KEK and files


def read_kek(path: Path, env: Mapping[str, str] | None = None) -> bytes:
    """The key-encryption key: $OVNET_CA_PASSPHRASE if set, else the file's content. The file
    must be readable by its owner only: it unlocks the cluster's root key."""
    environ = os.environ if env is None else env
    passphrase = environ.get(KEK_ENV, "")
    if passphrase:
        return passphrase.encode()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CAError(
            f"no CA key-encryption key at {path}: copy the one `ovnet-manager init` created "
            f"(mode 0600), pass --ca-key-file, or set {KEK_ENV}"
        ) from None
    if st.st_mode & 0o077:
        raise CAError(
            f"the CA key-encryption key {path} has mode {st.st_mode & 0o777:04o}: it must be "
            f"readable by its owner only (chmod 600 {path})"
        )
    data = path.read_bytes().strip()
    if not data:
        raise CAError(f"the CA key-encryption key {path} is empty")
    return data


def ensure_kek(path: Path, env: Mapping[str, str] | None = None) -> bytes:
    """`read_kek`, creating a random KEK file (0600) first if there is neither a passphrase nor
    a file: what `init` does."""
    environ = os.environ if env is None else env
    if not environ.get(KEK_ENV) and not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        log.info("created the CA key-encryption key %s", path)
    return read_kek(path, environ)


def credentials_problem(creds: NodeCredentials, root: x509.Certificate, now: dt.datetime) -> str:
    """Why saved credentials cannot serve this manager with the cluster's `root` now ("" if
    they can): unlike an agent, a manager can issue itself new ones instead of failing."""
    try:
        pki.check(creds.cert, root, now)
        if not pki.matches_key(creds.cert, pki.load_key(creds.key_pem)):
            return "the key does not match the certificate"
    except pki.CertError as e:
        return str(e)
    return ""


# ------------------------------------------------------------------------------ the CA


class CertificateAuthority:
    """The root CA of one cluster, unlocked; serves the NodeCA RPCs."""

    def __init__(
        self,
        store: Store,
        root: x509.Certificate,
        root_key: pki.PrivateKey,
        lifetime: dt.timedelta = pki.DEFAULT_CERT_LIFETIME,
    ) -> None:
        self.store = store
        self.root = root
        self.root_key = root_key
        self.root_pem = pki.cert_pem(root)
        self.digest = pki.digest(root)
        self.cluster_id = pki.cluster_id_of(root)
        self.lifetime = lifetime

    @classmethod
    async def initialize(
        cls, store: Store, kek: bytes, lifetime: dt.timedelta = pki.DEFAULT_CERT_LIFETIME
    ) -> tuple[CertificateAuthority, ca_pb2.JoinTokens]:
        """Create the root CA and the join tokens in one transaction, only if there is no root
        yet; CAError if the cluster was initialized already."""
        msg, toks, root, key = new_cluster(kek, pki.utcnow())
        root_key, tokens_key = store.key(*ROOT_KEY), store.key(*TOKENS_KEY)
        result = await store.etcd.txn(
            [absent(root_key)],
            [Put(root_key, msg.SerializeToString()), Put(tokens_key, toks.SerializeToString())],
        )
        if not result.succeeded:
            raise CAError(
                f"cluster already initialized: {root_key.decode()} holds a root CA. Start "
                "managers with `ovnet-manager` (no init), or use another --prefix"
            )
        return cls(store, root, key, lifetime), toks

    @classmethod
    async def load(
        cls, store: Store, kek: bytes, lifetime: dt.timedelta = pki.DEFAULT_CERT_LIFETIME
    ) -> CertificateAuthority:
        kv = await store.etcd.get(store.key(*ROOT_KEY))
        if kv is None:
            raise CAError(
                f"cluster not initialized: no root CA at {store.key(*ROOT_KEY).decode()}; "
                "run `ovnet-manager init` first"
            )
        msg = ca_pb2.RootCA()
        msg.ParseFromString(kv.value)
        try:
            root = pki.load_cert(msg.certificate)
            key = pki.decrypt_key(msg.key, kek)
        except pki.CertError as e:
            raise CAError(str(e)) from None
        if not pki.matches_key(root, key):
            raise CAError("the stored root CA key does not match the root certificate")
        return cls(store, root, key, lifetime)

    async def join_tokens(self) -> ca_pb2.JoinTokens:
        kv = await self.store.etcd.get(self.store.key(*TOKENS_KEY))
        toks = ca_pb2.JoinTokens()
        if kv is not None:
            toks.ParseFromString(kv.value)
        return toks

    def issue(self, csr_pem: bytes, node_id: str, role: str) -> bytes:
        try:
            cert = pki.issue(
                self.root,
                self.root_key,
                csr_pem,
                node_id=node_id,
                role=role,
                now=pki.utcnow(),
                lifetime=self.lifetime,
            )
        except pki.CertError as e:
            raise InvalidArgument(str(e)) from None
        return pki.cert_pem(cert)

    def self_issue(self, node_id: str, role: str = pki.ROLE_MANAGER) -> NodeCredentials:
        """Credentials for this manager (or an admin), signed here without a CSR round trip."""
        key = pki.new_key()
        cert = self.issue(pki.make_csr(key), node_id, role)
        return NodeCredentials(self.root_pem, cert, pki.key_pem(key))

    # ---------------------------------------------------------------- NodeCA RPCs

    async def issue_node_certificate(
        self, req: ca_pb2.IssueNodeCertificateRequest
    ) -> ca_pb2.IssueNodeCertificateResponse:
        """A node proves a join token and gets a certificate under a new node ID."""
        role = check_join_token(req.token, self.digest, await self.join_tokens())
        node_id = new_id()
        cert = self.issue(req.csr, node_id, role)
        log.info("issued a %s certificate to new node %s", role, node_id)
        return ca_pb2.IssueNodeCertificateResponse(
            node_id=node_id, role=role, certificate=cert, root_ca=self.root_pem
        )

    async def renew_node_certificate(
        self, req: ca_pb2.RenewNodeCertificateRequest, *, peer: Peer
    ) -> ca_pb2.RenewNodeCertificateResponse:
        """The caller's identity (its current certificate's CN and role) under a new key."""
        if peer.role not in JOIN_ROLES:
            raise PermissionDenied(f"a {peer.role} certificate is not renewed by the cluster")
        cert = self.issue(req.csr, peer.node_id, peer.role)
        return ca_pb2.RenewNodeCertificateResponse(certificate=cert, root_ca=self.root_pem)


def tombstone_value() -> bytes:
    return str(now_ms()).encode()
