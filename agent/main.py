"""`ovnet-agent`: the per-host daemon.

This release holds the session with the managers: it registers the host, keeps its session and
heartbeats (so the manager sees the node Ready and can schedule onto it), and tracks the node's
assignment set. It does not yet run tasks or build the data plane: assigned tasks stay in state
Assigned until the executor and VXLAN data plane (issue F2) land.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import signal
import socket
import sys
import time
from pathlib import Path

import grpc

from agent.session import AgentSession, Assignments
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

log = logging.getLogger("ovnet-agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ovnet-agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manager", required=True, help="manager addresses host:port, comma separated")
    p.add_argument("--hostname", default=socket.gethostname())
    p.add_argument("--addr", default="", help="this host's underlay (VTEP) address")
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
        help="where the node ID is kept across restarts (default %(default)s)",
    )
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    labels = dict(item.partition("=")[::2] for item in args.label)
    spec = pb.NodeSpec(
        labels=labels, role=pb.NODE_ROLE_MANAGER if args.role == "manager" else pb.NODE_ROLE_WORKER
    )
    desc = pb.NodeDescription(
        hostname=args.hostname,
        addr=args.addr,
        platform=f"{platform.system()}/{platform.machine()}",
        agent_version="0.1.0",
    )

    reported: set[str] = set()

    async def show(a: Assignments) -> None:
        log.info(
            "assignment set: %d task(s), %d network(s), %d service(s)",
            len(a.tasks),
            len(a.networks),
            len(a.services),
        )
        # Nothing runs here yet, so a task told to stop is stopped: say so, or the manager
        # would wait for it forever before freeing its addresses.
        stop = [
            t.meta.id
            for t in a.tasks.values()
            if t.desired_state > pb.TASK_STATE_RUNNING and t.meta.id not in reported
        ]
        if stop:
            now = int(time.time() * 1000)
            try:
                await session.report(
                    [
                        dpb.TaskStatusUpdate(
                            task_id=tid,
                            status=pb.TaskStatus(
                                state=pb.TASK_STATE_SHUTDOWN,
                                message="not running",
                                timestamp_ms=now,
                            ),
                        )
                        for tid in stop
                    ]
                )
                reported.update(stop)
            except (grpc.aio.AioRpcError, ConnectionError) as e:
                log.warning("could not report stopped tasks (will retry): %s", e)

    session = AgentSession(
        [m.strip() for m in args.manager.split(",") if m.strip()],
        desc,
        spec,
        state_dir=Path(args.state_dir),
        on_assignments=show,
    )
    runner = asyncio.create_task(session.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.warning("this agent does not run tasks yet (executor and data plane: issue F2)")
    await stop.wait()
    runner.cancel()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
