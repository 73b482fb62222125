"""A multi-host ovnet cluster on one machine: each host is a network namespace on one bridge.

`ovctl dev up` (and the e2e tests, through the same class) builds:

- in the root namespace, a bridge ``<prefix>br`` holding the first address of the underlay
  subnet (the only change to the root namespace; always inside 198.51.100.0/24), and one veth
  ``<prefix>h<i>`` per host on it;
- per host a netns ``<prefix>h<i>`` with ``eth0`` at .(10+i), lo up and no default route, and
  in it an agent (``nsenter --net``) whose own namespaces are named ``<prefix>h<i>-...``;
- in the root namespace an etcd on loopback and one manager listening on the bridge address.

The control plane is TLS everywhere, bootstrapped as a real cluster is: `ovnet-manager init`
makes the cluster's CA (its key encrypted under a key file in the state dir), the manager's
certificate and the admin credentials ovctl uses (``<state dir>/admin``); every agent joins
with the worker token init printed, through the manager's join listener, and keeps the
certificate it got in its state dir. The state dir is 0700: it holds the CA key-encryption
key, the admin key and the tokens.

Everything it makes carries the prefix, and every process it starts is recorded (PID and start
time) in ``<state dir>/cluster.json``, rewritten after every step. `down()` therefore needs
nothing but the prefix: it kills what runs in the prefix's namespaces (found by the namespace
inode of each process, so nothing outside them is touched) and the recorded daemons, then
removes the namespaces, links, files and dirs named with the prefix. That also cleans up after
a half-built cluster, or one whose builder was killed.

Modules: plan.py (the pure naming, addressing and command lines), shell.py (ip, /proc),
state.py (the state file and the daemons' records, the base of `DevCluster`), and this one,
the lifecycle. The e2e tests' extra controls (kill an agent, start one, Popen in a host) are
in tests/support/cluster.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from osutil.files import atomic_write
from osutil.hostport import join_hostport, split_hostport
from ovctl.client import ManagerUnreachable, connect
from ovctl.devcluster.etcd import EtcdServer
from ovctl.devcluster.plan import (
    ETC_NETNS,
    NETNS_DIR,
    STATE_ROOT,
    ClientNs,
    DevClusterError,
    Teardown,
    agent_argv,
    context_text,
    listener_flags,
    manager_argv,
    manager_init_argv,
    state_name,
)
from ovctl.devcluster.procs import (
    ManagedProcess,
    ProcessError,
    free_port_pair,
    free_ports,
    tail,
    terminate_pids,
)
from ovctl.devcluster.shell import (
    daemon_env,
    ip,
    ip_batch,
    link_is_up,
    list_links,
    list_netns,
    make_ns,
    orphaned_daemons,
    pids_in_netns,
    require_root,
    root_ipv4_networks,
    run_manager_init,
)
from ovctl.devcluster.state import RecordedCluster
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb


class DevCluster(RecordedCluster):
    """A local multi-host cluster: `up()`, `down()`, and the controls `ovctl dev` offers (stop
    and start a host or the manager, run a command on a host, add an underlay client).

    The same object works from another process: `DevCluster.load(prefix)` reads the state file,
    which is how the `ovctl dev` verbs act on a cluster `ovctl dev up` started.
    """

    # -- up --

    def _leftovers(self) -> list[str]:
        return [n for n in list_netns() if self.plan.owns(n)] + [
            n for n in list_links() if self.plan.owns(n)
        ]

    def _same_cluster(self, state: Mapping[str, Any]) -> bool:
        return (
            state.get("phase") == "up"
            and state.get("hosts") == len(self.plan.hosts)
            and state.get("subnet") == str(self.plan.subnet)
        )

    def _check_free(self) -> bool:
        """Raise if the prefix or subnet is taken; True if this very cluster is already up."""
        existing = self._read_state(self.state_file)
        if existing is not None:
            other = DevCluster.load(self.state_dir)
            alive = [k for k in other._state["procs"] if other._proc_alive(k)]
            if alive:
                if self._same_cluster(existing) and len(alive) == len(existing["procs"]):
                    self._state = existing
                    return True
                raise DevClusterError(
                    f"prefix {self.prefix} is in use by a dev cluster "
                    f"({existing.get('hosts')} hosts on {existing.get('subnet')}, "
                    f"phase {existing.get('phase')}, {len(alive)} daemon(s) running); "
                    f"`ovctl dev down --prefix {self.prefix}` removes it"
                )
        leftovers = self._leftovers()
        if leftovers:
            raise DevClusterError(
                f"prefix {self.prefix} is in use: {', '.join(leftovers[:8])}"
                f"{' ...' if len(leftovers) > 8 else ''} exist; "
                f"`ovctl dev down --prefix {self.prefix}` removes them"
            )
        if existing is not None:
            # A dead cluster's state file, with nothing left in the kernel: tidy and go on.
            DevCluster.load(self.state_dir).down()
        for ifname, addr in root_ipv4_networks():
            if addr.network.overlaps(self.plan.subnet):
                raise DevClusterError(
                    f"subnet {self.plan.subnet} overlaps {addr} on {ifname} in the root "
                    "namespace (another dev cluster or test bridge?); choose another with --subnet"
                )
        return False

    def up(self) -> bool:
        """Build and start the cluster and wait until every node is Ready.

        Returns False (and adopts it) if this same cluster is already up; raises
        DevClusterError if the prefix or subnet is taken, or if the cluster fails to come up
        (then everything built so far is removed again, and the message holds the failing
        daemon's log tail).
        """
        require_root()
        if self._check_free():
            return False
        try:
            self._build()
        except BaseException as e:
            with contextlib.suppress(Exception):
                self.down()
            if isinstance(e, ProcessError):
                raise DevClusterError(str(e)) from None
            raise
        return True

    def _build(self) -> None:
        plan = self.plan
        self._state = self._fresh_state()
        # Private: the CA key-encryption key, the admin key and the join tokens live here.
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)
        self._state["phase"] = "building"
        self._save()
        ip_batch(
            [
                f"link add {plan.bridge} type bridge",
                f"addr add {plan.gateway} dev {plan.bridge}",
                f"link set {plan.bridge} up",
            ]
        )
        for host in plan.hosts:
            make_ns(plan.bridge, host.netns, host.veth, host.addr)
        self._start_etcd()
        self._start_manager()
        for host in plan.hosts:
            self._start_agent(host.name)
        self.wait_ready(timeout=self.ready_timeout)
        self._state["phase"] = "up"
        self._save()

    def _start_etcd(self) -> None:
        workdir = Path(self._state["etcd"]["workdir"])
        etcd = EtcdServer(
            workdir=workdir,
            name=f"{state_name(self.prefix)}-etcd",
            die_with_parent=self.die_with_parent,
        )
        self._state["etcd"].update(client_port=etcd.port, peer_port=etcd.peer_port)
        self._save()
        try:
            etcd.start()
        finally:
            if etcd.process.running:
                self._record("etcd", etcd.process)

    def _start_manager(self) -> None:
        host = str(self.plan.gateway.ip)
        # The join listener on the next port, where agents (and the command `ovctl cluster
        # join-token` prints) look for it by default.
        port = free_port_pair(host)
        addr, join = join_hostport(host, port), join_hostport(host, port + 1)
        ui_port, metrics_port = [p for p in free_ports(4, host) if p not in (port, port + 1)][:2]
        self._state["manager_addr"] = addr
        self._state["join_addr"] = join
        self._save()
        self._init_cluster(addr)
        argv = manager_argv(
            self.python,
            addr,
            self.etcd_endpoint,
            self.heartbeat_period_ms,
            f"{self.prefix}manager",
            [*listener_flags(host, ui_port, metrics_port), *self.manager_args],
            files=self.files,
            join_listen=join,
        )
        self._spawn_manager(argv)

    def _init_cluster(self, addr: str) -> None:
        """`ovnet-manager init`: the CA, the manager's certificate, the admin credentials and
        the join tokens; then the context file `ovctl()` uses."""
        argv = manager_init_argv(
            self.python,
            addr,
            self.etcd_endpoint,
            f"{self.prefix}manager",
            self.files,
            self.manager_args,
        )
        tokens = run_manager_init(argv, self.log_path("init"), self.state_dir)
        self._state["tokens"] = tokens
        self._save()
        atomic_write(
            self.context_file, context_text(self.prefix, addr, self.files.admin_tls), mkdir=True
        )

    def _spawn_manager(self, argv: Sequence[str]) -> None:
        proc = ManagedProcess(
            argv,
            self.log_path("manager"),
            env=daemon_env(),
            cwd=self.state_dir,
            die_with_parent=self.die_with_parent,
        )
        proc.start()
        self._record("manager", proc)
        host, port = split_hostport(self.manager_addr)
        proc.wait_port(host, port, timeout=30)

    def _agent_argv(self, host: str) -> list[str]:
        rec = self._state["procs"].get(f"agent-{host}")
        if rec:
            return list(rec["argv"])
        return agent_argv(
            self.python,
            self.plan.host(host),
            self.manager_addr,
            self.state_dir,
            self.agent_args,
            join_token=self.join_token("worker"),
            join_addr=self.join_addr,
        )

    def _start_agent(self, host: str) -> None:
        key = f"agent-{host}"
        if self._proc_alive(key):
            raise DevClusterError(
                f"the agent of {host} already runs (PID {self._state['procs'][key]['pid']})"
            )
        proc = ManagedProcess(
            self._agent_argv(host),
            self.log_path(host),
            env=daemon_env(),
            cwd=self.state_dir,
            die_with_parent=self.die_with_parent,
        )
        proc.start()
        self._record(key, proc)

    # -- readiness --

    def _node_states(self, stub: Any) -> dict[str, str]:
        """hostname -> node state name ("READY", "DOWN", ...); READY wins among duplicates."""
        resp = stub.ListNodes(cpb.ListNodesRequest())
        states: dict[str, str] = {}
        for node in resp.nodes:
            name = pb.NodeState.Name(node.status.state).removeprefix("NODE_STATE_")
            if states.get(node.description.hostname) != "READY":
                states[node.description.hostname] = name
        return states

    def node_states(self, timeout: float = 5.0) -> dict[str, str]:
        """The manager's view of the nodes: hostname -> "READY", "DOWN", "DISCONNECTED"..."""
        with connect([self.manager_addr], self.credentials(), timeout) as stub:
            return self._node_states(stub)

    def wait_node_state(
        self, state: str, hosts: Sequence[str] | None = None, timeout: float = 30.0
    ) -> None:
        """Wait until the manager reports every one of ``hosts`` (default all) in ``state``."""
        hosts = list(hosts or self.hosts)
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        last_error = ""
        with connect([self.manager_addr], self.credentials(), 2.0) as stub:
            while True:
                try:
                    states = self._node_states(stub)
                    last_error = ""
                except (grpc.RpcError, ManagerUnreachable) as e:
                    last_error = str(e) if isinstance(e, ManagerUnreachable) else e.details()
                if all(states.get(h) == state for h in hosts):
                    return
                self._check_daemons(hosts if state == "READY" else [])
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        lagging = [h for h in hosts if states.get(h) != state]
        detail = ", ".join(f"{h}: {states.get(h, 'not registered')}" for h in lagging)
        tails = "".join(
            f"\n--- agent {h} ({self.log_path(h)}) ---\n{tail(self.log_path(h), 15)}"
            for h in lagging
            if state == "READY"
        )
        raise DevClusterError(
            f"nodes not {state} within {timeout:.0f}s ({detail})"
            f"{'; manager: ' + last_error if last_error else ''}{tails}"
            f"\n--- manager ({self.log_path('manager')}) ---\n"
            f"{tail(self.log_path('manager'), 15)}"
        )

    def wait_ready(self, hosts: Sequence[str] | None = None, timeout: float = 60.0) -> None:
        self.wait_node_state("READY", hosts, timeout)

    def _check_daemons(self, agents: Sequence[str]) -> None:
        """Fail fast, with the log, when a daemon we wait for has died."""
        for key in ("etcd", "manager", *(f"agent-{h}" for h in agents)):
            if key in self._state["procs"] and not self._proc_alive(key):
                name = key.removeprefix("agent-")
                log = self.log_path(name)
                raise DevClusterError(f"{key} exited; log tail ({log}):\n{tail(log, 25)}")

    # -- host controls --

    def _host_namespaces(self, host: str) -> list[str]:
        return [n for n in list_netns() if self.plan.host_owns_netns(host, n)]

    def stop_host(self, host: str) -> None:
        """The host dies: SIGKILL its agent and everything in its namespaces, and take its
        underlay link down so that nothing reaches it."""
        require_root()
        hp = self.plan.host(host)
        pids = {**pids_in_netns(self._host_namespaces(host))}
        pids.update(self._recorded_pids([f"agent-{host}"]))
        terminate_pids(pids, sig=signal.SIGKILL)
        self._reap_children()
        ip("link", "set", hp.veth, "down")
        stopped = set(self._state.get("stopped", [])) | {host}
        self._state["stopped"] = sorted(stopped)
        self._save()

    def start_host(self, host: str, wait: bool = True) -> None:
        """The host comes back: link up, agent started again (same arguments, same state)."""
        require_root()
        hp = self.plan.host(host)
        ip("link", "set", hp.veth, "up")
        self._state["stopped"] = [h for h in self._state.get("stopped", []) if h != host]
        self._save()
        if not self._proc_alive(f"agent-{host}"):
            self._start_agent(host)
        if wait:
            self.wait_ready([host], timeout=self.ready_timeout)

    # -- manager controls --

    def stop_manager(self, grace: float = 5.0) -> None:
        """Stop the manager (SIGTERM, then SIGKILL after ``grace`` seconds); etcd and the
        agents keep running, as when every manager of a cluster is down."""
        terminate_pids(self._recorded_pids(["manager"]), grace=grace)
        self._reap_children()

    def start_manager(self, wait: bool = True, timeout: float = 30.0) -> None:
        """Start the manager again with the arguments it was first started with (same address,
        same etcd and key prefix, so the same state); with ``wait``, return once it leads and
        answers (ListNodes), not merely once its port is open."""
        if self._proc_alive("manager"):
            raise DevClusterError(
                f"the manager already runs (PID {self._state['procs']['manager']['pid']})"
            )
        rec = self._state["procs"].get("manager")
        if not rec:
            raise DevClusterError(f"dev cluster {self.prefix} never started a manager (not up)")
        try:
            self._spawn_manager(rec["argv"])
        except ProcessError as e:
            raise DevClusterError(str(e)) from None
        if wait:
            self.wait_manager(timeout)

    def wait_manager(self, timeout: float = 30.0) -> None:
        """Wait until the manager serves Control calls (it has been elected and has loaded the
        cluster state)."""
        deadline = time.monotonic() + timeout
        last_error = ""
        with connect([self.manager_addr], self.credentials(), 2.0) as stub:
            while True:
                try:
                    stub.ListNodes(cpb.ListNodesRequest())
                    return
                except (grpc.RpcError, ManagerUnreachable) as e:
                    last_error = str(e) if isinstance(e, ManagerUnreachable) else e.details()
                self._check_daemons([])
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        raise DevClusterError(
            f"the manager did not answer within {timeout:.0f}s ({last_error}); log tail "
            f"({self.log_path('manager')}):\n{tail(self.log_path('manager'), 25)}"
        )

    # -- commands in namespaces --

    def _netns_of(self, host: str) -> str:
        if host in self.hosts:
            return self.host_ns(host)
        clients = self.clients
        if host in clients:
            return clients[host].netns
        raise DevClusterError(
            f"no host or client {host!r} in dev cluster {self.prefix} "
            f"(hosts: {', '.join(self.hosts)}; clients: {', '.join(clients) or 'none'})"
        )

    def nsenter_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR / self._netns_of(host)}", "--", *argv]

    def exec(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run` of ``argv`` in a host's (or client's) network namespace."""
        return subprocess.run(self.nsenter_argv(host, argv), **kw)

    def add_client(self, name: str) -> ClientNs:
        """An extra namespace on the underlay (address from the top of the subnet down), for
        test clients and servers; `down()` removes it."""
        require_root()
        clients = self._state.setdefault("clients", {})
        if name in clients:
            raise DevClusterError(f"client {name!r} already exists in {self.prefix}")
        used = {int(c["index"]) for c in clients.values()}
        index = next(i for i in range(len(used) + 1) if i not in used)
        client = self.plan.client(name, index)
        clients[name] = {"index": index, "netns": client.netns, "addr": client.addr}
        self._save()
        make_ns(self.plan.bridge, client.netns, client.veth, client.interface)
        return client

    def ovctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`ovctl -H <manager> ARGS...` in a subprocess, with the cluster's admin credentials
        (output captured, never raises)."""
        return subprocess.run(
            [self.python, "-m", "ovctl", "-H", self.manager_addr, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **daemon_env(), **self.ovctl_env()},
            check=False,
        )

    # -- status and down --

    def status(self) -> dict[str, Any]:
        """What runs and what is where, for `ovctl dev status` (a JSON-able dict)."""
        procs = self._state.get("procs", {})

        def proc(key: str) -> dict[str, Any]:
            rec = procs.get(key)
            return {
                "pid": rec["pid"] if rec else None,
                "running": self._proc_alive(key) if rec else False,
            }

        try:
            nodes = self.node_states(timeout=2.0) if self._proc_alive("manager") else {}
        except (grpc.RpcError, ManagerUnreachable, DevClusterError):
            nodes = {}
        etcd = self._state.get("etcd", {})
        return {
            "prefix": self.prefix,
            "state_dir": str(self.state_dir),
            "phase": self._state.get("phase"),
            "subnet": str(self.plan.subnet),
            "bridge": {"name": self.bridge, "addr": str(self.plan.gateway)},
            "manager": {
                "addr": self._state.get("manager_addr"),
                "join_addr": self._state.get("join_addr"),
                "metrics_url": self.metrics_url("manager"),
                **proc("manager"),
            },
            "etcd": {
                "endpoint": f"127.0.0.1:{etcd['client_port']}" if "client_port" in etcd else None,
                **proc("etcd"),
            },
            "hosts": [
                {
                    "name": h.name,
                    "netns": h.netns,
                    "addr": h.ip,
                    "link_up": link_is_up(h.veth),
                    "node": nodes.get(h.name, "?"),
                    "agent": proc(f"agent-{h.name}"),
                    "metrics_url": self.metrics_url(f"agent-{h.name}"),
                }
                for h in self.plan.hosts
            ],
            "clients": [
                {"name": c.name, "netns": c.netns, "addr": c.addr} for c in self.clients.values()
            ],
            "context_file": self._state.get("context_file"),
        }

    def _remove_containers(self, teardown: Teardown) -> None:
        """Containers of image tasks outlive their processes in podman's store (`podman run
        --rm` was killed with the rest): each agent that ran one (a containers/ dir in its
        state) removes its own with `ovnet-agent --cleanup`, run with its recorded arguments
        (its podman store and prefix) while its namespace still exists."""
        for host in self.plan.hosts:
            rec = self._state.get("procs", {}).get(f"agent-{host.name}")
            if rec and (self.state_dir / host.name / "containers").is_dir():
                res = subprocess.run(
                    [*rec["argv"], "--cleanup"], capture_output=True, text=True, timeout=300,
                    check=False, env=daemon_env(), cwd=self.state_dir,
                )  # fmt: skip
                if res.returncode == 0:
                    teardown.containers_of.append(host.name)
                else:
                    err = res.stderr.strip()[-500:]
                    teardown.problems.append(f"removing the containers of {host.name}: {err}")

    def down(self) -> Teardown:
        """Remove everything this cluster made; works on a half-built cluster, from another
        process (through the state file) and without a state file (by the prefix). Idempotent.
        """
        require_root()
        saved = self._read_state(self.state_file)
        if saved is not None:
            self._state = {**self._state, **saved}
        else:
            self._state["procs"].update(orphaned_daemons(self.prefix))
        teardown = Teardown()
        plan = self.plan
        # Processes: whatever lives in our namespaces (agents, shims, tasks, clients' servers)
        # and the daemons we recorded; etcd last, so the manager can stop cleanly. Shims may
        # start a task while we kill: scan again.
        daemons = [k for k in self._state.get("procs", {}) if k != "etcd"]
        for attempt in range(3):
            pids = pids_in_netns(n for n in list_netns() if plan.owns(n))
            if attempt == 0:
                pids.update(self._recorded_pids(daemons))
            if not pids:
                break
            teardown.processes += len(terminate_pids(pids, grace=3.0 if attempt == 0 else 0.5))
        teardown.processes += len(terminate_pids(self._recorded_pids(["etcd"])))
        self._reap_children()
        self._remove_containers(teardown)
        # Links first (deleting a veth takes its peer along at once), then the namespaces.
        links = [n for n in list_links() if plan.owns(n)]
        ip_batch([f"link del {n}" for n in links], force=True)
        teardown.links = links
        namespaces = [n for n in list_netns() if plan.owns(n)]
        ip_batch([f"netns del {n}" for n in namespaces], force=True)
        teardown.netns = namespaces
        paths = sorted(ETC_NETNS.glob(f"{plan.prefix}*")) if ETC_NETNS.is_dir() else []
        etcd_dir = self._state.get("etcd", {}).get("workdir")
        if etcd_dir:
            paths.append(Path(etcd_dir))
        paths.append(self.state_dir)
        for path in paths:
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)
                teardown.paths.append(str(path))
        if self.state_dir.parent == STATE_ROOT:
            with contextlib.suppress(OSError):
                STATE_ROOT.rmdir()  # once no cluster is left
        self._remove_context(teardown)
        self._state = self._fresh_state()
        self._children.clear()
        return teardown
