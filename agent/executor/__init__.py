"""The executor's process layer: tasks as processes under shims, and their logs.

`Runner` starts, stops and re-adopts task processes (runner.py, with shim.py as each task's
parent); `LogTailer` ships their output files (logs.py). The task state machine on top of them
is agent/controller.py.
"""

from agent.executor.logs import LogChunk, LogTailer
from agent.executor.runner import ExitInfo, ProcessInfo, Runner, StartError

__all__ = ["ExitInfo", "LogChunk", "LogTailer", "ProcessInfo", "Runner", "StartError"]
