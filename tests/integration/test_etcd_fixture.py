"""The etcd fixtures give each test a working, isolated etcd that survives restarts and crashes."""

from __future__ import annotations

import asyncio

import aetcd
import pytest

from ovctl.devcluster.etcd import EtcdServer
from ovctl.devcluster.procs import ProcessError, free_port, port_accepts
from tests.support.etcd import EtcdHandle

pytestmark = pytest.mark.integration


async def _put(server: EtcdServer | EtcdHandle, key: bytes, value: bytes) -> int:
    async with aetcd.Client(server.host, server.port) as client:
        resp = await client.put(key, value)
        return int(resp.header.revision)


async def _get(server: EtcdServer | EtcdHandle, key: bytes) -> bytes | None:
    async with aetcd.Client(server.host, server.port) as client:
        got = await client.get(key)
        return None if got is None else bytes(got.value)


def test_shared_etcd_put_get_under_test_prefix(etcd: EtcdHandle) -> None:
    key = etcd.key("hello")
    assert key.startswith(etcd.prefix.encode())
    asyncio.run(_put(etcd, key, b"world"))
    assert asyncio.run(_get(etcd, key)) == b"world"


def test_prefixes_differ_between_tests(etcd: EtcdHandle, etcd_server: EtcdServer) -> None:
    # The previous test wrote under its own prefix; nothing of it is visible under ours.
    assert asyncio.run(_get(etcd, etcd.key("hello"))) is None
    assert etcd.endpoint == etcd_server.endpoint


def test_restart_keeps_data(etcd_fresh: EtcdServer) -> None:
    asyncio.run(_put(etcd_fresh, b"/k", b"v1"))
    old_pid = etcd_fresh.pid
    etcd_fresh.stop()
    assert not etcd_fresh.running
    assert not port_accepts(etcd_fresh.host, etcd_fresh.port)
    etcd_fresh.start()
    assert etcd_fresh.pid != old_pid
    assert asyncio.run(_get(etcd_fresh, b"/k")) == b"v1"


def test_kill_then_start_recovers_acknowledged_writes(etcd_fresh: EtcdServer) -> None:
    asyncio.run(_put(etcd_fresh, b"/k", b"acked"))
    etcd_fresh.kill()
    assert not etcd_fresh.running
    etcd_fresh.start()
    assert etcd_fresh.healthy()
    assert asyncio.run(_get(etcd_fresh, b"/k")) == b"acked"


def test_compact_removes_old_revisions(etcd_fresh: EtcdServer) -> None:
    first = asyncio.run(_put(etcd_fresh, b"/k", b"v1"))
    second = asyncio.run(_put(etcd_fresh, b"/k", b"v2"))
    etcd_fresh.compact(second)
    with pytest.raises(ProcessError, match="compacted"):
        etcd_fresh.etcdctl("get", "/k", f"--rev={first}")
    assert "v2" in etcd_fresh.etcdctl("get", "/k", f"--rev={second}")


def test_close_stops_process_and_removes_files() -> None:
    server = EtcdServer().start()
    workdir = server.workdir
    assert (workdir / "data").is_dir()
    server.close()
    assert not server.running
    assert not port_accepts(server.host, server.port)
    assert not workdir.exists()


def test_start_refuses_ports_in_use(etcd_fresh: EtcdServer) -> None:
    # Otherwise the running member would answer /health for the one that failed to bind.
    clash = EtcdServer(ports=(etcd_fresh.port, free_port()))
    try:
        with pytest.raises(ProcessError, match=f"{etcd_fresh.port} is already in use"):
            clash.start()
    finally:
        clash.close()
    assert etcd_fresh.healthy()


def test_start_failure_reports_log_tail() -> None:
    # A data dir that is a file makes etcd exit at once; the error must carry etcd's reason.
    server = EtcdServer(start_timeout=5.0)
    try:
        server.data_dir.write_text("x")
        with pytest.raises(ProcessError, match=r"exited with status [1-9](.|\n)*not a directory"):
            server.start()
    finally:
        server.close()
