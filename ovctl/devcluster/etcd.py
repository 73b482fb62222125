"""A real single-member etcd on free loopback ports, with restart and crash controls.

Used by `ovctl dev` and by the tests, whose own additions (a key prefix per test on a shared
member, the sweep of data dirs a killed test run left behind) are in tests/support/etcd.py.

Debian's etcd-server is used as is (no container, no download). Raft timings are cut to the
bone (10 ms heartbeat, 100 ms election) so a member is healthy in about 0.1 s, and the data dir
lives on /dev/shm when there is one, since fsync on a disk dominates etcd's latency otherwise.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ovctl.devcluster.procs import LOOPBACK, ManagedProcess, ProcessError, free_ports, port_accepts

ETCD_BINARY = "/usr/bin/etcd"
ETCDCTL_BINARY = "/usr/bin/etcdctl"

# A member nobody named lives in "<TEMP_NAME>(pid)-(n)-*": tests/support/etcd.py removes the
# dirs of runs whose process is gone (a run killed with SIGKILL cannot remove its own).
TEMP_NAME = "ovt"
_names = itertools.count()

# Never let a proxy from the environment (http_proxy) get between the test and loopback.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def etcd_available() -> bool:
    return os.access(ETCD_BINARY, os.X_OK) and os.access(ETCDCTL_BINARY, os.X_OK)


def scratch_root() -> str | None:
    """/dev/shm when it is writable (etcd's fsyncs cost nothing there), else None."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def etcd_argv(name: str, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    """The etcd 3.4 command line for a one-member cluster on loopback."""
    client = f"http://{LOOPBACK}:{client_port}"
    peer = f"http://{LOOPBACK}:{peer_port}"
    return [
        ETCD_BINARY,
        f"--name={name}",
        f"--data-dir={data_dir}",
        "--heartbeat-interval=10",
        "--election-timeout=100",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={name}={peer}",
        # capnslog (3.4's default logger) ignores --log-level and prints every raft step.
        "--logger=zap",
        "--log-outputs=stderr",
        "--log-level=error",
    ]


class EtcdServer:
    """One etcd member that a test owns: started, restarted, killed and removed by it.

    The ports and the data dir are chosen once, so ``start()`` after ``stop()`` or ``kill()``
    brings back the same member at the same endpoint with its data, as a real restart would.
    ``close()`` stops it and deletes everything it wrote.
    """

    def __init__(
        self,
        start_timeout: float = 15.0,
        ports: tuple[int, int] | None = None,
        *,
        workdir: Path | None = None,
        name: str | None = None,
        die_with_parent: bool = True,
    ) -> None:
        """``ports`` (client, peer) defaults to two free loopback ports.

        Tests leave ``workdir`` and ``name`` alone: the member then lives in a fresh
        ``ovt<pid>-<n>-*`` dir on /dev/shm, which a later run removes if this one is killed.
        `ovctl dev` names both (its etcd outlives the command that started it, so it must not
        look like a dead test run's) and passes ``die_with_parent=False``.
        """
        self.start_timeout = start_timeout
        if workdir is None:
            self.name = name or f"{TEMP_NAME}{os.getpid()}-{next(_names)}"
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=scratch_root()))
        else:
            self.name = name or workdir.name
            self.workdir = workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "etcd.log"
        self.host = LOOPBACK
        self.port, self.peer_port = ports or free_ports(2)
        self._process = ManagedProcess(
            etcd_argv(self.name, self.data_dir, self.port, self.peer_port),
            self.log_path,
            die_with_parent=die_with_parent,
        )

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.running

    @property
    def process(self) -> ManagedProcess:
        """The etcd process itself (for callers that record or supervise it by PID)."""
        return self._process

    def start(self) -> EtcdServer:
        """Start (or restart on the same data dir) and return once etcd reports healthy."""
        # Another server on our client port would answer /health for us while our etcd dies
        # on "address already in use"; refuse before that can pass for a successful start.
        for port in (self.port, self.peer_port):
            if port_accepts(self.host, port):
                raise ProcessError(
                    f"cannot start etcd {self.name}: {self.host}:{port} is already in use "
                    "by another process"
                )
        self._process.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.healthy():
            if not self._process.running:
                raise ProcessError(
                    f"etcd {self.name} exited with status {self._process.returncode} "
                    f"while starting on {self.endpoint}; log tail:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                self._process.kill()
                raise ProcessError(
                    f"etcd {self.name} was not healthy on {self.endpoint} within "
                    f"{self.start_timeout:.1f}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.01)
        return self

    def healthy(self) -> bool:
        """Whether etcd answers /health with a leader (only true once it can serve writes)."""
        try:
            with _opener.open(f"{self.url}/health", timeout=0.5) as resp:
                body = json.loads(resp.read())
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return bool(body.get("health") == "true")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        self._process.stop(timeout)

    def kill(self) -> None:
        """Crash stop (SIGKILL): nothing is flushed beyond what etcd already fsynced."""
        self._process.kill()

    def compact(self, revision: int) -> None:
        """Compact the key-value history up to ``revision``, so watches from before it fail."""
        self.etcdctl("compact", str(revision))

    def etcdctl(self, *args: str) -> str:
        """Run etcdctl (v3 API) against this member and return its stdout."""
        result = subprocess.run(
            [ETCDCTL_BINARY, f"--endpoints={self.endpoint}", *args],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise ProcessError(
                f"etcdctl {' '.join(args)} against {self.endpoint} failed "
                f"(status {result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout

    def log_tail(self, n: int = 40) -> str:
        return self._process.log_tail(n)

    def close(self) -> None:
        """Stop etcd and delete its data dir and log."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
