"""Retry delays that grow: one policy for every "try again later" loop in ovnet.

A pure object (no sleeping here): the caller asks for the next delay and sleeps however it
sleeps (asyncio or not). Jitter spreads out many agents that failed at the same moment, so they
do not all hammer a manager that just came back at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.2
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.0  # 0.5 means each delay is drawn from [d*(1-0.5), d*(1+0.5))
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _current: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {self}")
        if self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"backoff needs factor >= 1 and 0 <= jitter < 1, got {self}")
        self._current = self.initial

    def next(self) -> float:
        """The delay to wait now; the one after it is ``factor`` times longer, up to
        ``maximum``."""
        d = self._current
        self._current = min(self._current * self.factor, self.maximum)
        if self.jitter:
            d *= 1 - self.jitter + 2 * self.jitter * self.rng.random()
        return d

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self._current = self.initial

    def stall(self) -> None:
        """Jump to ``maximum``: nothing will change soon, so do not hammer."""
        self._current = self.maximum
