"""`ovnet-agent`: the per-host daemon.

It joins the cluster with a join token the first time (getting a certificate whose CN is its
node ID, kept in <state-dir>/tls), registers the host with a manager and holds a mutual-TLS
session (failing over between managers),
runs the tasks assigned to the host as processes in their own network namespaces, builds the
overlay data plane for them (a bridge and a VXLAN device per network, veths, static FDB and
neighbour entries for the endpoints on other hosts, egress through the host), and reports
task states and logs back.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import platform
import random
import signal
import socket
import sys
from pathlib import Path

from agent import tls
from agent.model import DEFAULT_GWBRIDGE_SUBNET, DEFAULT_VXLAN_PORT, HostConfig, Names
from agent.session import AgentSession
from manager.ca import pki
from proto import objects_pb2 as pb

log = logging.getLogger("ovnet-agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ovnet-agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manager", default="", help="manager addresses host:port, comma separated")
    p.add_argument(
        "--join-token",
        default=os.environ.get("OVNET_JOIN_TOKEN", ""),
        help="join token (OVNTKN-1-...; env OVNET_JOIN_TOKEN), needed only until this node has "
        "a certificate in <state-dir>/tls (print one with `ovctl cluster join-token worker`)",
    )
    p.add_argument(
        "--join-addr",
        default="",
        help="managers' join listeners host:port, comma separated (default: each --manager "
        "address with the next port)",
    )
    p.add_argument("--hostname", default=socket.gethostname())
    p.add_argument(
        "--addr",
        default="",
        help="this host's underlay (VTEP) address (default: the source address of the route "
        "to the first manager)",
    )
    p.add_argument("--role", choices=["worker", "manager"], default="worker")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V",
        help="node label (first registration only)",
    )
    p.add_argument(
        "--state-dir",
        default="/var/lib/ovnet-agent",
        help="where the node ID, certificate (tls/) and tasks are kept across restarts "
        "(default %(default)s)",
    )
    p.add_argument(
        "--netns-prefix",
        default="ovnet-",
        help="prefix of the network namespaces this agent makes (default %(default)s); one "
        "per agent when several share a machine",
    )
    p.add_argument("--vxlan-port", type=int, default=DEFAULT_VXLAN_PORT)
    p.add_argument("--underlay-mtu", type=int, default=0, help="default: the VTEP's link MTU")
    p.add_argument("--gwbridge-subnet", default=str(DEFAULT_GWBRIDGE_SUBNET))
    p.add_argument("--etc-netns", default="/etc/netns", help=argparse.SUPPRESS)
    p.add_argument(
        "--reconcile-interval",
        type=float,
        default=5.0,
        help="seconds between full reconciles of kernel state (default %(default)s)",
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        help="seconds between SIGTERM and SIGKILL when stopping a task (default %(default)s)",
    )
    p.add_argument(
        "--gossip-port",
        type=int,
        default=7946,
        help="UDP and TCP port of gossip with the other agents, on --addr (default %(default)s)",
    )
    p.add_argument(
        "--gossip-opt",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a gossip timing or limit, e.g. probe_interval=1.0, gossip_interval=0.2, "
        "gossip_nodes=3, suspicion_mult=4, push_pull_interval=30 (see agent/gossip/config.py)",
    )
    p.add_argument(
        "--gossip-status",
        action="store_true",
        help="print this host's gossip view as last saved by its agent (works while every "
        "manager is down), then exit",
    )
    p.add_argument(
        "--drain-delay",
        type=float,
        default=2.0,
        help="seconds a task stays reachable but takes no new connections before it is "
        "stopped, so that every host drops it first (default %(default)s)",
    )
    p.add_argument(
        "--dns-upstream",
        action="append",
        default=[],
        metavar="IP[:PORT]",
        help="resolver for names that are not the cluster's (repeatable; default: the "
        "nameservers of /etc/resolv.conf; 'none': answer NXDOMAIN instead)",
    )
    p.add_argument(
        "--dns-ttl",
        type=int,
        default=2,
        help="TTL of the embedded resolver's answers, short so that clients never keep a "
        "removed task for long (default %(default)s)",
    )
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="stop this agent's tasks and remove every kernel object it made, then exit",
    )
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def parse_upstreams(values: list[str]) -> list[tuple[str, int]] | None:
    """None: take the host's resolvers; [] ('none'): no forwarding at all."""
    from agent.discovery import parse_addr

    if not values:
        return None
    if values == ["none"]:
        return []
    out = []
    for v in values:
        host, port = parse_addr(v) or (v, 53)
        try:
            out.append((str(ipaddress.IPv4Address(host)), port))
        except ValueError:
            raise ValueError(f"{v!r} is not IP[:PORT]") from None
    return out


def detect_vtep(managers: list[str]) -> str:
    """The local address the kernel would use to reach the first manager: on a multi-homed
    host that is the underlay the cluster talks over."""
    host, _, port = managers[0].rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host.strip("[]"), int(port or 1)))  # UDP connect: no packet is sent
        return str(s.getsockname()[0])


def underlay_mtu(vtep: str) -> int:
    """The MTU of the interface holding the VTEP address (1500 when it cannot be found)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for addr in ipr.get_addr(family=socket.AF_INET):
            if addr.get("IFA_ADDRESS") == vtep:
                links = ipr.get_links(addr["index"])
                if links:
                    return int(links[0].get("IFLA_MTU") or 1500)
    return 1500


class CredentialsError(Exception):
    """This node has no usable certificate and cannot get one without the operator."""


async def credentials(
    creds_dir: Path, token: str, join_addrs: list[str], retry_max: float = 5.0
) -> tls.NodeCredentials:
    """The node's saved credentials, or new ones from joining with `token` (trying each join
    address in turn, as long as none answers). Raises CredentialsError when only the operator
    can help: no token, a wrong or rotated token, another cluster's CA, unusable saved files."""
    try:
        creds = tls.NodeCredentials.load(creds_dir)
    except pki.CertError as e:
        raise CredentialsError(
            f"the credentials in {creds_dir} are unusable: {e}; remove {creds_dir} and start "
            "again with --join-token"
        ) from None
    now = pki.utcnow()
    if creds is not None and creds.not_after <= now and token:
        log.warning(
            "the certificate of node %s expired at %s: joining again with the token (as a new "
            "node)",
            creds.node_id,
            creds.not_after.isoformat(),
        )
        creds = None
    if creds is not None:
        return creds
    if not token:
        raise CredentialsError(
            f"this node has no certificate in {creds_dir}: start it once with --join-token "
            "(or OVNET_JOIN_TOKEN; print one with `ovctl cluster join-token worker`)"
        )
    delay = 0.2
    i = 0
    while True:
        addr = join_addrs[i % len(join_addrs)]
        try:
            creds = await tls.join(addr, token)
            break
        except tls.JoinError as e:
            raise CredentialsError(str(e)) from None
        except tls.ManagerUnreachable as e:
            log.info("cannot join yet: %s", e)
        i += 1
        if i % len(join_addrs) == 0:
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, retry_max)
    creds.save(creds_dir)
    log.info("joined the cluster as %s %s through %s", creds.role, creds.node_id, addr)
    return creds


async def run(args: argparse.Namespace) -> int:
    from agent.daemon import AgentDaemon  # imported here so that --help stays light

    managers = [m.strip() for m in args.manager.split(",") if m.strip()]
    state_dir = Path(args.state_dir)
    creds_dir = state_dir / tls.CREDS_DIRNAME
    try:
        creds = await credentials(creds_dir, args.join_token, args.join_addrs)
    except CredentialsError as e:
        print(f"ovnet-agent: error: {e}", file=sys.stderr)
        return 2
    vtep = args.addr
    labels = dict(item.partition("=")[::2] for item in args.label)
    spec = pb.NodeSpec(
        labels=labels, role=pb.NODE_ROLE_MANAGER if args.role == "manager" else pb.NODE_ROLE_WORKER
    )
    desc = pb.NodeDescription(
        hostname=args.hostname,
        addr=vtep,
        platform=f"{platform.system()}/{platform.machine()}",
        agent_version="0.3.0",
        gossip_port=args.gossip_port,
    )
    host = HostConfig(
        vtep=ipaddress.IPv4Address(vtep),
        underlay_mtu=args.underlay_mtu,
        vxlan_port=args.vxlan_port,
        gwbridge_subnet=ipaddress.IPv4Network(args.gwbridge_subnet),
        names=Names(args.netns_prefix),
        etc_netns=Path(args.etc_netns),
    )
    session = AgentSession(
        managers, desc, spec, credentials=creds, creds_dir=creds_dir, state_dir=state_dir
    )
    daemon = AgentDaemon(
        host,
        session,
        state_dir,
        reconcile_interval=args.reconcile_interval,
        stop_timeout=args.stop_timeout,
        gossip_port=args.gossip_port,
        gossip_config=args.gossip_config,
        drain_delay=args.drain_delay,
        dns_upstreams=args.dns_upstreams,
        dns_ttl=args.dns_ttl,
    )
    log.info(
        "agent %s: vtep %s, underlay MTU %d, netns prefix %r",
        args.hostname,
        vtep,
        host.underlay_mtu,
        host.names.prefix,
    )
    runners = [asyncio.create_task(session.run()), asyncio.create_task(daemon.run())]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*runners, waiter], return_when=asyncio.FIRST_COMPLETED)
    for r in runners:
        r.cancel()
    for r in runners:
        if r in done and not r.cancelled() and (exc := r.exception()) is not None:
            raise exc
    return 0
    # Tasks keep running when the agent stops (as with Docker's live restore): a restarted
    # agent adopts them. `--cleanup` is the way to remove everything.


async def cleanup(args: argparse.Namespace) -> None:
    """Remove every kernel object carrying this agent's prefix (after stopping its tasks)."""
    from agent.dataplane.kernel import DataPlane
    from agent.executor.runner import Runner

    runner = Runner(Path(args.state_dir), lambda *_: None)
    for task_id in runner.adopt():
        await runner.stop(task_id, args.stop_timeout)
    for task_id in runner.task_ids():
        runner.remove(task_id)
    host = HostConfig(
        vtep=ipaddress.IPv4Address(args.addr or "127.0.0.1"),
        names=Names(args.netns_prefix),
        etc_netns=Path(args.etc_netns),
        gwbridge_subnet=ipaddress.IPv4Network(args.gwbridge_subnet),
    )
    dp = DataPlane(host)
    try:
        await dp.remove_all()
    finally:
        await dp.close()
    from agent.lb.balancer import LoadBalancer

    lb = LoadBalancer(host.names.lb_table)
    try:
        await lb.remove("host", None)
    finally:
        await lb.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.cleanup:
        asyncio.run(cleanup(args))
        return 0
    if args.gossip_status:
        from agent.discovery import STATUS_FILE

        try:
            print((Path(args.state_dir) / STATUS_FILE).read_text())
        except OSError as e:
            print(f"ovnet-agent: no gossip status saved in {args.state_dir}: {e}", file=sys.stderr)
            return 1
        return 0
    from agent.discovery import gossip_config

    try:
        args.dns_upstreams = parse_upstreams(args.dns_upstream)
    except ValueError as e:
        print(f"ovnet-agent: error: --dns-upstream: {e}", file=sys.stderr)
        return 2

    try:
        args.gossip_config = gossip_config(dict(o.partition("=")[::2] for o in args.gossip_opt))
    except ValueError as e:
        print(f"ovnet-agent: error: {e}", file=sys.stderr)
        return 2
    if not args.manager:
        print("ovnet-agent: error: --manager is required", file=sys.stderr)
        return 2
    # Facts about the host, found before the event loop starts (pyroute2's sync API runs its
    # own loop).
    managers = [m.strip() for m in args.manager.split(",") if m.strip()]
    try:
        args.join_addrs = [a.strip() for a in args.join_addr.split(",") if a.strip()] or [
            tls.join_addr(m) for m in managers
        ]
    except ValueError as e:
        print(f"ovnet-agent: error: --manager: {e}", file=sys.stderr)
        return 2
    args.addr = args.addr or detect_vtep(managers)
    args.underlay_mtu = args.underlay_mtu or underlay_mtu(args.addr)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
