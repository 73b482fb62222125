"""What the agent tells systemd (Type=notify): ready once it serves, and how it stands."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from osutil.sdnotify import Notifier

if TYPE_CHECKING:
    from agent.daemon import AgentDaemon

# How often systemd's STATUS= line is refreshed (sent only when its text changed).
STATUS_EVERY_S = 2.0


async def tell_systemd(daemon: AgentDaemon) -> None:
    """READY=1 once the first pass is done (a restarted agent has adopted its tasks: an
    upgrade moves to the next host only then), then a STATUS= line kept current. A fresh
    agent that reaches no manager has nothing to serve and would never pass: it is ready
    (saying so in its status) once every manager was tried, rather than timing out and being
    restarted by systemd over and over while the managers are down."""
    systemd = Notifier()
    if not systemd.enabled:
        await asyncio.Event().wait()  # a loop like the others: it ends when cancelled
    while not daemon.passed.is_set() and not daemon.session.unreachable:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(daemon.passed.wait(), 0.5)
    systemd.ready(daemon.status_line())
    try:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            systemd.status(daemon.status_line())
    finally:
        systemd.stopping()
