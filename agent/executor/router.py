"""One `Executor` in front of two: process tasks to one, image tasks to the other.

The daemon holds a single executor (api.py); a task's spec says which runtime it needs (an
image or not), and that choice is remembered per task ID, so every later call (wait, stop,
logs, remove) reaches the runtime that holds the task. After an agent restart, `adopt` asks
both and remembers whose each task is.
"""

from __future__ import annotations

from agent.executor.api import Adopted, Exec, Executor, ExitInfo, Running, StartError, TaskSpec
from agent.executor.logs import LogChunk


class ExecutorRouter:
    """`processes` runs tasks without an image, `containers` tasks with one."""

    def __init__(self, processes: Executor, containers: Executor) -> None:
        self.processes = processes
        self.containers = containers
        self._owner: dict[str, Executor] = {}

    def _of(self, task_id: str) -> Executor:
        owner = self._owner.get(task_id)
        if owner is not None:
            return owner
        # Not prepared nor adopted by this agent (a stop of a task it never saw): whichever
        # holds anything of it, else the process executor (which answers "not running").
        for ex in (self.containers, self.processes):
            if task_id in ex.tasks():
                self._owner[task_id] = ex
                return ex
        return self.processes

    def adopt(self) -> dict[str, Adopted]:
        out: dict[str, Adopted] = {}
        for ex in (self.processes, self.containers):
            for task_id, found in ex.adopt().items():
                self._owner[task_id] = ex
                out[task_id] = found
        return out

    async def prepare(self, spec: TaskSpec) -> None:
        ex = self.containers if spec.image else self.processes
        prior = self._owner.get(spec.task_id)
        if prior is not None and prior is not ex and spec.task_id in prior.tasks():
            # A task's spec never changes (a new spec is a new task), so this is a bug.
            raise StartError(f"task {spec.task_id} already runs under another runtime")
        await ex.prepare(spec)
        self._owner[spec.task_id] = ex

    async def start(self, task_id: str) -> Running:
        return await self._of(task_id).start(task_id)

    async def wait(self, task_id: str) -> ExitInfo | None:
        return await self._of(task_id).wait(task_id)

    async def shutdown(self, task_id: str, timeout: float) -> ExitInfo | None:
        return await self._of(task_id).shutdown(task_id, timeout)

    async def terminate(self, task_id: str) -> ExitInfo | None:
        return await self._of(task_id).terminate(task_id)

    def exec_in(self, task_id: str, netns_path: str) -> Exec:
        return self._of(task_id).exec_in(task_id, netns_path)

    def remove(self, task_id: str) -> None:
        self._of(task_id).remove(task_id)
        self._owner.pop(task_id, None)

    def tasks(self) -> list[str]:
        return sorted({*self.processes.tasks(), *self.containers.tasks()})

    def read_logs(self, task_id: str) -> list[LogChunk]:
        return self._of(task_id).read_logs(task_id)

    def commit_logs(self, task_id: str) -> None:
        self._of(task_id).commit_logs(task_id)

    def close(self) -> None:
        self.processes.close()
        self.containers.close()
