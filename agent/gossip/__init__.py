"""Gossip among agents: SWIM membership and per-network entry tables, sans-IO.

`GossipNode` is the whole protocol as a state machine (no sockets, no clock, injected
randomness), composed of parts that each own one concern: `membership` and `tables` (state and
merge rules), `probing` (failure detection), `dissemination` (broadcast queues), `sync`
(push-pull and join), `outbox` (sealing what is sent) over `wire` and `crypto`, with typed
`timers`. `GossipTuning` holds its knobs. `agent.gossip.transport` runs a node over UDP and
TCP; `agent.gossip.sim` (with `simwatch`) runs many of them in one process.
"""

from agent.gossip.common import Addr, DecodeError
from agent.gossip.config import GossipTuning
from agent.gossip.crypto import Keyring
from agent.gossip.events import EntryChanged, Event, MemberChanged, Outgoing, Stats
from agent.gossip.membership import MemberInfo
from agent.gossip.node import GossipNode
from agent.gossip.tables import Entry

__all__ = [
    "Addr",
    "DecodeError",
    "Entry",
    "EntryChanged",
    "Event",
    "GossipNode",
    "GossipTuning",
    "Keyring",
    "MemberChanged",
    "MemberInfo",
    "Outgoing",
    "Stats",
]
