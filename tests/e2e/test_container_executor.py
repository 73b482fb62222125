"""The container executor on real podman (bench/images.py's private store and test image).

Each test makes its own network namespace and state directory; the containers carry the test's
prefix (its own label), and the fixture removes every one of them and kills every shim the
state directory names, whatever the test did.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.executor import (
    ContainerExecutor,
    ExecutorRouter,
    Podman,
    ProcessExecutor,
    StartError,
    TaskSpec,
)
from agent.executor.container import OWNER_LABEL
from agent.health import run_command
from bench import images
from tests.e2e.test_executor import arun, kill_all, until
from tests.support.beds import require

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PREFIX = f"ovce{os.getpid() % 100000}-"
T = TypeVar("T")
GET = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=1).read().decode(), end='')"
)
# httpd in the foreground, and a shell as PID 1 that ends it on SIGTERM (a PID 1 that does
# not handle SIGTERM ignores it: podman stop would need its SIGKILL).
SERVE = [
    "/bin/sh",
    "-c",
    "echo serving; echo on-stderr >&2; httpd -f -p 8080 -h /www & trap 'kill $!; exit 0' TERM; "
    "wait",
]


def get(netns: str, url: str) -> str:
    res = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c", GET, url],
        capture_output=True,
        text=True,
        check=False,
    )
    return res.stdout


@pytest.fixture(scope="module")
def bed() -> tuple[images.Podman, str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (podman's rootful store, network namespaces)")
    require(images.available(), "podman cannot run here")
    pm = images.Podman()
    return pm, images.ensure_image(pm)


@pytest.fixture
def podman(bed: tuple[images.Podman, str]) -> Iterator[Podman]:
    pm = bed[0]
    yield pm.config()
    owned = f"label={OWNER_LABEL}={PREFIX}"
    for cid in pm.run("ps", "-a", "-q", "--filter", owned, check=False).stdout.split():
        pm.run("rm", "-f", cid, check=False)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "state"
    try:
        yield d
    finally:
        kill_all(d / "containers")
        kill_all(d)


def inspect(podman: Podman, name: str) -> dict[str, Any] | None:
    res = subprocess.run(
        podman.argv("inspect", "--type", "container", name),
        env=podman.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        return None
    found: list[dict[str, Any]] = json.loads(res.stdout)
    return found[0]


def test_a_container_task_serves_logs_is_checked_stopped_and_removed(
    bed: tuple[images.Podman, str], podman: Podman, netns: str, state_dir: Path
) -> None:
    """Served from the sandbox with the image's content, output in the task's log files,
    a health command run inside the container, `podman stop` ends it with its own status
    and the container is gone after it (--rm)."""
    tag = bed[1]

    async def go() -> None:
        ex = ContainerExecutor(state_dir, podman, PREFIX)
        spec = TaskSpec("c1", tuple(SERVE), ("GREETING=hi",), "/www", netns, image=tag)
        await ex.prepare(spec)
        t0 = time.monotonic()
        running = await ex.start("c1")
        # RUNNING means the container exists: its PID is the container's main process.
        assert running.pid > 0 and (state_dir / "containers/tasks/c1/container.pid").exists()
        assert (
            os.stat(f"/proc/{running.pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns}").st_ino
        )
        await until("the page", lambda: get(netns, "http://127.0.0.1:8080/") == images.PAGE, 30)
        serving_s = time.monotonic() - t0
        info = inspect(podman, f"{PREFIX}c-c1")
        assert info is not None and info["State"]["Running"]
        assert info["Config"]["Labels"][OWNER_LABEL] == PREFIX
        assert "GREETING=hi" in info["Config"]["Env"] and info["Config"]["WorkingDir"] == "/www"
        await until("the output", lambda: ex.read_logs("c1"))
        chunks = ex.read_logs("c1")
        assert {(c.stream, c.data) for c in chunks} >= {
            ("stdout", b"serving\n"),
            ("stderr", b"on-stderr\n"),
        }
        # A health command runs inside the container (the file exists only in the image).
        via = ex.exec_in("c1", f"/run/netns/{netns}")
        assert via.prefix[:3] == ("nsenter", "-t", str(running.pid))
        ok, text = await run_command(via, ("cat", "/www/index.html"), 10.0)
        assert ok and text == images.PAGE.strip()
        # The same through podman exec (the fallback) sees the same container.
        podman_exec = ex.exec_in("c1", "/proc/self/ns/net")
        assert "exec" in podman_exec.prefix
        ok, text = await run_command(podman_exec, ("cat", "/www/index.html"), 20.0)
        assert ok and text == images.PAGE.strip()
        ok, text = await run_command(via, ("sh", "-c", "exit 3"), 10.0)
        assert not ok and "status 3" in text
        waiter = asyncio.ensure_future(ex.wait("c1"))
        t1 = time.monotonic()
        ended = await ex.shutdown("c1", 10.0)
        stop_s = time.monotonic() - t1
        assert ended is not None and ended.exit_code == 0 and not ended.start_failed
        assert stop_s < 8, "the shell handles SIGTERM: no wait for SIGKILL"
        assert await waiter == ended
        await until("the container removed", lambda: inspect(podman, f"{PREFIX}c-c1") is None)
        ex.remove("c1")
        await ex.drain_background()
        assert ex.tasks() == []
        ex.close()
        print(f"\ncontainer task: serving {serving_s:.2f} s after start; stop {stop_s:.2f} s")

    arun(go(), 90)


def test_a_restarted_executor_adopts_the_running_container(
    bed: tuple[images.Podman, str], podman: Podman, netns: str, state_dir: Path
) -> None:
    """The agent dies (its executor closes without stopping anything); a new one finds the
    container running: the same container ID, started once."""
    tag = bed[1]

    async def go() -> None:
        first = ContainerExecutor(state_dir, podman, PREFIX)
        await first.prepare(TaskSpec("c2", tuple(SERVE), (), "/", netns, image=tag))
        await first.start("c2")
        await until("the page", lambda: get(netns, "http://127.0.0.1:8080/") == images.PAGE, 30)
        before = inspect(podman, f"{PREFIX}c-c2")
        assert before is not None
        first.close()

        second = ContainerExecutor(state_dir, podman, PREFIX)
        found = second.adopt()
        assert found["c2"].running is not None and found["c2"].exit is None
        after = inspect(podman, f"{PREFIX}c-c2")
        assert after is not None and after["Id"] == before["Id"]
        assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
        assert get(netns, "http://127.0.0.1:8080/") == images.PAGE
        ended = await second.terminate("c2")
        assert ended is not None and ended.exit_code == 137
        second.remove("c2")
        await second.drain_background()
        second.close()

    arun(go(), 90)


def test_podman_failures_fail_the_task_with_podmans_message(
    bed: tuple[images.Podman, str], podman: Podman, netns: str, state_dir: Path
) -> None:
    """An unknown image, a command the image lacks: start failures with podman's words. A
    host without podman: refused before anything runs. The exit status passes through."""
    tag = bed[1]

    async def go() -> None:
        ex = ContainerExecutor(state_dir, podman, PREFIX)
        await ex.prepare(TaskSpec("u1", (), (), "/", netns, image="localhost/ovnet-nope:1"))
        await ex.start("u1")
        info = await ex.wait("u1")
        assert info is not None and info.start_failed and info.exit_code == 125
        assert info.error == "podman: localhost/ovnet-nope:1: image not known"

        await ex.prepare(TaskSpec("u2", ("nosuchcmd",), (), "/", netns, image=tag))
        await ex.start("u2")
        info = await ex.wait("u2")
        assert info is not None and info.start_failed and info.exit_code == 127
        assert (
            info.error.startswith("podman: runc: runc create failed") and "nosuchcmd" in info.error
        )

        await ex.prepare(TaskSpec("u3", ("sh", "-c", "exit 7"), (), "/", netns, image=tag))
        await ex.start("u3")
        info = await ex.wait("u3")
        assert info is not None and not info.start_failed and info.error == "exit status 7"

        # With pulls allowed, a missing image is pulled while the task is prepared: here no
        # registry answers (localhost:443 refuses), and podman's words say so.
        pulling = ContainerExecutor(state_dir, replace(podman, pull="missing"), PREFIX)
        with pytest.raises(StartError, match=r"^podman: .*localhost/ovnet-nope:1"):
            await pulling.prepare(
                TaskSpec("u6", (), (), "/", netns, image="localhost/ovnet-nope:1")
            )
        missing = ContainerExecutor(state_dir, Podman(binary="/nonexistent/podman"), PREFIX)
        with pytest.raises(StartError, match="podman not found"):
            await missing.prepare(TaskSpec("u4", (), (), "/", netns, image=tag))
        with pytest.raises(StartError, match="does not exist"):
            await ex.prepare(TaskSpec("u5", (), (), "/", f"{PREFIX}gone", image=tag))
        for t in ("u1", "u2", "u3"):
            ex.remove(t)
        await ex.drain_background()
        ex.close()

    arun(go(), 90)


def test_the_router_runs_both_kinds_and_cleanup_sweeps_containers(
    bed: tuple[images.Podman, str], podman: Podman, netns: str, state_dir: Path
) -> None:
    """Process and image tasks side by side behind one executor; a restarted router knows
    whose each task is; the sweep removes a container whose task directory is gone."""
    tag = bed[1]

    async def go() -> None:
        router = ExecutorRouter(
            ProcessExecutor(state_dir), ContainerExecutor(state_dir, podman, PREFIX)
        )
        await router.prepare(TaskSpec("p1", ("sleep", "100"), (), "/", netns))
        await router.prepare(TaskSpec("c3", tuple(SERVE), (), "/", netns, image=tag))
        await router.start("p1")
        c3 = await router.start("c3")
        assert router.tasks() == ["c3", "p1"]
        await until("the page", lambda: get(netns, "http://127.0.0.1:8080/") == images.PAGE, 30)
        path = f"/run/netns/{netns}"
        assert router.exec_in("p1", path).prefix == ("nsenter", f"--net={path}", "--")
        # The container's own namespaces through its main process; podman exec when that
        # process is not in the sandbox (a reused PID, say).
        assert router.exec_in("c3", path).prefix[:3] == ("nsenter", "-t", str(c3.pid))
        assert "exec" in router.exec_in("c3", "/proc/self/ns/net").prefix
        router.close()

        again = ExecutorRouter(
            ProcessExecutor(state_dir), ContainerExecutor(state_dir, podman, PREFIX)
        )
        found = again.adopt()
        assert {t for t, a in found.items() if a.running} == {"p1", "c3"}
        p_end = await again.shutdown("p1", 5.0)
        c_end = await again.shutdown("c3", 5.0)
        assert p_end is not None and p_end.signal == 15
        assert c_end is not None and c_end.exit_code == 0
        again.close()

        # A container left without its task directory (state wiped by hand): swept.
        containers = ContainerExecutor(state_dir, podman, PREFIX)
        name = f"{PREFIX}c-orphan"
        subprocess.run(
            podman.argv(
                "create", "--name", name, "--label", f"{OWNER_LABEL}={PREFIX}", tag, "true"
            ),
            env=podman.env(),
            check=True,
            capture_output=True,
        )
        assert inspect(podman, name) is not None
        assert await containers.sweep() == [name]
        assert inspect(podman, name) is None

    arun(go(), 90)
