"""security/pki.py: certificates say who they are for, and check() refuses every other one."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from security import pki

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def root() -> Root:
    return pki.new_root("cluster-a", NOW)


Root = tuple[x509.Certificate, pki.PrivateKey]


def issue(
    root: Root,
    role: str,
    node_id: str = "n1",
    now: dt.datetime = NOW,
    lifetime: dt.timedelta = pki.DEFAULT_CERT_LIFETIME,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    cert, key = root
    csr = pki.make_csr(pki.new_key())
    return pki.issue(
        cert,
        key,
        csr,
        node_id=node_id,
        role=role,
        now=now,
        lifetime=lifetime,
        not_before=not_before,
    )


def test_root_is_a_ca_of_its_cluster(root: Root) -> None:
    cert, key = root
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert pki.cluster_id_of(cert) == "cluster-a"
    assert pki.signed_by(cert, cert)
    assert pki.matches_key(cert, key)
    assert not pki.matches_key(cert, pki.new_key())


def test_issued_certificate_names_node_role_and_cluster(
    root: Root,
) -> None:
    cert = issue(root, pki.ROLE_WORKER, node_id="node-7", lifetime=dt.timedelta(hours=1))
    ci = pki.check(cert, root[0], NOW)
    assert (ci.node_id, ci.role, ci.cluster_id) == ("node-7", "worker", "cluster-a")
    assert ci.not_after == NOW + dt.timedelta(hours=1)
    assert ci.not_before == NOW - pki.BACKDATE
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_only_manager_certificates_carry_the_manager_name(
    root: Root,
) -> None:
    cert = issue(root, pki.ROLE_MANAGER)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [pki.MANAGER_SAN]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in list(eku)


def test_the_csr_subject_is_ignored(root: Root) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = pki.new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "i-am-admin")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cert = pki.issue(root[0], root[1], csr, node_id="n2", role="worker", now=NOW)
    assert pki.info(cert).node_id == "n2"
    assert pki.matches_key(cert, key)


@pytest.mark.parametrize(
    ("when", "message"),
    [
        (NOW + dt.timedelta(hours=2), "expired at"),
        (NOW - dt.timedelta(hours=1), "not valid before"),
    ],
)
def test_check_refuses_outside_validity(root: Root, when: dt.datetime, message: str) -> None:
    cert = issue(root, pki.ROLE_ADMIN, lifetime=dt.timedelta(hours=1))
    with pytest.raises(pki.CertError, match=message):
        pki.check(cert, root[0], when)


def test_check_refuses_another_clusters_certificate(
    root: Root,
) -> None:
    other = pki.new_root("cluster-a", NOW)  # same cluster ID, another key: still another CA
    cert = issue(other, pki.ROLE_ADMIN)
    assert not pki.signed_by(cert, root[0])
    with pytest.raises(pki.CertError, match="not issued by this cluster's root CA"):
        pki.check(cert, root[0], NOW)


def test_issue_refuses_unknown_roles_and_bad_csrs(
    root: Root,
) -> None:
    with pytest.raises(pki.CertError, match="unknown role"):
        issue(root, "superuser")
    with pytest.raises(pki.CertError, match="node ID"):
        issue(root, "worker", node_id="")
    with pytest.raises(pki.CertError, match="not a PEM certificate signing request"):
        pki.issue(root[0], root[1], b"garbage", node_id="n", role="worker", now=NOW)


def test_issue_can_backdate_for_expired_test_certificates(
    root: Root,
) -> None:
    past = NOW - dt.timedelta(hours=3)
    cert = issue(root, pki.ROLE_ADMIN, now=past, lifetime=dt.timedelta(minutes=1), not_before=past)
    assert pki.info(cert).not_before == past
    with pytest.raises(pki.CertError, match="expired"):
        pki.check(cert, root[0], NOW)


def test_root_key_round_trips_only_with_its_passphrase(
    root: Root,
) -> None:
    pem = pki.encrypt_key(root[1], b"kek-1")
    assert b"ENCRYPTED" in pem
    assert pki.matches_key(root[0], pki.decrypt_key(pem, b"kek-1"))
    with pytest.raises(pki.CertError, match="does not decrypt"):
        pki.decrypt_key(pem, b"kek-2")
    with pytest.raises(pki.CertError, match="empty"):
        pki.encrypt_key(root[1], b"")


def test_pem_round_trips(root: Root) -> None:
    key = pki.new_key()
    assert pki.matches_key(root[0], pki.load_key(pki.key_pem(root[1])))
    assert pki.load_cert(pki.cert_pem(root[0])) == root[0]
    assert pki.digest(root[0]) == pki.digest(pki.load_cert(pki.cert_pem(root[0])))
    assert len(pki.digest(root[0])) == 32
    with pytest.raises(pki.CertError):
        pki.load_cert(b"nope")
    with pytest.raises(pki.CertError):
        pki.load_key(pki.make_csr(key))


def test_renew_at_falls_between_half_and_four_fifths_of_life(
    root: Root,
) -> None:
    ci = pki.info(issue(root, pki.ROLE_WORKER, lifetime=dt.timedelta(days=90)))
    life = ci.not_after - ci.not_before
    rng = random.Random(7)
    times = [pki.renew_at(ci, rng) for _ in range(200)]
    assert all(ci.not_before + life * 0.5 <= t <= ci.not_before + life * 0.8 for t in times)
    assert len(set(times)) > 100  # spread, not one instant for every node


@pytest.mark.parametrize("seconds", [6, 3600, 90 * 86400])
def test_renewal_comes_before_expiry_for_short_and_long_lives(root: Root, seconds: int) -> None:
    """Back-dating (clock skew allowance) must not push the renewal past the expiry of a
    short-lived certificate (seconds, in tests and demos)."""
    life = dt.timedelta(seconds=seconds)
    ci = pki.info(issue(root, pki.ROLE_MANAGER, lifetime=life))
    rng = random.Random(1)
    for _ in range(50):
        at = pki.renew_at(ci, rng)
        assert NOW + life * 0.4 <= at <= NOW + life * 0.8
