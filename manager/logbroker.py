"""Task output that agents publish, kept in memory for `ovctl service logs`.

Logs are not desired state, so they never go to etcd: each task keeps its last lines in a bounded
ring on the leader (agents keep full log files on their hosts). A leader change loses the rings;
agents resend what is still in their files when they reconnect.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from proto import control_pb2 as cpb

# Lines a follower may fall behind by before the oldest are dropped (a slow client must not
# make the leader hold its whole output).
FOLLOW_BACKLOG = 10_000


class Follower:
    """New lines that `match`, for one `logs --follow` stream, in arrival order."""

    def __init__(self, match: Callable[[cpb.LogLine], bool]) -> None:
        self.match = match
        self.queue: asyncio.Queue[cpb.LogLine] = asyncio.Queue(FOLLOW_BACKLOG)

    def offer(self, line: cpb.LogLine) -> None:
        if not self.match(line):
            return
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(line)


class LogBroker:
    def __init__(self, lines_per_task: int = 1000) -> None:
        self.lines_per_task = lines_per_task
        self._rings: dict[str, deque[cpb.LogLine]] = {}
        self._followers: set[Follower] = set()

    def publish(self, line: cpb.LogLine) -> None:
        ring = self._rings.get(line.task_id)
        if ring is None:
            ring = self._rings[line.task_id] = deque(maxlen=self.lines_per_task)
        ring.append(line)
        for follower in self._followers:
            follower.offer(line)

    def follow(self, match: Callable[[cpb.LogLine], bool]) -> Follower:
        """Lines published from now on that `match`; `unfollow` when done."""
        follower = Follower(match)
        self._followers.add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        self._followers.discard(follower)

    def forget(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self._rings.pop(task_id, None)

    def lines(
        self, task_ids: Iterable[str], tail: int = 0, since_ms: int = 0
    ) -> Iterator[cpb.LogLine]:
        """Lines of these tasks in time order (each line's own time, so stdout and stderr and
        the tasks interleave as they were written; lines of the same millisecond keep their
        arrival order); only those at or after `since_ms` if it is > 0, then, if `tail` > 0,
        only the last `tail` of those overall (as `docker logs --since --tail`)."""
        merged = sorted(
            (ln for t in task_ids for ln in self._rings.get(t, ()) if ln.timestamp_ms >= since_ms),
            key=lambda ln: ln.timestamp_ms,
        )
        if tail > 0:
            merged = merged[-tail:]
        yield from merged
