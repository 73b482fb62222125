"""What every part of a node shares, handed over once.

The node's parts (`probing.Prober`, `dissemination.Dissemination`, `sync.Sync`) all work on
the same identity, knobs and random generator, the same member list and tables, and send and
schedule through the same outbox and timer heap. `NodeContext` bundles those; `Part` unpacks
them into plain attributes, because the parts read them on every packet and a simulator runs
a thousand nodes in one process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from agent.gossip.common import Addr
from agent.gossip.config import GossipTuning
from agent.gossip.membership import Membership
from agent.gossip.outbox import Outbox
from agent.gossip.tables import Tables
from agent.gossip.timers import Timers


@dataclass(frozen=True, slots=True)
class NodeContext:
    name: str
    addr: Addr
    config: GossipTuning
    rng: random.Random
    members: Membership
    tables: Tables
    outbox: Outbox
    timers: Timers


class Part:
    """Base of a node's parts: the shared context as attributes."""

    def __init__(self, ctx: NodeContext) -> None:
        self.name = ctx.name
        self.addr = ctx.addr
        self.config = ctx.config
        self._rng = ctx.rng
        self._members = ctx.members
        self._tables = ctx.tables
        self._outbox = ctx.outbox
        self._timers = ctx.timers
