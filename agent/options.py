"""`ovnet-agent`'s command line: its options, and the values built from them.

Kept apart from agent/main.py (the daemon's start, credentials, cleanup) so that each stays
readable; `parse_args` puts the program's docstring (main's) in --help.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from agent.cni.protocol import DEFAULT_SOCKET
from agent.executor.container import Podman
from agent.model import DEFAULT_GWBRIDGE_SUBNET, DEFAULT_VXLAN_PORT
from osutil.hostport import split_hostport


def parse_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ovnet-agent",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _cluster_args(p.add_argument_group("joining the cluster"))
    _network_args(p.add_argument_group("this host's network"))
    _task_args(p.add_argument_group("tasks and reconciling"))
    _discovery_args(p.add_argument_group("gossip and DNS"))
    _cni_args(p.add_argument_group("containers of other runtimes (CNI)"))
    _admin_args(p.add_argument_group("maintenance"))
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _cluster_args(g: argparse._ArgumentGroup) -> None:
    """Who this node is and how it reaches the managers."""
    g.add_argument(
        "--credentials-only",
        action="store_true",
        help=argparse.SUPPRESS,  # the agent's own start-up helper: see `_credentials_in_child`
    )
    g.add_argument(
        "--renew-only",
        action="store_true",
        help=argparse.SUPPRESS,  # the agent's own renewal helper: see `_renew_in_child`
    )
    g.add_argument("--manager", default="", help="manager addresses host:port, comma separated")
    g.add_argument(
        "--join-token",
        default=os.environ.get("OVNET_JOIN_TOKEN", ""),
        help="join token (OVNTKN-1-...; env OVNET_JOIN_TOKEN), needed only until this node has "
        "a certificate in <state-dir>/tls (print one with `ovctl cluster join-token worker`)",
    )
    g.add_argument(
        "--join-addr",
        default="",
        help="managers' join listeners host:port, comma separated (default: each --manager "
        "address with the next port)",
    )
    g.add_argument("--hostname", default=socket.gethostname())
    g.add_argument("--role", choices=["worker", "manager"], default="worker")
    g.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V",
        help="node label (first registration only)",
    )
    g.add_argument(
        "--state-dir",
        default="/var/lib/ovnet-agent",
        help="where the node ID, certificate (tls/) and tasks are kept across restarts "
        "(default %(default)s)",
    )


def _network_args(g: argparse._ArgumentGroup) -> None:
    """The underlay and the names of the kernel objects this agent makes."""
    g.add_argument(
        "--addr",
        default="",
        help="this host's underlay (VTEP) address (default: the source address of the route "
        "to the first manager)",
    )
    g.add_argument(
        "--netns-prefix",
        default="ovnet-",
        help="prefix of the network namespaces this agent makes (default %(default)s); one "
        "per agent when several share a machine",
    )
    g.add_argument("--vxlan-port", type=int, default=DEFAULT_VXLAN_PORT)
    g.add_argument("--underlay-mtu", type=int, default=0, help="default: the VTEP's link MTU")
    g.add_argument("--gwbridge-subnet", default=str(DEFAULT_GWBRIDGE_SUBNET))
    g.add_argument("--etc-netns", default="/etc/netns", help=argparse.SUPPRESS)


def _task_args(g: argparse._ArgumentGroup) -> None:
    """How tasks are started, stopped and reconciled."""
    g.add_argument(
        "--reconcile-interval",
        type=float,
        default=5.0,
        help="seconds between full reconciles of kernel state (default %(default)s)",
    )
    g.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        help="seconds between SIGTERM and SIGKILL when stopping a task (default %(default)s)",
    )
    g.add_argument(
        "--drain-delay",
        type=float,
        default=2.0,
        help="seconds a task stays reachable but takes no new connections before it is "
        "stopped, so that every host drops it first (default %(default)s)",
    )
    g.add_argument(
        "--podman", default="podman", help="podman, which runs image tasks (default: on PATH)"
    )
    g.add_argument(
        "--containers-conf",
        default="",
        metavar="FILE",
        help="podman's configuration (its CONTAINERS_CONF; default: podman's own search)",
    )
    g.add_argument("--podman-root", default="", metavar="DIR", help="podman's --root (images)")
    g.add_argument("--podman-runroot", default="", metavar="DIR", help="podman's --runroot")
    g.add_argument("--podman-storage-driver", default="", metavar="DRIVER")
    g.add_argument(
        "--image-pull",
        choices=("missing", "never", "always", "newer"),
        default="missing",
        help="when podman pulls a task's image (podman run --pull; default %(default)s)",
    )


def _cni_args(g: argparse._ArgumentGroup) -> None:
    """Containers of other runtimes (podman, containerd, Kubernetes) through `ovnet-cni`."""
    g.add_argument(
        "--cni-socket",
        default=DEFAULT_SOCKET,
        metavar="PATH",
        help="unix socket the ovnet-cni plugin asks this agent on (default %(default)s; "
        "empty: take no containers of other runtimes)",
    )
    g.add_argument(
        "--cni-conf-dir",
        default="/etc/cni/net.d",
        metavar="DIR",
        help="where the agent writes a CNI conflist per attachable network, for runtimes to "
        "find (default %(default)s; empty: write none)",
    )


def _discovery_args(g: argparse._ArgumentGroup) -> None:
    """Gossip with the other agents and the embedded resolver."""
    g.add_argument(
        "--gossip-port",
        type=int,
        default=7946,
        help="UDP and TCP port of gossip with the other agents, on --addr (default %(default)s)",
    )
    g.add_argument(
        "--gossip-opt",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a gossip timing or limit, e.g. probe_interval=1.0, gossip_interval=0.2, "
        "gossip_nodes=3, suspicion_mult=4, push_pull_interval=30 (see agent/gossip/config.py)",
    )
    g.add_argument(
        "--gossip-status",
        action="store_true",
        help="print this host's gossip view as last saved by its agent (works while every "
        "manager is down), then exit",
    )
    g.add_argument(
        "--dns-upstream",
        action="append",
        default=[],
        metavar="IP[:PORT]",
        help="resolver for names that are not the cluster's (repeatable; default: the "
        "nameservers of /etc/resolv.conf; 'none': answer NXDOMAIN instead)",
    )
    g.add_argument(
        "--dns-ttl",
        type=int,
        default=2,
        help="TTL of the embedded resolver's answers, short so that clients never keep a "
        "removed task for long (default %(default)s)",
    )


def _admin_args(g: argparse._ArgumentGroup) -> None:
    """One-shot operations, logging and metrics."""
    g.add_argument(
        "--cleanup",
        action="store_true",
        help="stop this agent's tasks and remove every kernel object it made, then exit",
    )
    g.add_argument("--log-level", default="info")
    g.add_argument(
        "--metrics-listen",
        default="",
        type=listen_addr,
        metavar="ADDR",
        help="address:port of the Prometheus metrics, plain HTTP at /metrics, in the agent's "
        "network namespace (default: none)",
    )


def listen_addr(value: str) -> str:
    """HOST:PORT for a listener ("" stays off): argparse names the flag in the error."""
    if not value:
        return ""
    try:
        split_hostport(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def parse_upstreams(values: list[str]) -> list[tuple[str, int]] | None:
    """None: take the host's resolvers; [] ('none'): no forwarding at all."""
    if not values:
        return None
    if values == ["none"]:
        return []
    out = []
    for v in values:
        try:
            host, port = split_hostport(v, default_port=53)
            out.append((str(ipaddress.IPv4Address(host)), port))
        except ValueError:
            raise ValueError(f"{v!r} is not IP[:PORT]") from None
    return out


def podman_of(args: argparse.Namespace) -> Podman:
    """The podman the command line describes."""
    return Podman(
        binary=args.podman,
        containers_conf=args.containers_conf,
        root=args.podman_root,
        runroot=args.podman_runroot,
        storage_driver=args.podman_storage_driver,
        pull=args.image_pull,
    )
