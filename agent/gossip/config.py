"""Timing and size knobs of the gossip core.

Defaults follow memberlist's LAN profile where the issue names one (probe 1 s, probe timeout
0.5 s, gossip every 200 ms to 3 nodes, retransmit multiplier 4, push-pull every 30 s), and
depart from it where the goals demand (failure detection under 2.5 s on 5 nodes, one entry to
99.99 % of 1,000 nodes in 1.5 s); each departure is explained at its field.

The name is `GossipTuning`, not "config": `GossipConfig` is the proto message in which the
manager sends the keyring and the seed peers, a different thing with a different owner.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GossipTuning:
    # --- failure detection (SWIM + Lifeguard) ---
    probe_interval: float = 1.0
    """Each node starts one round-robin probe per interval (plus its ring successor, below)."""
    probe_timeout: float = 0.5
    """Wait this long for a direct ack before asking `indirect_checks` others to try. An ack
    that comes later but within `probe_interval` of the ping still counts."""
    indirect_checks: int = 3
    """Members asked to ping the target on our behalf (ping-req); also the number of
    independent confirmations after which a suspicion runs its shortest timeout."""
    ring_probe: bool = True
    """Also probe the successor on a ring of all members (ordered by a stable hash of the
    name) every interval. SWIM's random round robin alone leaves a member unprobed for up to
    N-1 intervals by any single prober (at 5 nodes a killed node is first probed ~0.8 s after
    the kill on average, with a long tail); the ring bounds that to one interval, for one
    extra ping per node and interval."""
    suspicion_mult: float = 4.0
    """Suspicion timeout with no confirmation: suspicion_mult * max(1, log10 N) *
    probe_interval (4 s up to 10 nodes), capped by `suspicion_max_mult`."""
    suspicion_max_mult: float = 6.0
    """Upper bound of any suspicion timeout, in probe intervals (memberlist's grows without
    bound as suspicion_max_mult * suspicion_mult * log10 N; a suspect that has not refuted
    within 6 intervals of every peer being able to tell it is not coming back)."""
    suspicion_min_mult: float = 0.5
    """Lifeguard floor: with `indirect_checks` independent confirmations the timeout shrinks
    (logarithmically in the number of confirmations) down to this many probe intervals. It
    is the time a live but slow node has to refute after it was suspected (it learns of the
    suspicion at once: suspicions are eagerly pushed and ride on every ping to the suspect),
    on top of the probe interval it already failed to answer in. Confirmations themselves
    take one probe_timeout to arrive, so a floor below probe_timeout / probe_interval
    gains nothing; at 0.5 a killed node is dead everywhere 1.5 s after the first probe that
    went unanswered (~1.9 s after the kill at 5 nodes, at most ~2.5 s); at 1.0 it would be
    ~2.4 s (at most ~3 s)."""
    confirm_probers: int = 6
    """Expected number of members that, on first hearing of a suspicion, probe the suspect
    out of turn so that confirmations (or the refutation) arrive within one probe timeout.
    With N members each does so with probability min(1, confirm_probers / (N - 2)), so a big
    cluster does not dogpile the suspect."""

    # --- dissemination ---
    gossip_interval: float = 0.2
    """Every interval, pending broadcasts go to `gossip_nodes` random peers (per network
    table: to random participants of that network). Nothing is sent when nothing is pending."""
    gossip_nodes: int = 3
    eager_push: bool = True
    """Forward news to `gossip_nodes` random peers the moment it is learned instead of at the
    next gossip tick. This turns each hop's latency from ~gossip_interval/2 into the network
    delay, which is how one entry reaches 99.99 % of 1,000 nodes well within 1.5 s."""
    eager_coalesce: float = 0.02
    """At most one eager push per this interval: news arriving within it waits for its end
    and shares packets. A lone broadcast is pushed at once (so its spread is unchanged);
    a burst (a join storm, a restart re-announcing many entries) costs far fewer packets."""
    retransmit_mult: int = 4
    """Each broadcast is sent at most retransmit_mult * max(retransmit_min_scale,
    ceil(log10(N + 1))) times by each node (N: members, or participants of the entry's
    network); twice that by the node the news is about (its own alive, participation and
    entries), since a broadcast whose first few transmissions are all lost goes nowhere."""
    retransmit_min_scale: int = 3
    """Floor of the log10 factor above: memberlist's formula gives 4 transmissions at 5
    nodes and 8 at 16, and each receiver then hears a broadcast only ~that many times, so
    one in e^8 (and, while a partition wastes half of them, one in e^4) misses it. At 12
    the miss rate is ~e^-12; the cost is nothing at that size. From 1,000 nodes on the
    formula's own factor (4) applies."""
    gossip_to_dead: float = 30.0
    """Dead members stay gossip targets this long, so that a wrongly declared node learns of
    it and refutes."""

    # --- anti-entropy ---
    push_pull_interval: float = 30.0
    """Full state exchange with one random peer (a participant of one of our networks half of
    the time). Scaled up above `push_pull_scale_threshold` members like memberlist's:
    interval * (ceil(log2 N - log2 threshold) + 1), i.e. 180 s at 1,000 nodes."""
    push_pull_scale_threshold: int = 32
    reconnect_interval: float = 10.0
    """Serf's reconnect: with probability dead/(alive + dead) push-pull with a random dead (not
    left) member. Without it two sides of a healed partition that declared each other dead
    would never talk again (neither gossips nor push-pulls to the dead)."""
    digest_settle: float = 2.0
    """Pings carry a digest of the sender's member list. A node whose digest has differed
    from its probers' for this long (a member an epidemic missed; joins in flight settle in
    a fraction of a second) push-pulls with the next prober whose digest differs."""
    digest_sync_interval: float = 10.0
    """At most one such digest-triggered push-pull per node per this interval."""
    join_retry: float = 1.0
    """While no peer is known, push-pull with the seeds again after this long."""
    join_stagger: float = 0.1
    """Seeds are synced with one at a time, this far apart, skipping those already known
    alive by then (the first answer usually lists them all)."""
    join_resync: float = 2.0
    """A joiner syncs once more with a random member this long after its join succeeded:
    members that joined through other seeds at the same moment may have missed it and it
    them (without this they find each other only at the next periodic push-pull)."""

    # --- forgetting ---
    dead_member_reap: float = 86400.0
    """Dead or left members (and their entries) are forgotten this long after they died."""
    tombstone_reap: float = 1800.0
    """Deleted entries are kept (and exchanged) this long, so that a stale peer cannot
    resurrect them, then dropped."""

    # --- sizes and security ---
    max_packet: int = 1400
    """Largest sealed datagram sent (fits an Ethernet MTU with IP/UDP headers)."""
    max_stream: int = 64 * 1024 * 1024
    """Largest stream frame accepted or sent (a full push-pull), and the most a compressed
    one may inflate to."""
    compress_streams: bool = True
    """zlib-compress push-pull frames (~5x smaller at 1,000 members, ~0.3 ms to compress):
    a full sync is the largest thing a node sends, and the one burst in its traffic."""
    max_value: int = 1024
    """Largest entry value: an entry must fit into one datagram to be gossiped (`put` also
    checks the whole encoded entry against the packet size, since names count too)."""
    replay_window: int = 256
    """Per-sender sliding window of sequence numbers (packets from one sender may be
    reordered by up to this many of its sends and still be accepted once)."""
    replay_epochs: int = 4
    """Epochs (restarts) per sender whose windows are remembered."""
    seen_cache: int = 512
    """Recently applied gossip messages, remembered by their bytes so a duplicate (each
    message arrives ~retransmit limit times, within a second or two) is skipped without
    decoding. Small on purpose: a simulator holds one per node, 1,000 of them."""

    def __post_init__(self) -> None:
        positive = {
            "probe_interval": self.probe_interval,
            "probe_timeout": self.probe_timeout,
            "gossip_interval": self.gossip_interval,
            "push_pull_interval": self.push_pull_interval,
            "reconnect_interval": self.reconnect_interval,
            "join_retry": self.join_retry,
            "digest_settle": self.digest_settle,
            "digest_sync_interval": self.digest_sync_interval,
            "join_resync": self.join_resync,
            "join_stagger": self.join_stagger,
            "suspicion_mult": self.suspicion_mult,
            "suspicion_max_mult": self.suspicion_max_mult,
            "suspicion_min_mult": self.suspicion_min_mult,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"GossipTuning.{name} must be > 0, got {value!r}")
        if self.probe_timeout >= self.probe_interval:
            raise ValueError("GossipTuning.probe_timeout must be shorter than probe_interval")
        for name in ("indirect_checks", "confirm_probers", "retransmit_mult"):
            if getattr(self, name) < 0:
                raise ValueError(f"GossipTuning.{name} must be >= 0")
        if self.gossip_nodes < 1 or self.retransmit_mult < 1 or self.retransmit_min_scale < 1:
            raise ValueError("GossipTuning.gossip_nodes and retransmit_mult must be >= 1")
        if self.max_packet < 512:
            raise ValueError("GossipTuning.max_packet must be at least 512 bytes")
        if self.max_value + 256 > self.max_packet:
            raise ValueError("GossipTuning.max_value must leave 256 bytes of a packet spare")
        if self.replay_window < 64 or self.replay_epochs < 1 or self.seen_cache < 0:
            raise ValueError("GossipTuning.replay_window >= 64, replay_epochs >= 1 required")
        if self.eager_coalesce < 0 or self.eager_coalesce >= self.gossip_interval:
            raise ValueError("GossipTuning.eager_coalesce must be in [0, gossip_interval)")
        if min(self.gossip_to_dead, self.dead_member_reap, self.tombstone_reap) < 0:
            raise ValueError("GossipTuning reap/gossip_to_dead times must be >= 0")
