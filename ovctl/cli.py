"""## ovctl, the command-line client

`ovctl` talks to a manager over the gRPC Control API, with docker's verbs and flags:

```
ovctl network create [--subnet CIDR] [--gateway IP] [--ip-range CIDR] [--internal]
                     [--attachable] [--ingress] [--opt encrypted[=true]] [--opt k=v]...
                     [--label k=v]... NAME                       # prints the network ID
ovctl network ls [-q] [--filter name=X] [--filter label=k[=v]] [--format table|json]
ovctl network inspect NETWORK...      ovctl network rm NETWORK...

ovctl service create --name NAME [--network NET[,alias=A]]... [--replicas N | --mode global]
                     [--publish 8080:80[/udp] | --publish 80 |
                      --publish published=8080,target=80,protocol=tcp,mode=host]...
                     [--constraint node.labels.zone==a]... [--max-replicas-per-node N]
                     [--endpoint-mode vip|dnsrr] [--env K=V]... [--workdir DIR] [--label k=v]...
                     [--restart-condition any|on-failure|none] [--restart-delay 5s]
                     [--restart-max-attempts N] [--restart-window 1m]
                     [--update-parallelism N] [--update-delay 10s] [--update-order O]
                     [--update-failure-action pause|continue|rollback] [--update-monitor D]
                     [--update-max-failure-ratio R] [--rollback-parallelism N] ...
                     [--health-cmd STRING | --health-tcp PORT] [--health-interval 1s]
                     [--health-timeout 1s] [--health-retries N] [--health-start-period 0s]
                     [--image IMAGE] [-- CMD [ARG...]]   # a command, an image, or both
ovctl service ls [-q] [--filter name=X] [--format table|json]
ovctl service ps SERVICE... [-q] [--filter desired-state=running] [--filter node=N] [--format ..]
ovctl service inspect [--pretty] SERVICE...      ovctl service rm SERVICE...
ovctl service scale SERVICE=N...      ovctl service rollback SERVICE
ovctl service update [--replicas N] [--env-add K=V] [--env-rm K] [--publish-add SPEC]
                     [--publish-rm TARGET[/PROTO]] [--constraint-add EXPR] [--constraint-rm EXPR]
                     [--network-add NET] [--network-rm NET] [--label-add k=v] [--label-rm k]
                     [--update-* / --rollback-* as create] [--restart-condition C] ...
                     [--health-cmd STRING | --health-tcp PORT | --no-healthcheck]
                     [--health-interval D] [--health-timeout D] [--health-retries N]
                     [--health-start-period D] [--image IMAGE] [--command] SERVICE
                     [-- CMD ARG...]
ovctl service logs [--tail N|all] [-f] [--since TIME] [-t] SERVICE

ovctl run [-d] [--name NAME] [--node HOST] [--network NET]... [-p [HOSTPORT:]PORT[/PROTO]]...
          [--image IMAGE] [--env K=V]... [--workdir DIR] [--restart C] [-- CMD ARG...]
ovctl ps [-a] [-q] [--format table|json]     ovctl rm [-f] NAME|ID...
ovctl logs [-f] [--since TIME] [-t] NAME|ID

ovctl stack deploy -c FILE [-c FILE]... [--prune] STACK      ovctl stack ls
ovctl stack services STACK     ovctl stack ps STACK     ovctl stack rm STACK...

ovctl node ls [-q] [--filter name=X] [--format table|json]
ovctl node inspect [--pretty] NODE...
ovctl node update [--availability active|pause|drain] [--role worker|manager]
                  [--label-add k=v] [--label-rm k] NODE
ovctl node rm [--force] NODE...
ovctl cluster info [--format table|json]
ovctl doctor [NETWORK...] [--repair] [--format table|json]
ovctl cluster join-token [--rotate] [-q] worker|manager
ovctl cluster ui-url [--ttl SECONDS]

ovctl dev up [--hosts N] [--prefix P] [--subnet CIDR] [--heartbeat-period SECONDS]
ovctl dev down [--prefix P]          ovctl dev status [--prefix P] [--format table|json]
ovctl dev exec [--prefix P] HOST -- CMD [ARG...]
ovctl dev stop [--prefix P] HOST|manager     ovctl dev start [--prefix P] HOST|manager
```

Objects are named by full ID, exact name, or a unique ID prefix. Durations take a unit:
`500ms`, `5s`, `1m30s`, `2h`. `-q` prints full IDs, one per line.

**Health checks and rolling updates.** `--health-cmd STRING` runs `sh -c STRING` in the task's
sandbox (exit 0: healthy); `--health-tcp PORT` connects to the port on the task's address
instead. Interval and timeout default to 1s, retries to 3, the start period to 0 (a value of
0 keeps the default). A task takes traffic, and counts as ready for a rolling update, once it
runs and, if checked, is healthy; an update replaces `--update-parallelism` tasks at a time
(`--update-order start-first`: the new task starts before the old one stops) and waits
`--update-delay` after a batch is ready before the next. A task of the update that fails
before it is ready, or within `--update-monitor` after, is a failure: beyond
`--update-max-failure-ratio` of the tasks, `--update-failure-action` pauses the update (the
default; any `service update` resumes it), rolls it back, or continues. `service rollback` puts
the previous spec back, replacing tasks as `--rollback-*` say. `service inspect --pretty`
shows the update's state. `service ps` shows each task's health after its state. A changed
health check is a new task spec: tasks are replaced.

**Routing mesh.** The first manager makes a network `ingress` (`--ingress`, subnet from the
pool) unless the cluster has had one. A port published in ingress mode (the default) opens on
every node; the service's tasks get an address on the ingress network, and so does every node
(`node inspect` shows it). The ingress network cannot be removed while a service publishes
in ingress mode; once removed, it is not recreated.

**Credentials.** Every manager requires mutual TLS: ovctl presents the admin certificate
that `ovnet-manager init --admin-dir DIR` writes (DIR/ca.pem, DIR/admin.crt, DIR/admin.key;
DIR defaults to ~/.config/ovnet). ovctl reads the files named under `tls:` in its context file
(`tls: {ca: PATH, cert: PATH, key: PATH}`, relative to the file), else the three files next to
the context file. `--host` and `$OVCTL_HOST` never change the credentials. A manager refuses a
missing, foreign or expired certificate during the handshake, which gRPC reports only as
"Socket closed"; ovctl then checks its own certificate and says what is wrong with it.

**Join tokens.** `ovctl cluster join-token worker` prints the command that adds a host
(`ovnet-agent --manager ADDR --join-token TOKEN`); `manager` the one for another manager.
`--rotate` replaces the token (nodes that already joined keep their certificates; the old
token joins nothing more); `-q` prints the token alone.

**Which manager.** `--host/-H ADDR[,ADDR...]`, else `$OVCTL_HOST`, else the `managers:` list
of the context file `~/.config/ovnet/context.yaml` (another path with `$OVCTL_CONFIG`), else
`127.0.0.1:4242`. With several managers, ovctl tries them in order and moves on from one that is
unreachable or answers UNAVAILABLE (e.g. not the leader). Every call has a deadline
(`--timeout SECONDS`, default 30, which also bounds `service logs`).

**JSON output.** `inspect`, and `ls`/`ps` with `--format json`, print a JSON list of the
objects (Network, Service, Task, Node); `cluster info --format json` prints the
GetClusterInfoResponse. Both are the protobuf JSON mapping
(`MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)`)
of the messages in proto/objects.proto and proto/control.proto: snake_case field names as in the
.proto files, enum values by name (`"TASK_STATE_RUNNING"`), every field present even at its
default, and 64-bit integers as strings (the proto3 JSON rule; 32-bit ones such as `vni` stay
numbers). Field names change only when the .proto files do, so scripts can rely on them.
`node inspect` adds one key to each Node: `gossip`, the GossipStatus its agent last reported
to the leading manager (members with state and incarnation, entries and peers per network,
last sync, drop counters, traffic; `updated_ms` "0" when there is none). `node inspect
--pretty` prints the same in human form, as `docker node inspect --pretty` does.

**Names that start with a dash** go after `--`: `ovctl network create -- -odd-name`. For
`service create` and `service update --command`, the words after `--` are the task's command.

**A local cluster (`ovctl dev`, as root).** `ovctl dev up` builds a multi-host cluster on this
machine: a bridge `ovd-br` with 198.51.100.1 on the underlay subnet (default 198.51.100.0/26;
it must lie in 198.51.100.0/24, the only range put into the root namespace), and per host a
network namespace `ovd-h1`..`ovd-hN` with `eth0` at .11, .12, ... and no default route, each
running an `ovnet-agent` (named `h1`..`hN`); etcd (loopback, data on /dev/shm) and one manager
(on 198.51.100.1, with its join listener on another port) run in the root namespace. The
cluster is bootstrapped as a real one is: `ovnet-manager init` makes the CA (its key encrypted
under `ca.kek` in the state dir), the manager's certificate and the admin credentials
(`admin/`), and each agent joins with the worker token. It returns once every node is Ready,
and points ovctl at the cluster by writing the context file, with a `tls:` section naming the
admin credentials (unless one exists that `dev up` did not write: then it prints the
`export OVCTL_CONFIG=...` line to use instead). State and logs are in
`/run/ovnet-dev/<prefix>` (mode 0700: `cluster.json`, `context.yaml`, `init.log`,
`manager.log`, `agent-h1.log`, ...).
`dev exec HOST -- CMD` runs a command in a host's namespace; `dev stop HOST` kills everything
on a host and takes its link down (the manager marks the node Down), `dev start HOST` brings
it back; `dev stop manager` stops the manager (SIGTERM, then SIGKILL; etcd and the agents
keep running: every manager is down) and `dev start manager` starts it again with the same
arguments and state; `dev status` lists hosts, addresses, node states and daemon PIDs.
`dev down` kills every process in the cluster's namespaces and the daemons, and removes the
namespaces, links, `/etc/netns` entries, state and the context file it wrote; it also cleans
up a half-built cluster, or one whose state file is gone. `--prefix` (default `ovd-`, or
`$OVCTL_DEV_PREFIX`) lets several clusters coexist, on distinct subnets.

**Exit codes.** 0 on success; 1 when the manager refuses (the message is printed as
`Error: ...`; codes that are not the user's doing are named, e.g.
`Error: no manager could serve the request (tried ...): ...`) or when one of several
objects failed; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc

from ovctl import commands, converge, dev, doctor, logview, specs, standalone
from ovctl.client import (
    DEFAULT_ADDR,
    ConfigError,
    ManagerUnreachable,
    connect,
    resolve_credentials,
    resolve_managers,
)
from ovctl.flags import arg as _arg
from ovctl.flags import constraint as _constraint
from ovctl.flags import converge_options as _converge_options
from ovctl.flags import count as _count
from ovctl.flags import network as _network
from ovctl.flags import publish as _publish
from ovctl.flags import restart_and_update_options as _restart_and_update_options
from ovctl.flags import timeout as _timeout
from ovctl.stack import commands as stack_commands

DEFAULT_TIMEOUT = 30.0


def _connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Accepted before and after the verb; after it, SUPPRESS keeps an absent option from
    overwriting the value given before it."""
    default_host = argparse.SUPPRESS if suppress else None
    default_timeout = argparse.SUPPRESS if suppress else DEFAULT_TIMEOUT
    parser.add_argument(
        "-H",
        "--host",
        default=default_host,
        metavar="ADDR[,ADDR...]",
        help=f"manager address(es), tried in order (default: $OVCTL_HOST, the context file, "
        f"{DEFAULT_ADDR})",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=default_timeout,
        metavar="SECONDS",
        help=f"deadline of every call (default {DEFAULT_TIMEOUT:g})",
    )


def _listing_options(p: argparse.ArgumentParser, filters: str) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print full IDs only")
    p.add_argument("-f", "--filter", action="append", metavar="KEY=VALUE", help=filters)
    p.add_argument("--format", choices=("table", "json"), default="table")


def _inspect_options(p: argparse.ArgumentParser) -> None:
    # Accepted so that every command that prints JSON takes the same `--format json`.
    p.add_argument("--format", choices=("json",), default="json")


def build_parser(
    parser_class: type[argparse.ArgumentParser] | None = None,
) -> argparse.ArgumentParser:
    """The whole command tree; sub-parsers are made of `parser_class` too."""
    parser_class = parser_class or _Parser
    parser = parser_class(
        prog="ovctl", description="Manage ovnet overlay networks, services and nodes."
    )
    _connection_options(parser, suppress=False)
    common = parser_class(add_help=False)
    _connection_options(common, suppress=True)
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def verb(
        sub: Any, name: str, handler: commands.Handler, help_text: str, *aliases: str
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, aliases=list(aliases), help=help_text, description=help_text, parents=[common]
        )
        p.set_defaults(handler=handler, takes_command=False)
        return p

    _network_verbs(groups.add_parser("network", help="manage networks"), verb)
    _service_verbs(groups.add_parser("service", help="manage services"), verb)
    _node_verbs(groups.add_parser("node", help="manage nodes"), verb)
    standalone.add_verbs(groups, verb, _arg)
    stack_commands.add_verbs(groups, verb, _converge_options)
    doctor.add_verb(groups, verb)
    cluster = groups.add_parser("cluster", help="cluster-wide information")
    sub = cluster.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verb(sub, "info", commands.cluster_info, "show the managers and which one leads")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = verb(
        sub,
        "join-token",
        commands.cluster_join_token,
        "print the command (and token) that adds a worker or a manager to the cluster",
    )
    p.add_argument("--rotate", action="store_true", help="replace the token with a new one")
    p.add_argument("-q", "--quiet", action="store_true", help="print the token only")
    p.add_argument("role", choices=("worker", "manager"), metavar="worker|manager")
    p = verb(
        sub,
        "ui-url",
        commands.cluster_ui_url,
        "print a URL of the live web view with a short-lived token",
    )
    p.add_argument(
        "--ttl", type=int, default=600, help="the token's lifetime in seconds (default %(default)s)"
    )
    dev.add_verbs(
        groups.add_parser("dev", help="a local multi-host cluster in network namespaces (root)"),
        parser_class,
    )
    return parser


_Verb = Callable[..., argparse.ArgumentParser]


def _network_verbs(group: argparse.ArgumentParser, verb: _Verb) -> None:
    sub = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verb(sub, "create", commands.network_create, "create an overlay network")
    p.add_argument("--subnet", metavar="CIDR", help="default: allocated from the pool")
    p.add_argument("--gateway", metavar="IP", help="default: first address of the subnet")
    p.add_argument("--ip-range", metavar="CIDR", help="allocate task addresses from this range")
    p.add_argument("--internal", action="store_true", help="no route out of the overlay")
    p.add_argument("--attachable", action="store_true", help="standalone processes may attach")
    p.add_argument("--ingress", action="store_true", help="the routing-mesh network")
    p.add_argument(
        "-o",
        "--opt",
        action="append",
        metavar="K[=V]",
        help="driver option; `encrypted` (or encrypted=true) encrypts VXLAN with IPsec",
    )
    p.add_argument("--label", action="append", metavar="K[=V]")
    p.add_argument("name", metavar="NAME")

    p = verb(sub, "ls", commands.network_ls, "list networks", "list")
    _listing_options(p, "name=PREFIX or label=K[=V], repeatable")
    p = verb(sub, "inspect", commands.network_inspect, "show networks as JSON")
    _inspect_options(p)
    p.add_argument(
        "--pretty", action="store_true", help="human-readable, with the state of IPsec per host"
    )
    p.add_argument("refs", nargs="+", metavar="NETWORK")
    p = verb(sub, "rm", commands.network_rm, "remove networks", "remove")
    p.add_argument("refs", nargs="+", metavar="NETWORK")


def _service_verbs(group: argparse.ArgumentParser, verb: _Verb) -> None:
    sub = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verb(sub, "create", commands.service_create, "create a service (prints its ID)")
    p.set_defaults(takes_command=True)
    p.add_argument("--name", required=True)
    p.add_argument("--network", type=_network, action="append", metavar="NET[,alias=A]")
    p.add_argument("--replicas", type=_count("replicas"), metavar="N", help="default 1")
    p.add_argument("--mode", choices=("replicated", "global"))
    p.add_argument(
        "-p",
        "--publish",
        type=_publish,
        action="append",
        metavar="SPEC",
        help="PUBLISHED:TARGET[/tcp|udp], TARGET (published port allocated), or "
        "published=P,target=T,protocol=tcp|udp,mode=ingress|host",
    )
    p.add_argument("--constraint", type=_constraint, action="append", metavar="EXPR")
    p.add_argument("--max-replicas-per-node", type=_count("max replicas per node"), metavar="N")
    p.add_argument("--endpoint-mode", choices=tuple(specs.ENDPOINT_MODES))
    p.add_argument("-e", "--env", action="append", metavar="K=V")
    p.add_argument("-w", "--workdir", metavar="DIR")
    p.add_argument("-l", "--label", action="append", metavar="K[=V]")
    p.add_argument(
        "--image", metavar="IMAGE", help="run the tasks as containers of this image (podman)"
    )
    _restart_and_update_options(p)
    _converge_options(p)
    p.add_argument("command", nargs="*", metavar="CMD", help="the command; put it after --")

    p = verb(sub, "ls", commands.service_ls, "list services", "list")
    _listing_options(p, "name=PREFIX or label=K[=V], repeatable")
    p = verb(sub, "ps", commands.service_ps, "list the tasks of services")
    _listing_options(p, "desired-state=STATE or node=NODE, repeatable")
    p.add_argument("refs", nargs="+", metavar="SERVICE")
    p = verb(sub, "inspect", commands.service_inspect, "show services as JSON")
    _inspect_options(p)
    p.add_argument(
        "--pretty", action="store_true", help="human-readable: ports, update, health check"
    )
    p.add_argument("refs", nargs="+", metavar="SERVICE")
    p = verb(sub, "rm", commands.service_rm, "remove services", "remove")
    p.add_argument("refs", nargs="+", metavar="SERVICE")
    p = verb(sub, "scale", commands.service_scale, "set the replicas of replicated services")
    _converge_options(p)
    p.add_argument(
        "scales", nargs="+", type=_arg(specs.parse_scale, "scale"), metavar="SERVICE=REPLICAS"
    )

    p = verb(sub, "update", commands.service_update, "change a service")
    p.set_defaults(takes_command=True)
    p.add_argument("--replicas", type=_count("replicas"), metavar="N")
    p.add_argument("--env-add", action="append", metavar="K=V")
    p.add_argument("--env-rm", action="append", metavar="K")
    p.add_argument("--publish-add", type=_publish, action="append", metavar="SPEC")
    p.add_argument(
        "--publish-rm",
        type=_arg(specs.parse_port_ref, "port"),
        action="append",
        metavar="TARGET[/PROTO]",
    )
    p.add_argument("--constraint-add", type=_constraint, action="append", metavar="EXPR")
    p.add_argument("--constraint-rm", type=_constraint, action="append", metavar="EXPR")
    p.add_argument("--network-add", type=_network, action="append", metavar="NET[,alias=A]")
    p.add_argument("--network-rm", action="append", metavar="NET")
    p.add_argument("--label-add", action="append", metavar="K[=V]")
    p.add_argument("--label-rm", action="append", metavar="K")
    p.add_argument("--image", metavar="IMAGE", help="roll the tasks to this image")
    health = _restart_and_update_options(p)
    health.add_argument(
        "--no-healthcheck", action="store_true", help="remove the service's health check"
    )
    p.add_argument(
        "--command", action="store_true", help="replace the command with the words after --"
    )
    _converge_options(p)
    p.add_argument("ref", metavar="SERVICE")

    p = verb(sub, "rollback", commands.service_rollback, "put a service's previous spec back")
    _converge_options(p)
    p.add_argument("ref", metavar="SERVICE")

    p = verb(sub, "logs", commands.service_logs, "print the output of a service's tasks")
    p.add_argument(
        "--tail",
        type=_arg(specs.parse_tail, "tail"),
        default=0,
        metavar="N|all",
        help="only the last N lines, of all tasks together (default all)",
    )
    p.add_argument("-f", "--follow", action="store_true", help="go on printing new output")
    logview.add_options(p, _arg)
    p.add_argument("ref", metavar="SERVICE")


def _node_verbs(group: argparse.ArgumentParser, verb: _Verb) -> None:
    sub = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verb(sub, "ls", commands.node_ls, "list nodes", "list")
    _listing_options(p, "name=PREFIX or label=K[=V], repeatable")
    p = verb(sub, "inspect", commands.node_inspect, "show nodes and their gossip view")
    _inspect_options(p)
    p.add_argument(
        "--pretty", action="store_true", help="human-readable, with the node's gossip view"
    )
    p.add_argument("refs", nargs="+", metavar="NODE")
    p = verb(sub, "update", commands.node_update, "change a node's availability, role, labels")
    p.add_argument("--availability", choices=tuple(specs.NODE_AVAILABILITIES))
    p.add_argument("--role", choices=tuple(specs.NODE_ROLES))
    p.add_argument("--label-add", action="append", metavar="K[=V]")
    p.add_argument("--label-rm", action="append", metavar="K")
    p.add_argument("ref", metavar="NODE")
    p = verb(sub, "rm", commands.node_rm, "remove nodes from the cluster", "remove")
    p.add_argument("--force", action="store_true", help="remove even if the node is not down")
    p.add_argument("refs", nargs="+", metavar="NODE")


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Words before the first `--`, and the task command after it.

    Done before argparse, which cannot tell a `--` command from a positional that has already
    been matched when options come between them.
    """
    words = list(argv)
    if "--" in words:
        i = words.index("--")
        return words[:i], words[i + 1 :]
    return words, []


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "local", False):  # `ovctl dev`: runs on this machine, no manager
        local: int = args.handler(args)
        return local
    try:
        addrs = resolve_managers(args.host, os.environ)
        credentials = resolve_credentials(os.environ)
    except ConfigError as e:
        commands.error(str(e))
        return 1
    try:
        with connect(addrs, credentials, args.timeout) as stub:
            code: int = args.handler(stub, args)
            return code
    except (specs.SpecConflict, converge.NotConverged, converge.UpdateFailed) as e:
        commands.error(str(e))
        return 1
    except specs.SpecError as e:
        commands.error(str(e))
        return 2
    except ManagerUnreachable as e:
        commands.error(str(e))
        return 1
    except grpc.RpcError as e:
        commands.error(commands.rpc_error_text(e))
        return 1


class _Parser(argparse.ArgumentParser):
    """argparse, plus a hint for the usual reason a positional goes missing: a name that starts
    with '-' is taken for an option."""

    def error(self, message: str) -> NoReturn:
        prefix = "the following arguments are required: "
        if message.startswith(prefix) and any(
            not name.startswith("-") for name in message.removeprefix(prefix).split(", ")
        ):
            message += " (a value that starts with '-' goes after --, e.g. -- -name)"
        super().error(message)


class _ParseFailed(Exception):
    pass


class _QuietParser(argparse.ArgumentParser):
    """Reports a usage error to the caller instead of printing it and exiting."""

    def error(self, message: str) -> NoReturn:
        raise _ParseFailed(message)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Arguments with the task command after `--` split off (as `args.trailing`) for the verbs
    that take one; for every other verb, or when the split does not parse, argparse's own
    meaning of `--` applies (e.g. `network create -- -name`). Exits as argparse does."""
    words, trailing = split_command(argv)
    if trailing:
        try:
            args = build_parser(_QuietParser).parse_args(words)
        except _ParseFailed:
            pass
        else:
            if args.takes_command:
                args.trailing = trailing
                return args
    args = build_parser().parse_args(argv)
    args.trailing = []
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code is returned (the console script passes it to exit)."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # argparse's --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else 0
    try:
        return _run(args)
    except BrokenPipeError:
        # The reader (`| head`) went away: stop quietly, and keep Python's exit-time flush of
        # stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
