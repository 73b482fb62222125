"""Times in `ovctl service logs` and `ovctl logs`: what `--since` takes, and the per-line
`-t/--timestamps` prefix, both as `docker logs` has them.

Every line carries its own time (when the task's shim read it, agent/executor/shim.py), so
`--since` cuts between two lines of one task, and `-t` shows each line's time, not its batch's.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ovctl import render, specs
from proto import control_pb2 as cpb

_UNIX = re.compile(r"\d+(?:\.\d+)?")
# Docker's date with a zone but no time ("2026-12-04Z", "2026-12-04+01:00").
_DATE_WITH_ZONE = re.compile(r"(\d{4}-\d{2}-\d{2})([zZ]|[+-]\d{2}:\d{2})")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[Tt]\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)?")
_ZONE = re.compile(r"[zZ]|[+-]\d{2}:\d{2}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _date_ms(text: str) -> int | None:
    """Unix ms of an RFC 3339 date or date-time as Docker takes it: a date, a date and hour,
    minutes, seconds and a fraction, with a zone ("Z", "+01:00") or without (local time, as
    docker reads it); None if `text` is none of those."""
    m = _DATE_WITH_ZONE.fullmatch(text)
    if m:
        text = f"{m.group(1)}T00:00:00{m.group(2)}"
    m = _DATE.match(text)
    if m is None or not (m.end() == len(text) or _ZONE.fullmatch(text, m.end())):
        return None
    try:
        when = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.astimezone()  # a naive time is local time
    return (when - _EPOCH) // _MS


def parse_since(text: str, now: float | None = None) -> int:
    """`--since` as Unix milliseconds, as `docker logs --since` takes it: an RFC 3339 date or
    time (2026-12-04, 2026-12-04T21:55:02Z, 2026-12-04T22:55:02.5+01:00; without a zone,
    local time), a Unix time in seconds (1796421302, 1796421302.25), or a duration before
    `now` (42m, 1h30m, 10s). "0" is the Unix time 0: everything."""
    s = text.strip()
    now = time.time() if now is None else now
    if _UNIX.fullmatch(s):
        return int(s.partition(".")[0]) * 1000 + int((s.partition(".")[2] + "000")[:3])
    ms = _date_ms(s)
    if ms is None and s[:1].isdigit() and "-" not in s:
        try:
            ms = int(now * 1000) - specs.parse_duration(s)
        except specs.SpecError:
            ms = None
    if ms is None:
        raise specs.SpecError(
            f"invalid since {text!r}: give a time (2026-12-04T21:55:02Z, 2026-12-04), "
            "a Unix time in seconds (1796421302.5) or a duration before now (42m, 1h30m, 10s)"
        )
    if ms < 0:
        raise specs.SpecError(f"invalid since {text!r}: before 1970-01-01T00:00:00Z")
    return ms


def stamp(ms: int) -> str:
    """RFC 3339 in UTC with nanoseconds, as `docker logs -t` prints it
    ("2026-12-04T21:55:02.123000000Z"); the times are kept to the millisecond."""
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}000000Z"


def add_options(p: argparse.ArgumentParser, arg: Callable[..., Any]) -> None:
    """`--since` and `-t/--timestamps` on a logs verb; `arg` adapts a `specs` parser."""
    p.add_argument(
        "--since",
        type=arg(parse_since, "since"),
        default=0,
        metavar="TIME",
        help="only lines since TIME: 2026-12-04T21:55:02Z, 2026-12-04, a Unix time, "
        "or a duration before now (42m)",
    )
    p.add_argument("-t", "--timestamps", action="store_true", help="start every line with its time")


def timestamped(line: cpb.LogLine) -> bytes:
    """The line's bytes with its time before each line it holds (a message carries one line,
    or a piece of a longer one; the text is ended with a newline if the task's was not)."""
    prefix = stamp(line.timestamp_ms).encode() + b" "
    parts = line.data.removesuffix(b"\n").split(b"\n")
    return b"".join(prefix + part + b"\n" for part in parts)


def service_lines(
    line: cpb.LogLine, hostnames: Mapping[str, str], timestamps: bool = False
) -> list[str]:
    """`task@node | text` for every line the message carries, each after its time with
    `timestamps` (Docker's order: `TIME task@node | text`)."""
    texts = render.log_lines(line, hostnames)
    if not timestamps:
        return texts
    prefix = stamp(line.timestamp_ms) + " "
    return [prefix + text for text in texts]
