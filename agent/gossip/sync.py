"""Push-pull and join: full state exchanges that repair what datagrams lost.

A push-pull sends everything a node holds (members, participation, the entries of the
networks both sides are in) over the stream transport; the peer merges it and answers with
its own. It happens:

- at join: with the seeds one at a time, join_stagger apart, each only if not known alive by
  then (the first answer usually brings the whole cluster, so a join costs one sync instead
  of one per seed), retried every join_retry while nobody answered, and once more with a
  random member join_resync after it succeeded;
- periodically (push_pull_interval, scaled with the cluster's size) with a random peer, a
  participant of one of our networks half of the time;
- now and then with a member held dead (Serf's reconnect), and at once with a member we hold
  dead as soon as it talks to us, so that healed partitions merge;
- with a prober whose membership digest has differed from ours for digest_settle (a member
  an epidemic missed).

Merging re-broadcasts only news about the peer itself (that is how a joiner is announced):
the rest the cluster already has, and broadcasting it would make every join cost O(N)
broadcasts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from agent.gossip import wire
from agent.gossip.common import Addr, Outcome
from agent.gossip.context import NodeContext, Part
from agent.gossip.dissemination import Dissemination
from agent.gossip.membership import ACTIVE_STATES, ALIVE, LEFT
from agent.gossip.probing import Prober
from agent.gossip.tables import Entry
from agent.gossip.timers import (
    JoinCheck,
    JoinResync,
    JoinStep,
    PushPullTick,
    ReconnectTick,
    SyncTimer,
)


class Sync(Part):
    """Join rounds, periodic and triggered push-pulls, and merging what a peer sent."""

    def __init__(
        self,
        ctx: NodeContext,
        dissemination: Dissemination,
        prober: Prober,
        reap_later: Callable[[float, Entry], None],
        now: float,
    ) -> None:
        super().__init__(ctx)
        self._dissem = dissemination
        self._prober = prober
        self._reap_later = reap_later
        self._seeds: list[Addr] = []
        self._join_pending = False
        self._resync_done = False
        self._join_queue: list[Addr] = []
        self._dead_sync_at = now
        self._mismatch_since: float | None = None
        self._digest_sync_at = now

    def start(self, push_pull_at: float, reconnect_at: float) -> None:
        """Run the periodic push-pull and reconnect ticks from these times on."""
        self._timers.add(push_pull_at, PushPullTick())
        self._timers.add(reconnect_at, ReconnectTick())

    def on_timer(self, now: float, ev: SyncTimer) -> None:
        if isinstance(ev, PushPullTick):
            self._push_pull_tick(now)
        elif isinstance(ev, ReconnectTick):
            self._reconnect_tick(now)
        elif isinstance(ev, JoinStep):
            self._join_step(now)
        elif isinstance(ev, JoinCheck):
            self._join_check(now)
        else:
            assert isinstance(ev, JoinResync), ev
            self._join_resync()

    # ------------------------------------------------------------------ sending

    def send_push_pull(
        self,
        dest: Addr,
        join: bool,
        response: bool,
        their_networks: set[str] | None = None,
    ) -> None:
        """Our whole state to ``dest``. Entries only ever go to participants of their
        network: a request carries those of the networks we know the peer to be in (none for
        a seed we only know by address); the response those the request said the requester
        is in."""
        ms = self._members.members
        members = (len(ms), b"".join([m.record() for m in ms.values()]))
        nets = [n for n in self._tables.networks() if their_networks and n in their_networks]
        recs = self._tables.entry_records(nets)
        entries = (len(recs), b"".join([wire.encode_entry_record(e) for e in recs]))
        nets_wire = self._tables.net_records_wire()
        compress = self.config.compress_streams
        body = wire.push_pull_body(join, response, members, nets_wire, entries, compress)
        self._outbox.send_stream(dest, body)

    def push_pull_with(self, name: str) -> None:
        m = self._members.get(name)
        if m is not None:
            theirs = set(self._tables.common_networks(name))
            self.send_push_pull(m.addr, join=False, response=False, their_networks=theirs)

    def sync_dead(self, now: float, src: Addr) -> None:
        """A packet from a member we hold dead (a healed partition, or a node that was only
        slow): push-pull with it, so that it learns it must refute and both sides merge
        what they missed without waiting for the next periodic sync. At most once per probe
        interval. (Members we do not know at all introduce themselves: every ping carries
        the sender's own alive message.)"""
        if self._members.left or now < self._dead_sync_at:
            return
        self._dead_sync_at = now + self.config.probe_interval
        self.send_push_pull(src, join=False, response=False)

    def compare_digest(self, now: float, sender: str, src: Addr, digest: int) -> None:
        """A prober's membership digest differs from ours: one of us misses a member. If
        that lasts digest_settle (news in flight settles faster), push-pull with it; at most
        once per digest_sync_interval."""
        if digest == self._members.digest:
            self._mismatch_since = None
            return
        if self._mismatch_since is None:
            self._mismatch_since = now
            return
        if now - self._mismatch_since < self.config.digest_settle or now < self._digest_sync_at:
            return
        self._mismatch_since = None
        self._digest_sync_at = now + self.config.digest_sync_interval
        theirs = set(self._tables.common_networks(sender))
        self.send_push_pull(src, join=False, response=False, their_networks=theirs)

    # ------------------------------------------------------------------ receiving

    def received(self, now: float, peer: str, src: Addr, pp: wire.PushPull) -> None:
        """Merge a push-pull from ``peer``; answer a request with our own state."""
        reply_to = src
        for rec in pp.members:
            if rec.name == peer:
                reply_to = rec.addr  # the stream's source port is the peer's ephemeral one
        self._merge_members(now, peer, pp.members)
        self._merge_tables(now, peer, pp)
        if not pp.response:
            theirs = {n.network for n in pp.networks if n.node == peer and n.joined}
            self.send_push_pull(reply_to, join=False, response=True, their_networks=theirs)

    def _merge_members(self, now: float, peer: str, records: list[wire.MemberRecord]) -> None:
        members = self._members
        for rec in records:
            if rec.state == ALIVE:
                outcome = members.apply_alive(rec.name, rec.addr, rec.incarnation, now)
            elif rec.state == LEFT:
                outcome = members.apply_dead(rec.name, rec.incarnation, rec.name, now)
            else:
                # A remote "dead" is taken as a suspicion (as memberlist does): the member
                # gets its suspicion timeout to refute rather than being buried on hearsay.
                outcome = members.apply_suspect(rec.name, rec.incarnation, peer, now)
                if outcome == Outcome.CHANGED and rec.name != self.name:
                    self._prober.watch_suspicion(rec.name)
                    # Tell the suspect (the ping carries the suspicion) so it can refute.
                    self._prober.start_probe(now, rec.name, confirm=True)
            if outcome == Outcome.REFUTE:
                self._dissem.broadcast_self()
            elif outcome == Outcome.CHANGED and rec.name == peer:
                self._dissem.broadcast_member(rec.name)

    def _merge_tables(self, now: float, peer: str, pp: wire.PushPull) -> None:
        for n in pp.networks:
            outcome, mine = self._tables.apply_net(n)
            if outcome == Outcome.REFUTE and mine is not None:
                self._dissem.broadcast_net(mine)
            elif outcome == Outcome.CHANGED and n.node == peer:
                self._dissem.broadcast_net(n)
        for em in pp.entries:
            outcome, e = self._tables.apply_entry(em)
            if e is None:
                continue
            if outcome == Outcome.REFUTE:
                self._dissem.broadcast_entry(e)
            if e.deleted and outcome in (Outcome.CHANGED, Outcome.REFUTE):
                self._reap_later(now, e)

    # ------------------------------------------------------------------ periodic

    def _push_pull_scale(self) -> int:
        cfg = self.config
        n = self._members.size()
        if n <= cfg.push_pull_scale_threshold:
            return 1
        return math.ceil(math.log2(n) - math.log2(cfg.push_pull_scale_threshold)) + 1

    def _push_pull_tick(self, now: float) -> None:
        if self._members.left:
            return
        # The tick runs every push_pull_interval and syncs with probability 1/scale, so the
        # mean interval follows the cluster's current size (it was 1 when the node started).
        self._timers.add(now + self.config.push_pull_interval, PushPullTick())
        scale = self._push_pull_scale()
        if scale > 1 and self._rng.random() * scale >= 1.0:
            return
        peer: str | None = None
        nets = self._tables.networks()
        if nets and self._rng.random() < 0.5:
            ps = self._tables.participants(nets[self._rng.randrange(len(nets))])
            if ps is not None:
                pick = ps.sample(self._rng, 1, accept=self._members.is_active)
                peer = pick[0] if pick else None
        if peer is None:
            pick = self._members.active.sample(self._rng, 1)
            peer = pick[0] if pick else None
        if peer is not None:
            self.push_pull_with(peer)

    def _reconnect_tick(self, now: float) -> None:
        if self._members.left:
            return
        self._timers.add(now + self.config.reconnect_interval, ReconnectTick())
        failed = self._members.failed
        nf = len(failed)
        if nf == 0:
            return
        if self._rng.random() * (nf + len(self._members.active)) >= nf:
            return
        self.push_pull_with(failed.at(self._rng.randrange(nf)))

    # ------------------------------------------------------------------ join

    def join(self, now: float, seeds: list[Addr]) -> None:
        """Add new seeds and start a round over all of them (see the module docstring)."""
        for a in seeds:
            if a != self.addr and a not in self._seeds:
                self._seeds.append(a)
        self._join_attempt(now)

    def _join_attempt(self, now: float) -> None:
        if self._members.left or not self._seeds:
            return
        self._join_queue = list(self._seeds)
        self._join_step(now)
        if not self._join_pending:
            self._join_pending = True
            self._timers.add(now + self.config.join_retry, JoinCheck())

    def _join_step(self, now: float) -> None:
        if self._members.left:
            return
        known = {m.addr for m in self._members.members.values() if m.state in ACTIVE_STATES}
        while self._join_queue:
            seed = self._join_queue.pop(0)
            if seed not in known:
                self.send_push_pull(seed, join=True, response=False)
                break
        if self._join_queue:
            self._timers.add(now + self.config.join_stagger, JoinStep())

    def _join_check(self, now: float) -> None:
        self._join_pending = False
        if self._members.left:
            return
        if not len(self._members.active):
            self._join_attempt(now)  # nobody answered yet: try the seeds again
        elif not self._resync_done:
            self._resync_done = True
            self._timers.add(now + self.config.join_resync, JoinResync())

    def _join_resync(self) -> None:
        """One more sync after joining, with a random member: a node that joined through
        another seed at the same moment may have missed us and we it (each one's
        announcement went out while the other was not yet known to most of the cluster)."""
        pick = self._members.active.sample(self._rng, 1)
        if pick and not self._members.left:
            self.push_pull_with(pick[0])
