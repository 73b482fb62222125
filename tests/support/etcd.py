"""The test side of etcd: a key prefix of its own for each test on a shared member, and the
sweep of data dirs that killed test runs left behind.

The launcher itself (`EtcdServer`) is the product's (ovctl/devcluster/etcd.py, which `ovctl dev`
uses); tests/conftest.py removes dead runs' dirs once at the start of every test session, which
no `ovctl dev` command may do.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from osutil.proc import pid_alive
from ovctl.devcluster.etcd import TEMP_NAME, EtcdServer, scratch_root

_WORKDIR_RE = re.compile(rf"^{TEMP_NAME}(\d+)-\d+-")
_swept = False


def stale_workdirs(names: list[str], alive: Callable[[int], bool]) -> list[str]:
    """The entries among ``names`` that are work dirs of EtcdServers whose test run is gone.

    A test run killed with SIGKILL cannot remove its data dirs, and on /dev/shm each one holds
    over 100 MB of memory (etcd preallocates its WAL), so the next run removes them.
    """
    stale = []
    for name in names:
        m = _WORKDIR_RE.match(name)
        if m and not alive(int(m.group(1))):
            stale.append(name)
    return stale


def remove_stale_workdirs() -> None:
    """Remove dead test runs' etcd dirs, once per process."""
    global _swept
    if _swept:
        return
    _swept = True
    root = Path(scratch_root() or tempfile.gettempdir())
    for name in stale_workdirs(os.listdir(root), pid_alive):
        shutil.rmtree(root / name, ignore_errors=True)


def key_prefix(test_id: str, serial: int, pid: int | None = None) -> str:
    """A key prefix of its own for one test on a shared etcd, e.g. ``/ovt123-5f2a9c01e4/``.

    Hashing the test id keeps the prefix short and free of the brackets and slashes that
    parametrised test ids carry; the serial keeps a test that runs twice apart from itself.
    """
    digest = hashlib.sha256(f"{test_id}#{serial}".encode()).hexdigest()[:10]
    return f"/ovt{os.getpid() if pid is None else pid}-{digest}/"


@dataclass(frozen=True)
class EtcdHandle:
    """A test's view of a shared etcd: where to connect, and the prefix its keys must live under."""

    server: EtcdServer
    prefix: str

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    def key(self, name: str) -> bytes:
        """The full etcd key for ``name`` under this test's prefix."""
        return (self.prefix + name.lstrip("/")).encode()
