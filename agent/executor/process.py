"""The first `Executor`: each task a process in its sandbox's namespace, under a shim.

It adapts `Runner` (processes, shims, pidfds, exit records) and `LogTailer` (the tasks' output
files) to the seam in api.py, so that the daemon sees none of that. Exits are delivered through
`wait`, one future per watched run, fed by the runner's exit callback.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.executor.api import Adopted, Exec, ExitInfo, Running, StartError, TaskSpec
from agent.executor.logs import LogChunk, LogTailer
from agent.executor.runner import Runner


class ProcessExecutor:
    """Tasks as processes (see the module docstring); state lives under `state_dir`."""

    def __init__(self, state_dir: Path, *, runner: Runner | None = None) -> None:
        self.runner = runner or Runner(state_dir, self._on_exit)
        if runner is not None:
            runner.on_exit = self._on_exit
        self.logs = LogTailer(state_dir)
        self._specs: dict[str, TaskSpec] = {}
        # The exit of each watched run, for `wait` (replaced when the task starts again).
        self._exits: dict[str, asyncio.Future[ExitInfo]] = {}

    # ------------------------------------------------------------------ life cycle

    def adopt(self) -> dict[str, Adopted]:
        out: dict[str, Adopted] = {}
        for task_id, proc in self.runner.adopt().items():
            if proc.running and proc.pid:
                self._expect_exit(task_id)
                out[task_id] = Adopted(task_id, running=Running(proc.pid))
            else:
                out[task_id] = Adopted(task_id, exit=proc.exit)
        return out

    async def prepare(self, spec: TaskSpec) -> None:
        """Check, before anything runs, what `Runner.start` would refuse: no sandbox, a
        command that cannot be found, bad environment entries, no working directory."""
        self.runner.check(spec.command, spec.env, spec.workdir, spec.netns)
        self._specs[spec.task_id] = spec

    async def start(self, task_id: str) -> Running:
        spec = self._specs.get(task_id)
        if spec is None:
            raise StartError(f"task {task_id} was not prepared")
        self._expect_exit(task_id)
        pid = await self.runner.start(
            task_id, list(spec.command), list(spec.env), spec.workdir, spec.netns
        )
        return Running(pid)

    async def wait(self, task_id: str) -> ExitInfo | None:
        fut = self._exits.get(task_id)
        if fut is None or (task_id not in self.runner.running() and not fut.done()):
            return None
        return await asyncio.shield(fut)

    async def shutdown(self, task_id: str, timeout: float) -> ExitInfo | None:
        return await self.runner.stop(task_id, timeout)

    async def terminate(self, task_id: str) -> ExitInfo | None:
        return await self.runner.stop(task_id, 0.0)

    def exec_in(self, task_id: str, netns_path: str) -> Exec:
        """A process task shares the host's filesystem: entering its network namespace is
        entering the task (nsenter, not `ip netns exec`, which remounts /sys)."""
        return Exec(("nsenter", f"--net={netns_path}", "--"))

    def remove(self, task_id: str) -> None:
        self.runner.remove(task_id)
        self.logs.forget(task_id)
        self._specs.pop(task_id, None)
        self._exits.pop(task_id, None)

    def close(self) -> None:
        self.runner.close()
        for fut in self._exits.values():
            if not fut.done():
                fut.cancel()

    # ------------------------------------------------------------------ read-outs

    def tasks(self) -> list[str]:
        return self.runner.task_ids()

    def read_logs(self, task_id: str) -> list[LogChunk]:
        return self.logs.read_new(task_id)

    def commit_logs(self, task_id: str) -> None:
        self.logs.commit(task_id)

    # ------------------------------------------------------------------ exits

    def _expect_exit(self, task_id: str) -> None:
        """A run is (about to be) watched: its exit goes to a fresh future, unless one that
        has not fired yet is waiting already (a start of a task that runs is a no-op)."""
        fut = self._exits.get(task_id)
        if fut is None or fut.done():
            self._exits[task_id] = asyncio.get_running_loop().create_future()

    def _on_exit(self, task_id: str, info: ExitInfo) -> None:
        fut = self._exits.get(task_id)
        if fut is not None and not fut.done():
            fut.set_result(info)
