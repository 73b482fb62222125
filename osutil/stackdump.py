"""SIGUSR1: write where every thread and every asyncio task is waiting to the log.

As `kill -USR1` on dockerd dumps its goroutines: a daemon that looks alive but has stopped
converging (a pass awaiting something that never comes) shows which await holds it, without
a debugger and without stopping it. The e2e tests send it to every daemon of a failing test.
"""

from __future__ import annotations

import asyncio
import faulthandler
import io
import logging
import signal

log = logging.getLogger(__name__)


def dump() -> str:
    """Every pending asyncio task's chain of awaits (of the running loop, if any) down to
    what it waits for. (Threads: faulthandler, see `install`.)"""
    out = io.StringIO()
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no running loop in this thread
        tasks = set()
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.write(f"--- task {task.get_name()}\n")
        for where in awaits(task.get_coro()):
            out.write(f"  {where}\n")
    return out.getvalue()


def awaits(coro: object) -> list[str]:
    """file:line (function) of each coroutine in the chain `coro` awaits, outermost first,
    then what the innermost one waits for (a future, a sleep). A task's own stack shows
    only its outermost coroutine: the await that holds it is usually deeper."""
    out = []
    seen = 0
    while coro is not None and seen < 64:
        seen += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            out.append(f"waits for {coro!r}"[:300])
            break
        code = frame.f_code
        out.append(f"{code.co_filename}:{frame.f_lineno} ({code.co_name})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out


def install(loop: asyncio.AbstractEventLoop) -> None:
    """On each SIGUSR1: faulthandler writes every thread's stack to stderr at once, from the
    signal itself (so even an event loop blocked in a system call shows where), then the loop
    logs `dump()` at WARNING when it gets to run (its tasks' awaits)."""
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("stack dump:\n%s", dump()))
    # chain: after its own dump faulthandler calls the handler above's C-level trampoline.
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=True)
