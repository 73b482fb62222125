"""The manager's etcd client over TLS, against a real etcd-server that requires client
certificates (--client-cert-auth): the right certificate works (reads, fenced transactions,
the keymanager), and no certificate, another CA's certificate, plaintext, or an etcd signed by
a CA the manager does not trust are all refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from manager.keymanager import GOSSIP, IPSEC, KeyManager
from manager.store import Batch, Store
from manager.store.etcd import EtcdClient, EtcdTLS, etcd_credentials
from ovctl.devcluster.etcd import etcd_argv, etcd_available
from ovctl.devcluster.procs import LOOPBACK, ManagedProcess, free_ports
from proto import objects_pb2 as pb
from security import pki

pytestmark = pytest.mark.integration

REFUSED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class Pki:
    """A cluster CA and what etcd and a manager hold from it (PEM bytes)."""

    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes


def make_pki(cluster: str) -> Pki:
    now = pki.utcnow()
    root, root_key = pki.new_root(cluster, now)
    # etcd's own certificate: serverAuth and the IP the clients dial (Go checks IP SANs).
    server_key = pki.new_key()
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etcd")]))
        .issuer_name(root.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    # The manager's client certificate: a manager cert of the cluster (clientAuth).
    client_key = pki.new_key()
    client = pki.issue(
        root, root_key, pki.make_csr(client_key), node_id="m1", role=pki.ROLE_MANAGER, now=now
    )
    return Pki(
        pki.cert_pem(root),
        pki.cert_pem(server),
        pki.key_pem(server_key),
        pki.cert_pem(client),
        pki.key_pem(client_key),
    )


@dataclass
class TlsEtcd:
    endpoint: str
    pki: Pki
    process: ManagedProcess

    def tls(self) -> EtcdTLS:
        return EtcdTLS(self.pki.ca, self.pki.client_cert, self.pki.client_key)


def tls_argv(workdir: Path, certs: Pki, client_port: int, peer_port: int) -> list[str]:
    """ovctl.devcluster.etcd's one-member command line with an https client listener requiring
    client certificates (the peer listener stays plain: one member, loopback)."""
    files = {
        "ca.pem": certs.ca,
        "server.crt": certs.server_cert,
        "server.key": certs.server_key,
    }
    for name, data in files.items():
        path = workdir / name
        path.write_bytes(data)
        path.chmod(0o600)
    client_url = f"https://{LOOPBACK}:{client_port}"
    argv = [
        a.replace(f"http://{LOOPBACK}:{client_port}", client_url)
        for a in etcd_argv(f"tls{os.getpid()}", workdir / "data", client_port, peer_port)
    ]
    assert f"--listen-client-urls={client_url}" in argv
    return [
        *argv,
        f"--cert-file={workdir / 'server.crt'}",
        f"--key-file={workdir / 'server.key'}",
        f"--trusted-ca-file={workdir / 'ca.pem'}",
        "--client-cert-auth",
    ]


async def _get(
    endpoint: str,
    timeout: float = 2.0,
    *,
    tls: EtcdTLS | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    client = EtcdClient([endpoint], timeout=timeout, tls=tls, credentials=credentials)
    try:
        await client.get(b"/probe")
    finally:
        await client.close()


async def _probe(endpoint: str | list[str], tls: EtcdTLS | None) -> str:
    client = EtcdClient([endpoint] if isinstance(endpoint, str) else endpoint, tls=tls)
    try:
        return await client.probe()
    finally:
        await client.close()


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEtcd]:
    if not etcd_available():
        pytest.skip("Debian's etcd-server is missing; run scripts/install.sh as root")
    workdir = tmp_path_factory.mktemp("etcd-tls")
    certs = make_pki("tls-test")
    client_port, peer_port = free_ports(2)
    proc = ManagedProcess(tls_argv(workdir, certs, client_port, peer_port), workdir / "etcd.log")
    proc.start()
    server = TlsEtcd(f"{LOOPBACK}:{client_port}", certs, proc)
    try:
        # Ready once a TLS client with the right certificate can read.
        last: Exception | None = None
        for _ in range(60):
            if not proc.running:
                raise AssertionError(f"etcd with TLS exited:\n{proc.log_tail()}")
            try:
                asyncio.run(_get(server.endpoint, 0.5, tls=server.tls()))
                break
            except grpc.aio.AioRpcError as e:
                last = e
        else:
            raise AssertionError(f"etcd with TLS never served: {last}\n{proc.log_tail()}")
        yield server
    finally:
        proc.stop()
        shutil.rmtree(workdir / "data", ignore_errors=True)  # etcd preallocates 64 MB of WAL


def test_client_certificate_gives_a_working_store(tls_etcd: TlsEtcd) -> None:
    async def main() -> None:
        client = EtcdClient([tls_etcd.endpoint], tls=tls_etcd.tls())
        store = Store(client, "/tls-test/")
        leader = store.key("leader")
        store.set_fence(leader, await client.put(leader, b"m1"))
        net = pb.Network(meta=pb.Meta(id="n1"), spec=pb.NetworkSpec(name="front"))
        await store.commit(Batch().create("networks", net).claim_name("networks", "front", "n1"))
        snap = await store.load()
        assert set(snap.objects["networks"]) == {"n1"}
        keys = KeyManager(store, subsystems=(GOSSIP, IPSEC), rotation_interval=60)
        await keys.load()
        later = keys.keyring(IPSEC).keys[0].created_at_ms + 60_000
        assert await keys.rotate_once(IPSEC, now=later)
        kv = await client.get(keys.key_path(IPSEC))
        assert kv is not None and len(keys.keys(IPSEC)) == 2
        await client.close()

    asyncio.run(main())


def test_several_endpoints_and_a_server_name(tls_etcd: TlsEtcd) -> None:
    """A several-endpoint channel checks every member against the first one's host (or the
    configured name), since gRPC cannot check each against its own address."""
    certs = tls_etcd.pki
    ep = tls_etcd.endpoint
    assert asyncio.run(_probe([ep, ep], tls_etcd.tls())) == ""
    named = EtcdTLS(certs.ca, certs.client_cert, certs.client_key, server_name="localhost")
    assert asyncio.run(_probe([ep], named)) == ""
    wrong = EtcdTLS(certs.ca, certs.client_cert, certs.client_key, server_name="etcd.example")
    assert "Hostname Verification" in asyncio.run(_probe([ep, ep], wrong))


def test_ready_made_credentials_work_too(tls_etcd: TlsEtcd) -> None:
    asyncio.run(_get(tls_etcd.endpoint, credentials=etcd_credentials(tls_etcd.tls())))
    assert asyncio.run(_probe(tls_etcd.endpoint, tls_etcd.tls())) == ""


@pytest.mark.parametrize(
    "case", ["no-client-cert", "other-ca-client-cert", "plaintext", "untrusted-server"]
)
def test_refused_without_the_right_certificates(tls_etcd: TlsEtcd, case: str) -> None:
    other = make_pki("another-cluster")
    own = tls_etcd.pki
    tls: EtcdTLS | None = {
        "no-client-cert": EtcdTLS(own.ca),
        "other-ca-client-cert": EtcdTLS(own.ca, other.client_cert, other.client_key),
        "plaintext": None,
        "untrusted-server": EtcdTLS(other.ca, own.client_cert, own.client_key),
    }[case]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(_get(tls_etcd.endpoint, 1.5, tls=tls))
    assert err.value.code() in REFUSED, err.value.details()
    # probe() says why at once, where every other call only times out.
    reason = asyncio.run(_probe(tls_etcd.endpoint, tls))
    assert reason.startswith(f"etcd at {tls_etcd.endpoint} is not usable: ")
    expected = {
        "no-client-cert": "TSI_DATA_CORRUPTED",
        "other-ca-client-cert": "TSI_DATA_CORRUPTED",
        "plaintext": "Socket closed",
        "untrusted-server": "CERTIFICATE_VERIFY_FAILED",
    }[case]
    assert expected in reason, reason
    assert ("--etcd-cacert" in reason) == (case != "plaintext")
    # The right certificates still work against the same server (the refusal was the cert's).
    asyncio.run(_get(tls_etcd.endpoint, tls=tls_etcd.tls()))


def test_etcd_tls_checks_its_fields_and_hides_the_key() -> None:
    certs = make_pki("fields")
    with pytest.raises(ValueError, match="needs its key"):
        EtcdTLS(certs.ca, certs.client_cert, None)
    with pytest.raises(ValueError, match="needs its key"):
        EtcdTLS(certs.ca, None, certs.client_key)
    tls = EtcdTLS(certs.ca, certs.client_cert, certs.client_key)
    assert b"PRIVATE" in certs.client_key and "PRIVATE" not in repr(tls)
    with pytest.raises(ValueError, match="not both"):
        EtcdClient(["127.0.0.1:1"], tls=tls, credentials=etcd_credentials(tls))
