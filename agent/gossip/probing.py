"""Probing and suspicion: how a node finds out that a member failed (SWIM + Lifeguard).

Each probe interval a node pings its ring successor and the next member of a shuffled round
robin; with no ack after probe_timeout it pings again and asks `indirect_checks` members to
ping on its behalf; with no ack by the end of the interval it declares the member suspect.
Members that hear of a suspicion probe the suspect themselves (out of turn) and add their
confirmation, which shrinks the suspicion timeout Lifeguard-style; the suspect hears of it
(suspicions ride on pings to it and are eagerly pushed) and refutes with a higher
incarnation if it is alive. A suspicion that runs out makes the member dead.

Pings also answer for the other side: every ping carries the prober's own alive message (so
a member that missed our announcement learns of us) and the acks to round-robin pings carry
pending member news.
"""

from __future__ import annotations

from agent.gossip import wire
from agent.gossip.common import Addr, Outcome
from agent.gossip.context import NodeContext, Part
from agent.gossip.dissemination import Dissemination
from agent.gossip.membership import ACTIVE_STATES, ALIVE, SUSPECT
from agent.gossip.timers import (
    ProbeEnd,
    ProbeTick,
    ProbeTimeout,
    ProbingTimer,
    RelayExpired,
    SuspicionDue,
)


class _Probe:
    __slots__ = ("addr", "confirm", "incarnation", "start", "target")

    def __init__(
        self, target: str, addr: Addr, incarnation: int, start: float, confirm: bool
    ) -> None:
        self.target = target
        self.addr = addr
        # A failed probe accuses the incarnation it probed: if the target refuted meanwhile,
        # the accusation is stale and ignored (otherwise every confirmation probe still in
        # flight at a refutation would start a new suspicion of the new incarnation).
        self.incarnation = incarnation
        self.start = start
        self.confirm = confirm  # out-of-turn probe of a suspect: direct only


class Prober(Part):
    """The probes one node has in flight and the pings it relays for others."""

    def __init__(self, ctx: NodeContext, dissemination: Dissemination) -> None:
        super().__init__(ctx)
        self._dissem = dissemination
        self._probe_seq = ctx.rng.getrandbits(32)
        self._probes: dict[int, _Probe] = {}
        self._probing: dict[str, int] = {}  # target -> probe seq
        self._relays: dict[int, tuple[Addr, int]] = {}  # our ping seq -> (requester, its seq)

    def start(self, when: float) -> None:
        """Run the probe tick from ``when`` on (until this node leaves)."""
        self._timers.add(when, ProbeTick())

    def on_timer(self, now: float, ev: ProbingTimer) -> None:
        if isinstance(ev, ProbeTimeout):
            self._probe_timeout(now, ev.seq)
        elif isinstance(ev, ProbeEnd):
            if ev.seq in self._probes:
                self._probe_failed(now, ev.seq)
        elif isinstance(ev, RelayExpired):
            self._relays.pop(ev.seq, None)
        elif isinstance(ev, SuspicionDue):
            self._suspicion_due(now, ev.name)
        else:
            assert isinstance(ev, ProbeTick), ev
            self._probe_tick(now)

    # ------------------------------------------------------------------ our probes

    def _next_probe_seq(self) -> int:
        self._probe_seq = (self._probe_seq + 1) & 0xFFFFFFFF
        return self._probe_seq

    def _probe_tick(self, now: float) -> None:
        if self._members.left:
            return
        self._timers.add(now + self.config.probe_interval, ProbeTick())
        started: set[str] = set()
        if self.config.ring_probe:
            succ = self._members.ring_successor()
            if succ is not None and succ not in self._probing:
                # No piggybacking on ring probes (nor on their acks): they always go to the
                # same member, and every broadcast they carried would be a transmission
                # spent on a neighbour instead of a random peer.
                self.start_probe(now, succ, confirm=False, piggyback=False)
                started.add(succ)
        skip = started | set(self._probing)
        target = self._members.next_probe_target(skip)
        if target is not None:
            self.start_probe(now, target, confirm=False)

    def start_probe(self, now: float, name: str, confirm: bool, piggyback: bool = True) -> None:
        """Ping ``name`` (unless it is already being probed). ``confirm``: an out-of-turn
        probe of a suspect, direct only, which fails at the probe timeout."""
        m = self._members.get(name)
        if m is None or m.state not in ACTIVE_STATES or name in self._probing:
            return
        seq = self._next_probe_seq()
        self._probes[seq] = _Probe(name, m.addr, m.incarnation, now, confirm)
        self._probing[name] = seq
        # The ping introduces us: a member that missed our announcement (it joined through
        # another seed at the same time) learns of us from the first ping it gets.
        msgs = [wire.encode_ping(seq, name, self._members.digest), self._dissem.self_alive()]
        if m.state == SUSPECT:
            # Lifeguard's buddy system: make sure the suspect hears of it to refute.
            msgs.append(wire.encode_suspect(name, m.incarnation, self.name))
        if piggyback:
            self._dissem.piggyback(m.addr, msgs)
        else:
            self._outbox.send(m.addr, msgs)
        self._timers.add(now + self.config.probe_timeout, ProbeTimeout(seq))

    def _probe_timeout(self, now: float, seq: int) -> None:
        p = self._probes.get(seq)
        if p is None:
            return
        if p.confirm:
            self._probe_failed(now, seq)
            return
        # Second chance: ping again directly, and ask others to try.
        self._outbox.send(p.addr, [wire.encode_ping(seq, p.target, self._members.digest)])
        helpers = self._members.active.sample(
            self._rng,
            self.config.indirect_checks,
            {p.target},
            lambda n: (m := self._members.get(n)) is not None and m.state == ALIVE,
        )
        req = wire.encode_ping_req(seq, p.target, p.addr)
        for h in helpers:
            hm = self._members.get(h)
            if hm is not None:
                self._outbox.send(hm.addr, [req])
        end = p.start + self.config.probe_interval
        self._timers.add(max(end, now), ProbeEnd(seq))

    def _probe_failed(self, now: float, seq: int) -> None:
        p = self._probes.pop(seq)
        if self._probing.get(p.target) == seq:
            del self._probing[p.target]
        m = self._members.get(p.target)
        if m is None or m.state not in ACTIVE_STATES or self._members.left:
            return
        outcome = self._members.apply_suspect(p.target, p.incarnation, self.name, now)
        if outcome in (Outcome.CHANGED, Outcome.CONFIRMED):
            self._dissem.suspicion_news(
                p.target, self.name, wire.encode_suspect(p.target, p.incarnation, self.name)
            )
            self.watch_suspicion(p.target)

    # ------------------------------------------------------------------ pings we answer

    def on_ack(self, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._outbox.send(relay[0], [wire.encode_ack(relay[1])])
            return
        p = self._probes.pop(seq, None)
        if p is not None and self._probing.get(p.target) == seq:
            del self._probing[p.target]

    def answer_ping(self, sender: str, src: Addr, seq: int) -> None:
        """Ack a ping meant for us; round-robin acks carry member news, ring acks do not."""
        ack = [wire.encode_ack(seq)]
        if self.config.ring_probe and sender == self._members.ring_predecessor():
            self._outbox.send(src, ack)
        else:
            self._dissem.piggyback(src, ack)

    def on_ping_req(self, now: float, src: Addr, msg: wire.PingReq) -> None:
        """Ping the target for the requester; its ack is relayed back (`on_ack`)."""
        if self._members.left:
            return
        seq = self._next_probe_seq()
        self._relays[seq] = (src, msg.seq)
        self._outbox.send(msg.addr, [wire.encode_ping(seq, msg.target, self._members.digest)])
        self._timers.add(now + self.config.probe_interval, RelayExpired(seq))

    # ------------------------------------------------------------------ suspicion

    def watch_suspicion(self, name: str) -> None:
        """Time out the current suspicion of ``name`` (if it has one) at its deadline."""
        m = self._members.get(name)
        if m is not None and m.suspicion is not None:
            self._timers.add(m.suspicion.deadline, SuspicionDue(name))

    def maybe_probe_suspect(self, now: float, name: str) -> None:
        """On first hearing of someone else's suspicion, probe the suspect out of turn
        (with a probability that keeps the expected number of probers at confirm_probers),
        so that confirmations or the refutation come within one probe timeout."""
        if self._members.left:
            return
        seq = self._probing.get(name)
        if seq is not None:
            # Already probing it: our own unanswered ping is evidence enough once its
            # direct timeout has passed; before that, let it end at the timeout.
            probe = self._probes[seq]
            probe.confirm = True
            if now - probe.start >= self.config.probe_timeout:
                self._probe_failed(now, seq)
            return
        others = max(1, self._members.size() - 2)
        chance = min(1.0, self.config.confirm_probers / others)
        if chance >= 1.0 or self._rng.random() < chance:
            self.start_probe(now, name, confirm=True)

    def _suspicion_due(self, now: float, name: str) -> None:
        m = self._members.get(name)
        if m is None or m.state != SUSPECT or m.suspicion is None:
            return
        if m.suspicion.deadline > now + 1e-9:
            return  # an older, longer deadline; the current one has its own timer
        if self._members.left:
            return
        inc = m.incarnation
        if self._members.apply_dead(name, inc, self.name, now) == Outcome.CHANGED:
            self._dissem.member_news(name, wire.encode_dead(name, inc, self.name))
