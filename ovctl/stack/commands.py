"""`ovctl stack deploy|ls|ps|services|rm`: a compose file's networks and services, kept as one.

A stack is not an object of the manager's: as in Docker, it is the set of networks and
services labelled `com.docker.stack.namespace=STACK`, which `stack deploy` converts from the
compose files on the client (ovctl/stack/convert.py) and then creates or updates one by one.
Everything is checked first (the files, then that external networks exist and that no
network of the stack changed), so a refused deploy creates nothing. A redeploy updates only the
services whose spec changed (the others keep their spec version: their tasks are left alone);
networks are immutable, so a changed one is refused; services no longer in the file are
removed with `--prune`, else kept and named.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from ovctl import commands, render
from ovctl.stack.convert import STACK_LABEL, Stack, convert
from ovctl.stack.load import ComposeError, load
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb

Stub = Any


def add_verbs(
    groups: Any,
    verb: Callable[..., argparse.ArgumentParser],
    converge_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """`converge_options`: -d, -q, --monitor, --wait-timeout, as `service create` has them."""
    group = groups.add_parser("stack", help="deploy and manage stacks (compose files)")
    sub = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verb(sub, "deploy", deploy, "deploy a stack from compose files, or update it", "up")
    p.add_argument(
        "-c",
        "--compose-file",
        action="append",
        required=True,
        metavar="FILE",
        help="a compose file; several are merged in order",
    )
    p.add_argument("--prune", action="store_true", help="remove services no longer in the files")
    converge_options(p)
    p.add_argument("stack", metavar="STACK")
    p = verb(sub, "ls", ls, "list stacks", "list")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = verb(sub, "ps", ps, "list the tasks of a stack")
    p.add_argument("-q", "--quiet", action="store_true", help="print full IDs only")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("stack", metavar="STACK")
    p = verb(sub, "services", services, "list the services of a stack")
    p.add_argument("-q", "--quiet", action="store_true", help="print full IDs only")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("stack", metavar="STACK")
    p = verb(sub, "rm", rm, "remove stacks: their services, then their networks", "remove", "down")
    p.add_argument("stacks", nargs="+", metavar="STACK")


def _label(stack: str) -> str:
    return f"{STACK_LABEL}={stack}"


def _stack_services(stub: Stub, stack: str) -> list[pb.Service]:
    resp = stub.ListServices(cpb.ListServicesRequest(labels=[_label(stack)]))
    return sorted(resp.services, key=lambda s: s.spec.name)


def _stack_networks(stub: Stub, stack: str) -> list[pb.Network]:
    resp = stub.ListNetworks(cpb.ListNetworksRequest(labels=[_label(stack)]))
    return sorted(resp.networks, key=lambda n: n.spec.name)


# ---------------------------------------------------------------- deploy


def deploy(stub: Stub, args: argparse.Namespace) -> int:
    try:
        loaded = load([Path(f) for f in args.compose_file], os.environ)
        stack = convert(loaded, args.stack, os.environ)
    except ComposeError as e:
        commands.error(str(e))
        return 1
    if stack.ignored:
        print(f"Ignoring unsupported options: {', '.join(stack.ignored)}", file=sys.stderr)
    existing = {n.spec.name: n for n in _stack_networks(stub, stack.name)}
    problem = _check_networks(stub, stack, existing) or _check_ports(stub, stack)
    if problem:
        commands.error(problem)
        return 1
    ids = {name: n.meta.id for name, n in existing.items()}
    for name in stack.external.values():
        ids[name] = stub.GetNetwork(cpb.GetNetworkRequest(network_ref=name)).network.meta.id
    for name, net_spec in stack.networks.items():
        if name not in existing:
            print(f"Creating network {name}")
            resp = stub.CreateNetwork(cpb.CreateNetworkRequest(spec=net_spec))
            for warning in resp.warnings:
                print(f"Warning: network {name}: {warning}", file=sys.stderr)
            ids[name] = resp.network.meta.id
    current = {s.spec.name: s for s in _stack_services(stub, stack.name)}
    changed = []
    for name, spec in stack.services.items():
        svc_id = _deploy_service(stub, name, spec, current.get(name), ids)
        if svc_id:
            changed.append(svc_id)
    for name, svc in current.items():
        if name in stack.services:
            continue
        if args.prune:
            print(f"Removing service {name}")
            stub.RemoveService(cpb.RemoveServiceRequest(service_ref=svc.meta.id))
        else:
            print(f"Service {name} is no longer in the files: kept (--prune removes it)")
    # Created and updated services, until each is real on every host (unless -d).
    return commands.wait_converged(stub, args, changed)


def _check_networks(stub: Stub, stack: Stack, existing: dict[str, pb.Network]) -> str:
    """Why the stack's networks cannot be deployed as the files say ("" if they can)."""
    for key, name in stack.external.items():
        try:
            stub.GetNetwork(cpb.GetNetworkRequest(network_ref=name))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return f"network {name!r} is declared as external (networks.{key}) but not found"
            raise
    for name, spec in stack.networks.items():
        cur = existing.get(name)
        if cur is not None and _network_changed(cur.spec, spec):
            return (
                f"network {name} differs from the files: networks cannot be changed; "
                f"remove the stack (ovctl stack rm {stack.name}) or rename the network"
            )
    new_encrypted = [
        n for n, spec in stack.networks.items() if spec.encrypted and n not in existing
    ]
    return _cannot_encrypt(stub, new_encrypted) if new_encrypted else ""


def _cannot_encrypt(stub: Stub, names: list[str]) -> str:
    """Why encrypted networks would be of no use ("" if a Ready node can encrypt): their
    tasks could run nowhere, and the deploy would only wait for them (the manager's rule for
    its warning on `network create`)."""
    ready = [
        n
        for n in stub.ListNodes(cpb.ListNodesRequest()).nodes
        if n.status.state == pb.NODE_STATE_READY
    ]
    if any("ipsec" not in n.description.unavailable for n in ready):
        return ""
    why = "; ".join(
        sorted({f"{n.description.hostname}: {n.description.unavailable['ipsec']}" for n in ready})
    )
    return (
        f"network {names[0]} is encrypted (driver_opts: encrypted) but no Ready node can "
        f"encrypt ({why or 'no node is Ready'}): its tasks could run nowhere; remove "
        "`encrypted` from the file, or add a node whose kernel has ESP (nothing was created)"
    )


def _check_ports(stub: Stub, stack: Stack) -> str:
    """A port the stack publishes that a service outside it holds ("" if none): refused here,
    before anything is created, rather than by the manager halfway through."""
    held: dict[tuple[int, int], str] = {}
    for svc in stub.ListServices(cpb.ListServicesRequest()).services:
        if svc.spec.labels.get(STACK_LABEL) == stack.name:
            continue
        for port in svc.endpoint.ports:
            if port.published_port and not svc.spec.HasField("standalone"):
                held[(port.protocol, port.published_port)] = svc.spec.name
    for name, spec in stack.services.items():
        for port in spec.endpoint.ports:
            holder = held.get((port.protocol, port.published_port))
            if port.published_port and holder:
                return (
                    f"service {name}: port {render.port_text(port)} is already published by "
                    f"service {holder!r}"
                )
    return ""


def _network_changed(cur: pb.NetworkSpec, want: pb.NetworkSpec) -> bool:
    """Only what the files say counts: an address the manager chose is not a change."""
    mine = pb.NetworkSpec()
    mine.CopyFrom(cur)
    for field in ("subnet", "gateway", "ip_range"):
        if not getattr(want, field):
            mine.ClearField(field)  # type: ignore[arg-type]
    return mine != want


def _deploy_service(
    stub: Stub, name: str, spec: pb.ServiceSpec, cur: pb.Service | None, ids: dict[str, str]
) -> str:
    """Create or update one service; its ID, or "" if it was unchanged."""
    want = pb.ServiceSpec()
    want.CopyFrom(spec)
    for att in want.networks:
        att.target = ids.get(att.target, att.target)  # stored specs name networks by ID
    if cur is None:
        print(f"Creating service {name}", flush=True)
        return str(stub.CreateService(cpb.CreateServiceRequest(spec=want)).service.meta.id)
    if cur.spec == want:
        print(f"Service {name} is unchanged", flush=True)
        return ""
    print(f"Updating service {name} (id: {cur.meta.id})", flush=True)
    # Retried only while no one else changed the spec (see commands.update_service).
    commands.update_service(stub, cur.meta.id, lambda _current: want)
    return str(cur.meta.id)


# ---------------------------------------------------------------- listings, rm


def ls(stub: Stub, args: argparse.Namespace) -> int:
    counts: dict[str, int] = {}
    for svc in stub.ListServices(cpb.ListServicesRequest()).services:
        stack = svc.spec.labels.get(STACK_LABEL)
        if stack:
            counts[stack] = counts.get(stack, 0) + 1
    for net in stub.ListNetworks(cpb.ListNetworksRequest()).networks:
        stack = net.spec.labels.get(STACK_LABEL)
        if stack:
            counts.setdefault(stack, 0)
    if args.format == "json":
        print(json.dumps([{"name": k, "services": v} for k, v in sorted(counts.items())], indent=4))
    else:
        print(render.table(["NAME", "SERVICES"], [[k, str(v)] for k, v in sorted(counts.items())]))
    return 0


def services(stub: Stub, args: argparse.Namespace) -> int:
    resp = stub.ListServices(cpb.ListServicesRequest(labels=[_label(args.stack)]))
    kept = sorted(resp.services, key=lambda s: s.spec.name)
    if not kept:
        commands.error(f"nothing found in stack: {args.stack}")
        return 1
    if args.quiet:
        for s in kept:
            print(s.meta.id)
    elif args.format == "json":
        print(render.to_json(kept))
    else:
        print(render.service_table(resp))
    return 0


def ps(stub: Stub, args: argparse.Namespace) -> int:
    svcs = _stack_services(stub, args.stack)
    if not svcs:
        commands.error(f"nothing found in stack: {args.stack}")
        return 1
    resp = stub.ListTasks(cpb.ListTasksRequest(service_refs=[s.meta.id for s in svcs]))
    if args.format == "json":
        print(render.to_json(list(resp.tasks)))
    elif args.quiet:
        for t in resp.tasks:
            print(t.meta.id)
    else:
        nodes = stub.ListNodes(cpb.ListNodesRequest()).nodes
        hostnames = {n.meta.id: n.description.hostname for n in nodes}
        print(render.task_table(resp.tasks, hostnames, int(time.time() * 1000)))
    return 0


def rm(stub: Stub, args: argparse.Namespace) -> int:
    """Services first, then networks (which their tasks must have left: retried a while)."""
    code = 0
    for stack in args.stacks:
        svcs = _stack_services(stub, stack)
        nets = _stack_networks(stub, stack)
        if not svcs and not nets:
            commands.error(f"nothing found in stack: {stack}")
            code = 1
            continue
        for svc in svcs:
            print(f"Removing service {svc.spec.name}")
            stub.RemoveService(cpb.RemoveServiceRequest(service_ref=svc.meta.id))
        for net in nets:
            print(f"Removing network {net.spec.name}")
            if not _remove_network(stub, net):
                code = 1
    return code


def _remove_network(stub: Stub, net: pb.Network, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            stub.RemoveNetwork(cpb.RemoveNetworkRequest(network_ref=net.meta.id))
            return True
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION or time.monotonic() > deadline:
                commands.error(f"network {net.spec.name}: {commands.rpc_error_text(e)}")
                return False
            time.sleep(0.5)  # its tasks are still going away
