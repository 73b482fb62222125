"""Real managers against a real etcd, driven through `ovctl` subprocesses and gRPC.

`managers` starts one manager process on the shared etcd under the test's own key prefix;
`ManagerCluster.add()` starts more. `dump()` reads every key under the prefix straight from etcd
(key -> (mod revision, value)), which is how tests prove that a refused request wrote nothing.

The cluster is bootstrapped as a real one: the first `add()` runs `ovnet-manager init` (CA,
the first manager's certificate, admin credentials, join tokens); every manager has its own
state dir and shares the CA key-encryption key file, so the later ones issue their own
certificates. `stub()` and `ovctl()` use the admin credentials, agents join with
`worker_token` (or `join()` returns a worker's credentials directly). Each manager's join
listener is on its port + 1, the default agents assume.

`bare_agents` holds the bare Dispatcher clients (no agent code) a test adds and closes them.

The `agents` fixture's pool joins every agent it adds with the worker token of the cluster
whose manager it is given (found by address), so tests add agents as before.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from aetcd import rpc

from manager.store.etcd import prefix_range_end
from ovctl.devcluster.procs import ManagedProcess, free_port_pair
from proto import control_pb2 as cpb
from proto import control_pb2_grpc
from security.credentials import MANAGER_CHANNEL_OPTIONS, NodeCredentials
from security.join import join
from tests.integration.agents import AgentPool, ScriptedAgent
from tests.integration.bare_agent import BareAgent
from tests.support.etcd import EtcdHandle
from tests.support.procs import ProcessSpawner
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
OVCTL = [sys.executable, "-m", "ovctl"]

pytestmark = pytest.mark.integration

# Flags `ovnet-manager init` takes besides the ones every manager gets.
INIT_FLAGS = ("cert-expiry",)
_clusters = itertools.count()


class ManagerCluster:
    # Manager address -> its cluster, for the `agents` fixture (one entry per live manager).
    by_addr: dict[str, ManagerCluster] = {}

    def __init__(self, etcd: EtcdHandle, spawn: ProcessSpawner, **flags: str) -> None:
        self.etcd = etcd
        self.spawn = spawn
        self.flags = {"heartbeat-period": "0.5", "election-ttl": "2", **flags}
        self.procs: list[ManagedProcess] = []
        self.addrs: list[str] = []
        self.join_addrs: list[str] = []
        self.tokens: dict[str, str] = {}
        # Beside the logs, in the test's tmp_path: state dirs, the KEK, admin credentials.
        self.dir = spawn.log_dir.parent / f"managers-{next(_clusters)}"
        self.dir.mkdir(parents=True, mode=0o700)
        self.admin_dir = self.dir / "admin"
        self.kek_file = self.dir / "ca.kek"
        self.context_file = self.dir / "context.yaml"
        self._etcd_channel = grpc.insecure_channel(etcd.endpoint)
        self.kv = rpc.KVStub(self._etcd_channel)
        self._channels: dict[str, grpc.Channel] = {}

    def _common_flags(self, i: int, addr: str) -> list[str]:
        return [
            "--listen",
            addr,
            "--etcd",
            self.etcd.endpoint,
            "--prefix",
            self.etcd.prefix.rstrip("/"),
            "--manager-id",
            f"m{i}",
            "--state-dir",
            str(self.dir / f"m{i}"),
            "--ca-key-file",
            str(self.kek_file),
        ]

    def init(self, addr: str) -> None:
        """`ovnet-manager init` for the first manager (at `addr`): the cluster's CA, its
        certificate, the admin credentials and the join tokens."""
        argv = [
            sys.executable,
            "-m",
            "manager.main",
            "init",
            *self._common_flags(0, addr),
            "--admin-dir",
            str(self.admin_dir),
        ]
        for k in INIT_FLAGS:
            if k in self.flags:
                argv += [f"--{k}", self.flags[k]]
        res = subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        if res.returncode != 0:
            raise AssertionError(
                f"manager init failed ({res.returncode}):\n{res.stdout}{res.stderr}"
            )
        for line in res.stdout.splitlines():
            role, sep, token = line.partition(" token: ")
            if sep:
                self.tokens[role.strip()] = token.strip()
        assert set(self.tokens) == {"worker", "manager"}, res.stdout
        ca, cert, key = (self.admin_dir / n for n in ("ca.pem", "admin.crt", "admin.key"))
        self.context_file.write_text(
            f"managers: [{addr}]\ntls:\n  ca: {ca}\n  cert: {cert}\n  key: {key}\n"
        )

    def add(self) -> ManagedProcess:
        """Start one more manager (the first one initializes the cluster)."""
        i = len(self.procs)
        port = free_port_pair()
        addr, join_addr = f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"
        if not self.tokens:
            self.init(addr)
        argv = [
            sys.executable,
            "-m",
            "manager.main",
            *self._common_flags(i, addr),
            "--join-listen",
            join_addr,
        ]
        for k, v in self.flags.items():
            argv += [f"--{k}", v]
        proc = self.spawn(argv, name=f"manager{i}", port=port)
        self.procs.append(proc)
        self.addrs.append(addr)
        self.join_addrs.append(join_addr)
        ManagerCluster.by_addr[addr] = self
        return proc

    @property
    def host_arg(self) -> str:
        return ",".join(self.addrs)

    @property
    def worker_token(self) -> str:
        return self.tokens["worker"]

    @property
    def manager_token(self) -> str:
        return self.tokens["manager"]

    @property
    def credentials(self) -> NodeCredentials:
        """The admin's credentials (what ovctl uses)."""
        return NodeCredentials(
            *((self.admin_dir / n).read_bytes() for n in ("ca.pem", "admin.crt", "admin.key"))
        )

    def channel(
        self, addr: str | None = None, credentials: NodeCredentials | None = None
    ) -> grpc.Channel:
        """A mutual-TLS channel to a manager (default: the first) with `credentials` (default:
        the admin's); the admin's channels are kept and closed with the cluster."""
        target = addr or self.addrs[0]
        if credentials is not None:
            return grpc.secure_channel(
                target, credentials.channel_credentials(), options=MANAGER_CHANNEL_OPTIONS
            )
        if target not in self._channels:
            self._channels[target] = grpc.secure_channel(
                target, self.credentials.channel_credentials(), options=MANAGER_CHANNEL_OPTIONS
            )
        return self._channels[target]

    def stub(self, addr: str | None = None) -> control_pb2_grpc.ControlStub:
        return control_pb2_grpc.ControlStub(self.channel(addr))

    def join(self, token: str | None = None, join_addr: str | None = None) -> NodeCredentials:
        """Join as a node (default: a worker, through the first manager's join listener)."""
        return asyncio.run(
            join(join_addr or self.join_addrs[0], token or self.worker_token, timeout=10)
        )

    def wait_leader(self, timeout: float = 15.0, addr: str | None = None) -> str:
        """Wait until the manager at `addr` (default: the first) knows a leader and a Control
        call through it is served (the elected leader may take a moment to start serving);
        return the leader's ID."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                stub = self.stub(addr)
                info = stub.GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=2)
                if info.leader_id:
                    stub.ListNetworks(cpb.ListNetworksRequest(), timeout=2)
                    return info.leader_id
            except grpc.RpcError as e:
                last = e
            time.sleep(0.05)
        raise AssertionError(f"no leader within {timeout}s (last error: {last})")

    def ovctl(
        self, *args: str, check: bool = True, host: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [*OVCTL, "--host", host or self.host_arg, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "OVCTL_CONFIG": str(self.context_file)},
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"ovctl {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
            )
        return res

    def ovctl_json(self, *args: str) -> Any:
        return json.loads(self.ovctl(*args, "--format", "json").stdout)

    def dump(self) -> dict[bytes, tuple[int, bytes]]:
        prefix = self.etcd.prefix.encode()
        resp = self.kv.Range(rpc.RangeRequest(key=prefix, range_end=prefix_range_end(prefix)))
        return {kv.key: (kv.mod_revision, kv.value) for kv in resp.kvs}

    def object_keys(self, kind: str) -> list[bytes]:
        marker = f"/objects/{kind}/".encode()
        return [k for k in self.dump() if marker in k]

    def close(self) -> None:
        for addr in self.addrs:
            ManagerCluster.by_addr.pop(addr, None)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._etcd_channel.close()


@pytest.fixture
def managers(etcd: EtcdHandle, spawn_process: ProcessSpawner) -> Iterator[ManagerCluster]:
    cluster = ManagerCluster(etcd, spawn_process)
    cluster.add()
    cluster.wait_leader()
    try:
        yield cluster
    finally:
        cluster.close()


class ClusterAgentPool(AgentPool):
    """An AgentPool whose agents join with the worker token of the cluster they are added to
    (unless given a token or credentials of their own), and are registered when `add` returns
    (`wait=False`: as soon as they hold a certificate; their node ID, its CN, is known then)."""

    def add(
        self, managers: list[str], hostname: str, *, wait: bool = True, **kw: Any
    ) -> ScriptedAgent:
        if not (kw.get("join_token") or kw.get("credentials") or self.join_token):
            cluster = _cluster_of(managers)
            kw["join_token"] = cluster.worker_token
            kw.setdefault("join_addr", cluster.join_addrs[cluster.addrs.index(managers[0])])
        agent = super().add(managers, hostname, **kw)
        if wait:
            wait_for(f"{hostname} registered", agent.session.connected.is_set)
        return agent


def _cluster_of(managers: Sequence[str]) -> ManagerCluster:
    for addr in managers:
        if addr in ManagerCluster.by_addr:
            return ManagerCluster.by_addr[addr]
    raise AssertionError(f"no ManagerCluster of this test runs a manager at {managers}")


@pytest.fixture
def agents() -> Iterator[AgentPool]:
    """Scripted agents (real sessions, no sandboxes) that join the cluster they are added to
    with its worker token; closed after the test."""
    pool = ClusterAgentPool()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def bare_agents() -> Iterator[list[BareAgent]]:
    """Bare Dispatcher clients a test adds (tests/integration/bare_agent.py), closed after it."""
    agents: list[BareAgent] = []
    try:
        yield agents
    finally:
        for a in agents:
            a.close()
