"""The main job at this stage (F1): a control plane on this machine and a scripted ovctl session.

Starts a private etcd (Debian's etcd-server, on free loopback ports), one manager and three
`ovnet-agent` processes (host1..host3; they register and heartbeat, so the nodes are Ready and
tasks get scheduled onto them), then drives `ovctl` the way a Docker Swarm user would, printing
every command and its output. Everything it started is stopped at the end, even on failure.
Tasks are scheduled and assigned but not run: the executor and data plane are issue F2.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.etcd import EtcdServer  # noqa: E402
from tests.procs import ManagedProcess, free_port  # noqa: E402

BIN = Path(sys.executable).parent


def ovctl(addr: str, *args: str, expect_fail: bool = False) -> str:
    print(f"\n$ ovctl {shlex.join(args)}", flush=True)
    res = subprocess.run(
        [str(BIN / "ovctl"), "--host", addr, *args], capture_output=True, text=True, timeout=60
    )
    sys.stdout.write(res.stdout)
    sys.stdout.write(res.stderr)
    if expect_fail:
        print(f"(exit status {res.returncode}, as expected)")
        if res.returncode == 0:
            raise SystemExit("expected this command to fail")
    elif res.returncode != 0:
        raise SystemExit(f"ovctl {' '.join(args)} failed with exit status {res.returncode}")
    return res.stdout


def wait(addr: str, what: str, check: list[str], needle: str, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        res = subprocess.run(
            [str(BIN / "ovctl"), "--host", addr, *check], capture_output=True, text=True, timeout=60
        )
        if res.stdout.count(needle) >= count:
            return
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="ovnet-demo-"))
    print(f"ovnet demo: logs in {work}")
    procs: list[ManagedProcess] = []
    etcd = EtcdServer()
    try:
        etcd.start()
        print(f"etcd {etcd.endpoint} (pid {etcd.pid})")
        port = free_port()
        addr = f"127.0.0.1:{port}"
        mgr = ManagedProcess(
            [
                str(BIN / "ovnet-manager"),
                "--listen",
                addr,
                "--etcd",
                etcd.endpoint,
                "--heartbeat-period",
                "1",
            ],
            work / "manager.log",
        )
        procs.append(mgr)
        mgr.start()
        mgr.wait_port("127.0.0.1", port, 15)
        print(f"ovnet-manager {addr} (pid {mgr.pid})")
        for i in (1, 2, 3):
            zone = "a" if i < 3 else "b"
            agent = ManagedProcess(
                [
                    str(BIN / "ovnet-agent"),
                    "--manager",
                    addr,
                    "--hostname",
                    f"host{i}",
                    "--addr",
                    f"198.51.100.{i + 1}",
                    "--label",
                    f"zone={zone}",
                    "--state-dir",
                    str(work / f"host{i}"),
                ],
                work / f"agent{i}.log",
            )
            procs.append(agent)
            agent.start()
            print(f"ovnet-agent host{i} (pid {agent.pid})")
        wait(addr, "three ready nodes", ["node", "ls"], "Ready", 3)

        ovctl(addr, "cluster", "info")
        ovctl(addr, "node", "ls")
        ovctl(addr, "network", "create", "--subnet", "10.10.0.0/24", "--attachable", "front")
        ovctl(addr, "network", "create", "--internal", "--opt", "encrypted", "back")
        ovctl(addr, "network", "ls")
        ovctl(
            addr,
            "service",
            "create",
            "--name",
            "web",
            "--network",
            "front",
            "--replicas",
            "3",
            "--publish",
            "8080:80",
            "--",
            "python3",
            "-m",
            "http.server",
            "80",
        )
        ovctl(
            addr,
            "service",
            "create",
            "--name",
            "db",
            "--network",
            "back",
            "--constraint",
            "node.labels.zone==b",
            "--",
            "sleep",
            "infinity",
        )
        ovctl(
            addr,
            "service",
            "create",
            "--name",
            "mon",
            "--mode",
            "global",
            "--",
            "sleep",
            "infinity",
        )
        wait(addr, "tasks assigned", ["service", "ps", "web"], "Assigned", 3)
        ovctl(addr, "service", "ls")
        ovctl(addr, "service", "ps", "web")
        ovctl(addr, "service", "scale", "web=5")
        wait(addr, "five tasks", ["service", "ps", "web"], "Assigned", 5)
        ovctl(addr, "service", "ps", "web")
        ovctl(addr, "node", "update", "--availability", "drain", "host1")
        time.sleep(2)
        ovctl(addr, "service", "ps", "web")
        print("\nBad input gets a clear error and a non-zero exit status:")
        ovctl(addr, "network", "create", "--subnet", "10.10.0.128/25", "clash", expect_fail=True)
        ovctl(
            addr,
            "service",
            "create",
            "--name",
            "web2",
            "--publish",
            "8080:80",
            "--",
            "true",
            expect_fail=True,
        )
        ovctl(addr, "network", "rm", "front", expect_fail=True)
        ovctl(addr, "service", "rm", "web", "db", "mon")
        wait(addr, "tasks gone", ["service", "ls", "-q"], "", 0)
        deadline = time.monotonic() + 30
        while (
            subprocess.run(
                [str(BIN / "ovctl"), "--host", addr, "network", "rm", "front", "back"],
                capture_output=True,
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise SystemExit("networks were not released")
            time.sleep(0.3)
        ovctl(addr, "network", "ls")
        print("\ndemo finished: every step above ran against a real etcd, manager and agents")
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        etcd.close()


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
