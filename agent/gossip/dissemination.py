"""Dissemination: how news (member states, network participation, entries) spreads.

Broadcasts wait in transmit-limited queues (`TransmitQueue`): one cluster-wide queue for
member and participation news, one per network for its entries. Each is sent at most
retransmit_mult * max(retransmit_min_scale, ceil(log10(N + 1))) times by each node (twice
that by the node the news is about).

- Eager push: news learned since the last flush goes at once to `gossip_nodes` random peers
  instead of waiting for the next gossip tick; news arriving within eager_coalesce of the last
  push waits for the end of that pause and shares its packets.
- Gossip ticks (every gossip_interval, to `gossip_nodes` random peers) use up the remaining
  transmissions. The tick runs only while something is pending and someone could take it (a
  member alive, suspect or recently dead), so an idle node, and a node alone (whose own alive
  message can never drain), has no gossip deadline at all. A tick paused for want of peers
  resumes on its old phase when one appears: it runs exactly when it would have run had it
  kept ticking (the skipped ticks had nobody to send to and, but for a network listing many
  participants none of them alive, drew nothing from the rng: a simulated run is unchanged).
- Entry broadcasts go only to participants of their network, believed alive; member news
  also goes to members recently declared dead (so a wrongly declared one refutes) and rides
  on round-robin pings and their acks (`piggyback`).
"""

from __future__ import annotations

import math

from agent.gossip import wire
from agent.gossip.broadcast import TransmitQueue
from agent.gossip.common import Addr
from agent.gossip.context import NodeContext, Part
from agent.gossip.membership import ALIVE, LEFT, SUSPECT
from agent.gossip.tables import Entry
from agent.gossip.timers import DisseminationTimer, EagerDue, GossipTick

_MIN_MSG = 16  # smaller leftovers of a packet are not worth filling


class Dissemination(Part):
    """The broadcast queues of one node and the rules for sending them."""

    def __init__(self, ctx: NodeContext, now: float) -> None:
        super().__init__(ctx)
        self._mq = TransmitQueue()  # cluster-wide: members and participation
        self._nq: dict[str, TransmitQueue] = {}  # per network: entries
        self._fresh_members = False
        self._fresh_nets: dict[str, None] = {}
        self.exclude_next: str | None = None  # the sender of what the next flush pushes
        self._gossip_running = False
        # When the tick paused because nobody could be gossiped to: the due time of that tick
        # (its phase, kept when it resumes); None when it is not paused for that reason.
        self._paused_at: float | None = None
        self._eager_at = now
        self._eager_timer = False
        self._alive_cache: tuple[int, bytes] | None = None

    def pending(self) -> int:
        """Broadcasts still to be sent (for status)."""
        return len(self._mq) + sum(len(q) for q in self._nq.values())

    # ------------------------------------------------------------------ queueing news

    def member_news(
        self, name: str, data: bytes, *, clear_group: bool = True, mult: int = 1
    ) -> None:
        """Queue an alive/dead message about ``name`` (replacing older news about it and, by
        default, every pending suspicion of it)."""
        self._mq.put(("m", name), data, group=name, clear_group=clear_group, mult=mult)
        self._fresh_members = True

    def suspicion_news(self, name: str, source: str, data: bytes) -> None:
        """Queue ``source``'s suspicion of ``name`` (suspicions of several sources coexist:
        each is a confirmation)."""
        self._mq.put(("s", name, source), data, group=name)
        self._fresh_members = True

    def net_news(self, node: str, network: str, data: bytes, *, mult: int = 1) -> None:
        self._mq.put(("n", node, network), data, mult=mult)
        self._fresh_members = True

    def entry_news(self, network: str, key: str, owner: str, data: bytes, *, mult: int = 1) -> None:
        q = self._nq.get(network)
        if q is None:
            q = self._nq[network] = TransmitQueue()
        q.put((key, owner), data, mult=mult)
        self._fresh_nets[network] = None

    def self_alive(self) -> bytes:
        """This node's own alive message at its current incarnation (cached)."""
        inc = self._members.local.incarnation
        cached = self._alive_cache
        if cached is None or cached[0] != inc:
            cached = self._alive_cache = (inc, wire.encode_alive(self.name, self.addr, inc))
        return cached[1]

    def broadcast_self(self) -> None:
        """Announce (or re-assert, after a refutation) that this node is alive."""
        if self._members.local.state == LEFT:
            return
        self.member_news(self.name, self.self_alive(), mult=2)

    def broadcast_member(self, name: str) -> None:
        """Re-broadcast what we hold about ``name`` (a push-pull brought news about the peer)."""
        m = self._members.get(name)
        if m is None:
            return
        if m.state == ALIVE:
            data = wire.encode_alive(name, m.addr, m.incarnation)
        elif m.state == SUSPECT:
            data = wire.encode_suspect(name, m.incarnation, self.name)
        else:
            data = wire.encode_dead(name, m.incarnation, name if m.state == LEFT else self.name)
        self.member_news(name, data, clear_group=m.state != SUSPECT)

    def broadcast_net(self, n: wire.NetMsg) -> None:
        data = wire.encode_net(n.node, n.network, n.ltime, n.joined)
        self.net_news(n.node, n.network, data, mult=2 if n.node == self.name else 1)

    def broadcast_entry(self, e: Entry) -> None:
        data = wire.encode_entry(e.network, e.key, e.owner, e.ltime, e.deleted, e.value)
        self.entry_news(e.network, e.key, e.owner, data, mult=2 if e.owner == self.name else 1)

    # ------------------------------------------------------------------ sending

    def _limit(self, n: int) -> int:
        scale = max(self.config.retransmit_min_scale, math.ceil(math.log10(n + 1)))
        return self.config.retransmit_mult * scale

    def piggyback(self, dest: Addr, msgs: list[bytes]) -> None:
        """Send ``msgs`` with as many pending member broadcasts as fit (SWIM piggybacking)."""
        if len(self._mq):
            room = self._outbox.budget(dest) - sum(len(m) for m in msgs)
            if room >= _MIN_MSG:
                msgs = msgs + self._mq.take(room, self._limit(self._members.size()))
        self._outbox.send(dest, msgs)

    def flush(self, now: float) -> None:
        """Eager push: send what was learned since the last flush to random peers now, or,
        if we pushed less than eager_coalesce ago, at the end of that pause (news arriving
        in a burst then shares packets instead of costing gossip_nodes packets each)."""
        exclude = self.exclude_next
        self.exclude_next = None
        if not self.config.eager_push:
            self._fresh_members = False
            self._fresh_nets.clear()
        elif self._fresh_members or self._fresh_nets:
            if now < self._eager_at:
                if not self._eager_timer:
                    self._eager_timer = True
                    self._timers.add(self._eager_at, EagerDue())
            else:
                self._eager_at = now + self.config.eager_coalesce
                self._eager_push(now, {exclude} if exclude is not None else set())
        # The gossip timer only runs while something is queued and someone could take it,
        # so an idle, lone (or left) node has no deadline at all from gossip. Every input
        # ends with a flush, so the tick resumes as soon as a join, an alive message or a
        # push-pull brings a peer.
        if not self._gossip_running and self._pending() and self._has_peers():
            paused_at, self._paused_at = self._paused_at, None
            if paused_at is None:
                self.start(now + self._rng.uniform(0, self.config.gossip_interval))
            else:
                self.start(self._next_phase(paused_at, now))

    def start(self, when: float) -> None:
        """Run the gossip tick from ``when`` on (until nothing is pending)."""
        self._gossip_running = True
        self._timers.add(when, GossipTick())

    def on_timer(self, now: float, ev: DisseminationTimer) -> None:
        if isinstance(ev, GossipTick):
            self._gossip_tick(now)
        else:
            assert isinstance(ev, EagerDue), ev
            self._eager_timer = False  # `tick` flushes right after the timers ran

    def _eager_push(self, now: float, exclude: set[str]) -> None:
        if self._fresh_members:
            self._fresh_members = False
            if len(self._mq):
                targets = self._members.gossip_targets(self.config.gossip_nodes, now, exclude)
                self._gossip_members(targets)
        if self._fresh_nets:
            nets = list(self._fresh_nets)
            self._fresh_nets.clear()
            for net in nets:
                self._gossip_network(net, exclude)

    def _gossip_members(self, targets: list[str]) -> None:
        limit = self._limit(self._members.size())
        for name in targets:
            m = self._members.get(name)
            if m is None:
                continue
            msgs = self._mq.take(self._outbox.budget(m.addr), limit)
            if not msgs:
                break
            self._outbox.send(m.addr, msgs)

    def _gossip_network(self, network: str, exclude: set[str]) -> None:
        q = self._nq.get(network)
        if q is None or not len(q):
            return
        ps = self._tables.participants(network)
        if ps is None:
            return
        # Entries go to participants believed alive: a suspect one is likely unreachable (a
        # partition, a crash), and every transmission spent on it is one the reachable
        # participants do not get. (Member news does go to suspects: they must refute.)
        targets = ps.sample(self._rng, self.config.gossip_nodes, exclude, self._is_alive)
        limit = self._limit(len(ps) + 1)
        for name in targets:
            m = self._members.get(name)
            if m is None:
                continue
            msgs = q.take(self._outbox.budget(m.addr), limit)
            if not msgs:
                break
            self._outbox.send(m.addr, msgs)

    def _is_alive(self, name: str) -> bool:
        m = self._members.get(name)
        return m is not None and m.state == ALIVE

    def _pending(self) -> bool:
        return bool(len(self._mq)) or any(len(q) for q in self._nq.values())

    def _has_peers(self) -> bool:
        """Could a gossip tick send anything: is any member active or recently dead?"""
        return bool(len(self._members.active)) or bool(len(self._members.recent_dead))

    def _next_phase(self, paused_at: float, now: float) -> float:
        """The first tick time at or after ``now`` of the chain paused at ``paused_at``,
        computed as the running tick would have (by repeated addition, so that the simulator
        gets the very same floats)."""
        interval = self.config.gossip_interval
        at = paused_at + interval
        behind = int((now - at) / interval) - 1
        if behind > 1000:  # paused for long (a lone agent): skip most steps at once
            at += behind * interval
        while at < now:
            at += interval
        return at

    def _gossip_tick(self, now: float) -> None:
        if not self._pending():
            self._gossip_running = False
            return
        if not self._has_peers():
            # Nobody to send to: pending news (a lone node's own alive message) cannot drain,
            # and ticking on would only wake the driver every gossip_interval for nothing.
            self._gossip_running = False
            self._paused_at = now
            return
        self._timers.add(now + self.config.gossip_interval, GossipTick())
        if len(self._mq):
            targets = self._members.gossip_targets(self.config.gossip_nodes, now, set())
            self._gossip_members(targets)
        for net in list(self._nq):
            q = self._nq[net]
            if len(q):
                self._gossip_network(net, set())
            elif not self._tables.participates(net):
                del self._nq[net]
