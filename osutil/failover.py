"""Trying a list of peers in turn: one policy for "any manager will do".

A pure object: it only orders the addresses. The manager that answered last is tried first
(it is probably still up, and probably the leader), then the others in their given order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence


class Rotation:
    def __init__(self, addrs: Sequence[str]) -> None:
        if not addrs:
            raise ValueError("at least one address is needed")
        self.addrs = list(addrs)
        self._current = 0

    @property
    def current(self) -> str:
        """The address that answered last (the first one before any success)."""
        return self.addrs[self._current]

    def order(self) -> Iterator[str]:
        """Every address once, starting with the one that answered last."""
        n = len(self.addrs)
        for i in range(n):
            yield self.addrs[(self._current + i) % n]

    def succeeded(self, addr: str) -> None:
        """Remember that ``addr`` answered, so the next ``order`` starts with it."""
        self._current = self.addrs.index(addr)

    def advance(self) -> str:
        """Move on to the next address and return it (for loops that hold one connection and
        move on when it fails)."""
        self._current = (self._current + 1) % len(self.addrs)
        return self.current

    def update(self, addrs: Sequence[str]) -> None:
        """Take a new address list (managers come and go), keeping the current address current
        when it is still listed (else the first one is)."""
        if not addrs:
            raise ValueError("at least one address is needed")
        current = self.current
        self.addrs = list(dict.fromkeys(addrs))
        self._current = self.addrs.index(current) if current in self.addrs else 0

    def prefer(self, addr: str) -> None:
        """Make ``addr`` the one to try next, adding it when it is new (a follower named the
        leader)."""
        if addr not in self.addrs:
            self.addrs.append(addr)
        self._current = self.addrs.index(addr)
