"""The e2e tests' dev cluster: `ovctl dev`'s `DevCluster` plus the controls only tests use.

A test crashes an agent while its tasks keep running (`kill_agent`), brings it back
(`start_agent`), and starts its own processes in a host's namespace (`popen`), which `down()`
then kills with everything else there. `ovctl dev` offers none of these, so they live here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from agent.discovery import PEERS_FILE, STATUS_FILE
from osutil.proc import pid_alive
from ovctl.devcluster.cluster import DevCluster
from ovctl.devcluster.procs import tail, terminate_pids
from ovctl.devcluster.shell import require_root


class E2ECluster(DevCluster):
    """A `DevCluster` with the test-only controls (see the module docstring)."""

    # Clusters between up() and down(): a failing test shows their daemons' last log lines
    # (tests/e2e/conftest.py), since the logs are gone once the fixture tears the cluster down.
    live: ClassVar[list[E2ECluster]] = []

    def __init__(
        self, *args: Any, host_agent_args: dict[str, list[str]] | None = None, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        # Arguments one host's agent gets after everyone's (`agent_args`): a host made
        # different (e.g. without podman). argparse keeps the last value of an option.
        self.host_agent_args = dict(host_agent_args or {})

    def up(self) -> bool:
        E2ECluster.live.append(self)
        try:
            return super().up()
        except BaseException:
            if self in E2ECluster.live:  # a failed up() may have run down() already
                E2ECluster.live.remove(self)  # nothing of it is left to show
            raise

    def down(self) -> Any:
        try:
            return super().down()
        finally:
            if self in E2ECluster.live:
                E2ECluster.live.remove(self)

    def log_tails(self, lines: int = 300) -> str:
        """The last ``lines`` lines of the manager's and every agent's log, and each agent's
        last saved gossip peers and status (what it believed when the test gave up: a host
        that never relearned its endpoints shows here whether it knew any members)."""
        self._dump_stacks()
        parts = []
        for daemon in ["manager", *self.hosts]:
            parts.append(f"--- {self.prefix}{daemon} ---\n{tail(self.log_path(daemon), lines)}")
        for host in self.hosts:  # an agent's state dir is <state dir>/<host> (plan.py)
            for name in (PEERS_FILE, STATUS_FILE):
                with contextlib.suppress(OSError):
                    text = (self.state_dir / host / name).read_text()
                    parts.append(f"--- {self.prefix}{host} {name} ---\n{text}")
        return "\n".join(parts)

    def _dump_stacks(self) -> None:
        """Have every live daemon log where its threads and tasks wait (SIGUSR1,
        osutil/stackdump.py): a daemon alive but stuck shows which await holds it."""
        keys = ["manager", *(f"agent-{h}" for h in self.hosts)]
        sent = False
        for pid, start in self._recorded_pids(keys).items():
            if pid_alive(pid, start):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGUSR1)
                    sent = True
        if sent:
            time.sleep(0.5)  # each writes its dump from its event loop

    def _agent_argv(self, host: str) -> list[str]:
        argv = super()._agent_argv(host)
        extra = self.host_agent_args.get(host, [])
        if extra and argv[-len(extra) :] != extra:
            argv += extra
        return argv

    def kill_agent(self, host: str) -> None:
        """SIGKILL the host's agent only, as a crash would; its tasks keep running."""
        self.plan.host(host)
        terminate_pids(self._recorded_pids([f"agent-{host}"]), sig=signal.SIGKILL)
        self._reap_children()

    def start_agent(self, host: str, wait: bool = True) -> None:
        """Start the host's agent again, with the same arguments and state dir."""
        require_root()
        self.plan.host(host)
        self._start_agent(host)
        if wait:
            self.wait_ready([host], timeout=self.ready_timeout)

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """`subprocess.Popen` of ``argv`` in a host's (or client's) network namespace; `down()`
        kills it if the caller did not."""
        return subprocess.Popen(self.nsenter_argv(host, argv), **kw)
