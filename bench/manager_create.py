"""Manager benchmark: create N one-replica services through the Control API.

Starts a private etcd (Debian's etcd-server, data on /dev/shm when present) and one manager
process (initialized with `ovnet-manager init`; every call is mutual TLS with the admin
certificate init wrote, as ovctl's are), then creates N services from `--clients` concurrent
gRPC clients. Prints services/s and the p50/p99/max latency of CreateService, then how long the
reconciler took until every service had its task, and writes everything to a JSON file.

    .venv/bin/python -m bench.manager_create [--services 1000] [--clients 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc

from bench import write_results
from osutil.hostport import join_hostport
from ovctl.devcluster.etcd import EtcdServer
from ovctl.devcluster.procs import LOOPBACK, ManagedProcess, free_ports
from proto import control_pb2 as cpb
from proto import control_pb2_grpc
from proto import objects_pb2 as pb
from security.credentials import MANAGER_CHANNEL_OPTIONS, NodeCredentials


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def admin_channel(addr: str, admin_dir: Path) -> grpc.Channel:
    creds = NodeCredentials(
        *((admin_dir / n).read_bytes() for n in ("ca.pem", "admin.crt", "admin.key"))
    )
    return grpc.secure_channel(addr, creds.channel_credentials(), options=MANAGER_CHANNEL_OPTIONS)


@contextlib.contextmanager
def manager(tmp: Path) -> Iterator[tuple[str, Path]]:
    """A private etcd and one initialized manager on loopback: yields the manager's address
    and the admin credentials' dir, once it leads."""
    with EtcdServer() as etcd:
        etcd.start()
        port, join_port = free_ports(2)
        addr = join_hostport(LOOPBACK, port)
        common = [
            "--listen",
            addr,
            "--etcd",
            etcd.endpoint,
            "--prefix",
            "/bench",
            "--state-dir",
            str(tmp / "manager"),
            "--ca-key-file",
            str(tmp / "ca.kek"),
        ]
        admin_dir = tmp / "admin"
        init = subprocess.run(
            [sys.executable, "-m", "manager.main", "init", *common, "--admin-dir", str(admin_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if init.returncode != 0:
            raise SystemExit(f"ovnet-manager init failed:\n{init.stdout}{init.stderr}")
        mgr = ManagedProcess(
            [
                sys.executable,
                "-m",
                "manager.main",
                *common,
                "--join-listen",
                join_hostport(LOOPBACK, join_port),
                "--log-level",
                "warning",
            ],
            tmp / "manager.log",
        )
        with mgr:
            mgr.start()
            mgr.wait_port(LOOPBACK, port, 15)
            yield addr, admin_dir


def wait_leader(stub: control_pb2_grpc.ControlStub, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not stub.GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=5).leader_id:
        if time.monotonic() > deadline:
            raise SystemExit("manager did not become leader")
        time.sleep(0.05)


def create_services(addr: str, admin_dir: Path, n: int, clients: int) -> list[float]:
    """Create services svc0..svc<n-1> from ``clients`` concurrent clients; their latencies."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        own = control_pb2_grpc.ControlStub(admin_channel(addr, admin_dir))
        for i in range(k, n, clients):
            spec = pb.ServiceSpec(
                name=f"svc{i}",
                command=["sleep", "infinity"],
                networks=[pb.NetworkAttachmentConfig(target="bench")],
                replicated=pb.ReplicatedService(replicas=1),
            )
            t = time.perf_counter()
            own.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=30)
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return latencies


def wait_tasks(stub: control_pb2_grpc.ControlStub, n: int) -> None:
    """Until the reconciler has created (at least) ``n`` tasks."""
    while len(stub.ListTasks(cpb.ListTasksRequest(), timeout=30).tasks) < n:
        time.sleep(0.05)


def report(
    n: int, clients: int, elapsed: float, converged: float, latencies: list[float]
) -> dict[str, object]:
    return {
        "benchmark": "manager_create_services",
        "services": n,
        "clients": clients,
        "seconds": round(elapsed, 3),
        "services_per_second": round(n / elapsed, 1),
        "latency_ms": {
            "p50": round(percentile(latencies, 50) * 1000, 2),
            "p99": round(percentile(latencies, 99) * 1000, 2),
            "max": round(max(latencies) * 1000, 2),
            "mean": round(statistics.fmean(latencies) * 1000, 2),
        },
        "all_tasks_created_after_s": round(converged, 3),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run(n: int, clients: int, out: Path) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="ovnet-bench-"))
    with manager(tmp) as (addr, admin_dir):
        channel = admin_channel(addr, admin_dir)
        stub = control_pb2_grpc.ControlStub(channel)
        wait_leader(stub)
        stub.CreateNetwork(
            cpb.CreateNetworkRequest(spec=pb.NetworkSpec(name="bench", subnet="10.100.0.0/16")),
            timeout=10,
        )
        t0 = time.perf_counter()
        latencies = create_services(addr, admin_dir, n, clients)
        elapsed = time.perf_counter() - t0
        # The reconciler creates each service's task in the background: time until all exist.
        wait_tasks(stub, n)
        converged = time.perf_counter() - t0
        channel.close()
    result = report(n, clients, elapsed, converged, latencies)
    write_results(out, result)
    return result


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/results/manager_create.json"))
    args = p.parse_args()
    r = run(args.services, args.clients, args.out)
    lat = cast(dict[str, float], r["latency_ms"])
    print(
        f"created {r['services']} services with {r['clients']} client(s) in {r['seconds']} s: "
        f"{r['services_per_second']} services/s"
    )
    print(f"CreateService latency: p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")
    print(f"every service had its task after {r['all_tasks_created_after_s']} s")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
