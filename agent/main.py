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
import ctypes
import functools
import ipaddress
import json
import logging
import platform
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from agent.dataplane.xfrm import esp_unavailable
from agent.hostports import ListeningWatch
from agent.lb.nft import nftables_unavailable
from agent.model import HostConfig, Names
from agent.options import parse_args, parse_upstreams, podman_of
from agent.readiness import tell_systemd
from agent.session import AgentSession
from osutil import stackdump
from osutil.backoff import Backoff
from osutil.failover import Rotation
from osutil.hostport import next_port, split_hostport
from proto import objects_pb2 as pb
from security import certinfo
from security.credentials import CREDS_DIRNAME, NodeCredentials
from security.join import JoinError, ManagerUnreachable, join, renew_anywhere

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics

log = logging.getLogger("ovnet-agent")


def detect_vtep(managers: list[str]) -> str:
    """The local address the kernel would use to reach the first manager: on a multi-homed
    host that is the underlay the cluster talks over."""
    host, port = split_hostport(managers[0], default_port=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))  # UDP connect: no packet is sent
        return str(s.getsockname()[0])


def underlay_mtu(vtep: str) -> int:
    """The MTU of the interface holding the VTEP address (1500 when it cannot be found)."""
    from agent.dataplane import nl  # not at the top: `ovnet-agent --help` needs no netlink

    try:
        want = ipaddress.IPv4Address(vtep)
    except ValueError:
        return 1500
    raw = nl.RawNetlink(nl.netlink_socket())
    try:
        for index, addrs in raw.addresses().items():
            if any(a.ip == want for a in addrs):
                mtu = next((lk.mtu for lk in raw.links() if lk.index == index), 0)
                return mtu or 1500
    finally:
        raw.close()
    return 1500


class CredentialsError(Exception):
    """This node has no usable certificate and cannot get one without the operator."""


async def credentials(
    creds_dir: Path, token: str, join_addrs: list[str], retry_max: float = 5.0
) -> NodeCredentials:
    """The node's saved credentials, or new ones from joining with `token` (trying each join
    address in turn, as long as none answers). Raises CredentialsError when only the operator
    can help: no token, a wrong or rotated token, another cluster's CA, unusable saved files."""
    try:
        creds = NodeCredentials.load(creds_dir)
    except certinfo.CertError as e:
        raise CredentialsError(
            f"the credentials in {creds_dir} are unusable: {e}; remove {creds_dir} and start "
            "again with --join-token"
        ) from None
    now = certinfo.utcnow()
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
    rotation = Rotation(join_addrs)
    backoff = Backoff(initial=0.2, maximum=retry_max, jitter=0.5)
    while (joined := await _join_any(rotation, token)) is None:
        await asyncio.sleep(backoff.next())
    creds, addr = joined
    creds.save(creds_dir)
    log.info("joined the cluster as %s %s through %s", creds.role, creds.node_id, addr)
    return creds


async def _join_any(rotation: Rotation, token: str) -> tuple[NodeCredentials, str] | None:
    """Join through the first join listener that answers (the last good one first): the
    credentials and its address, or None when none answered. CredentialsError when one
    refused (retrying cannot help)."""
    for addr in rotation.order():
        try:
            creds = await join(addr, token)
        except JoinError as e:
            raise CredentialsError(str(e)) from None
        except ManagerUnreachable as e:
            log.info("cannot join yet: %s", e)
            continue
        rotation.succeeded(addr)
        return creds, addr
    return None


async def _helper(argv: list[str], *extra: str, stdin: bytes | None = None) -> tuple[int, bytes]:
    """Run this agent's command line again with `extra` (a helper mode) in a child process:
    its exit status and what it wrote on stdout (its stderr is the agent's log)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.main", *argv, *extra,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, _ = await proc.communicate(stdin)
    finally:
        if proc.returncode is None:  # the agent was stopped meanwhile: so is its helper
            proc.terminate()
    return proc.returncode or 0, out


async def _credentials_in_child(argv: list[str]) -> int:
    """Load and check this node's credentials, or join to get them, in a child process
    (`--credentials-only`): checking keys and signatures loads `cryptography`, 8+ MB that an
    agent would otherwise carry for its whole life for a few milliseconds' work at start (see
    security/certinfo.py). The child logs to the same stderr and prints any error itself;
    its exit status is the agent's when it fails."""
    rc, _ = await _helper(argv, "--credentials-only")
    return rc


def _die_with_parent() -> None:
    """A helper process gets SIGTERM when the agent that started it ends (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _credentials_only(args: argparse.Namespace) -> int:
    """The child's side of `_credentials_in_child`."""
    # A join may retry for as long as no manager answers: it must not outlive the agent.
    _die_with_parent()
    creds_dir = Path(args.state_dir) / CREDS_DIRNAME
    try:
        asyncio.run(credentials(creds_dir, args.join_token, args.join_addrs))
    except CredentialsError as e:
        print(f"ovnet-agent: error: {e}", file=sys.stderr)
        return 2
    return 0


async def _renew_in_child(
    argv: list[str], creds: NodeCredentials, managers: list[str]
) -> NodeCredentials:
    """Renew the certificate in a child process (`--renew-only`), for the same reason as
    `_credentials_in_child`: the key, the CSR and the checks of the answer need
    `cryptography`. The credentials go in and out as JSON on its stdin and stdout; errors
    come back as the exceptions the session retries on."""
    rc, out = await _helper(
        argv, "--renew-only", "--manager", ",".join(managers), stdin=_creds_json(creds)
    )
    if rc == _RENEW_REFUSED:
        raise certinfo.CertError("the renewed certificate was refused (see the helper's log)")
    if rc != 0:
        raise ConnectionError(f"the renewal helper failed (exit status {rc})")
    return _creds_from_json(out, verified=True)


def _creds_json(creds: NodeCredentials) -> bytes:
    pems = {"root": creds.root_pem, "cert": creds.cert_pem, "key": creds.key_pem}
    return json.dumps({k: v.decode() for k, v in pems.items()}).encode()


def _creds_from_json(data: bytes, *, verified: bool = False) -> NodeCredentials:
    parts = json.loads(data)
    return NodeCredentials(*(parts[k].encode() for k in ("root", "cert", "key")), verified=verified)


_RENEW_REFUSED = 4


def _renew_only(args: argparse.Namespace) -> int:
    """The child's side of `_renew_in_child`: the current credentials on stdin, the renewed
    ones on stdout."""
    _die_with_parent()
    creds = _creds_from_json(sys.stdin.buffer.read())
    managers = [m.strip() for m in args.manager.split(",") if m.strip()]
    try:
        new = asyncio.run(renew_anywhere(managers, creds))
    except certinfo.CertError as e:
        print(f"ovnet-agent: renewal refused: {e}", file=sys.stderr)
        return _RENEW_REFUSED
    except (grpc.aio.AioRpcError, ConnectionError) as e:
        detail = f"{e.code().name} {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else e
        print(f"ovnet-agent: renewal failed: {detail}", file=sys.stderr)
        return 3
    sys.stdout.write(_creds_json(new).decode())
    return 0


def _describe(args: argparse.Namespace) -> pb.NodeDescription:
    """What the agent registers about this host, with what its kernel cannot do (probed once,
    in throwaway namespaces): said in the log and shown by `ovctl node inspect`."""
    desc = pb.NodeDescription(
        hostname=args.hostname,
        addr=args.addr,
        platform=f"{platform.system()}/{platform.machine()}",
        agent_version="0.3.0",
        gossip_port=args.gossip_port,
    )
    ipsec_unavailable = esp_unavailable()
    if ipsec_unavailable:
        # Said once here and shown by `ovctl node inspect`; each task on an encrypted network
        # placed on this host fails with it.
        log.warning("encrypted networks cannot run here: %s", ipsec_unavailable)
        desc.unavailable["ipsec"] = ipsec_unavailable
    if nft_missing := nftables_unavailable():
        log.warning("%s", nft_missing)
        desc.unavailable["nftables"] = nft_missing
    if no_podman := podman_of(args).unavailable():
        # Image tasks go to other nodes while there are any (the scheduler reads this); one
        # placed here anyway fails with this text.
        log.warning("image tasks cannot run here: %s", no_podman)
        desc.unavailable["containers"] = no_podman
    return desc


class UsageError(Exception):
    """A flag the operator must fix, found once the agent runs; printed without a traceback."""


async def _metrics(addr: str) -> AgentMetrics | None:
    """The agent's metrics, served on `addr` for as long as the agent runs (None: no
    --metrics-listen). Imported only then: an agent without metrics does not load
    prometheus_client."""
    if not addr:
        return None
    from agent.metrics import AgentMetrics

    metrics = AgentMetrics()
    try:
        await metrics.serve(addr)
    except OSError as e:
        raise UsageError(f"--metrics-listen {addr}: cannot listen: {e.strerror or e}") from None
    return metrics


async def run(args: argparse.Namespace) -> int:
    # Imported here so that --help stays light.
    from agent.daemon import DaemonOptions
    from agent.wiring import Services, build_daemon

    # First: SIGUSR1's default action would end the agent (see osutil/stackdump.py).
    stackdump.install(asyncio.get_running_loop())
    managers = [m.strip() for m in args.manager.split(",") if m.strip()]
    state_dir = Path(args.state_dir)
    creds_dir = state_dir / CREDS_DIRNAME
    rc = await _credentials_in_child(args.argv)
    if rc != 0:
        return rc
    creds = NodeCredentials.read(creds_dir, verified=True)
    vtep = args.addr
    labels = dict(item.partition("=")[::2] for item in args.label)
    spec = pb.NodeSpec(
        labels=labels, role=pb.NODE_ROLE_MANAGER if args.role == "manager" else pb.NODE_ROLE_WORKER
    )
    desc = _describe(args)
    ipsec_unavailable = desc.unavailable.get("ipsec", "")
    host = HostConfig(
        vtep=ipaddress.IPv4Address(vtep),
        underlay_mtu=args.underlay_mtu,
        vxlan_port=args.vxlan_port,
        gwbridge_subnet=ipaddress.IPv4Network(args.gwbridge_subnet),
        names=Names(args.netns_prefix),
        etc_netns=Path(args.etc_netns),
        ipsec_unavailable=ipsec_unavailable,
    )
    session = AgentSession(
        managers,
        desc,
        spec,
        credentials=creds,
        creds_dir=creds_dir,
        state_dir=state_dir,
        renewer=functools.partial(_renew_in_child, args.argv),
    )
    # What programs listen on here: the manager refuses `ovctl run -p` mappings onto them.
    session.listening_ports = ListeningWatch().report
    metrics = await _metrics(args.metrics_listen)
    daemon = build_daemon(
        host,
        session,
        state_dir,
        Services(
            gossip_port=args.gossip_port,
            gossip_tuning=args.gossip_tuning,
            dns_upstreams=args.dns_upstreams,
            dns_ttl=args.dns_ttl,
            cni_socket=args.cni_socket,
            cni_conf_dir=args.cni_conf_dir,
        ),
        DaemonOptions(
            reconcile_interval=args.reconcile_interval,
            stop_timeout=args.stop_timeout,
            drain_delay=args.drain_delay,
        ),
        podman_of(args),
        metrics,
    )
    log.info(
        "agent %s: vtep %s, underlay MTU %d, netns prefix %r",
        args.hostname,
        vtep,
        host.underlay_mtu,
        host.names.prefix,
    )
    if daemon.cni is not None:
        await daemon.cni.start()
    runners = [
        asyncio.create_task(session.run(), name="session"),
        asyncio.create_task(daemon.run(), name="daemon"),
        asyncio.create_task(tell_systemd(daemon), name="systemd"),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*runners, waiter], return_when=asyncio.FIRST_COMPLETED)
    for r in runners:
        r.cancel()
    # Let each let go (the daemon closes its sockets and saves its gossip view).
    await asyncio.wait(runners, timeout=10)
    for r in runners:
        if r not in done:
            continue
        if not r.cancelled() and (exc := r.exception()) is not None:
            raise exc
        # Both loops run until cancelled: one that ended by itself is a bug. Say so and fail,
        # so that systemd (Restart=on-failure) starts a fresh agent, which adopts the tasks.
        log.error("the agent's %s loop ended by itself: exiting", r.get_name())
        return 1
    return 0
    # Tasks keep running when the agent stops (as with Docker's live restore): a restarted
    # agent adopts them. `--cleanup` is the way to remove everything.


async def cleanup(args: argparse.Namespace) -> None:
    """Remove every kernel object carrying this agent's prefix (after stopping its tasks),
    and its CNI conflists."""
    from agent.dataplane.kernel import DataPlane
    from agent.executor import ContainerExecutor, ExecutorRouter, ProcessExecutor

    containers = ContainerExecutor(Path(args.state_dir), podman_of(args), args.netns_prefix)
    executor = ExecutorRouter(ProcessExecutor(Path(args.state_dir)), containers)
    for task_id in executor.adopt():
        await executor.shutdown(task_id, args.stop_timeout)
    for task_id in executor.tasks():
        executor.remove(task_id)
    await containers.drain_background()
    # Containers whose task directory is gone (a state dir wiped by hand, say).
    await containers.sweep()
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
    if args.cni_socket and args.cni_conf_dir:
        # The conflists it wrote: runtimes would list networks nobody serves any more.
        from agent.cni.conflists import sync

        for change in sync(Path(args.cni_conf_dir), {}, args.cni_socket):
            log.info("CNI conflists: %s", change)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__ or "")
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
    from agent.discovery import tuning_from_options

    try:
        args.dns_upstreams = parse_upstreams(args.dns_upstream)
    except ValueError as e:
        print(f"ovnet-agent: error: --dns-upstream: {e}", file=sys.stderr)
        return 2

    try:
        options = dict(o.partition("=")[::2] for o in args.gossip_opt)
        args.gossip_tuning = tuning_from_options(options)
    except ValueError as e:
        print(f"ovnet-agent: error: {e}", file=sys.stderr)
        return 2
    if not args.manager:
        print("ovnet-agent: error: --manager is required", file=sys.stderr)
        return 2
    # Facts about the host, found before the event loop starts.
    managers = [m.strip() for m in args.manager.split(",") if m.strip()]
    try:
        for m in managers:
            split_hostport(m)
        args.join_addrs = [a.strip() for a in args.join_addr.split(",") if a.strip()] or [
            next_port(m) for m in managers
        ]
    except ValueError as e:
        print(f"ovnet-agent: error: --manager: {e}", file=sys.stderr)
        return 2
    if args.credentials_only:
        return _credentials_only(args)
    if args.renew_only:
        return _renew_only(args)
    args.addr = args.addr or detect_vtep(managers)
    args.underlay_mtu = args.underlay_mtu or underlay_mtu(args.addr)
    try:
        return asyncio.run(run(args))
    except UsageError as e:
        print(f"ovnet-agent: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
