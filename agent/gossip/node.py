"""`GossipNode`: SWIM membership, per-network tables and anti-entropy, composed sans-IO.

The driver (the agent's asyncio transport, or the simulator) feeds it datagrams, stream
frames and the time, runs `tick` at `next_deadline`, and drains `take_outgoing` and
`take_events`. The node never reads a clock, never opens a socket and draws every random
choice from the `random.Random` it was given, so a run is a pure function of its inputs.

How news travels (and why it is fast):

- Broadcasts (member state, network participation, entries) wait in transmit-limited
  queues. Each is sent at most retransmit_mult * ceil(log10(N + 1)) times by each node.
- A node that learns something new forwards it at once to `gossip_nodes` random peers
  (eager push) instead of waiting for its next gossip tick (news arriving within
  eager_coalesce of the last push waits for the end of that pause and shares its packets);
  later ticks (every gossip_interval, to `gossip_nodes` random peers) use up the remaining
  transmissions. Entry broadcasts go only to participants of their network; member
  broadcasts also ride on round-robin pings and their acks (not on ring pings, which always
  go to the same neighbour).
- Push-pull (a full state exchange over the stream transport) repairs what datagrams lost:
  at join (seeds one at a time, then once more with a random member a little later), when
  joining a network, periodically with a random peer, with a random dead member now and then,
  and with a member we hold dead as soon as it talks to us (so healed partitions merge).

How failures are found: each probe interval a node pings its ring successor and the next
member of a shuffled round robin; with no ack after probe_timeout it pings again and asks
`indirect_checks` members to ping on its behalf; with no ack by the end of the interval it
declares the member suspect. Members that hear of a suspicion probe the suspect themselves
(out of turn) and add their confirmation, which shrinks the suspicion timeout Lifeguard-style;
the suspect hears of it (suspicions ride on pings to it and are eagerly pushed) and refutes
with a higher incarnation if it is alive.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

from agent.gossip import crypto, wire
from agent.gossip.broadcast import Timers, TransmitQueue
from agent.gossip.common import (
    CHANGED,
    CONFIRMED,
    NOT_MINE,
    REFUTE,
    Addr,
    DecodeError,
)
from agent.gossip.config import GossipConfig
from agent.gossip.crypto import Keyring, ReplayGuard
from agent.gossip.events import EntryChanged, Event, MemberChanged, Outgoing, Stats
from agent.gossip.membership import (
    ACTIVE_STATES,
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    Member,
    MemberInfo,
    Membership,
)
from agent.gossip.tables import Entry, Tables

_MIN_MSG = 16  # smaller leftovers of a packet are not worth filling


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


def _norm_addr(addr: Any) -> Addr:
    return (str(addr[0]), int(addr[1]))


class GossipNode:
    """One member of the gossip cluster. See the module docstring for the protocol."""

    def __init__(
        self,
        name: str,
        addr: Addr,
        keyring: Keyring,
        config: GossipConfig,
        rng: random.Random,
        now: float,
        epoch: int | None = None,
    ) -> None:
        wire.str8(name)  # validates: 1-255 bytes of UTF-8
        self.name = name
        self.addr = _norm_addr(addr)
        wire.str8(self.addr[0])
        self.config = config
        self._keyring = keyring
        self._rng = rng
        self.epoch = rng.getrandbits(64) if epoch is None else int(epoch)
        if not 0 <= self.epoch <= wire.MAX_U64:
            raise ValueError("epoch must fit in 64 bits")
        self.stats = Stats()

        self._members = Membership(name, self.addr, config, rng, now, self._member_changed)
        self._tables = Tables(name, self._members.is_active, self._emit_entry)
        self._mq = TransmitQueue()  # cluster-wide: members and participation
        self._nq: dict[str, TransmitQueue] = {}  # per network: entries
        self._timers = Timers()
        self._replay = ReplayGuard(config.replay_window, config.replay_epochs)
        self._seen: dict[bytes, None] = {}

        self._out: list[Outgoing] = []
        self._events: list[Event] = []
        self._seq = 0
        self._probe_seq = rng.getrandbits(32)
        self._probes: dict[int, _Probe] = {}
        self._probing: dict[str, int] = {}  # target -> probe seq
        self._relays: dict[int, tuple[Addr, int]] = {}  # our ping seq -> (requester, its seq)
        self._seeds: list[Addr] = []
        self._join_pending = False
        self._resync_done = False
        self._join_queue: list[Addr] = []
        self._fresh_members = False
        self._fresh_nets: dict[str, None] = {}
        self._fresh_exclude: str | None = None
        self._gossip_running = False
        self._members_cache: tuple[int, list[MemberInfo]] | None = None
        self._dead_sync_at = now
        self._eager_at = now
        self._eager_timer = False
        self._alive_cache: tuple[int, bytes] | None = None
        self._mismatch_since: float | None = None
        self._digest_sync_at = now

        self._prefix_dgram = wire.header_prefix(wire.KIND_DATAGRAM, name, self.epoch)
        self._dest_cache: dict[Addr, bytes] = {}

        self._broadcast_self()
        # Spread the periodic timers so that nodes started together do not run in lockstep.
        self._timers.add(now + rng.uniform(0, config.probe_interval), self._probe_tick)
        self._start_gossip(now + rng.uniform(0, config.gossip_interval))
        self._timers.add(now + rng.uniform(0, config.push_pull_interval), self._push_pull_tick)
        self._timers.add(now + rng.uniform(0, config.reconnect_interval), self._reconnect_tick)

    # ================================================================== driving

    def receive(self, now: float, src: Addr, data: bytes) -> None:
        """One UDP datagram. Never raises: bad input is counted in ``stats.dropped``."""
        self.stats.packets_in += 1
        self.stats.bytes_in += len(data)
        try:
            self._receive_datagram(now, _norm_addr(src), data)
        except Exception:  # a bug, not bad input (that is handled above): keep running
            self._drop("error")
        self._flush(now)

    def receive_stream(self, now: float, src: Addr, data: bytes) -> None:
        """One complete stream frame (a push-pull). Never raises."""
        self.stats.streams_in += 1
        self.stats.stream_bytes_in += len(data)
        try:
            self._receive_stream(now, _norm_addr(src), data)
        except Exception:
            self._drop("error")
        self._flush(now)

    def stream_failed(self, now: float, dest: Addr) -> None:
        """The transport could not deliver a stream frame to ``dest``. Joins retry on their
        own timer and periodic syncs simply happen again, so this only counts."""
        self.stats.stream_failures += 1

    def tick(self, now: float) -> None:
        self._timers.run_due(now)
        self._flush(now)

    def next_deadline(self) -> float:
        return self._timers.next()

    def take_outgoing(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    # ================================================================== membership API

    def join(self, now: float, seeds: Iterable[Addr]) -> None:
        """Sync (push-pull) with the seeds not already known alive, one at a time
        (join_stagger apart, so the first answer usually makes the others unnecessary);
        repeat every join_retry until some peer is known. Idempotent: calling it again adds
        new seeds and starts another round."""
        for s in seeds:
            a = _norm_addr(s)
            if a != self.addr and a not in self._seeds:
                self._seeds.append(a)
        self._join_attempt(now)
        self._flush(now)

    def leave(self, now: float) -> None:
        """Announce that this node leaves; it then stops probing and syncing but keeps
        gossiping until the announcement is spent. A left node cannot rejoin: make a new
        one."""
        if self._members.left:
            return
        self._members.leave(now)
        local = self._members.local
        self._mq.put(
            ("m", self.name),
            wire.encode_dead(self.name, local.incarnation, self.name),
            group=self.name,
            clear_group=True,
        )
        self._fresh_members = True
        self._flush(now)

    def set_keyring(self, keyring: Keyring) -> None:
        self._keyring = keyring

    @property
    def keyring(self) -> Keyring:
        return self._keyring

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
        self._broadcast_net(msg)
        # Sync the new table with one participant at once rather than waiting.
        ps = self._tables.participants(network)
        if ps is not None:
            peer = ps.sample(self._rng, 1, accept=self._members.is_active)
            if peer:
                self._push_pull_with(peer[0])
        self._flush(now)

    def leave_network(self, now: float, network: str) -> None:
        msg, tombs = self._tables.leave(network)
        if msg is None:
            return
        self._broadcast_net(msg)
        for e in tombs:
            self._broadcast_entry(e)
            self._schedule_reap(now, e)
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
        if len(data) > self._budget(self.addr) - 48:
            raise ValueError("entry does not fit into one datagram")
        e = self._tables.put(network, key, value)
        self._broadcast_entry(e)
        self._flush(now)

    def delete(self, now: float, network: str, key: str) -> None:
        """Tombstone this node's entry; a no-op if there is none (or no such network)."""
        if not self._tables.participates(network):
            return
        e = self._tables.delete(network, key)
        if e is not None:
            self._broadcast_entry(e)
            self._schedule_reap(now, e)
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
            "addr": f"{self.addr[0]}:{self.addr[1]}",
            "epoch": self.epoch,
            "incarnation": self._members.local.incarnation,
            "state": self._members.local.state,
            "members": [
                {
                    "name": m.name,
                    "addr": f"{m.addr[0]}:{m.addr[1]}",
                    "state": m.state,
                    "incarnation": m.incarnation,
                }
                for m in members
            ],
            "alive": sum(1 for m in members if m.state == ALIVE),
            "networks": nets,
            "last_sync_age": None if s.last_sync is None else round(now - s.last_sync, 3),
            "dropped": dict(sorted(s.dropped.items())),
            "traffic": {
                "packets_in": s.packets_in,
                "packets_out": s.packets_out,
                "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out,
                "streams_in": s.streams_in,
                "streams_out": s.streams_out,
                "stream_failures": s.stream_failures,
            },
            "pending_broadcasts": len(self._mq) + sum(len(q) for q in self._nq.values()),
        }

    # ================================================================== receiving

    def _drop(self, reason: str) -> None:
        d = self.stats.dropped
        d[reason] = d.get(reason, 0) + 1

    def _open(self, data: bytes, kind: int) -> tuple[wire.Header, bytes, int] | None:
        """Unseal and check the header; None (counted) if the packet is to be dropped."""
        try:
            plain = crypto.open(self._keyring, data)
        except crypto.AuthError:
            self._drop("auth")
            return None
        except DecodeError:
            self._drop("malformed")
            return None
        try:
            header, pos = wire.decode_header(plain)
        except DecodeError:
            self._drop("malformed")
            return None
        if header.kind != kind:
            self._drop("malformed")
            return None
        if header.sender == self.name:
            self._drop("loop")
            return None
        if header.dest != self.addr:
            self._drop("misdirected")
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
            self._drop("malformed")
            return
        if not self._replay.accept(header.sender, header.epoch, header.seq):
            self._drop("replay")
            return
        sender = header.sender
        self._fresh_exclude = sender
        sm = self._members.get(sender)
        if sm is not None and sm.state == DEAD:
            self._sync_dead(now, src)
        for raw, msg in msgs:
            t = raw[0]
            if t in wire.GOSSIP_TYPES:
                code = self._apply_gossip(now, sender, raw, msg)
                if code != NOT_MINE and self.config.seen_cache:
                    seen[raw] = None
                    if len(seen) > self.config.seen_cache:
                        del seen[next(iter(seen))]
            elif isinstance(msg, wire.Ping):
                self._on_ping(now, sender, src, msg)
            elif isinstance(msg, wire.Ack):
                self._on_ack(now, msg.seq)
            elif isinstance(msg, wire.PingReq):
                self._on_ping_req(now, src, msg)

    def _sync_dead(self, now: float, src: Addr) -> None:
        """A packet from a member we hold dead (a healed partition, or a node that was only
        slow): push-pull with it, so that it learns it must refute and both sides merge
        what they missed without waiting for the next periodic sync. At most once per probe
        interval. (Members we do not know at all introduce themselves: every ping carries
        the sender's own alive message.)"""
        if self._members.left or now < self._dead_sync_at:
            return
        self._dead_sync_at = now + self.config.probe_interval
        self._send_push_pull(src, join=False, response=False)

    def _receive_stream(self, now: float, src: Addr, data: bytes) -> None:
        if len(data) > self.config.max_stream:
            self._drop("too_large")
            return
        opened = self._open(data, wire.KIND_STREAM)
        if opened is None:
            return
        header, plain, pos = opened
        try:
            pp = wire.decode_push_pull(plain, pos, self.config.max_stream)
        except DecodeError:
            self._drop("malformed")
            return
        if not self._replay.accept(header.sender, header.epoch, header.seq):
            self._drop("replay")
            return
        self.stats.last_sync = now
        peer = header.sender
        reply_to = src
        for rec in pp.members:
            if rec.name == peer:
                reply_to = rec.addr  # the stream's source port is the peer's ephemeral one
        self._merge(now, peer, pp)
        if not pp.response:
            theirs = {n.network for n in pp.networks if n.node == peer and n.joined}
            self._send_push_pull(reply_to, join=False, response=True, their_networks=theirs)

    # ------------------------------------------------------------------ gossip messages

    def _apply_gossip(self, now: float, sender: str, raw: bytes, msg: wire.Message) -> int:
        """Apply one broadcast; pass it on (its own bytes) when it was news."""
        members = self._members
        if isinstance(msg, wire.Alive):
            code = members.apply_alive(msg.name, msg.addr, msg.incarnation, now)
            if code == CHANGED:
                self._mq.put(("m", msg.name), raw, group=msg.name, clear_group=True)
                self._fresh_members = True
        elif isinstance(msg, wire.Suspect):
            code = members.apply_suspect(msg.name, msg.incarnation, msg.source, now)
            if code in (CHANGED, CONFIRMED):
                self._mq.put(("s", msg.name, msg.source), raw, group=msg.name)
                self._fresh_members = True
                m = members.get(msg.name)
                if m is not None and m.suspicion is not None:
                    self._timers.add(m.suspicion.deadline, self._suspicion_due, msg.name)
                if code == CHANGED and msg.source != self.name:
                    self._maybe_probe_suspect(now, msg.name)
        elif isinstance(msg, wire.Dead):
            code = members.apply_dead(msg.name, msg.incarnation, msg.source, now)
            if code == CHANGED:
                self._mq.put(("m", msg.name), raw, group=msg.name, clear_group=True)
                self._fresh_members = True
        elif isinstance(msg, wire.NetMsg):
            code, mine = self._tables.apply_net(msg)
            if code == CHANGED:
                self._mq.put(("n", msg.node, msg.network), raw)
                self._fresh_members = True
            elif code == REFUTE and mine is not None:
                self._broadcast_net(mine)
        else:
            assert isinstance(msg, wire.EntryMsg)
            code, e = self._tables.apply_entry(msg)
            if code == CHANGED and e is not None:
                self._queue_for(msg.network).put((msg.key, msg.owner), raw)
                self._fresh_nets[msg.network] = None
                if e.deleted:
                    self._schedule_reap(now, e)
            elif code == REFUTE and e is not None:
                self._broadcast_entry(e)
                if e.deleted:
                    self._schedule_reap(now, e)
        if code == REFUTE and isinstance(msg, wire.Alive | wire.Suspect | wire.Dead):
            self._broadcast_self()
        return code

    def _merge(self, now: float, peer: str, pp: wire.PushPull) -> None:
        """Merge a push-pull. Only news about the peer itself is re-broadcast (that is how a
        joiner is announced); the rest the cluster already has, and broadcasting it would
        make every join cost O(N) broadcasts."""
        members = self._members
        for rec in pp.members:
            if rec.state == ALIVE:
                code = members.apply_alive(rec.name, rec.addr, rec.incarnation, now)
            elif rec.state == LEFT:
                code = members.apply_dead(rec.name, rec.incarnation, rec.name, now)
            else:
                # A remote "dead" is taken as a suspicion (as memberlist does): the member
                # gets its suspicion timeout to refute rather than being buried on hearsay.
                code = members.apply_suspect(rec.name, rec.incarnation, peer, now)
                if code == CHANGED and rec.name != self.name:
                    m = members.get(rec.name)
                    if m is not None and m.suspicion is not None:
                        self._timers.add(m.suspicion.deadline, self._suspicion_due, rec.name)
                    # Tell the suspect (the ping carries the suspicion) so it can refute.
                    self._start_probe(now, rec.name, confirm=True)
            if code == REFUTE:
                self._broadcast_self()
            elif code == CHANGED and rec.name == peer:
                self._broadcast_member(rec.name)
        for n in pp.networks:
            code, mine = self._tables.apply_net(n)
            if code == REFUTE and mine is not None:
                self._broadcast_net(mine)
            elif code == CHANGED and n.node == peer:
                self._broadcast_net(n)
        for em in pp.entries:
            code, e = self._tables.apply_entry(em)
            if e is None:
                continue
            if code == REFUTE:
                self._broadcast_entry(e)
            if e.deleted and code in (CHANGED, REFUTE):
                self._schedule_reap(now, e)

    # ------------------------------------------------------------------ member changes

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
            self._timers.add(now + self.config.dead_member_reap, self._reap_member, m.name)

    def _emit_entry(self, ev: EntryChanged) -> None:
        self._events.append(ev)

    def _reap_member(self, now: float, name: Any) -> None:
        m = self._members.get(name)
        if m is None or m.state not in (DEAD, LEFT):
            return
        if now - m.since < self.config.dead_member_reap - 1e-9:
            return  # died again later; that death has its own timer
        self._members.remove(name)
        self._tables.forget_owner(name)
        self._replay.forget(name)

    def _schedule_reap(self, now: float, e: Entry) -> None:
        self._timers.add(
            now + self.config.tombstone_reap,
            self._reap_tombstone,
            (e.network, e.key, e.owner, e.ltime),
        )

    def _reap_tombstone(self, now: float, arg: Any) -> None:
        network, key, owner, ltime = arg
        self._tables.reap(network, key, owner, ltime)

    # ------------------------------------------------------------------ broadcasting

    def _self_alive(self) -> bytes:
        inc = self._members.local.incarnation
        cached = self._alive_cache
        if cached is None or cached[0] != inc:
            cached = self._alive_cache = (inc, wire.encode_alive(self.name, self.addr, inc))
        return cached[1]

    def _broadcast_self(self) -> None:
        local = self._members.local
        if local.state == LEFT:
            return
        self._mq.put(
            ("m", self.name), self._self_alive(), group=self.name, clear_group=True, mult=2
        )
        self._fresh_members = True

    def _broadcast_member(self, name: str) -> None:
        m = self._members.get(name)
        if m is None:
            return
        if m.state == ALIVE:
            data = wire.encode_alive(name, m.addr, m.incarnation)
        elif m.state == SUSPECT:
            data = wire.encode_suspect(name, m.incarnation, self.name)
        else:
            data = wire.encode_dead(name, m.incarnation, name if m.state == LEFT else self.name)
        self._mq.put(("m", name), data, group=name, clear_group=m.state != SUSPECT)
        self._fresh_members = True

    def _broadcast_net(self, n: wire.NetMsg) -> None:
        data = wire.encode_net(n.node, n.network, n.ltime, n.joined)
        self._mq.put(("n", n.node, n.network), data, mult=2 if n.node == self.name else 1)
        self._fresh_members = True

    def _broadcast_entry(self, e: Entry) -> None:
        data = wire.encode_entry(e.network, e.key, e.owner, e.ltime, e.deleted, e.value)
        mult = 2 if e.owner == self.name else 1
        self._queue_for(e.network).put((e.key, e.owner), data, mult=mult)
        self._fresh_nets[e.network] = None

    def _queue_for(self, network: str) -> TransmitQueue:
        q = self._nq.get(network)
        if q is None:
            q = self._nq[network] = TransmitQueue()
        return q

    def _limit(self, n: int) -> int:
        scale = max(self.config.retransmit_min_scale, math.ceil(math.log10(n + 1)))
        return self.config.retransmit_mult * scale

    def _net_size(self, network: str) -> int:
        ps = self._tables.participants(network)
        return (len(ps) if ps is not None else 0) + 1

    def _flush(self, now: float) -> None:
        """Eager push: send what was learned since the last flush to random peers now, or,
        if we pushed less than eager_coalesce ago, at the end of that pause (news arriving
        in a burst then shares packets instead of costing gossip_nodes packets each)."""
        exclude = self._fresh_exclude
        self._fresh_exclude = None
        if not self.config.eager_push:
            self._fresh_members = False
            self._fresh_nets.clear()
        elif self._fresh_members or self._fresh_nets:
            if now < self._eager_at:
                if not self._eager_timer:
                    self._eager_timer = True
                    self._timers.add(self._eager_at, self._eager_due)
            else:
                self._eager_at = now + self.config.eager_coalesce
                self._eager_push(now, {exclude} if exclude is not None else set())
        self._ensure_gossip(now)

    def _eager_due(self, now: float, _: Any) -> None:
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
            msgs = self._mq.take(self._budget(m.addr), limit)
            if not msgs:
                break
            self._send(m.addr, msgs)

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
            msgs = q.take(self._budget(m.addr), limit)
            if not msgs:
                break
            self._send(m.addr, msgs)

    def _is_alive(self, name: str) -> bool:
        m = self._members.get(name)
        return m is not None and m.state == ALIVE

    def _pending(self) -> bool:
        return bool(len(self._mq)) or any(len(q) for q in self._nq.values())

    def _start_gossip(self, when: float) -> None:
        self._gossip_running = True
        self._timers.add(when, self._gossip_tick)

    def _ensure_gossip(self, now: float) -> None:
        # The gossip timer only runs while something is queued, so an idle (or left) node
        # has no deadline at all from gossip.
        if not self._gossip_running and self._pending():
            self._start_gossip(now + self._rng.uniform(0, self.config.gossip_interval))

    def _gossip_tick(self, now: float, _: Any) -> None:
        if not self._pending():
            self._gossip_running = False
            return
        self._timers.add(now + self.config.gossip_interval, self._gossip_tick)
        if len(self._mq):
            targets = self._members.gossip_targets(self.config.gossip_nodes, now, set())
            self._gossip_members(targets)
        for net in list(self._nq):
            q = self._nq[net]
            if len(q):
                self._gossip_network(net, set())
            elif not self._tables.participates(net):
                del self._nq[net]

    # ------------------------------------------------------------------ sending

    def _dest(self, addr: Addr) -> bytes:
        d = self._dest_cache.get(addr)
        if d is None:
            if len(self._dest_cache) > 4096:
                self._dest_cache.clear()
            d = self._dest_cache[addr] = wire.header_dest(addr)
        return d

    def _budget(self, addr: Addr) -> int:
        return (
            self.config.max_packet
            - crypto.SEAL_OVERHEAD
            - len(self._prefix_dgram)
            - 8
            - len(self._dest(addr))
        )

    def _send(self, dest: Addr, msgs: list[bytes]) -> None:
        self._seq += 1
        plain = b"".join([self._prefix_dgram, wire.encode_seq(self._seq), self._dest(dest), *msgs])
        data = crypto.seal(self._keyring, plain)
        self._out.append(Outgoing(dest, data, False))
        self.stats.packets_out += 1
        self.stats.bytes_out += len(data)

    def _send_piggyback(self, dest: Addr, msgs: list[bytes]) -> None:
        """Send ``msgs`` with as many pending member broadcasts as fit (SWIM piggybacking)."""
        if len(self._mq):
            room = self._budget(dest) - sum(len(m) for m in msgs)
            if room >= _MIN_MSG:
                msgs = msgs + self._mq.take(room, self._limit(self._members.size()))
        self._send(dest, msgs)

    def _send_push_pull(
        self,
        dest: Addr,
        join: bool,
        response: bool,
        their_networks: set[str] | None = None,
    ) -> None:
        ms = self._members.members
        members = (len(ms), b"".join([m.record() for m in ms.values()]))
        # Entries only ever go to participants of their network: a request carries those of
        # the networks we know the peer to be in (none for a seed we only know by address);
        # the response those the request said the requester is in.
        nets = [n for n in self._tables.networks() if their_networks and n in their_networks]
        recs = self._tables.entry_records(nets)
        entries = (len(recs), b"".join([wire.encode_entry_record(e) for e in recs]))
        nets_wire = self._tables.net_records_wire()
        compress = self.config.compress_streams
        body = wire.push_pull_body(join, response, members, nets_wire, entries, compress)
        self._seq += 1
        plain = wire.stream_frame(self.name, self.epoch, self._seq, dest, body)
        data = crypto.seal(self._keyring, plain)
        if len(data) > self.config.max_stream:
            self._drop("too_large")  # our own state outgrew the frame limit: counted, not sent
            return
        self._out.append(Outgoing(dest, data, True))
        self.stats.streams_out += 1
        self.stats.stream_bytes_out += len(data)

    # ------------------------------------------------------------------ probing

    def _next_probe_seq(self) -> int:
        self._probe_seq = (self._probe_seq + 1) & 0xFFFFFFFF
        return self._probe_seq

    def _probe_tick(self, now: float, _: Any) -> None:
        if self._members.left:
            return
        self._timers.add(now + self.config.probe_interval, self._probe_tick)
        started: set[str] = set()
        if self.config.ring_probe:
            succ = self._members.ring_successor()
            if succ is not None and succ not in self._probing:
                # No piggybacking on ring probes (nor on their acks): they always go to the
                # same member, and every broadcast they carried would be a transmission
                # spent on a neighbour instead of a random peer.
                self._start_probe(now, succ, confirm=False, piggyback=False)
                started.add(succ)
        skip = started | set(self._probing)
        target = self._members.next_probe_target(skip)
        if target is not None:
            self._start_probe(now, target, confirm=False)

    def _start_probe(self, now: float, name: str, confirm: bool, piggyback: bool = True) -> None:
        m = self._members.get(name)
        if m is None or m.state not in ACTIVE_STATES or name in self._probing:
            return
        seq = self._next_probe_seq()
        self._probes[seq] = _Probe(name, m.addr, m.incarnation, now, confirm)
        self._probing[name] = seq
        # The ping introduces us: a member that missed our announcement (it joined through
        # another seed at the same time) learns of us from the first ping it gets.
        msgs = [wire.encode_ping(seq, name, self._members.digest), self._self_alive()]
        if m.state == SUSPECT:
            # Lifeguard's buddy system: make sure the suspect hears of it to refute.
            msgs.append(wire.encode_suspect(name, m.incarnation, self.name))
        if piggyback:
            self._send_piggyback(m.addr, msgs)
        else:
            self._send(m.addr, msgs)
        self._timers.add(now + self.config.probe_timeout, self._probe_timeout, seq)

    def _probe_timeout(self, now: float, seq: Any) -> None:
        p = self._probes.get(seq)
        if p is None:
            return
        if p.confirm:
            self._probe_failed(now, seq)
            return
        # Second chance: ping again directly, and ask others to try.
        self._send(p.addr, [wire.encode_ping(seq, p.target, self._members.digest)])
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
                self._send(hm.addr, [req])
        end = p.start + self.config.probe_interval
        self._timers.add(max(end, now), self._probe_end, seq)

    def _probe_end(self, now: float, seq: Any) -> None:
        if seq in self._probes:
            self._probe_failed(now, seq)

    def _probe_failed(self, now: float, seq: int) -> None:
        p = self._probes.pop(seq)
        if self._probing.get(p.target) == seq:
            del self._probing[p.target]
        m = self._members.get(p.target)
        if m is None or m.state not in ACTIVE_STATES or self._members.left:
            return
        code = self._members.apply_suspect(p.target, p.incarnation, self.name, now)
        if code in (CHANGED, CONFIRMED):
            self._mq.put(
                ("s", p.target, self.name),
                wire.encode_suspect(p.target, p.incarnation, self.name),
                group=p.target,
            )
            self._fresh_members = True
            if m.suspicion is not None:
                self._timers.add(m.suspicion.deadline, self._suspicion_due, p.target)

    def _on_ack(self, now: float, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send(relay[0], [wire.encode_ack(relay[1])])
            return
        p = self._probes.pop(seq, None)
        if p is not None and self._probing.get(p.target) == seq:
            del self._probing[p.target]

    def _on_ping(self, now: float, sender: str, src: Addr, msg: wire.Ping) -> None:
        if msg.target != self.name or self._members.left:
            return  # meant for whoever lived at this address before us
        self._compare_digest(now, sender, src, msg.digest)
        ack = [wire.encode_ack(msg.seq)]
        if self.config.ring_probe and sender == self._members.ring_predecessor():
            self._send(src, ack)
        else:
            self._send_piggyback(src, ack)

    def _compare_digest(self, now: float, sender: str, src: Addr, digest: int) -> None:
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
        self._send_push_pull(src, join=False, response=False, their_networks=theirs)

    def _on_ping_req(self, now: float, src: Addr, msg: wire.PingReq) -> None:
        if self._members.left:
            return
        seq = self._next_probe_seq()
        self._relays[seq] = (src, msg.seq)
        self._send(msg.addr, [wire.encode_ping(seq, msg.target, self._members.digest)])
        self._timers.add(now + self.config.probe_interval, self._relay_expired, seq)

    def _relay_expired(self, now: float, seq: Any) -> None:
        self._relays.pop(seq, None)

    def _maybe_probe_suspect(self, now: float, name: str) -> None:
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
            self._start_probe(now, name, confirm=True)

    def _suspicion_due(self, now: float, name: Any) -> None:
        m = self._members.get(name)
        if m is None or m.state != SUSPECT or m.suspicion is None:
            return
        if m.suspicion.deadline > now + 1e-9:
            return  # an older, longer deadline; the current one has its own timer
        if self._members.left:
            return
        inc = m.incarnation
        if self._members.apply_dead(name, inc, self.name, now) == CHANGED:
            self._mq.put(
                ("m", name), wire.encode_dead(name, inc, self.name), group=name, clear_group=True
            )
            self._fresh_members = True

    # ------------------------------------------------------------------ syncing

    def _push_pull_scale(self) -> int:
        cfg = self.config
        n = self._members.size()
        if n <= cfg.push_pull_scale_threshold:
            return 1
        return math.ceil(math.log2(n) - math.log2(cfg.push_pull_scale_threshold)) + 1

    def _push_pull_tick(self, now: float, _: Any) -> None:
        if self._members.left:
            return
        # The tick runs every push_pull_interval and syncs with probability 1/scale, so the
        # mean interval follows the cluster's current size (it was 1 when the node started).
        self._timers.add(now + self.config.push_pull_interval, self._push_pull_tick)
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
            self._push_pull_with(peer)

    def _reconnect_tick(self, now: float, _: Any) -> None:
        if self._members.left:
            return
        self._timers.add(now + self.config.reconnect_interval, self._reconnect_tick)
        failed = self._members.failed
        nf = len(failed)
        if nf == 0:
            return
        if self._rng.random() * (nf + len(self._members.active)) >= nf:
            return
        self._push_pull_with(failed.at(self._rng.randrange(nf)))

    def _push_pull_with(self, name: str) -> None:
        m = self._members.get(name)
        if m is not None:
            theirs = set(self._tables.common_networks(name))
            self._send_push_pull(m.addr, join=False, response=False, their_networks=theirs)

    def _join_attempt(self, now: float) -> None:
        """Start a round over the seeds: one at a time, join_stagger apart, each only if
        it is not known alive by then. The first answer usually brings the whole cluster
        (the remaining seeds among it), so a join costs one sync instead of one per seed,
        while a seed that is dead, or alive but on its own, does not stop the join."""
        if self._members.left or not self._seeds:
            return
        self._join_queue = list(self._seeds)
        self._join_step(now, None)
        if not self._join_pending:
            self._join_pending = True
            self._timers.add(now + self.config.join_retry, self._join_check)

    def _join_step(self, now: float, _: Any) -> None:
        if self._members.left:
            return
        known = {m.addr for m in self._members.members.values() if m.state in ACTIVE_STATES}
        while self._join_queue:
            seed = self._join_queue.pop(0)
            if seed not in known:
                self._send_push_pull(seed, join=True, response=False)
                break
        if self._join_queue:
            self._timers.add(now + self.config.join_stagger, self._join_step)

    def _join_check(self, now: float, _: Any) -> None:
        self._join_pending = False
        if self._members.left:
            return
        if not len(self._members.active):
            self._join_attempt(now)  # nobody answered yet: try the seeds again
        elif not self._resync_done:
            self._resync_done = True
            self._timers.add(now + self.config.join_resync, self._join_resync)

    def _join_resync(self, now: float, _: Any) -> None:
        """One more sync after joining, with a random member: a node that joined through
        another seed at the same moment may have missed us and we it (each one's
        announcement went out while the other was not yet known to most of the cluster)."""
        pick = self._members.active.sample(self._rng, 1)
        if pick and not self._members.left:
            self._push_pull_with(pick[0])
