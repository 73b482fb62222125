"""The second `Executor`: each task an OCI container (podman + runc) joined to its sandbox.

A container task is run the way a process task is: under the same shim (runner.py, shim.py),
whose child is an attached ``podman run`` rather than ``ip netns exec``. So everything the
shim gives process tasks holds for containers too: the agent can die and come back (the shim,
podman and the container live on; a new agent adopts the shim, so the container keeps its ID
and is not restarted), the exit status is podman's, which is the container's, and the output
goes to the shim, which writes it to the task's log line by line with the time of each, as
for a process (``--log-driver passthrough``: conmon hands the container the shim's pipes as
its stdout and stderr, so nothing passes through the agent, podman or conmon on the way).

What differs is kept here:
- the image is pulled, if missing, while the task is prepared (as swarmkit's PREPARING), not
  by `podman run`; a start returns once podman has created the container (its `--pidfile`
  appears), so that a task reported RUNNING has a container to check (`podman exec`), and its
  PID is the container's main process;
- the container joins the sandbox the agent built (``--network ns:/run/netns/<sandbox>``), so
  the data plane, DNS at 127.0.0.11 (``--dns``), VIPs and the routing mesh need nothing new;
- a stop is ``podman stop -t N`` (the image's stop signal, SIGKILL after N s): a signal to the
  attached ``podman run`` reaches the container's PID 1, which ignores SIGTERM unless it
  handles it (a PID 1 has no default signal actions);
- podman's own failures (image not known, command not in the image) end the run with 125-127
  and "Error: ..." on stderr: the shim turns them into start failures with podman's message;
- commands inside the task (health checks) enter the container's namespaces with nsenter;
- containers carry the agent's prefix in their name and a label, so that ``--cleanup`` finds
  them even when their task directory is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.executor.api import Adopted, Exec, ExitInfo, Running, StartError, TaskSpec
from agent.executor.process import ProcessExecutor
from agent.executor.runner import DEFAULT_PATH, Runner, build_env
from agent.executor.shim import podman_message

log = logging.getLogger(__name__)

# The label every container of an agent carries: its prefix (Names.prefix), for the sweep.
OWNER_LABEL = "io.ovnet.owner"
TASK_LABEL = "io.ovnet.task"
# Seconds a podman command of the agent's own (stop, kill, rm, ps) may take.
PODMAN_TIMEOUT_S = 60.0
# How long a stopped container's attached `podman run` may take to exit after `podman stop`.
EXIT_AFTER_STOP_S = 15.0
# How long a start waits for podman to create the container (the image is local by then).
CREATE_TIMEOUT_S = 60.0
# Seconds a missing image may take to pull.
PULL_TIMEOUT_S = 600.0
PIDFILE = "container.pid"
PULL_POLICIES = ("missing", "never", "always", "newer")


@dataclass(frozen=True)
class Podman:
    """How the agent runs podman: the binary, and the configuration and storage it was told to
    use (the command line's --podman, --containers-conf, --podman-root, --podman-runroot,
    --podman-storage-driver; empty: podman's own defaults, e.g. /etc/containers and
    /var/lib/containers, so that `podman load` on the host makes an image usable)."""

    binary: str = "podman"
    containers_conf: str = ""
    root: str = ""
    runroot: str = ""
    storage_driver: str = ""
    pull: str = "missing"

    def path(self) -> str | None:
        """The podman executable, or None when this host has none."""
        if "/" in self.binary:
            return self.binary if os.access(self.binary, os.X_OK) else None
        return shutil.which(self.binary, path=f"{os.environ.get('PATH', '')}:{DEFAULT_PATH}")

    def unavailable(self) -> str:
        """Why this host cannot run containers ("" when it can), as NodeDescription says it."""
        if self.path() is None:
            return f"podman not found ({self.binary!r}): install podman and runc to run images"
        if self.containers_conf and not os.path.isfile(self.containers_conf):
            return f"podman configuration {self.containers_conf} does not exist"
        return ""

    def argv(self, *args: str) -> list[str]:
        out = [self.path() or self.binary]
        for flag, value in (
            ("--root", self.root),
            ("--runroot", self.runroot),
            ("--storage-driver", self.storage_driver),
        ):
            if value:
                out += [flag, value]
        return [*out, *args]

    def env(self) -> dict[str, str]:
        """What podman needs of its environment (and nothing else of the agent's)."""
        env = {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "HOME": "/root"}
        if self.containers_conf:
            env["CONTAINERS_CONF"] = self.containers_conf
        return env

    def env_items(self) -> list[str]:
        """`env` as "K=V" items, for the runner (which adds PATH and HOME itself)."""
        return [f"{k}={v}" for k, v in self.env().items() if k not in ("PATH", "HOME")]


def run_argv(
    podman: Podman,
    spec: TaskSpec,
    name: str,
    owner: str,
    netns_dir: Path = Path("/run/netns"),
    pidfile: Path | None = None,
) -> list[str]:
    """The attached `podman run` of one task (pure)."""
    args = [
        "run",
        "--rm",
        "--name", name,
        *(["--pidfile", str(pidfile)] if pidfile is not None else []),
        "--label", f"{OWNER_LABEL}={owner}",
        "--label", f"{TASK_LABEL}={spec.task_id}",
        "--network", f"ns:{netns_dir / spec.netns}",
        # The sandbox's resolver, as process tasks get it through /etc/netns.
        "--dns", "127.0.0.11",
        "--dns-option", "ndots:0",
        "--log-driver", "passthrough",
        "--pull", podman.pull,
    ]  # fmt: skip
    for item in spec.env:
        args += ["--env", item]
    if spec.workdir and spec.workdir != "/":
        args += ["--workdir", spec.workdir]
    return podman.argv(*args, spec.image, *spec.command)


def _same_netns(pid: int, netns_path: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns_path).st_ino
    except OSError:
        return False


class ContainerExecutor(ProcessExecutor):
    """Tasks as containers (see the module docstring); state lives under
    ``<state_dir>/containers``; container names are ``<prefix>c-<task ID>``."""

    def __init__(
        self,
        state_dir: Path,
        podman: Podman,
        prefix: str,
        *,
        netns_dir: Path = Path("/run/netns"),
    ) -> None:
        root = Path(state_dir) / "containers"
        runner = Runner(root, lambda _t, _i: None, netns_dir=netns_dir, enter_netns=False)
        super().__init__(root, runner=runner)
        self.podman = podman
        self.prefix = prefix
        self.netns_dir = Path(netns_dir)
        self._background: set[asyncio.Task[None]] = set()

    def container_name(self, task_id: str) -> str:
        return f"{self.prefix}c-{task_id}"

    # ------------------------------------------------------------------ life cycle

    async def prepare(self, spec: TaskSpec) -> None:
        """What can be known before podman runs (podman is here, the sandbox exists, the
        environment entries are well formed), and the image, pulled if missing unless the
        pull policy is "never" (then `podman run` says it is not known)."""
        if not spec.image:
            raise StartError(f"task {spec.task_id} has no image")
        if why := self.podman.unavailable():
            raise StartError(why)
        self.runner.check_netns(spec.netns)
        build_env(spec.env)  # the same check of KEY=VALUE entries as for processes
        if self.podman.pull != "never":
            rc, _ = await self._podman("image", "exists", spec.image)
            if rc != 0:
                log.info("task %s: pulling %s", spec.task_id, spec.image)
                rc, err = await self._podman("pull", "--quiet", spec.image, timeout=PULL_TIMEOUT_S)
                if rc != 0:
                    raise StartError(podman_message(err) or f"podman pull {spec.image}: exit {rc}")
        self._specs[spec.task_id] = spec

    async def start(self, task_id: str) -> Running:
        spec = self._specs.get(task_id)
        if spec is None:
            raise StartError(f"task {task_id} was not prepared")
        if task_id in self.runner.running():
            return Running(self._container_pid(task_id) or self.runner.running()[task_id])
        self._expect_exit(task_id)
        pidfile = self.runner.task_dir(task_id) / PIDFILE
        pidfile.unlink(missing_ok=True)
        argv = run_argv(
            self.podman, spec, self.container_name(task_id), self.prefix, self.netns_dir, pidfile
        )
        pid = await self.runner.start(task_id, argv, self.podman.env_items(), "/", spec.netns)
        return Running(await self._created(task_id) or pid)

    async def _created(self, task_id: str) -> int:
        """The container's PID once podman has created it; 0 if `podman run` ended first
        (its exit says why) or took longer than CREATE_TIMEOUT_S."""
        deadline = time.monotonic() + CREATE_TIMEOUT_S
        while time.monotonic() < deadline:
            if pid := self._container_pid(task_id):
                return pid
            fut = self._exits.get(task_id)
            if task_id not in self.runner.running() or (fut is not None and fut.done()):
                return 0
            await asyncio.sleep(0.02)
        log.warning("task %s: podman has not created its container after %.0f s", task_id,
                    CREATE_TIMEOUT_S)  # fmt: skip
        return 0

    def _container_pid(self, task_id: str) -> int:
        try:
            text = (self.runner.task_dir(task_id) / PIDFILE).read_text().strip()
        except OSError:
            return 0
        return int(text) if text.isdigit() else 0

    def adopt(self) -> dict[str, Adopted]:
        """As for processes; a running container reports its own PID (podman's pidfile)."""
        found = super().adopt()
        for task_id, adopted in found.items():
            if adopted.running is not None and (pid := self._container_pid(task_id)):
                found[task_id] = Adopted(task_id, running=Running(pid))
        return found

    async def shutdown(self, task_id: str, timeout: float) -> ExitInfo | None:
        """`podman stop -t N`: the image's stop signal, SIGKILL after N s (whole seconds, as
        podman takes them); the attached `podman run` then exits with the container's status."""
        return await self._end(task_id, ("stop", "-t", str(math.ceil(max(0.0, timeout)))), timeout)

    async def terminate(self, task_id: str) -> ExitInfo | None:
        return await self._end(task_id, ("kill", "--signal", "KILL"), 0.0)

    async def _end(self, task_id: str, verb: tuple[str, ...], timeout: float) -> ExitInfo | None:
        if task_id not in self.runner.running():
            # Not watched, or still starting: the runner waits for a start in flight.
            return await self.runner.stop(task_id, timeout)
        fut = self._exits.get(task_id)
        rc, err = await self._podman(*verb, self.container_name(task_id))
        if rc == 0 and fut is not None:
            try:
                return await asyncio.wait_for(asyncio.shield(fut), EXIT_AFTER_STOP_S)
            except TimeoutError:
                log.warning("task %s: podman run did not end after podman %s", task_id, verb[0])
        elif rc != 0:
            # No such container (yet: podman is still creating it), or podman failing:
            # what reaches `podman run` itself (its signal proxy, then its process group) ends it.
            log.info("task %s: podman %s: %s", task_id, verb[0], err or f"exit {rc}")
        return await self.runner.stop(task_id, timeout)

    def exec_in(self, task_id: str, netns_path: str) -> Exec:
        """How a health command runs in the container: nsenter into its mount, UTS, IPC and
        network namespaces through its main process (so the image's files and the sandbox's
        network), which costs ~1 ms; `podman exec` costs ~150 ms of CPU a time and takes
        podman's locks, which at a check every 0.3 s on a few containers starved a 2-CPU host.
        `podman exec` remains for when that process cannot be trusted to be the container's
        (no pidfile yet, or the PID is no longer in the sandbox's namespace)."""
        pid = self._container_pid(task_id)
        if pid and _same_netns(pid, netns_path):
            prefix = ("nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "--")
            return Exec(prefix, {"PATH": DEFAULT_PATH, "HOME": "/root"})
        argv = self.podman.argv("exec", self.container_name(task_id))
        return Exec(tuple(argv), self.podman.env())

    def remove(self, task_id: str) -> None:
        """The task's directory, and its container if `podman run --rm` could not remove it
        (podman killed with its process group, say): in the background, as podman takes a
        while and the pass that removes must not wait."""
        super().remove(task_id)
        self._in_background(self._podman("rm", "--force", "--ignore", self.container_name(task_id)))

    async def sweep(self) -> list[str]:
        """Remove every container carrying this agent's prefix (for `--cleanup`, once every
        task was stopped); the names removed."""
        if self.podman.path() is None:
            return []
        owned = f"label={OWNER_LABEL}={self.prefix}"
        rc, out = await self._podman("ps", "--all", "--filter", owned, "--format", "{{.Names}}")
        names = out.split() if rc == 0 else []
        for name in names:
            await self._podman("rm", "--force", "--ignore", name)
        return names

    async def drain_background(self) -> None:
        """Wait for the removals started in the background (tests, cleanup)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # ------------------------------------------------------------------ podman

    def _in_background(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _podman(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = PODMAN_TIMEOUT_S
    ) -> tuple[int, str]:
        """Run one podman command of the agent's own; (exit status, its output or error)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.podman.argv(*args),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env or self.podman.env()),
            )
        except OSError as e:
            return 127, f"cannot run podman: {e}"
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return 124, f"podman {args[0]} did not finish within {timeout:.0f} s"
        if proc.returncode != 0:
            return proc.returncode or 1, err.decode(errors="replace").strip()
        return 0, out.decode(errors="replace")
