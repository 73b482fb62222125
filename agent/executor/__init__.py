"""The executor: how tasks run on this host, behind one seam.

`api.Executor` is all the daemon knows of a task runtime (prepare, start, wait, shutdown,
terminate, remove, adopt after an agent restart, and the tasks' new output), as swarmkit's
`exec.Executor`. `ProcessExecutor` (process.py) is its first implementation: `Runner` starts,
stops and re-adopts task processes (runner.py, with shim.py as each task's parent) and
`LogTailer` ships their output files (logs.py). `ContainerExecutor` (container.py) runs image
tasks as podman containers under the same shim; `ExecutorRouter` (router.py) sends each task
to the one its spec needs. The task state machine on top is agent/controller.py.
"""

from agent.executor.api import Adopted, Exec, Executor, ExitInfo, Running, StartError, TaskSpec
from agent.executor.container import ContainerExecutor, Podman
from agent.executor.logs import LogChunk, LogTailer
from agent.executor.process import ProcessExecutor
from agent.executor.router import ExecutorRouter
from agent.executor.runner import ProcessInfo, Runner

__all__ = [
    "Adopted",
    "ContainerExecutor",
    "Exec",
    "Executor",
    "ExecutorRouter",
    "ExitInfo",
    "LogChunk",
    "LogTailer",
    "Podman",
    "ProcessExecutor",
    "ProcessInfo",
    "Runner",
    "Running",
    "StartError",
    "TaskSpec",
]
