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

The naming and addressing are a pure `Plan`; the rest of the module is the I/O around it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import grpc

from ovctl.client import (
    DEFAULT_CONFIG,
    TLS_FILE_NAMES,
    AdminCredentials,
    ConfigError,
    ManagerUnreachable,
    TLSFiles,
    connect,
    load_credentials,
)
from ovctl.devcluster.etcd import EtcdServer, scratch_root
from ovctl.devcluster.procs import (
    ManagedProcess,
    ProcessError,
    free_port_pair,
    pid_alive,
    proc_start_time,
    tail,
    terminate_pids,
)
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb

DEFAULT_PREFIX = "ovd-"
DEFAULT_HOSTS = 3
DEFAULT_SUBNET = "198.51.100.0/26"
# TEST-NET-2: the only range the dev cluster may put into the root namespace.
UNDERLAY_RANGE = IPv4Network("198.51.100.0/24")
STATE_ROOT = Path("/run/ovnet-dev")
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
IFNAMSIZ = 15  # longest interface name Linux accepts
HOST_OFFSET = 10  # host i gets the subnet's address number 10 + i
MANAGER_ETCD_PREFIX = "/ovnet-dev"
STATE_FILE = "cluster.json"
STATE_VERSION = 2
# In the state dir: the manager's own state (its certificate), the CA key-encryption key, the
# admin credentials `ovnet-manager init` writes, and the context file `DevCluster.ovctl` uses.
MANAGER_STATE = "manager"
CA_KEY_FILE = "ca.kek"
ADMIN_DIR = "admin"
CONTEXT_FILE = "context.yaml"
# Manager flags `init` takes too, passed through from the manager's extra arguments.
INIT_FLAGS = ("--prefix", "--cert-expiry")
CONTEXT_MARKER = "# written by ovctl dev up"
# Letters and digits, then one dash: no prefix can then start with another one, so sweeping
# "<prefix>*" never reaches another cluster (ovd- vs ovd-x- would otherwise collide).
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]*-$")
_CLIENT_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")


class DevClusterError(Exception):
    """The dev cluster cannot do what was asked; the message says why and what to do."""


# --- The pure plan: names and addresses -----------------------------------------------------


@dataclass(frozen=True)
class HostPlan:
    name: str  # h1
    netns: str  # <prefix>h1
    veth: str  # the root-side end, on the bridge (same name as the netns)
    addr: IPv4Interface  # eth0's address, with the subnet's prefix length

    @property
    def ip(self) -> str:
        return str(self.addr.ip)


@dataclass(frozen=True)
class ClientNs:
    """An extra namespace on the underlay for test clients and servers (not an ovnet host)."""

    name: str
    netns: str
    veth: str  # root-side end, on the bridge
    addr: str  # its underlay IP address (eth0 in its namespace)
    interface: IPv4Interface  # the same with the subnet's prefix length
    index: int


def validate_prefix(prefix: str) -> str:
    """The prefix, or DevClusterError: lower-case letters and digits ending in one dash."""
    if not _PREFIX_RE.match(prefix):
        raise DevClusterError(
            f"invalid prefix {prefix!r}: use lower-case letters and digits followed by one dash, "
            "starting with a letter (e.g. ovd-)"
        )
    if len(prefix) + len("h1") > IFNAMSIZ:
        raise DevClusterError(f"prefix {prefix!r} is too long for interface names (max 15 chars)")
    return prefix


def parse_subnet(text: str) -> IPv4Network:
    """An underlay subnet inside 198.51.100.0/24 (never anything else in the root namespace)."""
    try:
        net = IPv4Network(text, strict=True)
    except ValueError as e:
        raise DevClusterError(f"invalid subnet {text!r}: {e}") from None
    if not net.subnet_of(UNDERLAY_RANGE):
        raise DevClusterError(
            f"subnet {net} is outside {UNDERLAY_RANGE}: the dev cluster only puts addresses "
            f"from {UNDERLAY_RANGE} into the root namespace"
        )
    return net


def max_hosts(subnet: IPv4Network) -> int:
    """Hosts sit at offsets 11.., clients from the top down; leave room for one client."""
    return subnet.num_addresses - 2 - HOST_OFFSET - 1


def state_name(prefix: str) -> str:
    """The prefix without its dash: names the state dir and the etcd dir."""
    return prefix.rstrip("-")


def default_state_dir(prefix: str) -> Path:
    return STATE_ROOT / state_name(prefix)


@dataclass(frozen=True)
class Plan:
    prefix: str
    subnet: IPv4Network
    hosts: tuple[HostPlan, ...]

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def gateway(self) -> IPv4Interface:
        """The bridge's address in the root namespace: where the manager listens."""
        return IPv4Interface(f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}")

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def host(self, name: str) -> HostPlan:
        for h in self.hosts:
            if h.name == name:
                return h
        raise DevClusterError(
            f"no host {name!r} in dev cluster {self.prefix} (hosts: {', '.join(self.host_names)})"
        )

    @property
    def max_clients(self) -> int:
        return self.subnet.num_addresses - 2 - HOST_OFFSET - len(self.hosts)

    def client(self, name: str, index: int) -> ClientNs:
        """Client ``index`` (0-based) takes the subnet's addresses from the top down."""
        if not _CLIENT_RE.match(name):
            raise DevClusterError(
                f"invalid client name {name!r}: lower-case letters and digits, up to 16"
            )
        if not 0 <= index < self.max_clients:
            raise DevClusterError(
                f"no address left for client {name!r} in {self.subnet} "
                f"({self.max_clients} clients fit next to {len(self.hosts)} hosts)"
            )
        veth = f"{self.prefix}c{index}"
        if len(veth) > IFNAMSIZ:
            raise DevClusterError(f"client interface name {veth!r} would exceed 15 chars")
        ip = self.subnet.broadcast_address - 1 - index
        return ClientNs(
            name=name,
            netns=f"{self.prefix}c-{name}",
            veth=veth,
            addr=str(ip),
            interface=IPv4Interface(f"{ip}/{self.subnet.prefixlen}"),
            index=index,
        )

    def owns(self, name: str) -> bool:
        """Whether a netns, link or file name belongs to this cluster."""
        return name.startswith(self.prefix)

    def host_owns_netns(self, host: str, netns: str) -> bool:
        """The host's own namespace and its agent's (h1 and h1-..., never h10)."""
        ns = self.host(host).netns
        return netns == ns or netns.startswith(f"{ns}-")


def make_plan(prefix: str, hosts: int, subnet: str | IPv4Network) -> Plan:
    validate_prefix(prefix)
    net = parse_subnet(str(subnet))
    if hosts < 1:
        raise DevClusterError(f"a dev cluster needs at least 1 host, not {hosts}")
    if hosts > max_hosts(net):
        raise DevClusterError(
            f"subnet {net} has room for {max(max_hosts(net), 0)} hosts, not {hosts} "
            f"(host i is at .{HOST_OFFSET}+i; use a larger subnet)"
        )
    longest = f"{prefix}h{hosts}"
    if len(longest) > IFNAMSIZ:
        raise DevClusterError(
            f"interface name {longest!r} would exceed {IFNAMSIZ} chars: use a shorter prefix"
        )
    base = net.network_address + HOST_OFFSET
    plans = tuple(
        HostPlan(
            name=f"h{i}",
            netns=f"{prefix}h{i}",
            veth=f"{prefix}h{i}",
            addr=IPv4Interface(f"{base + i}/{net.prefixlen}"),
        )
        for i in range(1, hosts + 1)
    )
    return Plan(prefix=prefix, subnet=net, hosts=plans)


@dataclass(frozen=True)
class ManagerFiles:
    """Where a dev cluster's manager keeps its certificate, the CA's key-encryption key, and
    where init writes the admin credentials."""

    state_dir: Path
    ca_key_file: Path
    admin_dir: Path

    @property
    def admin_tls(self) -> TLSFiles:
        return TLSFiles(**{k: self.admin_dir / name for k, name in TLS_FILE_NAMES.items()})


def manager_files(state_dir: Path) -> ManagerFiles:
    return ManagerFiles(
        state_dir=state_dir / MANAGER_STATE,
        ca_key_file=state_dir / CA_KEY_FILE,
        admin_dir=state_dir / ADMIN_DIR,
    )


def _common_manager_flags(
    listen: str, etcd_endpoint: str, manager_id: str, files: ManagerFiles
) -> list[str]:
    return [
        "--listen",
        listen,
        "--advertise",
        listen,
        "--etcd",
        etcd_endpoint,
        "--prefix",
        MANAGER_ETCD_PREFIX,
        "--manager-id",
        manager_id,
        "--state-dir",
        str(files.state_dir),
        "--ca-key-file",
        str(files.ca_key_file),
    ]


def init_passthrough(extra: Sequence[str]) -> list[str]:
    """The arguments among the manager's ``extra`` that `init` must see too (the key prefix,
    the certificates' lifetime), in order: ``--flag value`` and ``--flag=value``."""
    out: list[str] = []
    for i, arg in enumerate(extra):
        name = arg.split("=", 1)[0]
        if name not in INIT_FLAGS:
            continue
        if "=" in arg:
            out.append(arg)
        elif i + 1 < len(extra):
            out += [arg, extra[i + 1]]
    return out


def manager_init_argv(
    python: str,
    listen: str,
    etcd_endpoint: str,
    manager_id: str,
    files: ManagerFiles,
    extra: Sequence[str] = (),
) -> list[str]:
    """`ovnet-manager init`: the cluster's CA, this manager's certificate, the admin
    credentials, the join tokens (printed)."""
    return [
        python,
        "-m",
        "manager.main",
        "init",
        *_common_manager_flags(listen, etcd_endpoint, manager_id, files),
        "--admin-dir",
        str(files.admin_dir),
        *init_passthrough(extra),
    ]


def manager_argv(
    python: str,
    listen: str,
    etcd_endpoint: str,
    heartbeat_period_ms: int,
    manager_id: str,
    extra: Sequence[str] = (),
    *,
    files: ManagerFiles,
    join_listen: str,
) -> list[str]:
    """The manager's command line; ``extra`` comes last, so it overrides (argparse keeps the
    last value)."""
    return [
        python,
        "-m",
        "manager.main",
        *_common_manager_flags(listen, etcd_endpoint, manager_id, files),
        "--join-listen",
        join_listen,
        "--heartbeat-period",
        f"{heartbeat_period_ms / 1000:g}",
        *extra,
    ]


def parse_init_output(text: str) -> dict[str, str]:
    """role -> token from what `ovnet-manager init` prints ("worker token: OVNTKN-...")."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        role, sep, token = line.strip().partition(" token: ")
        if sep and role in ("worker", "manager") and token.strip():
            found[role] = token.strip()
    return found


def agent_argv(
    python: str,
    host: HostPlan,
    manager_addr: str,
    state_dir: Path,
    extra: Sequence[str] = (),
    *,
    join_token: str = "",
    join_addr: str = "",
) -> list[str]:
    """One host's agent, entered into the host's namespace with nsenter (not `ip netns exec`,
    which remounts /sys). Each host's agent gets its own netns prefix so that the agents'
    network and sandbox namespaces, which are global to the machine, do not collide. The
    join token is used once, when the agent has no certificate in its state dir yet."""
    argv = [
        "nsenter",
        f"--net={NETNS_DIR / host.netns}",
        "--",
        python,
        "-m",
        "agent.main",
        "--manager",
        manager_addr,
        "--hostname",
        host.name,
        "--addr",
        host.ip,
        "--state-dir",
        str(state_dir / host.name),
        "--netns-prefix",
        f"{host.netns}-",
    ]
    if join_token:
        argv += ["--join-token", join_token]
    if join_addr:
        argv += ["--join-addr", join_addr]
    if not any(a == "--dns-upstream" or a.startswith("--dns-upstream=") for a in extra):
        # The hosts are namespaces on this machine: the machine's own resolver is not theirs
        # to use (and not reachable from them). Names outside the cluster get NXDOMAIN.
        argv += ["--dns-upstream", "none"]
    return [*argv, *extra]


def context_marker(prefix: str) -> str:
    return f"{CONTEXT_MARKER} ({prefix})"


def context_text(prefix: str, manager_addr: str, tls: TLSFiles | None = None) -> str:
    """The ovctl context file that points ovctl at a dev cluster (see ovctl/client.py), with
    the admin credentials `init` wrote for it."""
    text = (
        f"{context_marker(prefix)}\n"
        f"# removed by ovctl dev down; write your own to stop ovctl dev up from touching it\n"
        f"managers:\n  - {manager_addr}\n"
    )
    if tls is not None:
        text += f"tls:\n  ca: {tls.ca}\n  cert: {tls.cert}\n  key: {tls.key}\n"
    return text


def context_written_by_dev(text: str, prefix: str | None = None) -> bool:
    """Whether a context file was written by `ovctl dev up` (for ``prefix``, if given)."""
    first = text.split("\n", 1)[0].strip()
    if prefix is None:
        return first.startswith(CONTEXT_MARKER)
    return first == context_marker(prefix)


def context_path(env: Mapping[str, str] | None = None) -> Path:
    """The context file ovctl reads: $OVCTL_CONFIG, else ~/.config/ovnet/context.yaml."""
    env = os.environ if env is None else env
    return Path(env.get("OVCTL_CONFIG") or DEFAULT_CONFIG).expanduser()


# --- I/O: iproute2, /proc, files -------------------------------------------------------------


def require_root() -> None:
    if os.geteuid() != 0:
        raise DevClusterError(
            "ovctl dev must run as root: it creates network namespaces, a bridge and veths "
            "(try sudo)"
        )


def _run(argv: Sequence[str], input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), input=input_text, capture_output=True, text=True, timeout=60, check=False
    )


def ip(*args: str, netns: str | None = None) -> str:
    """Run `ip`; DevClusterError with its stderr on failure."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    res = _run(argv)
    if res.returncode != 0:
        raise DevClusterError(f"`{' '.join(argv)}` failed: {res.stderr.strip()}")
    return res.stdout


def ip_batch(lines: Sequence[str], netns: str | None = None, force: bool = False) -> None:
    """Several `ip` commands in one process (each `ip` costs a few ms to start)."""
    if not lines:
        return
    argv = ["ip", *(["-n", netns] if netns else []), *(["-force"] if force else []), "-batch", "-"]
    res = _run(argv, "\n".join(lines) + "\n")
    if res.returncode != 0 and not force:
        raise DevClusterError(f"`ip {' / '.join(lines)}` failed: {res.stderr.strip()}")


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def list_links() -> list[str]:
    """Interface names in the root namespace."""
    res = _run(["ip", "-o", "link", "show"])
    names = []
    for line in res.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def root_ipv4_networks() -> list[tuple[str, IPv4Interface]]:
    """(interface, address) of every IPv4 address in the root namespace."""
    res = _run(["ip", "-j", "-4", "addr", "show"])
    out = []
    try:
        for link in json.loads(res.stdout or "[]"):
            for a in link.get("addr_info", []):
                out.append((link["ifname"], IPv4Interface(f"{a['local']}/{a['prefixlen']}")))
    except (ValueError, KeyError):
        pass
    return out


def link_is_up(name: str) -> bool:
    try:
        flags = Path(f"/sys/class/net/{name}/flags").read_text()
    except OSError:
        return False
    return bool(int(flags, 16) & 0x1)


def _ns_key(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in_netns(names: Iterable[str]) -> dict[int, int | None]:
    """PID -> start time of every process whose network namespace is one of the named ones.

    A process's namespace is the inode of /proc/PID/ns/net; a named namespace's is the inode
    of its bind mount /run/netns/NAME. Comparing them is how only what lives in our namespaces
    is found (a file there that is not a mount has another device, and matches nothing).
    """
    keys = {k for name in names if (k := _ns_key(NETNS_DIR / name)) is not None}
    keys.discard(_ns_key("/proc/1/ns/net"))  # never the root namespace, whatever happens
    if not keys:
        return {}
    found: dict[int, int | None] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if _ns_key(f"/proc/{entry.name}/ns/net") in keys:
            pid = int(entry.name)
            found[pid] = proc_start_time(pid)
    return found


def is_cluster_daemon(argv: Sequence[str], prefix: str) -> bool:
    """Whether a command line is the etcd or manager a dev cluster with ``prefix`` started.

    Only for `down()` without a state file: those two run in the root namespace, where the
    namespace test cannot find them, but their arguments name the prefix exactly.
    """
    name = state_name(prefix)
    if argv and Path(argv[0]).name == "etcd":
        return f"--name={name}-etcd" in argv
    return "manager.main" in argv and any(
        a == "--manager-id" and b == f"{prefix}manager" for a, b in itertools.pairwise(argv)
    )


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def orphaned_daemons(prefix: str) -> dict[str, dict[str, Any]]:
    """The etcd and manager(s) of ``prefix``'s cluster, found by command line, as state-file
    process records ("etcd", "manager-<pid>")."""
    found: dict[str, dict[str, Any]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = _cmdline(pid)
        if is_cluster_daemon(argv, prefix):
            key = "etcd" if Path(argv[0]).name == "etcd" else f"manager-{pid}"
            found[key] = {"pid": pid, "start": proc_start_time(pid), "argv": argv}
    return found


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _code_root() -> str:
    """The directory holding the ovctl, manager and agent packages this ovctl runs from."""
    return str(Path(__file__).resolve().parents[2])


def _daemon_env() -> dict[str, str]:
    # The daemons must run the same code as this ovctl, whatever their working directory.
    path = os.environ.get("PYTHONPATH", "")
    return {
        "PYTHONPATH": _code_root() + (os.pathsep + path if path else ""),
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class Teardown:
    """What `down()` removed."""

    processes: int = 0
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


# --- The cluster -------------------------------------------------------------------------------


class DevCluster:
    """A local multi-host cluster: `up()`, `down()`, and the controls tests need (stop a host,
    kill an agent, run a command on a host, add an underlay client).

    The same object works from another process: `DevCluster.load(prefix)` reads the state file,
    which is how the `ovctl dev` verbs act on a cluster `ovctl dev up` started.
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
        _write_atomic(self.state_file, json.dumps(self._state, indent=2) + "\n")

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
    def load(cls, prefix_or_state_dir: str | Path, **kw: Any) -> DevCluster:
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
            self._make_ns(host.netns, host.veth, host.addr)
        self._start_etcd()
        self._start_manager()
        for host in plan.hosts:
            self._start_agent(host.name)
        self.wait_ready(timeout=self.ready_timeout)
        self._state["phase"] = "up"
        self._save()

    def _make_ns(self, netns: str, veth: str, addr: IPv4Interface) -> None:
        ip("netns", "add", netns)
        ip_batch(
            [
                f"link add {veth} type veth peer name eth0 netns {netns}",
                f"link set {veth} master {self.plan.bridge} up",
            ]
        )
        ip_batch(
            [f"addr add {addr} dev eth0", "link set eth0 up", "link set lo up"],
            netns=netns,
        )

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
        addr, join = f"{host}:{port}", f"{host}:{port + 1}"
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
            self.manager_args,
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
        log = self.log_path("init")
        try:
            res = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **_daemon_env()},
                cwd=self.state_dir,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DevClusterError(f"`{' '.join(argv)}` did not finish within 60s") from None
        log.write_text(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}")
        tokens = parse_init_output(res.stdout)
        if res.returncode != 0 or "worker" not in tokens:
            raise DevClusterError(
                f"ovnet-manager init failed (exit status {res.returncode}; log {log}):\n"
                f"{tail(log, 25)}"
            )
        self._state["tokens"] = tokens
        self._save()
        _write_atomic(self.context_file, context_text(self.prefix, addr, self.files.admin_tls))

    def _spawn_manager(self, argv: Sequence[str]) -> None:
        proc = ManagedProcess(
            argv,
            self.log_path("manager"),
            env=_daemon_env(),
            cwd=self.state_dir,
            die_with_parent=self.die_with_parent,
        )
        proc.start()
        self._record("manager", proc)
        host, _, port = self.manager_addr.rpartition(":")
        proc.wait_port(host, int(port), timeout=30)

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
            env=_daemon_env(),
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

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """`subprocess.Popen` of ``argv`` in a host's (or client's) network namespace; `down()`
        kills it if the caller did not."""
        return subprocess.Popen(self.nsenter_argv(host, argv), **kw)

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
        self._make_ns(client.netns, client.veth, client.interface)
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
            env={**os.environ, **_daemon_env(), **self.ovctl_env()},
            check=False,
        )

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
        _write_atomic(path, context_text(self.prefix, self.manager_addr, self.files.admin_tls))
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
                }
                for h in self.plan.hosts
            ],
            "clients": [
                {"name": c.name, "netns": c.netns, "addr": c.addr} for c in self.clients.values()
            ],
            "context_file": self._state.get("context_file"),
        }

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
