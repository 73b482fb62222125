"""Joining, renewal and the agent's mTLS session against real gRPC servers over real TLS.

The servers here are small stand-ins written in the test (NodeCA and Dispatcher over the
cluster's TLS layout: a join listener without client certificates that presents
[manager cert, root], and a control listener that requires a client certificate), signing with
security.pki. They let the agent's side be tested without etcd or a manager process: the
digest check before anything is sent, the refusals a person must understand, renewal over the
node's own channel, and the session reconnecting with its renewed certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.session import AgentSession
from proto import ca_pb2, ca_pb2_grpc, dispatcher_pb2_grpc
from proto import control_pb2 as cpb
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb
from security import join as node_join
from security import pki, tokens
from security.credentials import CREDS_DIRNAME, MANAGER_CHANNEL_OPTIONS, NodeCredentials
from tests.integration.agents import AgentPool
from tests.integration.conftest import ManagerCluster
from tests.support.etcd import EtcdHandle
from tests.support.procs import ProcessSpawner
from tests.support.wait import await_for, wait_for

CLUSTER = "cluster-test"


class TestCA:
    """A cluster root, a manager certificate for the listeners, and the current worker token."""

    __test__ = False

    def __init__(self, lifetime: dt.timedelta = dt.timedelta(hours=1)) -> None:
        now = pki.utcnow()
        self.root, self.root_key = pki.new_root(CLUSTER, now)
        self.root_pem = pki.cert_pem(self.root)
        self.lifetime = lifetime
        mkey = pki.new_key()
        mcert = pki.issue(
            self.root, self.root_key, pki.make_csr(mkey), node_id="m0", role="manager", now=now
        )
        self.manager_key_pem = pki.key_pem(mkey)
        self.manager_chain = pki.cert_pem(mcert) + self.root_pem
        self.token = tokens.new_token(pki.digest(self.root))
        self.issued: list[pki.CertInfo] = []
        # Set by a test: the status and message IssueNodeCertificate answers with.
        self.refuse: tuple[grpc.StatusCode, str] | None = None

    def issue(self, csr: bytes, node_id: str, role: str) -> bytes:
        cert = pki.issue(
            self.root,
            self.root_key,
            csr,
            node_id=node_id,
            role=role,
            now=pki.utcnow(),
            lifetime=self.lifetime,
        )
        self.issued.append(pki.info(cert))
        return pki.cert_pem(cert)

    def peer(self, context: grpc.aio.ServicerContext) -> pki.CertInfo:
        pem = context.auth_context()["x509_pem_cert"][0]
        return pki.check(pki.load_cert(pem), self.root, pki.utcnow())


class NodeCA(ca_pb2_grpc.NodeCAServicer):
    def __init__(self, ca: TestCA) -> None:
        self.ca = ca

    async def IssueNodeCertificate(
        self, request: ca_pb2.IssueNodeCertificateRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.IssueNodeCertificateResponse:
        if self.ca.refuse is not None:
            await context.abort(*self.ca.refuse)
        tok = tokens.parse(request.token)
        if not tokens.same_secret(tok, self.ca.token):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "the join token is not valid for this cluster (rotated, or mistyped)",
            )
        node_id = f"node{len(self.ca.issued)}"
        cert = self.ca.issue(request.csr, node_id, pki.ROLE_WORKER)
        return ca_pb2.IssueNodeCertificateResponse(
            node_id=node_id, role=pki.ROLE_WORKER, certificate=cert, root_ca=self.ca.root_pem
        )

    async def RenewNodeCertificate(
        self, request: ca_pb2.RenewNodeCertificateRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.RenewNodeCertificateResponse:
        peer = self.ca.peer(context)
        cert = self.ca.issue(request.csr, peer.node_id, peer.role)
        return ca_pb2.RenewNodeCertificateResponse(certificate=cert, root_ca=self.ca.root_pem)


class Dispatcher(dispatcher_pb2_grpc.DispatcherServicer):
    """Registers anyone; each session gets an empty COMPLETE set and stays open. Records the
    serial of the client certificate every session was opened with."""

    def __init__(self, ca: TestCA) -> None:
        self.ca = ca
        self.session_serials: list[int] = []
        self.registers = 0
        self.register_times: list[float] = []
        self.refuse: tuple[grpc.StatusCode, str] | None = None

    async def Register(
        self, request: dpb.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> dpb.RegisterResponse:
        self.registers += 1
        self.register_times.append(asyncio.get_running_loop().time())
        if self.refuse is not None:
            await context.abort(*self.refuse)
        return dpb.RegisterResponse(node_id=self.ca.peer(context).node_id)

    async def Session(
        self, request: dpb.SessionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dpb.SessionMessage]:
        self.session_serials.append(self.ca.peer(context).serial)
        yield dpb.SessionMessage(
            session_id=f"s{len(self.session_serials)}",
            node_id=request.node_id,
            heartbeat_period_ms=1000,
            assignments=dpb.AssignmentsMessage(type=dpb.ASSIGNMENTS_TYPE_COMPLETE),
        )
        await asyncio.Event().wait()

    async def Heartbeat(
        self, request: dpb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> dpb.HeartbeatResponse:
        return dpb.HeartbeatResponse(period_ms=1000)


@asynccontextmanager
async def listeners(ca: TestCA) -> AsyncIterator[tuple[str, str, Dispatcher]]:
    """(control address, join address, dispatcher servicer)."""
    control = grpc.aio.server()
    ca_pb2_grpc.add_NodeCAServicer_to_server(NodeCA(ca), control)
    dispatcher = Dispatcher(ca)
    dispatcher_pb2_grpc.add_DispatcherServicer_to_server(dispatcher, control)
    cport = control.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(ca.manager_key_pem, ca.manager_chain)],
            root_certificates=ca.root_pem,
            require_client_auth=True,
        ),
    )
    join = grpc.aio.server()
    ca_pb2_grpc.add_NodeCAServicer_to_server(NodeCA(ca), join)
    jport = join.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(ca.manager_key_pem, ca.manager_chain)])
    )
    await control.start()
    await join.start()
    try:
        yield f"127.0.0.1:{cport}", f"127.0.0.1:{jport}", dispatcher
    finally:
        await control.stop(None)
        await join.stop(None)


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_fetch_root_reads_the_unverified_root_from_the_join_listener() -> None:
    ca = TestCA()

    async def go() -> None:
        async with listeners(ca) as (_, join_addr, _d):
            root = await node_join.fetch_root(join_addr, 5)
            assert pki.digest(root) == pki.digest(ca.root)

    run(go())


def test_join_with_the_right_token_gives_a_working_identity(tmp_path: Path) -> None:
    ca = TestCA()

    async def go() -> None:
        async with listeners(ca) as (control, join_addr, _d):
            creds = await node_join.join(join_addr, str(ca.token))
            assert creds.node_id == "node0" and creds.role == pki.ROLE_WORKER
            assert creds.root_pem == ca.root_pem
            pki.check(creds.cert, ca.root, pki.utcnow())
            creds.save(tmp_path / "tls")
            assert NodeCredentials.load(tmp_path / "tls") == creds
            # The identity works on the control listener: it renews there.
            async with grpc.aio.secure_channel(
                control, creds.channel_credentials(), options=MANAGER_CHANNEL_OPTIONS
            ) as ch:
                new = await node_join.renew(ch, creds)
            assert (new.node_id, new.role) == (creds.node_id, creds.role)
            assert new.info.serial != creds.info.serial and new.key_pem != creds.key_pem
            pki.check(new.cert, ca.root, pki.utcnow())

    run(go())


def test_join_against_another_ca_fails_before_sending_the_token() -> None:
    ca = TestCA()
    other_root, _ = pki.new_root("another", pki.utcnow())
    token = tokens.new_token(pki.digest(other_root))

    async def go() -> None:
        async with listeners(ca) as (_, join_addr, _d):
            with pytest.raises(node_join.JoinError) as e:
                await node_join.join(join_addr, str(token))
            msg = str(e.value)
            assert (
                f"the manager at {join_addr} presents CA "
                f"sha256:{tokens.b32(pki.digest(ca.root))}, but the join token expects "
                f"sha256:{tokens.b32(pki.digest(other_root))}: a different cluster, "
                "or someone in between"
            ) == msg
        assert ca.issued == []

    run(go())


def test_join_with_a_wrong_or_rotated_token_says_so() -> None:
    ca = TestCA()
    stale = tokens.new_token(pki.digest(ca.root))  # right CA, secret not (or no longer) current

    async def go() -> None:
        async with listeners(ca) as (_, join_addr, _d):
            with pytest.raises(
                node_join.JoinError,
                match=r"refused the join token: the join token is "
                r"not valid .*`ovctl cluster join-token worker`",
            ):
                await node_join.join(join_addr, str(stale))
        assert ca.issued == []

    run(go())


def test_join_passes_on_the_managers_reason() -> None:
    ca = TestCA()
    ca.refuse = (grpc.StatusCode.FAILED_PRECONDITION, "the cluster is not initialized yet")

    async def go() -> None:
        async with listeners(ca) as (_, join_addr, _d):
            with pytest.raises(node_join.JoinError, match="the cluster is not initialized yet"):
                await node_join.join(join_addr, str(ca.token))

    run(go())


def test_join_with_a_malformed_token_fails_without_the_network() -> None:
    with pytest.raises(node_join.JoinError, match="CA digest is malformed"):
        run(node_join.join(closed_port(), "OVNTKN-1-abc-" + "a" * 32))


def test_join_when_nobody_listens_is_retryable() -> None:
    ca = TestCA()
    with pytest.raises(node_join.ManagerUnreachable, match="no manager answers"):
        run(node_join.join(closed_port(), str(ca.token), timeout=2))


def test_session_renews_its_certificate_and_reconnects_with_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Certificates live 3 s (renewed after about 1.4-2.4 s): the session must renew twice, and
    # reconnect each time, to outlive the first by a second.
    ca = TestCA(lifetime=dt.timedelta(seconds=3))

    async def go() -> None:
        async with listeners(ca) as (control, join_addr, dispatcher):
            creds = await node_join.join(join_addr, str(ca.token))
            creds_dir = tmp_path / "tls"
            creds.save(creds_dir)
            session = AgentSession(
                [control],
                pb.NodeDescription(hostname="h"),
                credentials=creds,
                creds_dir=creds_dir,
                state_dir=tmp_path,
                backoff_max=0.5,
            )
            task = asyncio.create_task(session.run())
            try:
                # Outlive the first certificate by a second.
                await await_for(
                    "the first certificate to expire",
                    lambda: pki.utcnow() > creds.not_after + dt.timedelta(seconds=1),
                    10,
                )
                await await_for("reconnects", lambda: len(set(dispatcher.session_serials)) >= 3, 5)
                await asyncio.wait_for(session.connected.wait(), 5)
                assert session.renewals >= 2
                assert session.node_id == creds.node_id
                pki.check(session.credentials.cert, ca.root, pki.utcnow())
                saved = NodeCredentials.load(creds_dir)
                assert saved is not None and saved.info.serial == session.credentials.info.serial
                assert dispatcher.session_serials[-1] == session.credentials.info.serial
                assert (tmp_path / "node_id").read_text().strip() == creds.node_id
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="agent.session"):
        run(go())
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("reconnecting to" in m for m in msgs) >= 2, msgs
    assert not [m for m in msgs if "renewal failed" in m or "session with" in m], msgs


def test_session_says_why_an_expired_certificate_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = TestCA()
    key = pki.new_key()
    past = pki.utcnow() - dt.timedelta(hours=2)
    cert = pki.issue(
        ca.root,
        ca.root_key,
        pki.make_csr(key),
        node_id="old",
        role="worker",
        now=past,
        lifetime=dt.timedelta(hours=1),
    )
    creds = NodeCredentials(ca.root_pem, pki.cert_pem(cert), pki.key_pem(key))

    async def go() -> None:
        async with listeners(ca) as (control, _, dispatcher):
            session = AgentSession(
                [control], pb.NodeDescription(hostname="h"), credentials=creds, backoff_max=0.2
            )
            task = asyncio.create_task(session.run())
            try:
                await await_for("refused attempts", lambda: session.failed_attempts >= 2, 10)
                assert not session.connected.is_set() and dispatcher.registers == 0
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="agent.session"):
        run(go())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        f"this node's certificate expired at {creds.not_after.isoformat()}" in m for m in errors
    ), errors
    assert len(errors) == 1  # said once, not on every attempt


def test_removed_node_is_told_and_retries_slowly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = TestCA()

    async def go() -> None:
        async with listeners(ca) as (control, join_addr, dispatcher):
            creds = await node_join.join(join_addr, str(ca.token))
            dispatcher.refuse = (
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {creds.node_id} was removed from the cluster: join again with a token",
            )
            session = AgentSession(
                [control], pb.NodeDescription(hostname="h"), credentials=creds, backoff_max=1.0
            )
            task = asyncio.create_task(session.run())
            try:
                await await_for("three attempts", lambda: dispatcher.registers >= 3, 10)
                # Every retry waits the maximum backoff (0.5-1.5 s), not 0.1 s doubling.
                t = dispatcher.register_times
                gaps = [b - a for a, b in itertools.pairwise(t)]
                assert min(gaps) >= 0.45, gaps
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="agent.session"):
        run(go())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and "was removed from the cluster" in errors[0]
    assert "must join again" in errors[0] and "--join-token" in errors[0]


# ------------------------------------------------------------------ main's join, and a real manager


def test_agent_keeps_trying_to_join_until_a_join_listener_answers(tmp_path: Path) -> None:
    from agent.main import credentials

    ca = TestCA()
    addr = closed_port()
    creds_dir = tmp_path / "tls"

    async def go() -> None:
        joining = asyncio.create_task(credentials(creds_dir, str(ca.token), [addr], retry_max=0.3))
        await asyncio.sleep(1.0)
        assert not joining.done()  # nobody listens: it waits, it does not give up
        server = grpc.aio.server()
        ca_pb2_grpc.add_NodeCAServicer_to_server(NodeCA(ca), server)
        server.add_secure_port(
            addr, grpc.ssl_server_credentials([(ca.manager_key_pem, ca.manager_chain)])
        )
        await server.start()
        try:
            creds = await asyncio.wait_for(joining, 10)
        finally:
            await server.stop(None)
        assert creds.node_id == "node0"
        assert NodeCredentials.load(creds_dir) == creds
        # Started again, it uses what it saved (no server, no token needed).
        assert await credentials(creds_dir, "", [addr]) == creds

    run(go())


def agent_main(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`ovnet-agent` up to its join (it exits before touching the kernel when that fails)."""
    argv = [
        sys.executable, "-m", "agent.main", "--state-dir", str(tmp_path / "agent"),
        "--addr", "127.0.0.1", "--underlay-mtu", "1500", *args,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OVNET_JOIN_TOKEN"}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
    )


def test_agent_exits_2_saying_why_it_cannot_join(managers: ManagerCluster, tmp_path: Path) -> None:
    base = ["--manager", managers.addrs[0], "--join-addr", managers.join_addrs[0]]
    res = agent_main(tmp_path, *base)
    assert res.returncode == 2, res.stderr
    assert "has no certificate" in res.stderr and "--join-token" in res.stderr

    digest = tokens.parse(managers.worker_token).ca_digest
    res = agent_main(tmp_path, *base, "--join-token", str(tokens.new_token(digest)))
    assert res.returncode == 2, res.stderr
    assert "refused the join token: the join token is not valid" in res.stderr

    other_root, _ = pki.new_root("another", pki.utcnow())
    res = agent_main(tmp_path, *base, "--join-token", str(tokens.new_token(pki.digest(other_root))))
    assert res.returncode == 2, res.stderr
    assert "a different cluster, or someone in between" in res.stderr

    res = agent_main(tmp_path, *base, "--join-token", "OVNTKN-1-nonsense")
    assert res.returncode == 2 and "not a join token" in res.stderr, res.stderr
    assert not (tmp_path / "agent" / CREDS_DIRNAME).exists()


def test_agents_join_a_real_manager_and_stay_up_across_renewals(
    etcd: EtcdHandle, spawn_process: ProcessSpawner
) -> None:
    # Certificates of 6 s: each agent renews at 3-4.8 s and reconnects with the new one.
    m = ManagerCluster(etcd, spawn_process, **{"cert-expiry": "6"})
    m.add()
    m.wait_leader()
    pool = AgentPool(join_token=m.worker_token, join_addr=m.join_addrs[0])
    try:
        hosts = [pool.add(m.addrs, f"h{i}") for i in range(2)]
        first = {h.node_id: h.credentials for h in hosts}

        def ready() -> bool:
            nodes = m.stub().ListNodes(cpb.ListNodesRequest(), timeout=10).nodes
            up = {n.meta.id for n in nodes if n.status.state == pb.NODE_STATE_READY}
            return set(first) <= up

        wait_for("both nodes ready", ready)
        for h in hosts:
            assert h.node_id == h.credentials.node_id and h.credentials.role == pki.ROLE_WORKER
        last = max(c.not_after for c in first.values())
        wait_for("expiry", lambda: pki.utcnow() > last + dt.timedelta(seconds=1), timeout=20)
        wait_for("sessions", lambda: all(h.session.connected.is_set() for h in hosts))
        assert ready()
        for h in hosts:
            assert h.session.renewals >= 1
            assert h.credentials.info.serial != first[h.node_id].info.serial
            assert h.credentials.not_after > pki.utcnow()
    finally:
        pool.close()
        m.close()
