"""`ovnet-manager`: run one manager against an etcd cluster.

ovnet-manager init [flags]   create the cluster CA and join tokens (once per cluster), this
                             manager's certificate and the operator's admin credentials
ovnet-manager [flags]        serve (after `init`, or to add a manager to the cluster)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

import grpc

from manager.ca.authz import RolesError
from manager.ca.server import (
    DEFAULT_KEK_FILE,
    KEK_ENV,
    CAError,
    CertificateAuthority,
    ensure_kek,
    read_kek,
)
from manager.cluster import ManagerConfig
from manager.server import TLS_DIRNAME, Manager, ServerOptions
from manager.store import Store
from manager.store.etcd import EtcdClient, EtcdTLS
from osutil import stackdump
from osutil.files import atomic_write
from osutil.hostport import normalize_hostport, split_hostport
from osutil.sdnotify import Notifier
from security import pki

DEFAULT_STATE_DIR = Path("/var/lib/ovnet/manager")
DEFAULT_ADMIN_DIR = Path("~/.config/ovnet")
ETCD_PORT = 2379


class UsageError(Exception):
    """A flag or file the operator must fix; printed without a traceback."""


def add_common(p: argparse.ArgumentParser) -> None:
    """Flags of both `init` and serving."""
    p.add_argument(
        "--listen",
        default=os.environ.get("OVNET_LISTEN", "127.0.0.1:4242"),
        help="address:port of the control listener (mutual TLS) (default %(default)s)",
    )
    p.add_argument(
        "--advertise",
        default="",
        help="address:port other managers and agents reach this one at "
        "(default: the listen address)",
    )
    p.add_argument(
        "--etcd",
        default=os.environ.get("OVNET_ETCD", "127.0.0.1:2379"),
        help="etcd endpoints, comma separated (default %(default)s)",
    )
    p.add_argument("--prefix", default="/ovnet", help="etcd key prefix (default %(default)s)")
    p.add_argument(
        "--manager-id",
        default="",
        help="this manager's ID (default: hostname-port of the listen address)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where this manager keeps its certificate, in tls/ (default %(default)s)",
    )
    p.add_argument(
        "--ca-key-file",
        type=Path,
        default=DEFAULT_KEK_FILE,
        help="the key-encryption key of the cluster CA's private key, mode 0600 (init creates "
        f"it if missing; ${KEK_ENV} instead) (default %(default)s)",
    )
    p.add_argument(
        "--cert-expiry",
        type=float,
        default=pki.DEFAULT_CERT_LIFETIME.total_seconds(),
        help="lifetime in seconds of the certificates this manager issues (default %(default)s)",
    )
    p.add_argument("--etcd-cacert", type=Path, help="CA certificate of etcd's server certificate")
    p.add_argument("--etcd-cert", type=Path, help="client certificate for etcd")
    p.add_argument("--etcd-key", type=Path, help="client key for etcd")
    p.add_argument("--log-level", default="info")


def parse_init_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ovnet-manager init",
        description="Create the cluster's root CA and join tokens in etcd (fails if they exist), "
        "this manager's certificate and the admin credentials ovctl uses; print the join tokens.",
    )
    add_common(p)
    p.add_argument(
        "--admin-dir",
        type=Path,
        default=DEFAULT_ADMIN_DIR,
        help="where to write ca.pem, admin.crt, admin.key and (if absent) context.yaml "
        "(default %(default)s)",
    )
    p.add_argument(
        "--admin-cert-expiry",
        type=float,
        default=365 * 86400.0,
        help="lifetime in seconds of the admin certificate (default %(default)s)",
    )
    return p.parse_args(argv)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ovnet-manager",
        description="Serve as a manager of an ovnet cluster (`ovnet-manager init` first).",
    )
    add_common(p)
    p.add_argument(
        "--join-listen",
        default="",
        help="address:port of the join listener (TLS without client certificates, for nodes "
        "joining with a token) (default: the listen address with port + 1)",
    )
    p.add_argument(
        "--join-token",
        default="",
        help="without a certificate in the state dir: join with this manager token",
    )
    p.add_argument(
        "--join",
        default="",
        metavar="ADDR",
        help="an existing manager's join listener, for --join-token",
    )
    p.add_argument(
        "--key-rotation-interval",
        type=float,
        default=43200.0,
        help="seconds between rotations of the gossip and IPsec keys (default %(default)s)",
    )
    p.add_argument(
        "--election-ttl",
        type=int,
        default=3,
        help="leader lease TTL in seconds: failover time after a crash (default %(default)s)",
    )
    p.add_argument(
        "--heartbeat-period",
        type=float,
        default=5.0,
        help="seconds between agent heartbeats (default %(default)s)",
    )
    p.add_argument(
        "--heartbeat-grace",
        type=float,
        default=3.0,
        help="missed heartbeat periods before a node is down (default %(default)s)",
    )
    p.add_argument(
        "--attachment-grace",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="seconds a node may be down before the manager releases its attachments "
        "(containers joined through the CNI plugin) and their addresses (default %(default)s)",
    )
    p.add_argument(
        "--default-pool",
        default="10.0.0.0/8",
        help="comma-separated pools automatic subnets come from (default %(default)s)",
    )
    p.add_argument(
        "--default-pool-size",
        type=int,
        default=24,
        help="prefix length of automatic subnets (default %(default)s)",
    )
    p.add_argument(
        "--ui-listen",
        default="",
        metavar="ADDR",
        help="address:port of the live web view (HTTPS with the cluster's CA; the admin "
        "certificate or a token from `ovctl cluster ui-url`) (default: no web view)",
    )
    p.add_argument(
        "--task-history",
        type=int,
        default=5,
        help="finished tasks kept per slot (default %(default)s)",
    )
    p.add_argument(
        "--metrics-listen",
        default="",
        metavar="ADDR",
        help="address:port of the Prometheus metrics, plain HTTP at /metrics (default: none)",
    )
    return p.parse_args(argv)


def checked_addr(flag: str, value: str) -> str:
    """`value` if it is HOST:PORT, else UsageError naming the flag."""
    try:
        split_hostport(value)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None
    return value


def manager_id(args: argparse.Namespace) -> str:
    if args.manager_id:
        return str(args.manager_id)
    _, port = split_hostport(checked_addr("--listen", args.listen))
    return f"{socket.gethostname()}-{port}"


def etcd_endpoints(args: argparse.Namespace) -> tuple[str, ...]:
    """The --etcd endpoints, each HOST:PORT (a missing port is etcd's 2379)."""
    try:
        return tuple(normalize_hostport(e, ETCD_PORT) for e in args.etcd.split(",") if e.strip())
    except ValueError as e:
        raise UsageError(f"--etcd: {e}") from None


def etcd_tls(args: argparse.Namespace) -> EtcdTLS | None:
    if args.etcd_cacert is None:
        if args.etcd_cert or args.etcd_key:
            raise UsageError("--etcd-cert/--etcd-key need --etcd-cacert")
        return None
    if (args.etcd_cert is None) != (args.etcd_key is None):
        raise UsageError("--etcd-cert and --etcd-key go together")
    try:
        return EtcdTLS(
            ca=args.etcd_cacert.read_bytes(),
            cert=args.etcd_cert.read_bytes() if args.etcd_cert else None,
            key=args.etcd_key.read_bytes() if args.etcd_key else None,
        )
    except OSError as e:
        raise UsageError(f"cannot read an etcd TLS file: {e}") from None


def lifetime(seconds: float, flag: str) -> dt.timedelta:
    if seconds <= 0:
        raise UsageError(f"{flag} must be a positive number of seconds")
    return dt.timedelta(seconds=seconds)


async def init(args: argparse.Namespace) -> None:
    """Create the cluster CA, this manager's certificate and the admin credentials."""
    kek = ensure_kek(args.ca_key_file)
    etcd = EtcdClient(list(etcd_endpoints(args)), tls=etcd_tls(args))
    try:
        store = Store(etcd, args.prefix)
        ca, toks = await CertificateAuthority.initialize(
            store, kek, lifetime(args.cert_expiry, "--cert-expiry")
        )
    except grpc.aio.AioRpcError as e:
        raise UsageError(
            f"cannot reach etcd at {args.etcd}: {e.code().name} {e.details()}"
        ) from None
    finally:
        await etcd.close()
    ca.self_issue(manager_id(args)).save(args.state_dir / TLS_DIRNAME)
    admin_dir = args.admin_dir.expanduser()
    write_admin_credentials(
        ca,
        admin_dir,
        args.advertise or args.listen,
        lifetime(args.admin_cert_expiry, "--admin-cert-expiry"),
    )
    print(f"cluster {ca.cluster_id} initialized; admin credentials in {admin_dir}", file=sys.stderr)
    print(f"worker token: {toks.worker}\nmanager token: {toks.manager}", flush=True)


def write_admin_credentials(
    ca: CertificateAuthority, admin_dir: Path, advertise: str, life: dt.timedelta
) -> None:
    admin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = pki.new_key()
    cert = pki.issue(
        ca.root,
        ca.root_key,
        pki.make_csr(key),
        node_id=f"admin-{secrets.token_hex(6)}",
        role=pki.ROLE_ADMIN,
        now=pki.utcnow(),
        lifetime=life,
    )
    atomic_write(admin_dir / "ca.pem", ca.root_pem, mode=0o644, durable=True)
    atomic_write(admin_dir / "admin.key", pki.key_pem(key), mode=0o600, durable=True)
    atomic_write(admin_dir / "admin.crt", pki.cert_pem(cert), mode=0o644, durable=True)
    context = admin_dir / "context.yaml"
    if not context.exists():
        atomic_write(context, f"managers: [{advertise}]\n", mode=0o644, durable=True)


# How often systemd's STATUS= line is refreshed (sent only when its text changed).
STATUS_EVERY_S = 2.0


async def serve(args: argparse.Namespace) -> None:
    for flag, value in (
        ("--listen", args.listen),
        ("--advertise", args.advertise),
        ("--join-listen", args.join_listen),
        ("--join", args.join),
        ("--ui-listen", args.ui_listen),
        ("--metrics-listen", args.metrics_listen),
    ):
        if value:
            checked_addr(flag, value)
    opts = ServerOptions(
        listen=args.listen,
        advertise=args.advertise or args.listen,
        etcd=etcd_endpoints(args),
        prefix=args.prefix,
        manager_id=manager_id(args),
        election_ttl=args.election_ttl,
        join_listen=args.join_listen,
        state_dir=args.state_dir,
        kek=read_kek(args.ca_key_file),
        cert_lifetime=lifetime(args.cert_expiry, "--cert-expiry"),
        key_rotation_interval=args.key_rotation_interval,
        etcd_tls=etcd_tls(args),
        join_token=args.join_token,
        join_addr=args.join,
        ui_listen=args.ui_listen,
    )
    config = ManagerConfig(
        default_pools=tuple(p.strip() for p in args.default_pool.split(",") if p.strip()),
        default_subnet_size=args.default_pool_size,
        heartbeat_period_ms=int(args.heartbeat_period * 1000),
        heartbeat_grace=args.heartbeat_grace,
        task_history_limit=args.task_history,
        attachment_grace=args.attachment_grace,
    )
    if args.key_rotation_interval <= 0:
        raise UsageError("--key-rotation-interval must be a positive number of seconds")
    if args.attachment_grace < 0:
        raise UsageError("--attachment-grace must be a number of seconds, 0 or more")
    mgr = Manager(opts, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stackdump.install(loop)
    systemd = Notifier()
    metrics = await start_metrics(args.metrics_listen, mgr)
    try:
        await mgr.start()
    except BaseException:
        if metrics is not None:
            metrics.close()
        await mgr.stop()
        raise
    print(
        f"ovnet-manager {opts.manager_id} listening on {args.listen} (join listener "
        f"{mgr.join_listen}; etcd {args.etcd}, prefix {args.prefix})",
        file=sys.stderr,
        flush=True,
    )
    # Serving from here (followers forward to the leader), so ready even before an election.
    systemd.ready(mgr.status_line())
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATUS_EVERY_S)
        systemd.status(mgr.status_line())
    systemd.stopping()
    if metrics is not None:
        metrics.close()
    await mgr.stop()


async def start_metrics(addr: str, mgr: Manager) -> asyncio.Server | None:
    """The Prometheus endpoint of --metrics-listen (None without it); bound before the manager
    starts, so that a taken or foreign address is a usage error at once."""
    if not addr:
        return None
    from manager import metrics  # prometheus_client only for a manager that exports metrics

    try:
        return await metrics.start(addr, mgr)
    except OSError as e:
        raise UsageError(f"--metrics-listen {addr}: cannot listen: {e.strerror or e}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    is_init = bool(argv) and argv[0] == "init"
    args = parse_init_args(argv[1:]) if is_init else parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(init(args) if is_init else serve(args))
    except (CAError, UsageError, RolesError) as e:
        print(f"ovnet-manager: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
