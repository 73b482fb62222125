"""Integer pools the allocator hands values out of: interval sets, cursor pools, rollback.

Addresses, subnets, VNIs and ports are all integers taken from ranges, so one representation
serves them all (`IntervalSet`), with one hand-out policy (`CursorPool`: in turn, a value given
back comes out again last) and one way to undo a half-done allocation (`all_or_nothing`).
Pure: no I/O, no protobuf.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# The undo steps of an allocation in progress, run in reverse when it fails.
Undo = list[Callable[[], object]]


class IntervalSet:
    """A set of integers kept as sorted, disjoint, non-adjacent closed intervals.

    Taken addresses, subnets, VNIs and ports mostly come in long runs, so "is this free" and
    "first free value from here" cost one bisection instead of a walk over everything taken.
    Merging adjacent runs keeps the representation canonical: releasing what was just added gives
    back the very same lists, which is what makes rollback and snapshot comparison exact.
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __contains__(self, value: int) -> bool:
        i = bisect_right(self._starts, value) - 1
        return i >= 0 and self._ends[i] >= value

    def add(self, lo: int, hi: int) -> None:
        i = bisect_left(self._ends, lo - 1)  # first run that ends at or after lo - 1
        j = bisect_right(self._starts, hi + 1)  # runs [i, j) overlap or touch [lo, hi]
        if i < j:
            lo = min(lo, self._starts[i])
            hi = max(hi, self._ends[j - 1])
        self._starts[i:j] = [lo]
        self._ends[i:j] = [hi]

    def remove(self, lo: int, hi: int) -> None:
        i = bisect_left(self._ends, lo)  # first run that ends at or after lo
        j = bisect_right(self._starts, hi)  # runs [i, j) overlap [lo, hi]
        if i >= j:
            return
        starts: list[int] = []
        ends: list[int] = []
        if self._starts[i] < lo:
            starts.append(self._starts[i])
            ends.append(lo - 1)
        if self._ends[j - 1] > hi:
            starts.append(hi + 1)
            ends.append(self._ends[j - 1])
        self._starts[i:j] = starts
        self._ends[i:j] = ends

    def first_free_from(self, value: int) -> int:
        i = bisect_right(self._starts, value) - 1
        if i >= 0 and self._ends[i] >= value:
            return self._ends[i] + 1  # runs are merged, so the value after one is free
        return value

    def last_run_touching(self, lo: int, hi: int) -> tuple[int, int] | None:
        """The highest run overlapping [lo, hi]: skipping past its end skips every other one."""
        i = bisect_right(self._starts, hi) - 1
        if i >= 0 and self._ends[i] >= lo:
            return self._starts[i], self._ends[i]
        return None

    def highest_at_or_below(self, value: int) -> int | None:
        i = bisect_right(self._starts, value) - 1
        return min(self._ends[i], value) if i >= 0 else None

    def runs(self) -> tuple[tuple[int, int], ...]:
        return tuple(zip(self._starts, self._ends, strict=True))


class CursorPool:
    """Values handed out in turn from [lo, hi], resuming after the last one handed out.

    A value that was just given back comes out again only after the rest of the range has been
    used (as Docker's IPAM does): an address, VNI or port that a host may still be tearing down,
    or that a peer still has in a cache, is not given to someone else straight away.
    `used` may also hold values outside [lo, hi] (an explicit port, a gateway outside an
    ip_range): they are only there to be known as taken.
    """

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.hi = hi
        self.used = IntervalSet()
        self.cursor = lo

    def take(self, value: int, undo: Undo) -> None:
        self.used.add(value, value)
        undo.append(lambda: self.used.remove(value, value))

    def take_next(self, undo: Undo) -> int | None:
        value = self.used.first_free_from(self.cursor)
        if value > self.hi:
            value = self.used.first_free_from(self.lo)
            if value >= self.cursor:
                return None
        cursor = self.cursor
        self.used.add(value, value)
        self.cursor = value + 1 if value < self.hi else self.lo
        undo.append(lambda: self._untake(value, cursor))
        return value

    def _untake(self, value: int, cursor: int) -> None:
        self.used.remove(value, value)
        self.cursor = cursor

    def resume_after_highest(self, ignore: int | None = None) -> None:
        """Point the cursor just past the highest value in use, as if it had been handed out last
        (`ignore` is a value that is reserved but never handed out, such as a gateway)."""
        highest = self.used.highest_at_or_below(self.hi)
        if highest is not None and highest == ignore:
            highest = self.used.highest_at_or_below(ignore - 1)
        if highest is None or highest < self.lo:
            self.cursor = self.lo
        else:
            self.cursor = highest + 1 if highest < self.hi else self.lo


@contextmanager
def all_or_nothing() -> Iterator[Undo]:
    """Collect the undo step of every change made in the block; run them all if it raises."""
    undo: Undo = []
    try:
        yield undo
    except BaseException:
        for step in reversed(undo):
            step()
        raise
