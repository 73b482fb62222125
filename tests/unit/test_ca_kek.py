"""The CA's key-encryption key and a manager's own credentials on disk (manager/ca/server.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from manager.ca import server as ca_server
from manager.ca.server import CAError, credentials_problem
from security import pki
from security.credentials import NodeCredentials

NO_ENV: dict[str, str] = {}


def test_init_creates_a_private_kek_once(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "ca.kek"
    kek = ca_server.ensure_kek(path, NO_ENV)
    assert len(kek) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert ca_server.ensure_kek(path, NO_ENV) == kek  # not replaced
    assert ca_server.read_kek(path, NO_ENV) == kek


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_kek_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "ca.kek"
    path.write_text("secret\n")
    path.chmod(mode)
    with pytest.raises(CAError, match=f"has mode {mode:04o}.*chmod 600"):
        ca_server.read_kek(path, NO_ENV)
    path.chmod(0o400)
    assert ca_server.read_kek(path, NO_ENV) == b"secret"


def test_missing_or_empty_kek(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="no CA key-encryption key at"):
        ca_server.read_kek(tmp_path / "absent", NO_ENV)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(CAError, match="is empty"):
        ca_server.read_kek(empty, NO_ENV)


def test_the_passphrase_replaces_the_file(tmp_path: Path) -> None:
    env = {ca_server.KEK_ENV: "from-env"}
    assert ca_server.read_kek(tmp_path / "absent", env) == b"from-env"
    assert ca_server.ensure_kek(tmp_path / "absent", env) == b"from-env"
    assert not (tmp_path / "absent").exists()


def test_new_cluster_keeps_the_root_key_encrypted() -> None:
    now = pki.utcnow()
    msg, toks, root, _key = ca_server.new_cluster(b"kek", now, "c1")
    assert msg.cluster_id == "c1" and pki.cluster_id_of(root) == "c1"
    assert b"ENCRYPTED PRIVATE KEY" in msg.key
    assert pki.matches_key(pki.load_cert(msg.certificate), pki.decrypt_key(msg.key, b"kek"))
    with pytest.raises(pki.CertError):
        pki.decrypt_key(msg.key, b"other")
    for role in ca_server.JOIN_ROLES:
        assert ca_server.check_join_token(getattr(toks, role), pki.digest(root), toks) == role
    assert toks.worker != toks.manager


def test_credentials_round_trip_privately(tmp_path: Path) -> None:
    now = pki.utcnow()
    root, root_key = pki.new_root("c1", now)
    key = pki.new_key()
    cert = pki.issue(root, root_key, pki.make_csr(key), node_id="m1", role="manager", now=now)
    creds = NodeCredentials(pki.cert_pem(root), pki.cert_pem(cert), pki.key_pem(key))
    tls = tmp_path / "state" / "tls"
    creds.save(tls)
    assert tls.stat().st_mode & 0o777 == 0o700
    assert (tls / "node.key").stat().st_mode & 0o777 == 0o600
    assert NodeCredentials.load(tls) == creds
    assert NodeCredentials.load(tmp_path / "none") is None
    assert credentials_problem(creds, root, now) == ""
    assert "expired" in credentials_problem(creds, root, now + dt.timedelta(days=91))
    other, _ = pki.new_root("c2", now)
    assert "not issued by this cluster" in credentials_problem(creds, other, now)
    wrong_key = NodeCredentials(creds.root_pem, creds.cert_pem, pki.key_pem(pki.new_key()))
    assert credentials_problem(wrong_key, root, now) == "the key does not match the certificate"
