"""Health checks of the tasks this host runs.

A task with a check takes no traffic until the check passes, and stops taking it as soon as the
check has failed `retries` times in a row: the agent then withdraws it from DNS and load
balancing (its gossip record goes `enabled=false` everywhere) before it stops the task. That
order is the point of the check: Docker Swarm kills an unhealthy or updated task while the
balancers still send it new connections (moby #30321).

`HealthState` is the pure verdict machine; `HealthMonitor` runs the checks (a command inside the
task's sandbox, or a TCP connect to the task's address made from inside the sandbox) on the
agent's event loop and says when a verdict changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.executor.api import Exec
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_RETRIES = 3
# The first check runs this soon after the start rather than a whole interval later, so that a
# healthy task joins the balancers (and a rolling update moves on) without waiting for nothing.
FIRST_CHECK_DELAY = 0.05
_OUTPUT_LIMIT = 200


@dataclass(frozen=True)
class CheckConfig:
    command: tuple[str, ...] = ()
    tcp_port: int = 0
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    start_period: float = 0.0

    @classmethod
    def from_proto(cls, hc: pb.HealthCheck) -> CheckConfig | None:
        """None when the spec has no check (0 fields mean the defaults, as the manager stores
        them unfilled)."""
        if not hc.command and not hc.tcp_port:
            return None
        return cls(
            command=tuple(hc.command),
            tcp_port=hc.tcp_port,
            interval=hc.interval_ms / 1000 if hc.interval_ms else DEFAULT_INTERVAL,
            timeout=hc.timeout_ms / 1000 if hc.timeout_ms else DEFAULT_TIMEOUT,
            retries=hc.retries or DEFAULT_RETRIES,
            start_period=hc.start_period_ms / 1000,
        )


@dataclass
class HealthState:
    """The verdict on one task from its check results so far.

    STARTING until the first success; HEALTHY after any success; UNHEALTHY after `retries`
    failures in a row. Failures within the start period don't count while the task has never
    been healthy (a slow starter is not killed for being slow), as in Docker.
    """

    config: CheckConfig
    started: float
    health: int = pb.TASK_HEALTH_STARTING
    failures: int = 0
    last_error: str = ""
    # Monotonic time the task last became healthy (0: it is not).
    healthy_since: float = 0.0

    def record(self, ok: bool, now: float, error: str = "") -> bool:
        """Take one check result; True if the verdict changed."""
        before = self.health
        if ok:
            self.failures = 0
            self.last_error = ""
            if self.health != pb.TASK_HEALTH_HEALTHY:
                self.healthy_since = now
            self.health = pb.TASK_HEALTH_HEALTHY
        else:
            self.last_error = error
            in_grace = (
                self.health == pb.TASK_HEALTH_STARTING
                and now - self.started < self.config.start_period
            )
            if not in_grace:
                self.failures += 1
                if self.failures >= self.config.retries:
                    self.health = pb.TASK_HEALTH_UNHEALTHY
                    self.healthy_since = 0.0
        return self.health != before


async def run_command(via: Exec, argv: tuple[str, ...], timeout: float) -> tuple[bool, str]:
    """Run argv inside the task (`via`: how its executor enters it: nsenter for a process,
    podman exec for a container); (exit status 0, what it said)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *via.prefix,
            *argv,
            env=None if via.env is None else dict(via.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as e:
        return False, f"cannot run the check: {e}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False, f"check timed out after {timeout:g}s"
    text = out.decode(errors="replace").strip()[-_OUTPUT_LIMIT:]
    if proc.returncode == 0:
        return True, text
    return False, f"check exited with status {proc.returncode}" + (f": {text}" if text else "")


async def tcp_connect(netns: str, addr: str, port: int, timeout: float) -> tuple[bool, str]:
    """Connect to addr:port from inside the sandbox (so that a task listening on any of its
    addresses, loopback included, is reached exactly as a client on its network would)."""
    from agent.netns import asocket_in_netns

    loop = asyncio.get_running_loop()
    try:
        sock = await asocket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        return False, f"cannot make a socket in the sandbox: {e}"
    try:
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (addr, port)), timeout)
        return True, ""
    except TimeoutError:
        return False, f"connect to {addr}:{port} timed out after {timeout:g}s"
    except OSError as e:
        return False, f"connect to {addr}:{port}: {e.strerror or e}"
    finally:
        sock.close()


class HealthMonitor:
    """Runs one check loop per watched task and calls `on_change(task_id)` when a verdict
    changes. Watching the same task again with the same check is a no-op, so the agent can
    call `watch` on every pass."""

    def __init__(self, on_change: Callable[[str], None]) -> None:
        self.on_change = on_change
        self._loops: dict[str, tuple[tuple[object, ...], asyncio.Task[None]]] = {}
        self._states: dict[str, HealthState] = {}

    def state(self, task_id: str) -> HealthState | None:
        return self._states.get(task_id)

    def watched(self) -> set[str]:
        return set(self._loops)

    def watch(
        self,
        task_id: str,
        config: CheckConfig,
        netns: str,
        addr: str,
        healthy_since: float = 0.0,
        via: Exec | None = None,
    ) -> None:
        """Check the task from now on. `healthy_since` (monotonic; 0: unknown) carries a
        HEALTHY verdict over from before: a restarted agent adopting a task that was healthy
        must not take it out of every balancer until its first check (the routing mesh would
        refuse connections meanwhile); the next failures count as usual. `via` is how a check
        command enters the task (default: nsenter into `netns`, as for a process task)."""
        via = via or Exec(("nsenter", f"--net={netns}", "--"))
        ident = (config, netns, addr, via)
        cur = self._loops.get(task_id)
        if cur is not None and cur[0] == ident:
            return
        kept = self._states.get(task_id)
        if cur is not None and kept is not None and cur[0][:3] == ident[:3]:
            # Only the way in changed (a container's main process became known): the same
            # check goes on with its verdict, not from STARTING again.
            cur[1].cancel()
            state = kept
        else:
            self.unwatch(task_id)
            state = HealthState(config, started=time.monotonic())
            if healthy_since:
                state.health, state.healthy_since = pb.TASK_HEALTH_HEALTHY, healthy_since
        self._states[task_id] = state
        self._loops[task_id] = (
            ident,
            asyncio.create_task(self._loop(task_id, config, netns, addr, via)),
        )

    def unwatch(self, task_id: str) -> None:
        cur = self._loops.pop(task_id, None)
        self._states.pop(task_id, None)
        if cur is not None:
            cur[1].cancel()

    async def close(self) -> None:
        tasks = [t for _, t in self._loops.values()]
        for task_id in list(self._loops):
            self.unwatch(task_id)
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _loop(
        self, task_id: str, config: CheckConfig, netns: str, addr: str, via: Exec
    ) -> None:
        await asyncio.sleep(FIRST_CHECK_DELAY)
        while True:
            t0 = time.monotonic()
            try:
                if config.command:
                    ok, text = await run_command(via, config.command, config.timeout)
                else:
                    ok, text = await tcp_connect(netns, addr, config.tcp_port, config.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a check must never kill its loop
                log.exception("health check of task %s failed to run", task_id)
                ok, text = False, f"the check could not run: {e}"
            st = self._states.get(task_id)
            if st is None:
                return
            if st.record(ok, time.monotonic(), text):
                log.info(
                    "task %s is %s%s",
                    task_id,
                    pb.TaskHealth.Name(st.health).removeprefix("TASK_HEALTH_").lower(),
                    f" ({text})" if text and not ok else "",
                )
                self.on_change(task_id)
            await asyncio.sleep(max(0.0, config.interval - (time.monotonic() - t0)))
