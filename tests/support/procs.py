"""Daemons a test starts and stops: `ProcessSpawner` (the ``spawn_process`` fixture's object).

The process launcher itself (`ManagedProcess`, free ports, `terminate_pids`) is the product's,
in ovctl/devcluster/procs.py, since `ovctl dev` starts the same daemons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ovctl.devcluster.procs import LOOPBACK, ManagedProcess


class ProcessSpawner:
    """Starts daemons for one test and stops every one of them when the test ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def __call__(
        self,
        argv: Sequence[str],
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        host: str = LOOPBACK,
        timeout: float = 15.0,
    ) -> ManagedProcess:
        """Start ``argv``; when ``port`` is given, return only once ``host:port`` accepts."""
        label = name or Path(argv[0]).name
        proc = ManagedProcess(argv, self.log_dir / f"{label}-{len(self.processes)}.log", env)
        self.processes.append(proc)
        proc.start()
        if port is not None:
            proc.wait_port(host, port, timeout)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
