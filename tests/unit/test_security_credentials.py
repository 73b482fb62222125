"""security/credentials.py: credentials on disk, the handshake diagnosis; join addresses."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest

from osutil.hostport import next_port
from security import credentials as tls
from security import pki

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
ROOT, ROOT_KEY = pki.new_root("cluster-a", NOW - dt.timedelta(days=1))


def creds_for(
    node_id: str = "node1",
    now: dt.datetime = NOW,
    lifetime: dt.timedelta = dt.timedelta(days=90),
    not_before: dt.datetime | None = None,
) -> tls.NodeCredentials:
    key = pki.new_key()
    cert = pki.issue(
        ROOT,
        ROOT_KEY,
        pki.make_csr(key),
        node_id=node_id,
        role=pki.ROLE_WORKER,
        now=now,
        lifetime=lifetime,
        not_before=not_before,
    )
    return tls.NodeCredentials(pki.cert_pem(ROOT), pki.cert_pem(cert), pki.key_pem(key))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_and_load_round_trip_with_private_modes(tmp_path: Path) -> None:
    creds = creds_for()
    d = tmp_path / "state" / tls.CREDS_DIRNAME
    os.umask(0o022)
    creds.save(d)
    assert sorted(p.name for p in d.iterdir()) == ["ca.pem", "node.crt", "node.key"]
    assert mode(d) == 0o700
    assert {mode(p) for p in d.iterdir()} == {0o600}
    loaded = tls.NodeCredentials.load(d)
    assert loaded == creds
    assert loaded.node_id == "node1" and loaded.role == pki.ROLE_WORKER
    assert loaded.not_after == NOW + dt.timedelta(days=90)
    # Saving again over looser modes tightens them.
    os.chmod(d / "node.key", 0o644)
    new = creds_for()
    new.save(d)
    assert mode(d / "node.key") == 0o600 and tls.NodeCredentials.load(d) == new


def test_load_absent_is_none_and_broken_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    assert tls.NodeCredentials.load(d) is None
    creds_for().save(d)
    (d / "node.key").unlink()
    with pytest.raises(pki.CertError, match=r"incomplete: node\.key missing"):
        tls.NodeCredentials.load(d)
    creds_for().save(d)
    (d / "node.crt").write_text("garbage")
    with pytest.raises(pki.CertError, match="not a PEM certificate"):
        tls.NodeCredentials.load(d)
    # A certificate with somebody else's key.
    a, b = creds_for(), creds_for()
    tls.NodeCredentials(a.root_pem, a.cert_pem, b.key_pem).save(d)
    with pytest.raises(pki.CertError, match="not for this private key"):
        tls.NodeCredentials.load(d)


def test_load_completes_a_save_interrupted_between_renames(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    old, new = creds_for(), creds_for()
    old.save(d)
    # What save(new) leaves when it stops after renaming the key: the new certificate pending.
    (d / "node.key").write_bytes(new.key_pem)
    (d / "node.crt.new").write_bytes(new.cert_pem)
    assert tls.NodeCredentials.load(d) == new
    assert not list(d.glob("*.new"))
    # Stopped before any rename: the old credentials stand, the leftovers go.
    (d / "node.key.new").write_bytes(old.key_pem)
    assert tls.NodeCredentials.load(d) == new
    assert not list(d.glob("*.new"))


def test_diagnose_says_what_is_wrong_locally() -> None:
    assert "no certificate" in tls.diagnose(None, NOW)
    assert "--join-token" in tls.diagnose(None, NOW)
    good = creds_for()
    assert tls.diagnose(good, NOW + dt.timedelta(days=1)) == ""
    expired = tls.diagnose(good, NOW + dt.timedelta(days=91))
    assert expired.startswith(f"this node's certificate expired at {good.not_after.isoformat()}")
    assert "join again" in expired
    early = tls.diagnose(good, NOW - dt.timedelta(hours=1))
    assert "not valid before" in early and "clock" in early
    a, b = creds_for(), creds_for()
    mixed = tls.diagnose(tls.NodeCredentials(a.root_pem, a.cert_pem, b.key_pem), NOW)
    assert "not for this private key" in mixed
    other_root, _ = pki.new_root("cluster-b", NOW)
    foreign = tls.NodeCredentials(pki.cert_pem(other_root), a.cert_pem, a.key_pem)
    assert "not issued by the root CA" in tls.diagnose(foreign, NOW)


def test_channel_credentials_build() -> None:
    assert tls.NodeCredentials.channel_credentials(creds_for()) is not None


def test_join_addr_is_the_next_port() -> None:
    assert next_port("127.0.0.1:4242") == "127.0.0.1:4243"
    assert next_port("manager-1:10") == "manager-1:11"
    assert next_port("[::1]:4242") == "[::1]:4243"
    for bad in ("127.0.0.1", "host:", ":4242", "host:port"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            next_port(bad)
    with pytest.raises(ValueError, match="no next port"):
        next_port("host:65535")
