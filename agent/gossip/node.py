"""`GossipNode`: SWIM membership, per-network tables and anti-entropy, composed sans-IO.

The driver (the agent's asyncio transport, or the simulator) feeds it datagrams, stream
frames and the time, runs `tick` at `next_deadline`, and drains `take_outgoing` and
`take_events`. The node never reads a clock, never opens a socket and draws every random
choice from the `random.Random` it was given, so a run is a pure function of its inputs.

The node is the public face and the receive path; the protocol's parts live beside it, each
with its state and its timers:

- `membership.Membership` and `tables.Tables`: what the node knows, and the rules for
  merging what others say (pure: they send nothing and keep no timers);
- `probing.Prober`: probing and suspicion (how failures are found);
- `dissemination.Dissemination`: the broadcast queues, eager push and gossip ticks (how news
  travels, and why it is fast);
- `sync.Sync`: push-pull and join (how what datagrams lost is repaired);
- `outbox.Outbox`: sealing and counting everything sent;
- `timers.Timers`: one heap of typed timer events, routed here by their family.

Receiving: a datagram or frame that does not decode, does not authenticate, is a replay or
is meant for someone else is dropped and counted in ``stats.dropped``. Any other exception
is a bug in the core, not bad input: it is logged with its traceback and counted in
``stats.bugs`` (and re-raised when the node is ``strict``, as the simulator and the tests
make it, so that a bug fails them instead of looking like garbage).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from agent.gossip import crypto, wire
from agent.gossip.common import Addr, DecodeError, Outcome
from agent.gossip.config import GossipTuning
from agent.gossip.context import NodeContext
from agent.gossip.crypto import Keyring, ReplayGuard
from agent.gossip.dissemination import Dissemination
from agent.gossip.events import EntryChanged, Event, MemberChanged, Outgoing, Stats
from agent.gossip.membership import (
    ACTIVE_STATES,
    ALIVE,
    DEAD,
    LEFT,
    Member,
    MemberInfo,
    Membership,
)
from agent.gossip.outbox import Outbox
from agent.gossip.probing import Prober
from agent.gossip.sync import Sync
from agent.gossip.tables import Entry, Tables
from agent.gossip.timers import (
    DisseminationTimer,
    ProbingTimer,
    ReapMember,
    ReapTombstone,
    SyncTimer,
    Timers,
)
from osutil.hostport import join_hostport

log = logging.getLogger(__name__)

_MEMBER_NEWS = (wire.Alive, wire.Suspect, wire.Dead)  # a tuple: isinstance checks it fastest


def _norm_addr(addr: Addr) -> Addr:
    return (str(addr[0]), int(addr[1]))


class GossipNode:
    """One member of the gossip cluster. See the module docstring for the parts."""

    def __init__(
        self,
        name: str,
        addr: Addr,
        keyring: Keyring,
        config: GossipTuning,
        rng: random.Random,
        now: float,
        epoch: int | None = None,
        *,
        strict: bool = False,
    ) -> None:
        wire.str8(name)  # validates: 1-255 bytes of UTF-8
        self.name = name
        self.addr = _norm_addr(addr)
        wire.str8(self.addr[0])
        self.config = config
        self.strict = strict  # re-raise bugs (simulator, tests) instead of only counting them
        self._rng = rng
        self.epoch = rng.getrandbits(64) if epoch is None else int(epoch)
        if not 0 <= self.epoch <= wire.MAX_U64:
            raise ValueError("epoch must fit in 64 bits")
        self.stats = Stats()

        self._members = Membership(name, self.addr, config, rng, now, self._member_changed)
        self._tables = Tables(name, self._members.is_active, self._events_append)
        self._timers = Timers()
        self._replay = ReplayGuard(config.replay_window, config.replay_epochs)
        self._seen: dict[bytes, None] = {}
        self._events: list[Event] = []
        self._members_cache: tuple[int, list[MemberInfo]] | None = None

        self._outbox = Outbox(name, self.epoch, keyring, config, self.stats)
        ctx = NodeContext(
            name, self.addr, config, rng, self._members, self._tables, self._outbox, self._timers
        )
        self._dissem = Dissemination(ctx, now)
        self._prober = Prober(ctx, self._dissem)
        self._sync = Sync(ctx, self._dissem, self._prober, self._reap_later, now)

        self._dissem.broadcast_self()
        # Spread the periodic timers so that nodes started together do not run in lockstep.
        self._prober.start(now + rng.uniform(0, config.probe_interval))
        self._dissem.start(now + rng.uniform(0, config.gossip_interval))
        push_pull_at = now + rng.uniform(0, config.push_pull_interval)
        self._sync.start(push_pull_at, now + rng.uniform(0, config.reconnect_interval))

    # ================================================================== driving

    def receive(self, now: float, src: Addr, data: bytes) -> None:
        """One UDP datagram. Bad input is counted in ``stats.dropped``; a bug in the core is
        logged and counted in ``stats.bugs`` (re-raised when ``strict``)."""
        self.stats.packets_in += 1
        self.stats.bytes_in += len(data)
        self._guarded(now, src, data, self._receive_datagram, "datagram")

    def receive_stream(self, now: float, src: Addr, data: bytes) -> None:
        """One complete stream frame (a push-pull). Errors as in `receive`."""
        self.stats.streams_in += 1
        self.stats.stream_bytes_in += len(data)
        self._guarded(now, src, data, self._receive_stream, "stream frame")

    def _guarded(
        self,
        now: float,
        src: Addr,
        data: bytes,
        handle: Callable[[float, Addr, bytes], None],
        what: str,
    ) -> None:
        """h11's rule: a decoding or authentication error is bad input, counted as a drop
        (the checks on the way in count most of them themselves); any other exception is a
        bug in the core, logged with its traceback and counted apart, never a drop."""
        try:
            handle(now, _norm_addr(src), data)
        except DecodeError as e:
            self.stats.drop("auth" if isinstance(e, crypto.AuthError) else "malformed")
        except Exception:
            self.stats.bugs += 1
            log.exception("gossip: a %s from %s made the core fail (a bug)", what, src)
            if self.strict:
                raise
        self._flush(now)

    def stream_failed(self, now: float, dest: Addr) -> None:
        """The transport could not deliver a stream frame to ``dest``. Joins retry on their
        own timer and periodic syncs simply happen again, so this only counts."""
        self.stats.stream_failures += 1

    def tick(self, now: float) -> None:
        """Run every timer due at ``now``, each by the part that owns its kind."""
        pop_due = self._timers.pop_due
        while (ev := pop_due(now)) is not None:
            if isinstance(ev, ProbingTimer):
                self._prober.on_timer(now, ev)
            elif isinstance(ev, DisseminationTimer):
                self._dissem.on_timer(now, ev)
            elif isinstance(ev, SyncTimer):
                self._sync.on_timer(now, ev)
            elif isinstance(ev, ReapMember):
                self._reap_member(now, ev.name)
            else:
                assert isinstance(ev, ReapTombstone), ev
                self._tables.reap(ev.network, ev.key, ev.owner, ev.ltime)
        self._flush(now)

    def next_deadline(self) -> float:
        return self._timers.next()

    def take_outgoing(self) -> list[Outgoing]:
        return self._outbox.take()

    def take_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    def _flush(self, now: float) -> None:
        self._dissem.flush(now)

    # ================================================================== membership API

    def join(self, now: float, seeds: Iterable[Addr]) -> None:
        """Sync (push-pull) with the seeds not already known alive, one at a time
        (join_stagger apart, so the first answer usually makes the others unnecessary);
        repeat every join_retry until some peer is known. Idempotent: calling it again adds
        new seeds and starts another round."""
        self._sync.join(now, [_norm_addr(s) for s in seeds])
        self._flush(now)

    def leave(self, now: float) -> None:
        """Announce that this node leaves; it then stops probing and syncing but keeps
        gossiping until the announcement is spent. A left node cannot rejoin: make a new
        one."""
        if self._members.left:
            return
        self._members.leave(now)
        inc = self._members.local.incarnation
        self._dissem.member_news(self.name, wire.encode_dead(self.name, inc, self.name))
        self._flush(now)

    def set_keyring(self, keyring: Keyring) -> None:
        self._outbox.keyring = keyring

    @property
    def keyring(self) -> Keyring:
        return self._outbox.keyring

    def members(self) -> list[MemberInfo]:
        """Every known member, this node included (cached between changes)."""
        v = self._members.version
        if self._members_cache is None or self._members_cache[0] != v:
            self._members_cache = (v, self._members.infos())
        return list(self._members_cache[1])

    @property
    def incarnation(self) -> int:
        return self._members.local.incarnation

    # ================================================================== tables API

    def join_network(self, now: float, network: str) -> None:
        wire.str8(network)
        msg = self._tables.join(network)
        if msg is None:
            return
        self._seen.clear()  # entries of this network skipped before must be taken now
        self._dissem.broadcast_net(msg)
        # Sync the new table with one participant at once rather than waiting.
        ps = self._tables.participants(network)
        if ps is not None:
            peer = ps.sample(self._rng, 1, accept=self._members.is_active)
            if peer:
                self._sync.push_pull_with(peer[0])
        self._flush(now)

    def leave_network(self, now: float, network: str) -> None:
        msg, tombs = self._tables.leave(network)
        if msg is None:
            return
        self._dissem.broadcast_net(msg)
        for e in tombs:
            self._dissem.broadcast_entry(e)
            self._reap_later(now, e)
        self._flush(now)

    def networks(self) -> set[str]:
        return set(self._tables.networks())

    def put(self, now: float, network: str, key: str, value: bytes) -> None:
        """Set this node's entry (KeyError if not in the network; ValueError if it cannot
        fit into one datagram)."""
        if not self._tables.participates(network):
            raise KeyError(f"not a participant of network {network!r}")
        if len(value) > self.config.max_value:
            raise ValueError(f"value of {len(value)} bytes exceeds max_value")
        data = wire.encode_entry(network, key, self.name, wire.MAX_U64, False, value)
        # Other members' headers name their own address, which may be longer than ours (up
        # to an IPv6 literal): keep that much spare, or the entry could never be sent to them.
        if len(data) > self._outbox.budget(self.addr) - 48:
            raise ValueError("entry does not fit into one datagram")
        e = self._tables.put(network, key, value)
        self._dissem.broadcast_entry(e)
        self._flush(now)

    def delete(self, now: float, network: str, key: str) -> None:
        """Tombstone this node's entry; a no-op if there is none (or no such network)."""
        if not self._tables.participates(network):
            return
        e = self._tables.delete(network, key)
        if e is not None:
            self._dissem.broadcast_entry(e)
            self._reap_later(now, e)
            self._flush(now)

    def entries(self, network: str) -> dict[str, Entry]:
        """Visible entries: not deleted, owner alive or suspect and in the network."""
        return self._tables.entries(network)

    def entry(self, network: str, key: str) -> Entry | None:
        """The visible entry of one key (no copy of the table)."""
        return self._tables.visible(network, key)

    def stored_entries(self, network: str) -> list[Entry]:
        """Every stored version, tombstones and hidden ones included (for debugging)."""
        return self._tables.stored(network)

    # ================================================================== observability

    def status(self, now: float) -> dict[str, Any]:
        """A JSON-able summary for `ovctl`: members, tables, last sync, counters."""
        members = sorted(self.members(), key=lambda m: m.name)
        nets: dict[str, Any] = {}
        for net in sorted(self._tables.networks()):
            ps = self._tables.participants(net)
            peers = sorted(p for p in (ps.items() if ps else []) if self._members.is_active(p))
            stored = self._tables.stored(net)
            nets[net] = {
                "entries": len(self._tables.entries(net)),
                "stored": len(stored),
                "tombstones": sum(1 for e in stored if e.deleted),
                "peers": peers,
            }
        s = self.stats
        return {
            "name": self.name,
            "addr": join_hostport(*self.addr),
            "epoch": self.epoch,
            "incarnation": self._members.local.incarnation,
            "state": self._members.local.state,
            "members": [
                {
                    "name": m.name,
                    "addr": join_hostport(*m.addr),
                    "state": m.state,
                    "incarnation": m.incarnation,
                }
                for m in members
            ],
            "alive": sum(1 for m in members if m.state == ALIVE),
            "networks": nets,
            "last_sync_age": None if s.last_sync is None else round(now - s.last_sync, 3),
            "dropped": dict(sorted(s.dropped.items())),
            "bugs": s.bugs,
            "traffic": {
                "packets_in": s.packets_in,
                "packets_out": s.packets_out,
                "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out,
                "streams_in": s.streams_in,
                "streams_out": s.streams_out,
                "stream_failures": s.stream_failures,
            },
            "pending_broadcasts": self._dissem.pending(),
        }

    # ================================================================== receiving

    def _open(self, data: bytes, kind: int) -> tuple[wire.Header, bytes, int] | None:
        """Unseal and check the header; None (counted) if the packet is to be dropped."""
        try:
            plain = crypto.open(self._outbox.keyring, data)
        except crypto.AuthError:
            self.stats.drop("auth")
            return None
        except DecodeError:
            self.stats.drop("malformed")
            return None
        try:
            header, pos = wire.decode_header(plain)
        except DecodeError:
            self.stats.drop("malformed")
            return None
        if header.kind != kind:
            self.stats.drop("malformed")
            return None
        if header.sender == self.name:
            self.stats.drop("loop")
            return None
        if header.dest != self.addr:
            self.stats.drop("misdirected")
            return None
        return header, plain, pos

    def _receive_datagram(self, now: float, src: Addr, data: bytes) -> None:
        opened = self._open(data, wire.KIND_DATAGRAM)
        if opened is None:
            return
        header, plain, pos = opened
        seen = self._seen
        try:
            raws = wire.split_messages(plain, pos)
            msgs: list[tuple[bytes, wire.Message]] = []
            for raw in raws:
                if raw in seen:
                    continue
                msgs.append((raw, wire.decode_message(raw)))
        except DecodeError:
            self.stats.drop("malformed")
            return
        if not self._replay.accept(header.sender, header.epoch, header.seq):
            self.stats.drop("replay")
            return
        sender = header.sender
        self._dissem.exclude_next = sender
        sm = self._members.get(sender)
        if sm is not None and sm.state == DEAD:
            self._sync.sync_dead(now, src)
        for raw, msg in msgs:
            if raw[0] in wire.GOSSIP_TYPES:
                outcome = self._apply_gossip(now, raw, msg)
                if outcome != Outcome.NOT_MINE and self.config.seen_cache:
                    seen[raw] = None
                    if len(seen) > self.config.seen_cache:
                        del seen[next(iter(seen))]
            elif isinstance(msg, wire.Ping):
                # A ping for another name was meant for whoever lived at this address before.
                if msg.target == self.name and not self._members.left:
                    self._sync.compare_digest(now, sender, src, msg.digest)
                    self._prober.answer_ping(sender, src, msg.seq)
            elif isinstance(msg, wire.Ack):
                self._prober.on_ack(msg.seq)
            elif isinstance(msg, wire.PingReq):
                self._prober.on_ping_req(now, src, msg)

    def _receive_stream(self, now: float, src: Addr, data: bytes) -> None:
        if len(data) > self.config.max_stream:
            self.stats.drop("too_large")
            return
        opened = self._open(data, wire.KIND_STREAM)
        if opened is None:
            return
        header, plain, pos = opened
        try:
            pp = wire.decode_push_pull(plain, pos, self.config.max_stream)
        except DecodeError:
            self.stats.drop("malformed")
            return
        if not self._replay.accept(header.sender, header.epoch, header.seq):
            self.stats.drop("replay")
            return
        self.stats.last_sync = now
        self._sync.received(now, header.sender, src, pp)

    # ------------------------------------------------------------------ gossip messages

    def _apply_gossip(self, now: float, raw: bytes, msg: wire.Message) -> Outcome:
        """Apply one broadcast; pass it on (its own bytes) when it was news."""
        if isinstance(msg, _MEMBER_NEWS):
            outcome = self._apply_member_news(now, raw, msg)
            if outcome == Outcome.REFUTE:
                self._dissem.broadcast_self()
            return outcome
        if isinstance(msg, wire.NetMsg):
            outcome, mine = self._tables.apply_net(msg)
            if outcome == Outcome.CHANGED:
                self._dissem.net_news(msg.node, msg.network, raw)
            elif outcome == Outcome.REFUTE and mine is not None:
                self._dissem.broadcast_net(mine)
            return outcome
        assert isinstance(msg, wire.EntryMsg)
        outcome, e = self._tables.apply_entry(msg)
        if outcome == Outcome.CHANGED and e is not None:
            self._dissem.entry_news(msg.network, msg.key, msg.owner, raw)
            if e.deleted:
                self._reap_later(now, e)
        elif outcome == Outcome.REFUTE and e is not None:
            self._dissem.broadcast_entry(e)
            if e.deleted:
                self._reap_later(now, e)
        return outcome

    def _apply_member_news(
        self, now: float, raw: bytes, msg: wire.Alive | wire.Suspect | wire.Dead
    ) -> Outcome:
        members = self._members
        if isinstance(msg, wire.Alive):
            outcome = members.apply_alive(msg.name, msg.addr, msg.incarnation, now)
            if outcome == Outcome.CHANGED:
                self._dissem.member_news(msg.name, raw)
        elif isinstance(msg, wire.Suspect):
            outcome = members.apply_suspect(msg.name, msg.incarnation, msg.source, now)
            if outcome in (Outcome.CHANGED, Outcome.CONFIRMED):
                self._dissem.suspicion_news(msg.name, msg.source, raw)
                self._prober.watch_suspicion(msg.name)
                if outcome == Outcome.CHANGED and msg.source != self.name:
                    self._prober.maybe_probe_suspect(now, msg.name)
        else:
            outcome = members.apply_dead(msg.name, msg.incarnation, msg.source, now)
            if outcome == Outcome.CHANGED:
                self._dissem.member_news(msg.name, raw)
        return outcome

    # ------------------------------------------------------------------ changes and reaping

    def _member_changed(self, m: Member, old_state: str | None, old_addr: Addr, now: float) -> None:
        if m.name == self.name:
            return
        if old_state != m.state or old_addr != m.addr:
            self._events.append(MemberChanged(m.name, m.addr, m.state, m.incarnation))
        was = old_state in ACTIVE_STATES
        now_active = m.state in ACTIVE_STATES
        if was != now_active:
            self._tables.owner_changed(m.name)
        if m.state in (DEAD, LEFT) and (old_state is None or old_state in ACTIVE_STATES):
            self._timers.add(now + self.config.dead_member_reap, ReapMember(m.name))

    def _events_append(self, ev: EntryChanged) -> None:
        self._events.append(ev)

    def _reap_member(self, now: float, name: str) -> None:
        m = self._members.get(name)
        if m is None or m.state not in (DEAD, LEFT):
            return
        if now - m.since < self.config.dead_member_reap - 1e-9:
            return  # died again later; that death has its own timer
        self._members.remove(name)
        self._tables.forget_owner(name)
        self._replay.forget(name)

    def _reap_later(self, now: float, e: Entry) -> None:
        """Drop tombstone ``e`` after tombstone_reap (if it is still the stored version)."""
        self._timers.add(
            now + self.config.tombstone_reap, ReapTombstone(e.network, e.key, e.owner, e.ltime)
        )
