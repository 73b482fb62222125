"""What a `GossipNode` hands back to its driver: packets to send, events, counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.gossip.common import Addr


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One sealed datagram (``stream=False``) or stream frame to deliver to ``dest``."""

    dest: Addr
    data: bytes
    stream: bool = False


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """A member's state (or address) changed in this node's view."""

    name: str
    addr: Addr
    state: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class EntryChanged:
    """The visible value of (network, key) changed; ``value`` None: no longer visible
    (deleted, or its owner is dead, left or gone from the network)."""

    network: str
    key: str
    owner: str
    value: bytes | None


Event = MemberChanged | EntryChanged

# Every reason a drop is counted under (see `Stats`): the bounded label set of the agent's
# ovnet_gossip_dropped_packets_total{reason}, each exported from 0.
DROP_REASONS = ("malformed", "auth", "replay", "misdirected", "loop", "too_large")


@dataclass
class Stats:
    """Traffic counters. Every packet or frame that is rejected counts once in ``dropped``
    under one reason: malformed (not a sealed packet, or a bad body under a valid key), auth
    (no key opens it), replay, misdirected (sealed for another node), loop (our own name as
    sender), too_large (also our own push-pull outgrowing the frame limit).

    ``bugs`` counts inputs on which the core itself failed (an exception other than a
    decoding or authentication error): not a drop, since the input may well have been
    valid; each is logged with its traceback, and it should stay 0."""

    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    streams_in: int = 0
    streams_out: int = 0
    stream_bytes_in: int = 0
    stream_bytes_out: int = 0
    stream_failures: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    last_sync: float | None = None
    bugs: int = 0

    def drop(self, reason: str) -> None:
        """Count one rejected input under ``reason``."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def total_dropped(self) -> int:
        return sum(self.dropped.values())
