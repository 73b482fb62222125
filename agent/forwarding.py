"""IP forwarding inside the ingress sandbox, which routes between the gateway bridge and the
ingress network (the routing mesh): the kernel starts every namespace with it off.

Entering the namespace takes a new thread (osutil/netns.py), so the value is not read on every
pass: only when the namespace behind the sandbox's name is another one (a sandbox made again
after drift: its nsfs inode changed), and every RECHECK_S anyway.
"""

from __future__ import annotations

import logging
import time

from osutil.netns import netns_inode, run_in_netns

log = logging.getLogger(__name__)

RECHECK_S = 30.0
_IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


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
        if run_in_netns(path, _enable):
            log.info("ingress sandbox: IP forwarding switched on")
        self._seen = (inode, now)


def _enable() -> bool:
    """Run inside the namespace; True if forwarding was off."""
    with open(_IP_FORWARD) as f:
        if f.read().strip() == "1":
            return False
    with open(_IP_FORWARD, "w") as f:
        f.write("1")
    return True
