"""IP forwarding inside the ingress sandbox, which routes between the gateway bridge and the
ingress network (the routing mesh): the kernel starts every namespace with it off.

Entering the namespace takes a new thread (nl.read_sysctl), so the value is not read on every
pass: only when the namespace behind the sandbox's name is another one (a sandbox made again
after drift: its nsfs inode changed), and every RECHECK_S anyway.
"""

from __future__ import annotations

import logging
import time

from agent.dataplane.kernel import IP_FORWARD
from agent.dataplane.nl import read_sysctl, write_sysctl
from osutil.netns import netns_inode

log = logging.getLogger(__name__)

RECHECK_S = 30.0


class Forwarding:
    def __init__(self) -> None:
        # The namespace (nsfs inode) last seen forwarding, and when.
        self._seen: tuple[tuple[int, int] | None, float] = (None, 0.0)

    def ensure(self, path: str) -> None:
        """Forwarding on in the namespace at `path`; OSError if it cannot be entered."""
        inode, now = netns_inode(path), time.monotonic()
        known, checked = self._seen
        if inode is not None and inode == known and now - checked < RECHECK_S:
            return
        if read_sysctl(path, IP_FORWARD) != "1":
            write_sysctl(path, IP_FORWARD, "1")
            log.info("ingress sandbox: IP forwarding switched on")
        self._seen = (inode, now)
