"""The dev cluster's pure plan: names, addresses and command lines, with no I/O.

Everything `ovctl dev` makes is named and addressed here from three inputs (the prefix, the
host count and the underlay subnet), so that `down()` can find all of it again from the prefix
alone and the unit tests can check every name without root. The command lines of the daemons
(`ovnet-manager init`, the manager, each host's agent) and the ovctl context file are built
here too; `shell.py` runs commands on the host and `cluster.py` drives the lifecycle.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

from osutil.hostport import join_hostport
from ovctl.client import DEFAULT_CONFIG, TLS_FILE_NAMES, TLSFiles

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
# Every agent's Prometheus metrics, on its host's underlay address (a port of the host's own
# namespace, so one port serves them all; reachable from the root namespace over the bridge).
AGENT_METRICS_PORT = 9464
METRICS_FLAG = "--metrics-listen"
# Letters and digits, then one dash: no prefix can then start with another one, so sweeping
# "<prefix>*" never reaches another cluster (ovd- vs ovd-x- would otherwise collide).
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]*-$")
_CLIENT_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")


class DevClusterError(Exception):
    """The dev cluster cannot do what was asked; the message says why and what to do."""


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
    join token is used once, when the agent has no certificate in its state dir yet. Its
    metrics are served on the host's underlay address (AGENT_METRICS_PORT)."""
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
        # Its own CNI socket and conflists (`podman run --network NET` inside the host's
        # namespace with network_config_dir pointing there: see README).
        "--cni-socket",
        str(state_dir / host.name / "cni.sock"),
        "--cni-conf-dir",
        str(state_dir / host.name / "cni" / "net.d"),
        METRICS_FLAG,
        f"{host.ip}:{AGENT_METRICS_PORT}",
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


def listener_flags(host: str, ui_port: int, metrics_port: int) -> list[str]:
    """The manager's listeners besides its control and join ones, on ``host`` (the bridge
    address) at free ports: the web view (`ovctl cluster ui-url` prints its URL) and the
    Prometheus metrics (`ovctl dev status` lists them with the agents')."""
    return [
        "--ui-listen",
        join_hostport(host, ui_port),
        METRICS_FLAG,
        join_hostport(host, metrics_port),
    ]


def metrics_url(argv: Sequence[str]) -> str | None:
    """The metrics URL of a daemon started with `argv` (its last --metrics-listen, as argparse
    takes it), or None when it exports none."""
    addr = None
    for i, arg in enumerate(argv):
        if arg == METRICS_FLAG and i + 1 < len(argv):
            addr = argv[i + 1]
        elif arg.startswith(f"{METRICS_FLAG}="):
            addr = arg.split("=", 1)[1]
    return f"http://{addr}/metrics" if addr else None


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


@dataclass
class Teardown:
    """What `down()` removed."""

    processes: int = 0
    # Hosts whose agent ran image tasks and removed their containers (`--cleanup`).
    containers_of: list[str] = field(default_factory=list)
    # What could not be removed, said (teardown goes on regardless).
    problems: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
