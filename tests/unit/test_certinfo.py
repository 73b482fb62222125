"""security/certinfo.py reads what `cryptography` reads from the certificates pki makes: the
agent's view of its identity and dates must never differ from the manager's."""

from __future__ import annotations

import datetime as dt

import pytest

from security import certinfo, pki

NOW = dt.datetime(2026, 1, 1, 12, 30, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize("role", list(pki.ROLES))
@pytest.mark.parametrize(
    "lifetime",
    [dt.timedelta(seconds=20), pki.DEFAULT_CERT_LIFETIME, dt.timedelta(days=30 * 365)],
    ids=["20s", "90d", "30y-GeneralizedTime"],
)
def test_reads_what_cryptography_reads(role: str, lifetime: dt.timedelta) -> None:
    root, root_key = pki.new_root("cluster-ä", NOW)  # a non-ASCII cluster name
    cert = pki.issue(
        root, root_key, pki.make_csr(pki.new_key()),
        node_id="node-1x", role=role, now=NOW, lifetime=lifetime,
    )  # fmt: skip
    got = certinfo.read(pki.cert_pem(cert))
    assert got == pki.info(cert)
    assert got.node_id == "node-1x" and got.role == role and got.cluster_id == "cluster-ä"
    assert got.not_after == cert.not_valid_after_utc
    # The root too (no OU), and a PEM with other text around it.
    assert certinfo.read(b"junk\n" + pki.cert_pem(root) + b"\ntrailer").cluster_id == "cluster-ä"


def test_anything_else_is_a_cert_error() -> None:
    root, _ = pki.new_root("c", NOW)
    pem = pki.cert_pem(root)
    body = pem.split(b"\n")
    for bad in (
        b"",
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        b"\n".join(body[:3] + body[-2:]),  # truncated
        pki.key_pem(pki.new_key()),
    ):
        with pytest.raises(certinfo.CertError):
            certinfo.read(bad)


def test_the_agent_imports_no_cryptography() -> None:
    """What an idle agent has loaded (its modules, its session, gossip, credentials)."""
    import subprocess
    import sys

    code = (
        "import sys, agent.main, agent.daemon, agent.wiring, security.join; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
