"""The secure control plane end to end: real etcd, real manager processes started with
`python -m manager.main init` then `python -m manager.main`, real mutual TLS.

Every way of being refused has its own test (no certificate, self-signed, worker on Control,
expired, removed node), as does every way of failing to join (malformed token, wrong secret,
rotated-away token, another cluster's manager); refused writes are checked against etcd itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aetcd import rpc

from manager.store.etcd import prefix_range_end
from ovctl.devcluster.procs import ManagedProcess, free_port
from proto import ca_pb2, ca_pb2_grpc, control_pb2_grpc, dispatcher_pb2_grpc
from proto import control_pb2 as cpb
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb
from security import join as node_join
from security import pki, tokens
from security.credentials import NodeCredentials
from tests.support.etcd import EtcdHandle
from tests.support.procs import ProcessSpawner

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MANAGER = [sys.executable, "-m", "manager.main"]
OPTIONS = [("grpc.ssl_target_name_override", pki.MANAGER_SAN)]


@dataclass
class Creds:
    root: bytes
    cert: bytes
    key: bytes

    def channel(self, addr: str) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(self.root, self.key, self.cert)
        return grpc.secure_channel(addr, creds, options=OPTIONS)


@dataclass
class ManagerNode:
    """One initialized manager: where it listens and what `init` gave the operator."""

    tmp: Path
    etcd: EtcdHandle
    prefix: str
    addr: str
    join_addr: str
    manager_id: str
    kek_file: Path
    state_dir: Path
    admin: Creds
    worker_token: str
    manager_token: str
    proc: ManagedProcess | None = None

    def argv(self, *extra: str) -> list[str]:
        return [
            *MANAGER,
            "--listen",
            self.addr,
            "--join-listen",
            self.join_addr,
            "--etcd",
            self.etcd.endpoint,
            "--prefix",
            self.prefix,
            "--manager-id",
            self.manager_id,
            "--state-dir",
            str(self.state_dir),
            "--ca-key-file",
            str(self.kek_file),
            "--heartbeat-period",
            "0.5",
            "--election-ttl",
            "2",
            *extra,
        ]

    def control(self, creds: Creds | None = None, addr: str | None = None) -> Any:
        return control_pb2_grpc.ControlStub((creds or self.admin).channel(addr or self.addr))

    def wait_leader(self, timeout: float = 15.0, addr: str | None = None) -> str:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                info = self.control(addr=addr).GetClusterInfo(
                    cpb.GetClusterInfoRequest(), timeout=2
                )
                if info.leader_id:
                    return str(info.leader_id)
            except grpc.RpcError as e:
                last = e
            time.sleep(0.1)
        raise AssertionError(f"no leader within {timeout}s (last error: {last})")


def run_init(
    node_dir: Path,
    etcd: EtcdHandle,
    prefix: str,
    addr: str,
    manager_id: str,
    kek_file: Path,
    *extra: str,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *MANAGER,
            "init",
            "--listen",
            addr,
            "--etcd",
            etcd.endpoint,
            "--prefix",
            prefix,
            "--manager-id",
            manager_id,
            "--state-dir",
            str(node_dir / "state"),
            "--ca-key-file",
            str(kek_file),
            "--admin-dir",
            str(node_dir / "admin"),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "OVNET_CA_PASSPHRASE"},
    )


def init_manager(
    tmp: Path, etcd: EtcdHandle, prefix: str, name: str = "m0", *extra: str
) -> ManagerNode:
    node_dir = tmp / name
    port = free_port()
    addr = f"127.0.0.1:{port}"
    kek = node_dir / "ca.kek"
    res = run_init(node_dir, etcd, prefix, addr, name, kek, *extra)
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(": ", 1) for line in res.stdout.strip().splitlines())
    admin_dir = node_dir / "admin"
    admin = Creds(
        (admin_dir / "ca.pem").read_bytes(),
        (admin_dir / "admin.crt").read_bytes(),
        (admin_dir / "admin.key").read_bytes(),
    )
    return ManagerNode(
        tmp=node_dir,
        etcd=etcd,
        prefix=prefix,
        addr=addr,
        join_addr=f"127.0.0.1:{free_port()}",
        manager_id=name,
        kek_file=kek,
        state_dir=node_dir / "state",
        admin=admin,
        worker_token=lines["worker token"],
        manager_token=lines["manager token"],
    )


def start(node: ManagerNode, spawn: ProcessSpawner, *extra: str) -> ManagerNode:
    """Start the manager and wait until it leads and has made what a new leader makes (the
    default ingress network), so that tests comparing etcd before and after see only their own
    writes."""
    node.proc = spawn(node.argv(*extra), name=node.manager_id, port=int(node.addr.rsplit(":")[1]))
    node.wait_leader()
    deadline = time.monotonic() + 15
    while True:
        try:
            node.control().ListNetworks(cpb.ListNetworksRequest(), timeout=2)
            return node
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class EtcdView:
    def __init__(self, etcd: EtcdHandle) -> None:
        self.channel = grpc.insecure_channel(etcd.endpoint)
        self.kv = rpc.KVStub(self.channel)

    def dump(self, prefix: str) -> dict[bytes, tuple[int, bytes]]:
        p = prefix.encode()
        resp = self.kv.Range(rpc.RangeRequest(key=p, range_end=prefix_range_end(p)))
        return {kv.key: (kv.mod_revision, kv.value) for kv in resp.kvs}

    def get(self, key: str) -> bytes | None:
        resp = self.kv.Range(rpc.RangeRequest(key=key.encode()))
        return bytes(resp.kvs[0].value) if resp.kvs else None


@pytest.fixture
def view(etcd: EtcdHandle) -> Iterator[EtcdView]:
    v = EtcdView(etcd)
    try:
        yield v
    finally:
        v.channel.close()


@pytest.fixture
def cluster(etcd: EtcdHandle, spawn_process: ProcessSpawner, tmp_path: Path) -> ManagerNode:
    node = init_manager(tmp_path, etcd, etcd.prefix.rstrip("/"))
    return start(node, spawn_process)


def root_and_key(node: ManagerNode, view: EtcdView) -> tuple[Any, pki.PrivateKey]:
    """What an attacker with etcd and the KEK could do, to make test certificates."""
    raw = view.get(f"{node.prefix}/ca/root")
    assert raw is not None
    msg = ca_pb2.RootCA()
    msg.ParseFromString(raw)
    root = pki.load_cert(msg.certificate)
    return root, pki.decrypt_key(msg.key, node.kek_file.read_bytes().strip())


def make_creds(root: Any, root_key: pki.PrivateKey, role: str, node_id: str, **kw: Any) -> Creds:
    key = pki.new_key()
    now = kw.pop("now", pki.utcnow())
    cert = pki.issue(root, root_key, pki.make_csr(key), node_id=node_id, role=role, now=now, **kw)
    return Creds(pki.cert_pem(root), pki.cert_pem(cert), pki.key_pem(key))


def join(node: ManagerNode, token: str) -> NodeCredentials:
    return asyncio.run(node_join.join(node.join_addr, token, timeout=10))


def creds_of(nc: NodeCredentials) -> Creds:
    return Creds(nc.root_pem, nc.cert_pem, nc.key_pem)


def create_network(stub: Any, name: str = "net1") -> Any:
    return stub.CreateNetwork(cpb.CreateNetworkRequest(spec=pb.NetworkSpec(name=name)), timeout=10)


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# ------------------------------------------------------------------------------ control listener


def test_no_client_certificate_is_refused_in_the_handshake(
    cluster: ManagerNode, view: EtcdView
) -> None:
    before = view.dump(cluster.prefix + "/objects/")
    anon = grpc.secure_channel(
        cluster.addr, grpc.ssl_channel_credentials(cluster.admin.root), options=OPTIONS
    )
    err = refused(lambda: create_network(control_pb2_grpc.ControlStub(anon)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert view.dump(cluster.prefix + "/objects/") == before
    # The join listener talks TLS without client certificates, and says why it will not serve.
    join_ch = grpc.secure_channel(
        cluster.join_addr, grpc.ssl_channel_credentials(cluster.admin.root), options=OPTIONS
    )
    err = refused(lambda: create_network(control_pb2_grpc.ControlStub(join_ch)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no client certificate" in (err.details() or "")
    assert "join listener" in (err.details() or "")
    assert view.dump(cluster.prefix + "/objects/") == before


def test_self_signed_certificate_is_refused(cluster: ManagerNode, view: EtcdView) -> None:
    before = view.dump(cluster.prefix + "/objects/")
    fake_root, fake_key = pki.new_root("not-this-cluster", pki.utcnow())
    fake = make_creds(fake_root, fake_key, pki.ROLE_ADMIN, "admin-evil")
    # Trust the real root for the server, present the fake admin certificate.
    fake.root = cluster.admin.root
    err = refused(lambda: create_network(cluster.control(fake)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert view.dump(cluster.prefix + "/objects/") == before


def test_worker_certificate_may_not_call_control(cluster: ManagerNode, view: EtcdView) -> None:
    worker = creds_of(join(cluster, cluster.worker_token))
    before = view.dump(cluster.prefix + "/objects/")
    err = refused(lambda: create_network(cluster.control(worker)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == (
        "a worker certificate may not call Control.CreateNetwork (allowed: admin, manager)"
    )
    err = refused(
        lambda: cluster.control(worker).GetJoinToken(
            cpb.GetJoinTokenRequest(role="manager"), timeout=10
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert view.dump(cluster.prefix + "/objects/") == before


def test_expired_certificate_is_refused(cluster: ManagerNode, view: EtcdView) -> None:
    root, root_key = root_and_key(cluster, view)
    past = pki.utcnow() - dt.timedelta(hours=2)
    expired = make_creds(
        root, root_key, pki.ROLE_ADMIN, "admin-old", now=past, lifetime=dt.timedelta(minutes=1)
    )
    assert pki.info(pki.load_cert(expired.cert)).not_after < pki.utcnow()
    before = view.dump(cluster.prefix + "/objects/")
    err = refused(lambda: create_network(cluster.control(expired)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert view.dump(cluster.prefix + "/objects/") == before
    # The same identity with a valid certificate is served: the expiry was the reason.
    valid = make_creds(root, root_key, pki.ROLE_ADMIN, "admin-old")
    create_network(cluster.control(valid))


def test_removed_nodes_certificate_is_refused(cluster: ManagerNode, view: EtcdView) -> None:
    nc = join(cluster, cluster.worker_token)
    worker = creds_of(nc)
    disp = dispatcher_pb2_grpc.DispatcherStub(worker.channel(cluster.addr))
    desc = pb.NodeDescription(hostname="w1", addr="127.0.0.1")
    # An empty node ID is the certificate's; another node's ID is refused.
    resp = disp.Register(dpb.RegisterRequest(description=desc), timeout=10)
    assert resp.node_id == nc.node_id
    err = refused(
        lambda: disp.Register(dpb.RegisterRequest(node_id="someone-else", description=desc))
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    cluster.control().RemoveNode(cpb.RemoveNodeRequest(node_ref=nc.node_id, force=True), timeout=10)
    assert view.get(f"{cluster.prefix}/ca/removed/{nc.node_id}") is not None
    assert view.get(f"{cluster.prefix}/objects/nodes/{nc.node_id}") is None
    err = refused(lambda: disp.Register(dpb.RegisterRequest(description=desc), timeout=10))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (
        err.details() == f"node {nc.node_id} was removed from the cluster: join again with a token"
    )
    # ... and it is not registered again.
    assert view.get(f"{cluster.prefix}/objects/nodes/{nc.node_id}") is None
    # Renewing would extend the removed identity: refused too.
    renew = ca_pb2_grpc.NodeCAStub(worker.channel(cluster.addr))
    err = refused(
        lambda: renew.RenewNodeCertificate(
            ca_pb2.RenewNodeCertificateRequest(csr=pki.make_csr(pki.new_key())), timeout=10
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_admin_certificate_works(cluster: ManagerNode, view: EtcdView) -> None:
    net = create_network(cluster.control()).network
    assert view.get(f"{cluster.prefix}/objects/networks/{net.meta.id}") is not None
    info = cluster.control().GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=10)
    assert info.leader_id == cluster.manager_id


def test_worker_renews_its_certificate(cluster: ManagerNode) -> None:
    nc = join(cluster, cluster.worker_token)
    channel = grpc.aio.secure_channel  # the agent's renewal runs over its own mTLS channel

    async def renew() -> NodeCredentials:
        async with channel(cluster.addr, nc.channel_credentials(), options=OPTIONS) as ch:
            return await node_join.renew(ch, nc)

    new = asyncio.run(renew())
    assert (new.node_id, new.role) == (nc.node_id, pki.ROLE_WORKER)
    assert new.info.serial != nc.info.serial


# ------------------------------------------------------------------------------ joining


def test_join_with_the_right_token_works(cluster: ManagerNode) -> None:
    nc = join(cluster, cluster.worker_token)
    assert nc.role == pki.ROLE_WORKER
    assert pki.digest(nc.root) == tokens.parse(cluster.worker_token).ca_digest
    pki.check(nc.cert, nc.root, pki.utcnow())
    mgr = join(cluster, cluster.manager_token)
    assert mgr.role == pki.ROLE_MANAGER
    assert mgr.node_id != nc.node_id


def test_join_with_a_malformed_token_fails_clearly(cluster: ManagerNode) -> None:
    bad = cluster.worker_token[:-5]
    with pytest.raises(node_join.JoinError, match="secret is malformed"):
        join(cluster, bad)
    # The manager says the same to a client that does not check first.
    stub = ca_pb2_grpc.NodeCAStub(
        grpc.secure_channel(
            cluster.join_addr, grpc.ssl_channel_credentials(cluster.admin.root), options=OPTIONS
        )
    )
    err = refused(
        lambda: stub.IssueNodeCertificate(
            ca_pb2.IssueNodeCertificateRequest(token=bad, csr=pki.make_csr(pki.new_key())),
            timeout=10,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "secret is malformed" in (err.details() or "")


def test_join_with_a_wrong_secret_fails_clearly(cluster: ManagerNode) -> None:
    tok = tokens.parse(cluster.worker_token)
    wrong = str(tokens.new_token(tok.ca_digest))
    with pytest.raises(node_join.JoinError) as info:
        join(cluster, wrong)
    assert "the join token is not valid for this cluster (rotated, or mistyped)" in str(info.value)


def test_join_with_a_rotated_away_token_fails(cluster: ManagerNode) -> None:
    old = cluster.worker_token
    got = cluster.control().GetJoinToken(cpb.GetJoinTokenRequest(role="worker"), timeout=10)
    assert got.token == old
    rotated = cluster.control().GetJoinToken(
        cpb.GetJoinTokenRequest(role="worker", rotate=True), timeout=10
    )
    assert rotated.token != old
    with pytest.raises(node_join.JoinError, match="rotated, or mistyped"):
        join(cluster, old)
    assert join(cluster, rotated.token).role == pki.ROLE_WORKER
    # The manager token was not touched.
    assert join(cluster, cluster.manager_token).role == pki.ROLE_MANAGER
    err = refused(
        lambda: cluster.control().GetJoinToken(cpb.GetJoinTokenRequest(role="admin"), timeout=10)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_join_against_another_clusters_manager_fails(
    cluster: ManagerNode, etcd: EtcdHandle, spawn_process: ProcessSpawner, tmp_path: Path
) -> None:
    other = start(
        init_manager(tmp_path / "other", etcd, etcd.prefix.rstrip("/") + "-other"), spawn_process
    )
    with pytest.raises(node_join.JoinError, match="a different cluster"):
        join(other, cluster.worker_token)
    # A client that skips the digest check is told by the manager, with both digests.
    stub = ca_pb2_grpc.NodeCAStub(
        grpc.secure_channel(
            other.join_addr, grpc.ssl_channel_credentials(other.admin.root), options=OPTIONS
        )
    )
    err = refused(
        lambda: stub.IssueNodeCertificate(
            ca_pb2.IssueNodeCertificateRequest(
                token=cluster.worker_token, csr=pki.make_csr(pki.new_key())
            ),
            timeout=10,
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    mine = tokens.b32(tokens.parse(cluster.worker_token).ca_digest)
    theirs = tokens.b32(tokens.parse(other.worker_token).ca_digest)
    assert mine in (err.details() or "") and theirs in (err.details() or "")
    # Each cluster still admits its own.
    assert join(other, other.worker_token).role == pki.ROLE_WORKER


# ------------------------------------------------------------------------------ managers


def test_second_manager_joins_with_a_token_and_forwards_to_the_leader(
    cluster: ManagerNode, spawn_process: ProcessSpawner, tmp_path: Path
) -> None:
    port = free_port()
    second = ManagerNode(
        **{
            **cluster.__dict__,
            "addr": f"127.0.0.1:{port}",
            "join_addr": f"127.0.0.1:{free_port()}",
            "manager_id": "m1",
            "state_dir": tmp_path / "m1-state",
            "proc": None,
        }
    )
    second.proc = spawn_process(
        second.argv("--join-token", cluster.manager_token, "--join", cluster.join_addr),
        name="m1",
        port=port,
    )
    assert second.wait_leader() == cluster.manager_id
    creds = NodeCredentials.load(second.state_dir / "tls")
    assert creds is not None and creds.role == pki.ROLE_MANAGER
    # A Control call on the follower reaches the leader over mTLS with the follower's cert.
    net = create_network(second.control()).network
    got = cluster.control().GetNetwork(cpb.GetNetworkRequest(network_ref=net.meta.id), timeout=10)
    assert got.network.spec.name == "net1"


def test_manager_renews_its_own_certificate(
    etcd: EtcdHandle, spawn_process: ProcessSpawner, tmp_path: Path
) -> None:
    expiry = ("--cert-expiry", "6")
    node = start(
        init_manager(tmp_path, etcd, etcd.prefix.rstrip("/"), "m0", *expiry), spawn_process, *expiry
    )
    tls_dir = node.state_dir / "tls"
    first = pki.info(pki.load_cert((tls_dir / "node.crt").read_bytes()))
    stub = node.control()
    deadline = time.monotonic() + 20
    serials = {first.serial}
    while time.monotonic() < deadline and len(serials) < 3:
        stub.GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=5)  # never fails meanwhile
        serials.add(pki.info(pki.load_cert((tls_dir / "node.crt").read_bytes())).serial)
        time.sleep(0.2)
    assert len(serials) >= 3, "the manager did not renew its 6 s certificate twice in 20 s"
    # New connections get the renewed certificate (the first one has expired by now).
    time.sleep(1)
    fresh = node.control()
    fresh.GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=5)
    assert first.not_after < pki.utcnow()


# ------------------------------------------------------------------------------ operator errors


def test_kek_file_readable_by_others_is_refused(
    etcd: EtcdHandle, spawn_process: ProcessSpawner, tmp_path: Path
) -> None:
    node = init_manager(tmp_path, etcd, etcd.prefix.rstrip("/"))
    assert node.kek_file.stat().st_mode & 0o777 == 0o600
    node.kek_file.chmod(0o644)
    proc = spawn_process(node.argv(), name="m0")
    assert proc.wait(30) == 1
    log = proc.log_tail()
    assert f"the CA key-encryption key {node.kek_file} has mode 0644" in log
    assert "chmod 600" in log


def test_init_twice_fails(etcd: EtcdHandle, tmp_path: Path) -> None:
    node = init_manager(tmp_path, etcd, etcd.prefix.rstrip("/"))
    res = run_init(tmp_path / "again", etcd, node.prefix, node.addr, "m9", node.kek_file)
    assert res.returncode == 1
    assert "already initialized" in res.stderr
    assert "Traceback" not in res.stderr


def test_serve_without_init_fails(
    etcd: EtcdHandle, spawn_process: ProcessSpawner, tmp_path: Path
) -> None:
    kek = tmp_path / "ca.kek"
    kek.write_text("secret\n")
    kek.chmod(0o600)
    port = free_port()
    proc = spawn_process(
        [
            *MANAGER,
            "--listen",
            f"127.0.0.1:{port}",
            "--join-listen",
            f"127.0.0.1:{free_port()}",
            "--etcd",
            etcd.endpoint,
            "--prefix",
            etcd.prefix.rstrip("/"),
            "--state-dir",
            str(tmp_path / "state"),
            "--ca-key-file",
            str(kek),
        ],
        name="uninit",
    )
    assert proc.wait(30) == 1
    assert "cluster not initialized" in proc.log_tail()
