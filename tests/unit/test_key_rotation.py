"""Key rotation's pure core (`rotation_step`) and what it means for agents' gossip.

The schedule, the grace, the order of keys, Lamport times and the key count are checked on the
core alone; a hypothesis property walks arbitrary schedules; the last tests feed the rings it
produces to real gossip nodes (sealing with the agent's `Keyring`, and a simulated cluster whose
nodes get each ring at different times) to show that a rotation drops no packet, and that
skipping the grace would.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Iterator
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.gossip.crypto import AuthError, Keyring, seal
from agent.gossip.crypto import open as gossip_open
from agent.gossip.node import GossipNode
from agent.gossip.sim import Simulator
from manager.keymanager import (
    KEY_BYTES,
    MAX_GRACE_MS,
    MAX_KEYS,
    Entropy,
    grace_ms,
    keyring_problem,
    new_keyring,
    next_step_ms,
    rotation_step,
)
from proto import objects_pb2 as pb

HOUR_MS = 3_600_000
INTERVAL = 12 * HOUR_MS
GRACE = grace_ms(INTERVAL)
T0 = 1_700_000_000_000


def counter_entropy() -> Iterator[bytes]:
    """Distinct, recognisable keys: key i is bytes([i]) * 32."""
    return (bytes([i % 256]) * KEY_BYTES for i in itertools.count(1))


def entropy_from(keys: Iterator[bytes]) -> Entropy:
    return lambda n: next(keys)[:n]


def raw(ring: pb.Keyring) -> list[bytes]:
    return [k.key for k in ring.keys]


# ---------------------------------------------------------------- the schedule


def test_grace_is_a_quarter_of_the_interval_at_most_ten_seconds() -> None:
    assert grace_ms(INTERVAL) == MAX_GRACE_MS == 10_000
    assert grace_ms(1000) == 250
    assert grace_ms(40_000) == 10_000 and grace_ms(39_996) == 9_999


def test_full_rotation_adds_then_promotes_then_keeps_the_previous_key() -> None:
    ent = entropy_from(counter_entropy())
    r0 = new_keyring(ent, T0)
    k1 = r0.keys[0].key

    assert rotation_step(r0, T0, INTERVAL, GRACE, ent) is None
    assert rotation_step(r0, T0 + INTERVAL - 1, INTERVAL, GRACE, ent) is None

    r1 = rotation_step(r0, T0 + INTERVAL, INTERVAL, GRACE, ent)
    assert r1 is not None
    k2 = r1.keys[1].key
    assert raw(r1) == [k1, k2] and k2 != k1  # the new key is accepted, not used
    assert [k.lamport_time for k in r1.keys] == [1, 2]
    assert r1.keys[1].created_at_ms == T0 + INTERVAL
    assert raw(r0) == [k1]  # the input is not modified

    # Not promoted before the grace has passed, however often it is asked.
    assert rotation_step(r1, T0 + INTERVAL + GRACE - 1, INTERVAL, GRACE, ent) is None
    assert next_step_ms(r1, INTERVAL, GRACE) == T0 + INTERVAL + GRACE

    r2 = rotation_step(r1, T0 + INTERVAL + GRACE, INTERVAL, GRACE, ent)
    assert r2 is not None
    assert raw(r2) == [k2, k1]  # promoted; the previous primary is still accepted
    assert [k.lamport_time for k in r2.keys] == [2, 1]

    # The next rotation is an interval after the new primary was made.
    assert next_step_ms(r2, INTERVAL, GRACE) == T0 + 2 * INTERVAL
    assert rotation_step(r2, T0 + 2 * INTERVAL - 1, INTERVAL, GRACE, ent) is None
    r3 = rotation_step(r2, T0 + 2 * INTERVAL, INTERVAL, GRACE, ent)
    assert r3 is not None
    k3 = r3.keys[2].key
    assert raw(r3) == [k2, k1, k3]  # three keys only between the steps
    assert r3.keys[2].lamport_time == 3
    r4 = rotation_step(r3, T0 + 2 * INTERVAL + GRACE, INTERVAL, GRACE, ent)
    assert r4 is not None
    assert raw(r4) == [k3, k2]  # the oldest key (k1) is gone
    assert not keyring_problem(r4)


def test_late_step_after_a_long_outage_is_taken_once() -> None:
    """A leader that was away for days takes one step at a time, never skipping the grace."""
    ent = entropy_from(counter_entropy())
    r0 = new_keyring(ent, T0)
    late = T0 + 10 * INTERVAL
    r1 = rotation_step(r0, late, INTERVAL, GRACE, ent)
    assert r1 is not None and len(r1.keys) == 2 and r1.keys[0].key == r0.keys[0].key
    assert rotation_step(r1, late, INTERVAL, GRACE, ent) is None


def test_clock_far_behind_still_rotates_small_skew_only_delays() -> None:
    ent = entropy_from(counter_entropy())
    future = new_keyring(ent, T0 + 2 * INTERVAL)  # made by a clock two intervals ahead
    r1 = rotation_step(future, T0, INTERVAL, GRACE, ent)
    assert r1 is not None and len(r1.keys) == 2
    # A pending key made a little in the future (another manager's clock 30 s ahead) waits its
    # full grace in this clock: skew never shortens the grace.
    ahead = rotation_step(new_keyring(ent, T0), T0 + INTERVAL + 30_000, INTERVAL, GRACE, ent)
    assert ahead is not None
    assert rotation_step(ahead, T0 + INTERVAL + GRACE, INTERVAL, GRACE, ent) is None
    assert rotation_step(ahead, T0 + INTERVAL + 30_000 + GRACE, INTERVAL, GRACE, ent) is not None


def test_empty_ring_gets_one_key_and_bad_entropy_is_refused() -> None:
    ring = rotation_step(pb.Keyring(), T0, INTERVAL, GRACE, entropy_from(counter_entropy()))
    assert ring is not None and len(ring.keys) == 1 and ring.keys[0].lamport_time == 1
    r0 = new_keyring(entropy_from(counter_entropy()), T0)
    with pytest.raises(ValueError, match="entropy"):
        rotation_step(r0, T0 + INTERVAL, INTERVAL, GRACE, lambda n: b"short")


def test_ring_that_already_holds_old_keys_is_trimmed_on_promotion() -> None:
    """A ring written by hand (or an older manager) with many keys settles at MAX_KEYS."""
    keys = [
        pb.EncryptionKey(key=bytes([i]) * 32, lamport_time=i, created_at_ms=T0) for i in (5, 3, 2)
    ]
    ring = pb.Keyring(keys=keys)
    ent = entropy_from(counter_entropy())
    r1 = rotation_step(ring, T0 + INTERVAL, INTERVAL, GRACE, ent)
    assert r1 is not None and r1.keys[-1].lamport_time == 6
    r2 = rotation_step(r1, T0 + INTERVAL + GRACE, INTERVAL, GRACE, ent)
    assert r2 is not None and [k.lamport_time for k in r2.keys] == [6, 5]


# ---------------------------------------------------------------- property


@settings(max_examples=200, deadline=None)
@given(
    interval=st.integers(min_value=1, max_value=10 * HOUR_MS),
    gaps=st.lists(st.integers(min_value=0, max_value=20 * HOUR_MS), min_size=1, max_size=40),
)
def test_every_step_keeps_the_previous_primary_and_orders_keys(
    interval: int, gaps: list[int]
) -> None:
    ent = entropy_from(counter_entropy())
    grace = grace_ms(interval)
    now = T0
    ring = new_keyring(ent, now)
    seen_lamport = 1
    for gap in gaps:
        now += gap
        nxt = rotation_step(ring, now, interval, grace, ent)
        if nxt is None:
            assert now < next_step_ms(ring, interval, grace)
            continue
        assert now >= next_step_ms(ring, interval, grace)
        # The previous primary is still accepted, and the new primary was accepted before.
        assert ring.keys[0].key in raw(nxt)
        assert nxt.keys[0].key in raw(ring)
        assert len(nxt.keys) <= MAX_KEYS + 1 and not keyring_problem(nxt)
        assert len(set(raw(nxt))) == len(nxt.keys)
        lamports = [k.lamport_time for k in nxt.keys]
        assert max(lamports) >= seen_lamport
        seen_lamport = max(lamports)
        if nxt.keys[0].key != ring.keys[0].key:  # a promotion
            assert len(nxt.keys) <= MAX_KEYS
            assert nxt.keys[0].lamport_time == max(lamports)  # the newest key seals
        else:  # an addition: one key more, newer than all
            assert len(nxt.keys) == len(ring.keys) + 1
            assert nxt.keys[-1].lamport_time > max(k.lamport_time for k in ring.keys)
        ring = nxt


# ---------------------------------------------------------------- agents


def rotation_rings(steps: int) -> list[pb.Keyring]:
    ent = entropy_from(counter_entropy())
    rings = [new_keyring(ent, T0)]
    now = T0
    while len(rings) <= steps:
        now += 1000
        nxt = rotation_step(rings[-1], now, 4000, 1000, ent)
        if nxt is not None:
            rings.append(nxt)
    return rings


def test_nodes_one_step_apart_open_each_others_packets() -> None:
    """A node that got ring i+1 and one still on ring i understand each other both ways: the
    agent's Keyring seals with the primary and opens with any key."""
    rings = [Keyring(raw(r)) for r in rotation_rings(8)]
    for a, b in itertools.pairwise(rings):
        assert gossip_open(b, seal(a, b"old to new")) == b"old to new"
        assert gossip_open(a, seal(b, b"new to old")) == b"new to old"
    # Two steps apart across a promotion is not guaranteed: that is what the grace is for.
    with pytest.raises(AuthError):
        gossip_open(rings[0], seal(rings[2], b"skipped"))


def _rotate_in_sim(rings: list[list[bytes]], lag: float, seed: int) -> tuple[int, bool]:
    """A converged 12-node simulated cluster goes through `rings` (one step every 2 s); each
    node gets each ring at a random moment within `lag` s. Returns (auth drops, converged)."""
    sim = Simulator(seed=seed, keyring=Keyring(rings[0]))
    names = sim.add_nodes(12)
    sim.join_all()
    assert sim.wait_converged(20) is not None
    rng = random.Random(seed)
    start = sim.now + 1
    for i, ring in enumerate(rings[1:]):
        for name in names:
            when = start + 2 * i + rng.uniform(0, lag)
            node = cast(GossipNode, sim.node(name))
            sim.at(when, functools.partial(node.set_keyring, Keyring(ring)))
    sim.run_until(start + 2 * len(rings) + 5)
    drops = sum(cast(GossipNode, sim.node(n)).stats.dropped.get("auth", 0) for n in names)
    return drops, sim.converged()


def test_rotation_in_a_gossip_cluster_drops_no_packet() -> None:
    rings = [raw(r) for r in rotation_rings(6)]
    drops, converged = _rotate_in_sim(rings, lag=1.5, seed=7)
    assert drops == 0 and converged
    # Control: switching keys at once (no add-then-promote), with the same lag, loses packets.
    flag_day = [[r[0]] for r in rings[::2]]
    drops, _ = _rotate_in_sim(flag_day, lag=1.5, seed=7)
    assert drops > 0
