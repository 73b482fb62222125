"""Real managers against a real etcd, driven through `ovctl` subprocesses and gRPC.

`managers` starts one manager process on the shared etcd under the test's own key prefix;
`ManagerCluster.add()` starts more. `dump()` reads every key under the prefix straight from etcd
(key -> (mod revision, value)), which is how tests prove that a refused request wrote nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aetcd import rpc

from manager.store import prefix_range_end
from proto import control_pb2 as cpb
from proto import control_pb2_grpc
from tests.conftest import ProcessSpawner
from tests.etcd import EtcdHandle
from tests.integration.agents import AgentPool
from tests.procs import ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[2]
OVCTL = [sys.executable, "-m", "ovctl"]

pytestmark = pytest.mark.integration


class ManagerCluster:
    def __init__(self, etcd: EtcdHandle, spawn: ProcessSpawner, **flags: str) -> None:
        self.etcd = etcd
        self.spawn = spawn
        self.flags = {"heartbeat-period": "0.5", "election-ttl": "2", **flags}
        self.procs: list[ManagedProcess] = []
        self.addrs: list[str] = []
        self._etcd_channel = grpc.insecure_channel(etcd.endpoint)
        self.kv = rpc.KVStub(self._etcd_channel)

    def add(self) -> ManagedProcess:
        port = free_port()
        addr = f"127.0.0.1:{port}"
        argv = [
            sys.executable,
            "-m",
            "manager.main",
            "--listen",
            addr,
            "--etcd",
            self.etcd.endpoint,
            "--prefix",
            self.etcd.prefix.rstrip("/"),
            "--manager-id",
            f"m{len(self.procs)}",
        ]
        for k, v in self.flags.items():
            argv += [f"--{k}", v]
        proc = self.spawn(argv, name=f"manager{len(self.procs)}", port=port)
        self.procs.append(proc)
        self.addrs.append(addr)
        return proc

    @property
    def host_arg(self) -> str:
        return ",".join(self.addrs)

    def stub(self, addr: str | None = None) -> control_pb2_grpc.ControlStub:
        channel = grpc.insecure_channel(addr or self.addrs[0])
        return control_pb2_grpc.ControlStub(channel)

    def wait_leader(self, timeout: float = 15.0, addr: str | None = None) -> str:
        """Wait until the manager at `addr` (default: the first) knows a leader; return its ID."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                info = self.stub(addr).GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=2)
                if info.leader_id:
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


@pytest.fixture
def agents() -> Iterator[AgentPool]:
    """Scripted agents (real sessions, no sandboxes), closed after the test."""
    pool = AgentPool()
    try:
        yield pool
    finally:
        pool.close()
