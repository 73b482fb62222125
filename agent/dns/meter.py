"""Per-query accounting of the embedded resolver, for its metrics (agent/metrics.py:
`ovnet_dns_queries_total{rcode}` and the histogram `ovnet_dns_latency_seconds`).

Why not the metrics library's own Counter and Histogram on the query path: each update takes a
lock (about 1 µs for a labelled counter and a histogram together), a sixth of what a cached
answer costs in all (~6 µs); here a query costs a list index, a bisect and an addition, and
the metrics read the lists at scrape time. Only the event loop's thread writes them.

Latency is the agent's part of a query: from reading it off the socket to sending the answer
(for a forwarded name, the upstream's reply included). Queries dropped unanswered (malformed)
are not counted.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# RFC 1035 / 2136 response codes by number; others are named RCODE<n>.
RCODE_NAMES = (
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "YXDOMAIN",
    "YXRRSET",
    "NXRRSET",
    "NOTAUTH",
    "NOTZONE",
)


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES[rcode] if rcode < len(RCODE_NAMES) else f"RCODE{rcode}"


class QueryMeter:
    """Answers by rcode (the 4 bits of the header) and a latency histogram over `bounds`."""

    __slots__ = ("bounds", "buckets", "rcodes", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        # buckets[i]: answers that took at most bounds[i] (and more than bounds[i-1]); the last
        # one, longer than every bound.
        self.buckets = [0] * (len(self.bounds) + 1)
        self.rcodes = [0] * 16
        self.total = 0.0  # seconds, over every answer

    def record(self, rcode: int, seconds: float) -> None:
        """One answer sent with `rcode` (0-15), `seconds` after its query was read."""
        self.rcodes[rcode] += 1
        self.buckets[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def by_rcode(self) -> dict[str, int]:
        """Answers by rcode name: the common six always (0 included), others once seen."""
        return {rcode_name(i): n for i, n in enumerate(self.rcodes) if i < 6 or n}

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, answers at most that long) per bound, then (inf, all answers)."""
        out, acc = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            acc += n
            out.append((bound, acc))
        return out
