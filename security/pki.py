"""Certificates of an ovnet cluster, as pure functions over `cryptography` objects.

Every node (manager, worker) and every operator (admin) holds an ECDSA P-256 key and a
certificate signed by the cluster's root CA. The certificate says who it is for:

* CN = the node ID (or an admin ID), the identity the managers check on every call;
* OU = the role: ``manager``, ``worker`` or ``admin``, which decides the RPCs it may call;
* O  = the cluster ID, so a certificate of one cluster never passes in another that happens to
  share nothing else.

Manager certificates also carry the DNS name ``ovnet-manager`` (``MANAGER_SAN``), which every
client checks as the server name: a worker's certificate, though signed by the same CA, cannot
serve as a manager. The root's private key is kept only in encrypted PKCS#8 form
(``encrypt_key``), under a key-encryption key the operator holds.

Times are passed in (``now``), never read here, so that expiry and renewal are testable.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from security import certinfo

# The pure part (identity, roles, time rules) lives in certinfo, which the agent reads without
# loading `cryptography`; pki stays the one name for all the formats.
MANAGER_SAN = certinfo.MANAGER_SAN
ROLE_ADMIN = certinfo.ROLE_ADMIN
ROLE_MANAGER = certinfo.ROLE_MANAGER
ROLE_WORKER = certinfo.ROLE_WORKER
ROLES = certinfo.ROLES
CertError = certinfo.CertError
CertInfo = certinfo.CertInfo
check_validity = certinfo.check_validity
renew_at = certinfo.renew_at
utcnow = certinfo.utcnow

ROOT_CN = "ovnet-root-ca"
DEFAULT_CERT_LIFETIME = dt.timedelta(days=90)
ROOT_LIFETIME = dt.timedelta(days=20 * 365)
# Back-dating absorbs clock skew between the issuing manager and the node; at most a tenth of
# the lifetime, so that a short-lived certificate (tests) still renews at 50-80 % of its life.
BACKDATE = dt.timedelta(minutes=5)

PrivateKey = ec.EllipticCurvePrivateKey


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertError(f"not a usable private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError("the private key is not an ECDSA key")
    return key


def encrypt_key(key: PrivateKey, passphrase: bytes) -> bytes:
    """PKCS#8 PEM encrypted under `passphrase` (scrypt/AES-256 via cryptography's best)."""
    if not passphrase:
        raise CertError("an empty key-encryption passphrase")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def decrypt_key(pem: bytes, passphrase: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError):
        raise CertError(
            "the root CA key does not decrypt with this key-encryption key "
            "(wrong --ca-key-file or OVNET_CA_PASSPHRASE?)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError("the root CA key is not an ECDSA key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise CertError(f"not a PEM certificate: {e}") from None


def digest(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER encoding: what a join token pins."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def new_root(cluster_id: str, now: dt.datetime) -> tuple[x509.Certificate, PrivateKey]:
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
            x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_csr(key: PrivateKey) -> bytes:
    """A CSR carrying only the public key: the CA decides the subject, never the requester."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as e:
        raise CertError(f"not a PEM certificate signing request: {e}") from None
    if not csr.is_signature_valid:
        raise CertError("the CSR's signature does not match its public key")
    pub = csr.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
        raise CertError("the CSR's key must be ECDSA P-256")
    return csr


def issue(
    root: x509.Certificate,
    root_key: PrivateKey,
    csr_pem: bytes,
    *,
    node_id: str,
    role: str,
    now: dt.datetime,
    lifetime: dt.timedelta = DEFAULT_CERT_LIFETIME,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign the CSR's key for (node_id, role) in the root's cluster. `not_before` lets a test
    make an already-expired certificate; it defaults to now minus the skew allowance."""
    if role not in ROLES:
        raise CertError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if not node_id:
        raise CertError("a certificate needs a node ID")
    csr = load_csr(csr_pem)
    start = not_before if not_before is not None else now - min(BACKDATE, lifetime / 10)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id_of(root)),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, node_id),
        ]
    )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
    )
    if role == ROLE_MANAGER:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(MANAGER_SAN)]), critical=False
        )
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(root_key, hashes.SHA256())


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    attrs = name.get_attributes_for_oid(oid)
    value = attrs[0].value if attrs else ""
    return value if isinstance(value, str) else value.decode()


def cluster_id_of(root: x509.Certificate) -> str:
    return _attr(root.subject, NameOID.ORGANIZATION_NAME)


def info(cert: x509.Certificate) -> CertInfo:
    return CertInfo(
        node_id=_attr(cert.subject, NameOID.COMMON_NAME),
        role=_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        cluster_id=_attr(cert.subject, NameOID.ORGANIZATION_NAME),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
    )


def signed_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    pub = root.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or cert.issuer != root.subject:
        return False
    sig_hash = cert.signature_hash_algorithm
    if sig_hash is None:
        return False
    try:
        pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(sig_hash))
    except InvalidSignature:
        return False
    return True


def check(cert: x509.Certificate, root: x509.Certificate, now: dt.datetime) -> CertInfo:
    """The certificate's identity if it is valid in the root's cluster at `now`; else
    CertError saying what is wrong (in words an operator can act on)."""
    if not signed_by(cert, root):
        raise CertError("the certificate was not issued by this cluster's root CA")
    ci = info(cert)
    certinfo.check_claims(ci, cluster_id_of(root), now)
    return ci


def matches_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return cert.public_key().public_bytes(enc, fmt) == key.public_key().public_bytes(enc, fmt)
