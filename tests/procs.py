"""Re-export of `ovctl.devcluster.procs`, where the process helpers moved so `ovctl dev` can use
them; existing imports from ``tests.procs`` keep working."""

from ovctl.devcluster.procs import (
    LOOPBACK,
    ManagedProcess,
    ProcessError,
    free_port,
    free_ports,
    pid_alive,
    port_accepts,
    proc_start_time,
    tail,
    terminate_pids,
)

__all__ = [
    "LOOPBACK",
    "ManagedProcess",
    "ProcessError",
    "free_port",
    "free_ports",
    "pid_alive",
    "port_accepts",
    "proc_start_time",
    "tail",
    "terminate_pids",
]
