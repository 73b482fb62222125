"""F11 end to end: change commands wait until the change is real on every host.

`ovctl service create|update|scale` return once the manager says the service converged: its
tasks ready and every host concerned programmed them (manager/convergence.py). On a 3-host dev
cluster (test_mesh's fixture): requests right after `service create` returns, the progress
display as a person sees it in a terminal (tmux), plain output without one, -q, Ctrl-C.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from ovctl.devcluster.shell import daemon_env
from tests.e2e.overlay import Overlay, wait_for
from tests.e2e.test_mesh import HEALTHY, HERE, WHOAMI, client_argv, ov

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]
__all__ = ["ov"]  # the module fixture: a 3-host dev cluster
_screens = itertools.count()


def test_service_create_returns_once_the_mesh_answers_on_every_host(ov: Overlay) -> None:
    """A request to each host right after `service create` returns succeeds, in every one of
    20 rounds. The client is started before, so nothing delays its requests. The service has
    a health check: without one, running is all a task can say, and a replica whose program
    has not bound its port yet refuses (seen once in 20 rounds under CI's load)."""
    hosts = [ov.dev.host_addr(h) for h in ("h1", "h2", "h3")]
    client = subprocess.Popen(
        [*client_argv(ov, "outside"), sys.executable, str(HERE / "loadclient.py"), "each",
         *hosts],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert client.stdin is not None and client.stdout is not None
    failed: list[tuple[int, list[str]]] = []
    took: list[float] = []
    try:
        for i in range(20):
            name, port = f"conv{i}", 19100 + i
            t0 = time.monotonic()
            out = ov.ovctl(
                "service", "create", "--name", name, "--replicas", "3",
                "--publish", f"{port}:8080", *HEALTHY, "--", *WHOAMI,
            ).stdout  # fmt: skip
            took.append(time.monotonic() - t0)
            client.stdin.write(f"{port}\n")
            client.stdin.flush()
            answers = json.loads(client.stdout.readline())
            if not all(a.startswith("10.0.0.") and ":" not in a for a in answers):
                failed.append((i, answers))
            ov.ovctl("service", "rm", name)
    finally:
        client.stdin.close()
        client.wait(timeout=30)
    print(f"\ncreate -> converged (s): {[round(t, 2) for t in sorted(took)]}")
    assert failed == []
    # Without a terminal: plain lines, no escape codes, the last one says it.
    assert "\x1b" not in out and out.rstrip().endswith("verify: Service converged")
    assert "overall progress: 3 out of 3 tasks" in out


@pytest.fixture
def tmux(ov: Overlay) -> Iterator[TmuxScreen]:
    # A server (socket) per test: a killed one may still hold its socket when the next starts.
    screen = TmuxScreen(ov, f"ovt{os.getpid() % 100000}-{next(_screens)}")
    try:
        yield screen
    finally:
        subprocess.run(["tmux", "-L", screen.socket, "kill-server"], capture_output=True)


class TmuxScreen:
    """ovctl in a real terminal (a tmux pane on a server of the test's own) and what it shows."""

    def __init__(self, ov: Overlay, socket: str) -> None:
        self.ov, self.socket = ov, socket

    def run(self, *args: str) -> None:
        env = {**daemon_env(), **self.ov.dev.ovctl_env()}
        argv = [sys.executable, "-m", "ovctl", "-H", self.ov.dev.manager_addr, *args]
        # The exit status is shown after the output, and the pane stays for the capture.
        cmd = f"env {shlex.join(f'{k}={v}' for k, v in env.items())} {shlex.join(argv)}; "
        cmd += 'echo "EXIT=$?"; sleep 600'
        r = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", "new-session", "-d", "-s", "t",
             "-x", "100", "-y", "30", cmd],
            capture_output=True, text=True,
        )  # fmt: skip
        assert r.returncode == 0, f"tmux new-session: {r.stderr.strip()}"

    def screen(self) -> str:
        r = subprocess.run(
            ["tmux", "-L", self.socket, "capture-pane", "-p", "-t", "t"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return r.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "-L", self.socket, "send-keys", "-t", "t", *keys], check=True)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        def shown() -> str | None:
            screen = self.screen()
            return screen if text in screen else None

        return wait_for(f"{text!r} on the screen", shown, timeout=timeout)


def test_the_progress_display_in_a_terminal(ov: Overlay, tmux: TmuxScreen) -> None:
    tmux.run(
        "service", "create", "--name", "shown", "--replicas", "3", "--publish", "19190:8080",
        "--health-tcp", "8080", "--health-interval", "0.3s", "--monitor", "2s", "--", *WHOAMI,
    )  # fmt: skip
    seen = tmux.wait_for("Waiting")  # the monitor window: converged, then 2 s more
    assert "shown: overall progress: 3 out of 3 tasks" in seen
    assert "seconds to verify that tasks are stable..." in seen
    final = tmux.wait_for("EXIT=")
    lines = [ln.rstrip() for ln in final.splitlines() if ln.strip()]
    svc_id = ov.json("service", "inspect", "shown")[0]["meta"]["id"]
    bar = "━" * 40
    assert lines == [
        svc_id,
        "shown: overall progress: 3 out of 3 tasks",
        f"1/3: running {bar}",
        f"2/3: running {bar}",
        f"3/3: running {bar}",
        "verify: Service converged",
        "EXIT=0",
    ], final
    ov.ovctl("service", "rm", "shown")


def test_ctrl_c_leaves_the_change_going_and_a_timeout_says_why(
    ov: Overlay, tmux: TmuxScreen
) -> None:
    # No node is called nowhere: the task stays pending, the command waits.
    tmux.run(
        "service", "create", "--name", "stuck", "--constraint", "node.hostname==nowhere",
        "--", *WHOAMI,
    )  # fmt: skip
    seen = tmux.wait_for("pending")
    assert "stuck: overall progress: 0 out of 1 tasks" in seen
    tmux.keys("C-c")
    final = tmux.wait_for("EXIT=")
    assert "Operation continuing in background." in final and "EXIT=0" in final
    assert ov.json("service", "inspect", "stuck")[0]["spec"]["name"] == "stuck"
    r = ov.dev.ovctl("service", "scale", "--wait-timeout", "2", "stuck=2")
    assert r.returncode == 1
    assert "Error: not converged after 2 s (stuck: 0 of 2 tasks ready)" in r.stderr
    assert ov.json("service", "inspect", "stuck")[0]["spec"]["replicated"]["replicas"] == "2"
    q = ov.dev.ovctl("service", "update", "-q", "--wait-timeout", "1", "--env-add", "A=1", "stuck")
    assert q.stdout == "stuck\n" and q.returncode == 1
    ov.ovctl("service", "rm", "stuck")
