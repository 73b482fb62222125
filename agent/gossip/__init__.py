"""Gossip among agents: SWIM membership and per-network entry tables, sans-IO.

`GossipNode` is the whole protocol as a state machine (no sockets, no clock, injected
randomness); `agent.gossip.transport` runs it over UDP and TCP, `agent.gossip.sim` runs many
of them in one process.
"""

from agent.gossip.common import Addr, DecodeError
from agent.gossip.config import GossipConfig
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
    "GossipConfig",
    "GossipNode",
    "Keyring",
    "MemberChanged",
    "MemberInfo",
    "Outgoing",
    "Stats",
]
