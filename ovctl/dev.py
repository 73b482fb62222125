"""The `ovctl dev` verbs: a local multi-host cluster, run on this machine (not via a manager).

Each handler takes the parsed arguments and returns the exit code; the work is done by
`ovctl.devcluster.DevCluster`, which the e2e tests drive directly.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from ovctl.commands import error
from ovctl.devcluster.cluster import DevCluster
from ovctl.devcluster.plan import (
    DEFAULT_HOSTS,
    DEFAULT_PREFIX,
    DEFAULT_SUBNET,
    DevClusterError,
    context_path,
    parse_subnet,
    validate_prefix,
)
from ovctl.devcluster.shell import require_root


def _prefix(text: str) -> str:
    try:
        return validate_prefix(text)
    except DevClusterError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _subnet(text: str) -> str:
    try:
        return str(parse_subnet(text))
    except DevClusterError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _hosts(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid host count {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"invalid host count {text!r}: must be >= 1")
    return n


def add_verbs(group: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]) -> None:
    """The `dev` sub-commands; every one is marked `local` (no manager connection)."""
    sub = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    prefix = parser_class(add_help=False)
    prefix.add_argument(
        "--prefix",
        type=_prefix,
        default=os.environ.get("OVCTL_DEV_PREFIX", DEFAULT_PREFIX),
        help="names of the cluster's namespaces and links (default $OVCTL_DEV_PREFIX or "
        f"{DEFAULT_PREFIX})",
    )

    def verb(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=help_text, parents=[prefix]
        )
        p.set_defaults(handler=handler, takes_command=False, local=True)
        return p

    p = verb("up", up, "start a local cluster: hosts in network namespaces, etcd, a manager")
    p.add_argument("--hosts", type=_hosts, default=DEFAULT_HOSTS, metavar="N")
    p.add_argument(
        "--subnet",
        type=_subnet,
        default=DEFAULT_SUBNET,
        metavar="CIDR",
        help=f"underlay, inside 198.51.100.0/24 (default {DEFAULT_SUBNET})",
    )
    p.add_argument(
        "--heartbeat-period",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="agents' heartbeat period (default 1; a node is down after 3 missed)",
    )
    p.add_argument(
        "--wait", type=float, default=60.0, metavar="SECONDS", help="how long to wait for Ready"
    )
    verb("down", down, "stop the local cluster and remove everything it made")
    p = verb("status", status, "show the local cluster's hosts, addresses, daemons, metrics")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = verb("exec", exec_, "run a command in a host's (or client's) network namespace")
    p.set_defaults(takes_command=True)
    p.add_argument("host", metavar="HOST")
    p.add_argument("command", nargs="*", metavar="CMD", help="the command; put it after --")
    p = verb(
        "stop",
        stop,
        "a host dies: its processes are killed and its link goes down "
        "(`stop manager`: the manager stops, etcd and the agents keep running)",
    )
    p.add_argument("host", metavar="HOST|manager")
    p = verb(
        "start",
        start,
        "a stopped host comes back: link up, agent started (`start manager`: the manager "
        "starts again)",
    )
    p.add_argument("host", metavar="HOST|manager")


def _run(action: Any) -> int:
    try:
        require_root()
        code: int = action()
        return code
    except DevClusterError as e:
        error(str(e))
        return 1


def _describe(cluster: DevCluster) -> str:
    lines = [
        f"  manager  {cluster.manager_addr} (join {cluster.join_addr})    "
        f"etcd {cluster.etcd_endpoint}"
    ]
    for h in cluster.hosts:
        lines.append(f"  {h:<4} {cluster.host_addr(h):<15} netns {cluster.host_ns(h)}")
    return "\n".join(lines)


def up(args: argparse.Namespace) -> int:
    def action() -> int:
        cluster = DevCluster(
            name_prefix=args.prefix,
            hosts=args.hosts,
            subnet=args.subnet,
            heartbeat_period_ms=round(args.heartbeat_period * 1000),
            ready_timeout=args.wait,
        )
        started = time.monotonic()
        if not cluster.up():
            print(f"dev cluster {cluster.prefix} is already up:\n{_describe(cluster)}")
            return 0
        took = time.monotonic() - started
        print(
            f"dev cluster {cluster.prefix} is up ({len(cluster.hosts)} hosts Ready in "
            f"{took:.1f}s; state and logs in {cluster.state_dir}):\n{_describe(cluster)}"
        )
        path = context_path()
        if cluster.write_context(path):
            print(f"ovctl now talks to it (context file {path}, removed by `ovctl dev down`)")
        else:
            print(
                "your ovctl context file was not written by `ovctl dev up` and is left alone; "
                f"to use this cluster (its managers and admin credentials):\n"
                f"  export OVCTL_CONFIG={cluster.context_file}"
            )
        return 0

    return _run(action)


def down(args: argparse.Namespace) -> int:
    def action() -> int:
        try:
            cluster = DevCluster.load(args.prefix)
        except DevClusterError:
            # No state file: still sweep whatever carries the prefix.
            cluster = DevCluster(name_prefix=args.prefix, hosts=1)
        started = time.monotonic()
        t = cluster.down()
        took = time.monotonic() - started
        if not (t.processes or t.netns or t.links or t.paths):
            print(f"no dev cluster {args.prefix} here: nothing to remove")
        else:
            print(
                f"dev cluster {args.prefix} removed in {took:.1f}s: {t.processes} process(es), "
                f"{len(t.netns)} namespace(s), {len(t.links)} link(s), {len(t.paths)} path(s)"
                + (f", containers of {len(t.containers_of)} host(s)" if t.containers_of else "")
            )
        for problem in t.problems:
            error(problem)
        if t.problems:
            return 1
        return 0

    return _run(action)


def status(args: argparse.Namespace) -> int:
    def action() -> int:
        info = DevCluster.load(args.prefix).status()
        if args.format == "json":
            print(json.dumps(info, indent=2))
            return 0

        def run(p: dict[str, Any]) -> str:
            return f"pid {p['pid']} {'running' if p['running'] else 'NOT RUNNING'}"

        print(
            f"dev cluster {info['prefix']} ({info['phase']}), subnet {info['subnet']}, "
            f"bridge {info['bridge']['name']} {info['bridge']['addr']}, state {info['state_dir']}"
        )
        print(
            f"manager  {info['manager']['addr']} (join {info['manager'].get('join_addr')})  "
            f"{run(info['manager'])}"
        )
        if info["manager"].get("metrics_url"):
            print(f"metrics  {info['manager']['metrics_url']} (and each host's below)")
        print(f"etcd     {info['etcd']['endpoint']}  {run(info['etcd'])}")
        rows = [("HOST", "ADDRESS", "NETNS", "LINK", "NODE", "AGENT", "METRICS")]
        for h in info["hosts"]:
            rows.append(
                (
                    h["name"],
                    h["addr"],
                    h["netns"],
                    "up" if h["link_up"] else "down",
                    h["node"],
                    run(h["agent"]),
                    h.get("metrics_url") or "",
                )
            )
        for c in info["clients"]:
            rows.append((c["name"], c["addr"], c["netns"], "", "(client)", "", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        return 0

    return _run(action)


def exec_(args: argparse.Namespace) -> int:
    def action() -> int:
        command = [*args.command, *args.trailing]
        if not command:
            error("no command given: ovctl dev exec HOST -- CMD [ARG...]")
            return 2
        cluster = DevCluster.load(args.prefix)
        try:
            return cluster.exec(args.host, command).returncode
        except FileNotFoundError as e:
            raise DevClusterError(str(e)) from None

    try:
        return _run(action)
    except KeyboardInterrupt:
        return 130


# Not a host name: hosts are h1..hN.
MANAGER = "manager"


def stop(args: argparse.Namespace) -> int:
    def action() -> int:
        cluster = DevCluster.load(args.prefix)
        if args.host == MANAGER:
            cluster.stop_manager()
            print("manager stopped (etcd and the agents keep running)")
            return 0
        cluster.stop_host(args.host)
        print(f"{args.host} stopped (processes killed, link down)")
        return 0

    return _run(action)


def start(args: argparse.Namespace) -> int:
    def action() -> int:
        cluster = DevCluster.load(args.prefix)
        if args.host == MANAGER:
            cluster.start_manager()
            print(f"manager started ({cluster.manager_addr}, answering)")
            return 0
        cluster.start_host(args.host)
        print(f"{args.host} started (link up, agent Ready)")
        return 0

    return _run(action)
