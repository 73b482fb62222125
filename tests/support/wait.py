"""Polling until something holds: one `wait_for` (and its asyncio twin) for every test.

The argument order is (what, check): the description comes first so that a call reads as a
sentence, and the failure message names what was awaited and the last value seen.

A check may return a falsy value (None, False, an empty list) while the condition does not hold
and the value the caller wants once it does (``lambda: len(ts) == 2 and ts``); only a truthy
value is ever returned, so the result's type leaves out None and False.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, overload

T = TypeVar("T")


class Timeout(AssertionError):
    """A condition did not hold in time (an AssertionError, so pytest reports it as a failure)."""


def wait_for(
    what: str,
    check: Callable[[], T | Literal[False] | None],
    timeout: float = 15.0,
    every: float = 0.1,
) -> T:
    """Poll ``check`` until it returns something truthy and return that; fail with ``what``
    and the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(every)


@overload
async def await_for(
    what: str,
    check: Callable[[], Awaitable[T | Literal[False] | None]],
    timeout: float = 15.0,
    every: float = 0.05,
) -> T: ...


@overload
async def await_for(
    what: str,
    check: Callable[[], T | Literal[False] | None],
    timeout: float = 15.0,
    every: float = 0.05,
) -> T: ...


async def await_for(
    what: str, check: Callable[[], Any], timeout: float = 15.0, every: float = 0.05
) -> Any:
    """``wait_for`` on an event loop: sleeps there between tries, so the loop's own tasks run.
    ``check`` may be a coroutine function or a plain function (reading state those tasks
    change)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(every)
