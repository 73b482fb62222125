"""`ovctl run`, `ps`, `rm` and `logs`: standalone tasks, as `docker run/ps/rm/logs`.

A standalone task is stored as a service marked `standalone` (manager/standalone.py says what
that means); these verbs show and handle only those, while `service ls` leaves them out. Its ID
is the record's (the service ID), which stays the same across the task's restarts.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from ovctl import logview, render, specs
from ovctl.commands import Stub, _each, _hostnames, error
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb

# How long after the task ended `run` (attached) still prints what arrives: agents publish
# output every 0.5 s, so the last lines may reach the manager after the task's end.
LAST_LINES_S = 1.5
POLL_S = 0.2
# Exit status of `run` when the task never ran (podman's and docker's convention).
NEVER_RAN = 125
_ADJECTIVES = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "noble", "quick")
_NOUNS = ("otter", "heron", "lynx", "finch", "orca", "ibex", "koala", "raven", "yak")

_Verb = Callable[..., argparse.ArgumentParser]


def add_verbs(groups: Any, verb: _Verb, arg: Callable[..., Any]) -> None:
    """The four top-level verbs, on the command tree's `groups`."""
    p = verb(groups, "run", run, "run a standalone task (a container with --image)")
    p.set_defaults(takes_command=True)
    p.add_argument(
        "-d",
        "--detach",
        action="store_true",
        help="print its ID once it runs and its name resolves on its networks, and return",
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="with -d: give up waiting (the task goes on) after this long (default 120)",
    )
    p.add_argument("--name", help="its name (DNS name on its networks; default: generated)")
    p.add_argument("--node", metavar="HOST", help="the node to run on (default: least loaded)")
    p.add_argument(
        "--network",
        type=arg(specs.parse_network_attachment, "network"),
        action="append",
        metavar="NET[,alias=A]",
        help="an attachable network, repeatable",
    )
    p.add_argument(
        "-p",
        "--publish",
        type=arg(specs.parse_mapping, "publish"),
        action="append",
        metavar="[HOSTPORT:]PORT[/PROTO]",
        help="map a port of the node to the task's (without HOSTPORT: a free one)",
    )
    p.add_argument("--image", metavar="IMAGE", help="run a container of this image (podman)")
    p.add_argument("-e", "--env", action="append", metavar="K=V")
    p.add_argument("-w", "--workdir", metavar="DIR")
    p.add_argument("--restart", choices=tuple(specs.RESTART_CONDITIONS), help="default none")
    p.add_argument("command", nargs="*", metavar="CMD", help="the command; put it after --")

    p = verb(groups, "ps", ps, "list standalone tasks")
    p.add_argument("-a", "--all", action="store_true", help="also the ended ones")
    p.add_argument("-q", "--quiet", action="store_true", help="print full IDs only")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = verb(groups, "rm", rm, "remove standalone tasks")
    p.add_argument("-f", "--force", action="store_true", help="stop a running one first")
    p.add_argument("refs", nargs="+", metavar="NAME|ID")

    p = verb(groups, "logs", logs, "print the output of a standalone task")
    p.add_argument("-f", "--follow", action="store_true", help="go on printing new output")
    logview.add_options(p, arg)
    p.add_argument("ref", metavar="NAME|ID")


def _generated_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.token_hex(2)}"


def run(stub: Stub, args: argparse.Namespace) -> int:
    options = specs.RunOptions(
        name=args.name or _generated_name(),
        command=[*args.command, *args.trailing],
        image=args.image,
        node=args.node,
        networks=args.network or [],
        ports=args.publish or [],
        env=args.env or [],
        workdir=args.workdir,
        restart_condition=args.restart,
    )
    svc = stub.CreateService(cpb.CreateServiceRequest(spec=specs.run_spec(options))).service
    if args.detach:
        code = _wait_started(stub, svc, args.wait_timeout)
        if code == 0:
            print(svc.meta.id)
        return code
    return _attach(stub, svc)


def _wait_started(stub: Stub, svc: pb.Service, timeout: float) -> int:
    """`run -d` returns once the task runs and every host concerned has programmed it (the
    manager's convergence verdict: its name answers on its networks), or once it has already
    ended (a short command: 0, as docker; one that never ran: NEVER_RAN and why)."""
    deadline = time.monotonic() + timeout
    request = cpb.ListTasksRequest(service_refs=[svc.meta.id])
    while True:
        resp = stub.GetService(cpb.GetServiceRequest(service_ref=svc.meta.id))
        if resp.convergence.converged:
            return 0
        task = _latest(stub.ListTasks(request).tasks)
        if task is not None and task.status.state > pb.TASK_STATE_RUNNING:
            if _never_ran(task.status) or task.status.state == pb.TASK_STATE_REJECTED:
                error(f"{svc.spec.name}: {task.status.err or task.status.message}")
                return NEVER_RAN
            return 0
        if time.monotonic() > deadline:
            waiting = ", ".join(resp.convergence.waiting) or "the task to run"
            error(
                f"{svc.spec.name} not running after {timeout:.0f} s (waiting for: {waiting}); "
                f"it goes on: see `ovctl ps -a`, or `ovctl rm -f {svc.spec.name}`"
            )
            return 1
        time.sleep(POLL_S)


def _latest(tasks: Sequence[pb.Task]) -> pb.Task | None:
    return max(tasks, key=lambda t: t.meta.created_at_ms, default=None)


def _attach(stub: Stub, svc: pb.Service) -> int:
    """Print the task's output until it ends; its exit status (NEVER_RAN if it did not run)."""
    failure: list[grpc.RpcError] = []

    def pump() -> None:
        try:
            request = cpb.ServiceLogsRequest(service_ref=svc.meta.id, follow=True)
            for line in stub.ServiceLogs(request):
                out = sys.stderr if line.stream == "stderr" else sys.stdout
                out.buffer.write(line.data)
                out.flush()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                failure.append(e)

    printer = threading.Thread(target=pump, name="logs", daemon=True)
    printer.start()
    request = cpb.ListTasksRequest(service_refs=[svc.meta.id])
    try:
        while True:
            task = _latest(stub.ListTasks(request).tasks)
            if task is not None and task.status.state > pb.TASK_STATE_RUNNING:
                break
            time.sleep(POLL_S)
        printer.join(LAST_LINES_S)
    except KeyboardInterrupt:
        error(f"detached from {svc.spec.name}; it goes on running (ovctl rm -f {svc.spec.name})")
        return 130
    finally:
        stub.cancel_streams()
        printer.join(5)
    if failure:
        raise failure[0]
    status = task.status
    if status.state in (pb.TASK_STATE_COMPLETE, pb.TASK_STATE_FAILED) and not _never_ran(status):
        return status.exit_code
    error(f"{svc.spec.name}: {status.err or render.enum_label(pb.TaskState, status.state)}")
    return NEVER_RAN


def _never_ran(status: pb.TaskStatus) -> bool:
    """The agent reports a task that never ran FAILED with exit code -1 (as Docker does)."""
    return status.state == pb.TASK_STATE_FAILED and status.exit_code == -1


def _standalone(stub: Stub) -> list[pb.Service]:
    services = stub.ListServices(cpb.ListServicesRequest()).services
    return [s for s in services if s.spec.HasField("standalone")]


def ps(stub: Stub, args: argparse.Namespace) -> int:
    services = _standalone(stub)
    latest: dict[str, pb.Task] = {}
    if services:
        tasks = stub.ListTasks(cpb.ListTasksRequest(service_refs=[s.meta.id for s in services]))
        for t in tasks.tasks:
            cur = latest.get(t.service_id)
            if cur is None or t.meta.created_at_ms > cur.meta.created_at_ms:
                latest[t.service_id] = t
    if not args.all:
        services = [
            s
            for s in services
            if (t := latest.get(s.meta.id)) is None or t.status.state <= pb.TASK_STATE_RUNNING
        ]
    services.sort(key=lambda s: -s.meta.created_at_ms)
    if args.quiet:
        for s in services:
            print(s.meta.id)
    elif args.format == "json":
        print(render.to_json(services))
    else:
        now = int(time.time() * 1000)
        print(render.standalone_table(services, latest, _hostnames(stub), now))
    return 0


def _resolve(stub: Stub, ref: str) -> pb.Service:
    """The standalone task `ref` names; NOT_FOUND and services are refused with what to do."""
    try:
        svc: pb.Service = stub.GetService(cpb.GetServiceRequest(service_ref=ref)).service
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            raise specs.SpecConflict(f"no task {ref!r}: see ovctl ps -a") from None
        raise
    if not svc.spec.HasField("standalone"):
        raise specs.SpecConflict(f"{ref!r} is a service: use ovctl service rm / service logs")
    return svc


def rm(stub: Stub, args: argparse.Namespace) -> int:
    def remove(ref: str) -> None:
        svc = _resolve(stub, ref)
        if not args.force:
            tasks = stub.ListTasks(cpb.ListTasksRequest(service_refs=[svc.meta.id])).tasks
            task = _latest(tasks)
            if task is not None and task.status.state <= pb.TASK_STATE_RUNNING:
                raise specs.SpecConflict(
                    f"{svc.spec.name} is running: stop and remove it with ovctl rm -f"
                )
        stub.RemoveService(cpb.RemoveServiceRequest(service_ref=svc.meta.id))
        print(ref)

    return _each(args.refs, remove)


def logs(stub: Stub, args: argparse.Namespace) -> int:
    svc = _resolve(stub, args.ref)
    request = cpb.ServiceLogsRequest(
        service_ref=svc.meta.id, follow=args.follow, since_ms=args.since
    )
    try:
        for line in stub.ServiceLogs(request):
            out = sys.stderr if line.stream == "stderr" else sys.stdout
            out.buffer.write(logview.timestamped(line) if args.timestamps else line.data)
            out.flush()
    except KeyboardInterrupt:
        return 130
    return 0
