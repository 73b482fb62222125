"""`ovnet-manager`: run one manager against an etcd cluster."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from manager.cluster import ManagerConfig
from manager.server import Manager, ServerOptions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ovnet-manager", description=__doc__)
    p.add_argument(
        "--listen",
        default=os.environ.get("OVNET_LISTEN", "127.0.0.1:4242"),
        help="address:port to serve gRPC on (default %(default)s)",
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
        "--task-history",
        type=int,
        default=5,
        help="finished tasks kept per slot (default %(default)s)",
    )
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    port = args.listen.rsplit(":", 1)[-1]
    opts = ServerOptions(
        listen=args.listen,
        advertise=args.advertise or args.listen,
        etcd=tuple(e.strip() for e in args.etcd.split(",") if e.strip()),
        prefix=args.prefix,
        manager_id=args.manager_id or f"{socket.gethostname()}-{port}",
        election_ttl=args.election_ttl,
    )
    config = ManagerConfig(
        default_pools=tuple(p.strip() for p in args.default_pool.split(",") if p.strip()),
        default_subnet_size=args.default_pool_size,
        heartbeat_period_ms=int(args.heartbeat_period * 1000),
        heartbeat_grace=args.heartbeat_grace,
        task_history_limit=args.task_history,
    )
    mgr = Manager(opts, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await mgr.start()
    print(
        f"ovnet-manager {opts.manager_id} listening on {args.listen} (etcd {args.etcd}, "
        f"prefix {args.prefix})",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    await mgr.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
