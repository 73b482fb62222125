"""One handler per verb: build the request, call the manager, print the answer.

Handlers take the Control client and the parsed arguments and return the exit code. Parsing
and formatting live in `specs` and `render`; what is left here is the I/O between them.
Commands over several objects (`rm`, `inspect`, `scale`) go on past an object the manager
refuses, report it, and exit 1 at the end, as docker does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from ovctl import converge, flags, logview, render, specs
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb

# Statuses whose message is meant for the person at the keyboard; anything else is prefixed
# with its code, because the message alone would not say that something broke.
USER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)

Stub = Any
_T = TypeVar("_T")
Handler = Callable[[Stub, argparse.Namespace], int]


def rpc_error_text(e: grpc.RpcError) -> str:
    code: grpc.StatusCode = e.code()
    details: str = e.details() or ""
    if code in USER_ERROR_CODES:
        return details or code.name
    return f"{code.name}: {details}" if details else code.name


def error(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)


def _each(items: Iterable[_T], action: Callable[[_T], None]) -> int:
    """Run `action` on every item; a refusal is reported and the rest still run."""
    failed = False
    for item in items:
        try:
            action(item)
        except grpc.RpcError as e:
            if e.code() not in USER_ERROR_CODES:
                raise
            error(rpc_error_text(e))
            failed = True
        except specs.SpecConflict as e:
            error(str(e))
            failed = True
    return 1 if failed else 0


def _inspect(refs: Iterable[str], get: Callable[[str], Message]) -> int:
    found: list[Message] = []
    code = _each(refs, lambda ref: found.append(get(ref)))
    print(render.to_json(found))
    return code


def _print_ids(ids: Iterable[str]) -> None:
    for object_id in ids:
        print(object_id)


def _print_listing(
    args: argparse.Namespace,
    objs: Sequence[Any],
    order: Callable[[Any], Any],
    table: Callable[[], str],
) -> int:
    """What every `ls` prints: full IDs with -q, the objects as JSON, or the table."""
    if args.quiet:
        _print_ids(o.meta.id for o in sorted(objs, key=order))
    elif args.format == "json":
        print(render.to_json(list(objs)))
    else:
        print(table())
    return 0


def _filters(args: argparse.Namespace, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    return specs.parse_filters(args.filter or [], allowed)


def _hostnames(stub: Stub) -> Mapping[str, str]:
    nodes = stub.ListNodes(cpb.ListNodesRequest()).nodes
    return {n.meta.id: n.description.hostname or n.meta.id for n in nodes}


# ---------------------------------------------------------------- networks


def network_create(stub: Stub, args: argparse.Namespace) -> int:
    spec = specs.network_spec(
        name=args.name,
        subnet=args.subnet,
        gateway=args.gateway,
        ip_range=args.ip_range,
        internal=args.internal,
        attachable=args.attachable,
        ingress=args.ingress,
        opts=args.opt or [],
        labels=args.label or [],
    )
    resp = stub.CreateNetwork(cpb.CreateNetworkRequest(spec=spec))
    for warning in resp.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(resp.network.meta.id)
    return 0


def network_ls(stub: Stub, args: argparse.Namespace) -> int:
    f = _filters(args, ("name", "label"))
    resp = stub.ListNetworks(
        cpb.ListNetworksRequest(name_prefixes=f.get("name", []), labels=f.get("label", []))
    )
    return _print_listing(
        args, resp.networks, lambda n: n.spec.name, lambda: render.network_table(resp.networks)
    )


def network_inspect(stub: Stub, args: argparse.Namespace) -> int:
    """JSON (each Network with its endpoints under "endpoints"; an encrypted one with its
    hosts' view of ESP under "ipsec"), or with --pretty the human form."""
    found: list[cpb.GetNetworkResponse] = []
    code = _each(
        args.refs,
        lambda ref: found.append(stub.GetNetwork(cpb.GetNetworkRequest(network_ref=ref))),
    )
    if args.pretty:
        print("\n\n".join(render.network_pretty(r) for r in found))
    else:
        print(json.dumps([render.network_inspect_dict(r) for r in found], indent=4))
    return code


def network_rm(stub: Stub, args: argparse.Namespace) -> int:
    def remove(ref: str) -> None:
        stub.RemoveNetwork(cpb.RemoveNetworkRequest(network_ref=ref))
        print(ref)

    return _each(args.refs, remove)


# ---------------------------------------------------------------- services


def service_create(stub: Stub, args: argparse.Namespace) -> int:
    options = specs.ServiceOptions(
        name=args.name,
        command=[*args.command, *args.trailing],
        image=args.image,
        networks=args.network or [],
        replicas=args.replicas,
        mode=args.mode,
        ports=args.publish or [],
        constraints=args.constraint or [],
        max_replicas_per_node=args.max_replicas_per_node,
        endpoint_mode=args.endpoint_mode,
        env=args.env or [],
        workdir=args.workdir,
        labels=args.label or [],
        restart_condition=args.restart_condition,
        restart_delay_ms=args.restart_delay,
        restart_max_attempts=args.restart_max_attempts,
        restart_window_ms=args.restart_window,
        update=flags.update_options(args, "update"),
        rollback=flags.update_options(args, "rollback"),
        health=_health_options(args),
        stop_grace_period_ms=args.stop_grace_period,
    )
    resp = stub.CreateService(cpb.CreateServiceRequest(spec=specs.service_spec(options)))
    print(resp.service.meta.id, flush=True)
    return wait_converged(stub, args, [resp.service.meta.id])


def wait_converged(
    stub: Stub, args: argparse.Namespace, service_ids: list[str], *, rollback: bool = False
) -> int:
    """Unless --detach: wait until the change is real on every host (ovctl/converge.py)."""
    if args.detach or not service_ids:
        return 0
    return converge.wait(
        stub,
        service_ids,
        _hostnames(stub),
        quiet=args.quiet,
        timeout=args.wait_timeout,
        monitor=args.monitor / 1000,
        rollback=rollback,
    )


def _health_options(args: argparse.Namespace) -> specs.HealthOptions:
    return specs.HealthOptions(
        cmd=args.health_cmd,
        tcp_port=args.health_tcp,
        interval_ms=args.health_interval,
        timeout_ms=args.health_timeout,
        retries=args.health_retries,
        start_period_ms=args.health_start_period,
    )


def service_ls(stub: Stub, args: argparse.Namespace) -> int:
    f = _filters(args, ("name", "label"))
    resp = stub.ListServices(
        cpb.ListServicesRequest(name_prefixes=f.get("name", []), labels=f.get("label", []))
    )
    # Standalone tasks are `ovctl ps`'s.
    services = [s for s in resp.services if not s.spec.HasField("standalone")]
    del resp.services[:]
    resp.services.extend(services)
    return _print_listing(
        args, resp.services, lambda s: s.spec.name, lambda: render.service_table(resp)
    )


def service_ps(stub: Stub, args: argparse.Namespace) -> int:
    f = _filters(args, ("desired-state", "node"))
    request = cpb.ListTasksRequest(
        service_refs=args.refs,
        node_refs=f.get("node", []),
        desired_states=[specs.parse_task_state(s) for s in f.get("desired-state", [])],
    )
    resp = stub.ListTasks(request)
    if args.format == "json":
        print(render.to_json(list(resp.tasks)))
        return 0
    hostnames = {} if args.quiet else _hostnames(stub)
    if args.quiet:
        _print_ids(t.meta.id for t, _ in render.order_tasks(resp.tasks, hostnames))
    else:
        print(render.task_table(resp.tasks, hostnames, int(time.time() * 1000)))
    return 0


def service_inspect(stub: Stub, args: argparse.Namespace) -> int:
    def get(ref: str) -> pb.Service:
        return stub.GetService(cpb.GetServiceRequest(service_ref=ref)).service

    if not args.pretty:
        return _inspect(args.refs, get)
    found: list[pb.Service] = []
    code = _each(args.refs, lambda ref: found.append(get(ref)))
    if found:
        print("\n\n".join(render.service_pretty(s) for s in found))
    return code


def service_rm(stub: Stub, args: argparse.Namespace) -> int:
    def remove(ref: str) -> None:
        stub.RemoveService(cpb.RemoveServiceRequest(service_ref=ref))
        print(ref)

    return _each(args.refs, remove)


def update_service(
    stub: Stub, ref: str, change: Callable[[pb.ServiceSpec], pb.ServiceSpec]
) -> pb.Service:
    """Read-modify-write quoting the version read, so a concurrent change is refused rather
    than silently overwritten. The orchestrator also writes the service (its update status):
    when the refused write finds the spec as it was read, the change is made again on the
    new version, as nothing it was based on has changed."""
    current = stub.GetService(cpb.GetServiceRequest(service_ref=ref)).service
    for attempt in range(3):
        request = cpb.UpdateServiceRequest(
            service_ref=current.meta.id, version=current.meta.version, spec=change(current.spec)
        )
        try:
            return stub.UpdateService(request).service  # type: ignore[no-any-return]
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION or attempt == 2:
                raise
            again = stub.GetService(cpb.GetServiceRequest(service_ref=ref)).service
            if again.spec != current.spec or again.meta.version == current.meta.version:
                raise
            current = again
    raise AssertionError("unreachable")  # the last refusal is re-raised


def service_rollback(stub: Stub, args: argparse.Namespace) -> int:
    """Put the service's previous spec back (`docker service rollback`)."""
    current = stub.GetService(cpb.GetServiceRequest(service_ref=args.ref)).service
    resp = stub.UpdateService(
        cpb.UpdateServiceRequest(
            service_ref=current.meta.id, version=current.meta.version, rollback=True
        )
    )
    print(args.ref, flush=True)
    return wait_converged(stub, args, [resp.service.meta.id], rollback=True)


def service_scale(stub: Stub, args: argparse.Namespace) -> int:
    changed: list[str] = []

    def scale(item: tuple[str, int]) -> None:
        name, replicas = item
        changes = specs.ServiceChanges(replicas=replicas)
        svc = update_service(stub, name, lambda s: specs.apply_service_changes(s, changes))
        changed.append(svc.meta.id)
        print(f"{name} scaled to {replicas}", flush=True)

    code = _each(args.scales, scale)
    return code or wait_converged(stub, args, changed)


def service_update(stub: Stub, args: argparse.Namespace) -> int:
    if args.trailing and not args.command:
        raise specs.SpecError("arguments after -- replace the command only with --command")
    network_rm = [(ref, _network_names(stub, ref)) for ref in args.network_rm or []]
    changes = specs.ServiceChanges(
        replicas=args.replicas,
        env_add=args.env_add or [],
        env_rm=args.env_rm or [],
        publish_add=args.publish_add or [],
        publish_rm=args.publish_rm or [],
        constraint_add=args.constraint_add or [],
        constraint_rm=args.constraint_rm or [],
        network_add=args.network_add or [],
        network_rm=network_rm,
        update=flags.update_options(args, "update"),
        rollback=flags.update_options(args, "rollback"),
        restart_condition=args.restart_condition,
        restart_delay_ms=args.restart_delay,
        restart_max_attempts=args.restart_max_attempts,
        restart_window_ms=args.restart_window,
        command=list(args.trailing) if args.command else None,
        image=args.image,
        label_add=args.label_add or [],
        label_rm=args.label_rm or [],
        health=_health_options(args),
        no_healthcheck=args.no_healthcheck,
        stop_grace_period_ms=args.stop_grace_period,
    )
    if changes == specs.ServiceChanges():
        raise specs.SpecError("nothing to update: give at least one option (see --help)")

    changed: list[str] = []

    def update(ref: str) -> None:
        svc = update_service(stub, ref, lambda s: specs.apply_service_changes(s, changes))
        changed.append(svc.meta.id)
        print(ref, flush=True)

    code = _each([args.ref], update)
    return code or wait_converged(stub, args, changed)


def _network_names(stub: Stub, ref: str) -> frozenset[str]:
    """A service stores the network's ID, the user may type its name: accept both."""
    try:
        net = stub.GetNetwork(cpb.GetNetworkRequest(network_ref=ref)).network
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return frozenset({ref})
    return frozenset({ref, net.meta.id, net.spec.name})


def service_logs(stub: Stub, args: argparse.Namespace) -> int:
    hostnames = _hostnames(stub)
    request = cpb.ServiceLogsRequest(
        service_ref=args.ref, tail=args.tail, follow=args.follow, since_ms=args.since
    )
    for line in stub.ServiceLogs(request):
        out = sys.stderr if line.stream == "stderr" else sys.stdout
        for text in logview.service_lines(line, hostnames, args.timestamps):
            print(text, file=out, flush=True)
    return 0


# ---------------------------------------------------------------- nodes, cluster


def node_ls(stub: Stub, args: argparse.Namespace) -> int:
    f = _filters(args, ("name", "label"))
    resp = stub.ListNodes(
        cpb.ListNodesRequest(name_prefixes=f.get("name", []), labels=f.get("label", []))
    )
    return _print_listing(
        args, resp.nodes, lambda n: n.description.hostname, lambda: render.node_table(resp.nodes)
    )


def node_inspect(stub: Stub, args: argparse.Namespace) -> int:
    """JSON (each Node plus its agent's gossip report under "gossip"), or with --pretty the
    human form, which names nodes and networks the gossip report gives only by ID."""
    found: list[cpb.GetNodeResponse] = []
    code = _each(
        args.refs, lambda ref: found.append(stub.GetNode(cpb.GetNodeRequest(node_ref=ref)))
    )
    if not args.pretty:
        print(json.dumps([render.node_inspect_dict(r) for r in found], indent=4))
        return code
    if found:
        hostnames = _hostnames(stub)
        nets = stub.ListNetworks(cpb.ListNetworksRequest()).networks
        networks = {n.meta.id: n.spec.name for n in nets}
        now = int(time.time() * 1000)
        texts = [
            render.node_pretty(r.node, r.gossip, now, hostnames, networks, r.ipsec) for r in found
        ]
        print("\n\n".join(texts))
    return code


def node_update(stub: Stub, args: argparse.Namespace) -> int:
    if not (args.availability or args.role or args.label_add or args.label_rm):
        raise specs.SpecError("nothing to update: give at least one option (see --help)")

    def update(ref: str) -> None:
        node = stub.GetNode(cpb.GetNodeRequest(node_ref=ref)).node
        spec = specs.apply_node_changes(
            node.spec,
            availability=args.availability,
            role=args.role,
            label_add=args.label_add or [],
            label_rm=args.label_rm or [],
        )
        stub.UpdateNode(
            cpb.UpdateNodeRequest(node_ref=node.meta.id, version=node.meta.version, spec=spec)
        )
        print(ref)

    return _each([args.ref], update)


def node_rm(stub: Stub, args: argparse.Namespace) -> int:
    def remove(ref: str) -> None:
        stub.RemoveNode(cpb.RemoveNodeRequest(node_ref=ref, force=args.force))
        print(ref)

    return _each(args.refs, remove)


def cluster_info(stub: Stub, args: argparse.Namespace) -> int:
    resp = stub.GetClusterInfo(cpb.GetClusterInfoRequest())
    print(render.to_json(resp) if args.format == "json" else render.cluster_info_text(resp))
    return 0


def cluster_join_token(stub: Stub, args: argparse.Namespace) -> int:
    """The token (with --rotate, a new one), and unless -q the command that joins with it,
    naming the managers as the cluster advertises them (not as this ovctl reached them)."""
    resp = stub.GetJoinToken(cpb.GetJoinTokenRequest(role=args.role, rotate=args.rotate))
    if args.quiet:
        print(resp.token)
        return 0
    info = stub.GetClusterInfo(cpb.GetClusterInfoRequest())
    managers = [m.addr for m in sorted(info.managers, key=lambda m: not m.leader) if m.addr]
    print(
        render.join_token_text(
            resp.role or args.role, resp.token, managers or [stub.current_addr], args.rotate
        )
    )
    return 0


def cluster_ui_url(stub: Stub, args: argparse.Namespace) -> int:
    """The leader's web view URL with a fresh token (who holds the URL can look, until it
    expires: treat it like a password)."""
    if args.ttl <= 0:
        error("--ttl must be a positive number of seconds")
        return 2
    resp = stub.CreateUiToken(cpb.CreateUiTokenRequest(ttl_s=args.ttl))
    print(resp.url)
    return 0
