"""What a dev cluster records about itself: its settings, its state file and its daemons.

`RecordedCluster` is the part of `DevCluster` (cluster.py) that needs no root and runs no
command: the names and addresses derived from the plan and the state file, the state file
itself (``<state dir>/cluster.json``, rewritten after every step, so another process can act
on the cluster), and the record of every daemon started (PID and start time, so a reused PID is
never mistaken for ours), and the ovctl context file `ovctl dev up` writes for the cluster.
The lifecycle (up, down, stop and start) lives in cluster.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

from osutil.files import atomic_write
from osutil.proc import pid_alive, proc_start_time
from ovctl.client import AdminCredentials, ConfigError, load_credentials
from ovctl.devcluster.etcd import scratch_root
from ovctl.devcluster.plan import (
    CONTEXT_FILE,
    DEFAULT_HOSTS,
    DEFAULT_PREFIX,
    DEFAULT_SUBNET,
    STATE_FILE,
    STATE_VERSION,
    ClientNs,
    DevClusterError,
    ManagerFiles,
    Teardown,
    context_path,
    context_text,
    context_written_by_dev,
    default_state_dir,
    make_plan,
    manager_files,
    metrics_url,
    state_name,
    validate_prefix,
)
from ovctl.devcluster.procs import ManagedProcess


class RecordedCluster:
    """A dev cluster's settings and recorded state (see the module docstring); `DevCluster`
    adds the lifecycle. `load(prefix)` reads the state file another process wrote.
    """

    def __init__(
        self,
        name_prefix: str = DEFAULT_PREFIX,
        hosts: int = DEFAULT_HOSTS,
        subnet: str = DEFAULT_SUBNET,
        state_dir: Path | str | None = None,
        heartbeat_period_ms: int = 1000,
        manager_args: Sequence[str] = (),
        agent_args: Sequence[str] = (),
        python: str = sys.executable,
        *,
        die_with_parent: bool = False,
        ready_timeout: float = 60.0,
    ) -> None:
        """``die_with_parent``: daemons get SIGKILL when this process dies (tests); `ovctl dev
        up` leaves it off, since its daemons outlive the command."""
        self.plan = make_plan(name_prefix, hosts, subnet)
        self.state_dir = Path(state_dir) if state_dir else default_state_dir(name_prefix)
        self.heartbeat_period_ms = heartbeat_period_ms
        self.manager_args = list(manager_args)
        self.agent_args = list(agent_args)
        self.python = python
        self.die_with_parent = die_with_parent
        self.ready_timeout = ready_timeout
        self._children: dict[str, ManagedProcess] = {}
        self._state: dict[str, Any] = self._fresh_state()

    # -- properties --

    @property
    def prefix(self) -> str:
        return self.plan.prefix

    @property
    def name_prefix(self) -> str:
        """The same as `prefix` (the constructor's argument name)."""
        return self.plan.prefix

    @property
    def hosts(self) -> list[str]:
        return self.plan.host_names

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def manager_addr(self) -> str:
        addr = self._state.get("manager_addr")
        if not addr:
            raise DevClusterError(f"dev cluster {self.prefix} has no manager (not up)")
        return str(addr)

    @property
    def join_addr(self) -> str:
        """The manager's join listener, where agents trade the join token for a certificate."""
        addr = self._state.get("join_addr")
        if not addr:
            raise DevClusterError(f"dev cluster {self.prefix} has no manager (not up)")
        return str(addr)

    def join_token(self, role: str = "worker") -> str:
        """The join token `init` printed for ``role`` (worker or manager)."""
        token = self._state.get("tokens", {}).get(role)
        if not token:
            raise DevClusterError(f"dev cluster {self.prefix} has no {role} join token (not up)")
        return str(token)

    @property
    def files(self) -> ManagerFiles:
        return manager_files(self.state_dir)

    @property
    def context_file(self) -> Path:
        """The ovctl context file for this cluster (managers and admin credentials), in its
        state dir: what `ovctl()` uses, whatever the user's own context file says."""
        return self.state_dir / CONTEXT_FILE

    def ovctl_env(self) -> dict[str, str]:
        """Environment that points an ovctl (subprocess or in-process) at this cluster."""
        return {"OVCTL_CONFIG": str(self.context_file)}

    def credentials(self) -> AdminCredentials:
        """The admin credentials init wrote, for gRPC calls to the manager."""
        try:
            return load_credentials(self.files.admin_tls)
        except ConfigError as e:
            raise DevClusterError(f"dev cluster {self.prefix}: {e}") from None

    @property
    def etcd_endpoint(self) -> str:
        return f"127.0.0.1:{self._state['etcd']['client_port']}"

    @property
    def bridge(self) -> str:
        return self.plan.bridge

    @property
    def clients(self) -> dict[str, ClientNs]:
        return {
            name: self.plan.client(name, int(c["index"]))
            for name, c in self._state.get("clients", {}).items()
        }

    def host_ns(self, host: str) -> str:
        return self.plan.host(host).netns

    def host_addr(self, host: str) -> str:
        return self.plan.host(host).ip

    def pid(self, daemon: str) -> int | None:
        """PID of "etcd", "manager" or a host's agent ("h1") while it runs, else None."""
        key = f"agent-{daemon}" if daemon in self.hosts else daemon
        if not self._proc_alive(key):
            return None
        return int(self._state["procs"][key]["pid"])

    def metrics_url(self, daemon: str) -> str | None:
        """Where a recorded daemon ("manager", "agent-h1") serves its metrics, if it does."""
        rec = self._state["procs"].get(daemon)
        return metrics_url(rec["argv"]) if rec else None

    def log_path(self, daemon: str) -> Path:
        """Log of "etcd", "manager" or a host's agent ("h1")."""
        if daemon == "etcd":
            return Path(self._state["etcd"]["workdir"]) / "etcd.log"
        if daemon in self.hosts:
            return self.state_dir / f"agent-{daemon}.log"
        return self.state_dir / f"{daemon}.log"

    # -- state file --

    def _fresh_state(self) -> dict[str, Any]:
        name = state_name(self.prefix)
        etcd_root = Path(scratch_root() or self.state_dir)
        return {
            "version": STATE_VERSION,
            "prefix": self.prefix,
            "hosts": len(self.plan.hosts),
            "subnet": str(self.plan.subnet),
            "state_dir": str(self.state_dir),
            "heartbeat_period_ms": self.heartbeat_period_ms,
            "manager_args": self.manager_args,
            "agent_args": self.agent_args,
            "python": self.python,
            "phase": "new",
            "etcd": {"workdir": str(etcd_root / f"ovnet-dev-{name}-etcd")},
            "manager_addr": None,
            "join_addr": None,
            "tokens": {},
            "procs": {},
            "clients": {},
            "stopped": [],
            "context_file": None,
        }

    def _save(self) -> None:
        atomic_write(self.state_file, json.dumps(self._state, indent=2) + "\n", mkdir=True)

    @staticmethod
    def _read_state(state_file: Path) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise DevClusterError(f"cannot read {state_file}: {e}") from None
        return state

    @classmethod
    def load(cls, prefix_or_state_dir: str | Path, **kw: Any) -> Self:
        """The cluster recorded under a prefix (default state dir) or a state dir."""
        text = str(prefix_or_state_dir)
        state_dir = Path(text) if "/" in text else default_state_dir(validate_prefix(text))
        state = cls._read_state(state_dir / STATE_FILE)
        if state is None:
            raise DevClusterError(
                f"no dev cluster at {state_dir} (no {STATE_FILE}); start one with `ovctl dev up`"
            )
        cluster = cls(
            name_prefix=state["prefix"],
            hosts=int(state["hosts"]),
            subnet=state["subnet"],
            state_dir=state_dir,
            heartbeat_period_ms=int(state["heartbeat_period_ms"]),
            manager_args=state["manager_args"],
            agent_args=state["agent_args"],
            python=state["python"],
            **kw,
        )
        cluster._state = state
        return cluster

    def _record(self, key: str, proc: ManagedProcess) -> None:
        self._children[key] = proc
        self._state["procs"][key] = {
            "pid": proc.pid,
            "start": proc_start_time(proc.pid),
            "argv": proc.argv,
            "log": str(proc.log_path),
        }
        self._save()

    def _proc_alive(self, key: str) -> bool:
        rec = self._state["procs"].get(key)
        child = self._children.get(key)
        if child is not None and not child.running:  # reaps our own zombie
            return False
        return rec is not None and pid_alive(int(rec["pid"]), rec.get("start"))

    def _recorded_pids(self, keys: Iterable[str] | None = None) -> dict[int, int | None]:
        procs = self._state.get("procs", {})
        return {
            int(rec["pid"]): rec.get("start")
            for key, rec in procs.items()
            if keys is None or key in keys
        }

    def _reap_children(self) -> None:
        for child in self._children.values():
            _ = child.running

    # -- context file (written by `ovctl dev up`) --

    def write_context(self, path: Path | None = None) -> bool:
        """Point ovctl at this cluster through its context file, unless that file exists and
        was not written by `ovctl dev up` (then False, and nothing is written)."""
        path = path or context_path()
        try:
            if not context_written_by_dev(path.read_text()):
                return False
        except FileNotFoundError:
            pass
        atomic_write(
            path, context_text(self.prefix, self.manager_addr, self.files.admin_tls), mkdir=True
        )
        self._state["context_file"] = str(path)
        self._save()
        return True

    def _remove_context(self, teardown: Teardown) -> None:
        candidates = [self._state.get("context_file"), str(context_path())]
        for p in dict.fromkeys(c for c in candidates if c):
            path = Path(p)
            try:
                ours = context_written_by_dev(path.read_text(), self.prefix)
            except OSError:
                continue
            if ours:
                path.unlink(missing_ok=True)
                teardown.paths.append(str(path))
