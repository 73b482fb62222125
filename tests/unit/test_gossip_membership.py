"""SWIM/Lifeguard membership rules, one message at a time (no network, no timers)."""

from __future__ import annotations

import math
import random

import pytest

from agent.gossip.common import Addr, Outcome
from agent.gossip.config import GossipTuning
from agent.gossip.membership import Member, Membership, Suspicion

A: Addr = ("10.0.0.1", 7946)
B: Addr = ("10.0.0.2", 7946)


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str | None, str]] = []

    def __call__(self, m: Member, old: str | None, old_addr: Addr, now: float) -> None:
        self.changes.append((m.name, old, m.state))


def make(n_others: int = 0, config: GossipTuning | None = None) -> tuple[Membership, Recorder]:
    rec = Recorder()
    ms = Membership(
        "me", ("10.0.0.100", 7946), config or GossipTuning(), random.Random(1), 0.0, rec
    )
    for i in range(n_others):
        assert ms.apply_alive(f"n{i}", (f"10.0.1.{i}", 7946), 0, 0.0) == Outcome.CHANGED
    rec.changes.clear()
    return ms, rec


def test_alive_adds_and_orders_by_incarnation() -> None:
    ms, rec = make()
    assert ms.apply_alive("x", A, 3, 1.0) == Outcome.CHANGED
    assert rec.changes == [("x", None, "alive")]
    assert ms.apply_alive("x", A, 3, 1.0) == Outcome.IGNORED
    assert ms.apply_alive("x", B, 2, 1.0) == Outcome.IGNORED  # older
    assert ms.apply_alive("x", B, 4, 1.0) == Outcome.CHANGED  # newer: address updated too
    m = ms.get("x")
    assert m is not None and m.addr == B and m.incarnation == 4
    assert ms.size() == 2 and "x" in ms.active


def test_suspect_dead_left_precedence() -> None:
    ms, rec = make(3)  # 4 members: a suspicion can be confirmed by up to 2 others
    assert ms.apply_suspect("n0", 0, "a", 1.0) == Outcome.CHANGED
    assert ms.get("n0").state == "suspect"  # type: ignore[union-attr]
    assert ms.apply_suspect("n0", 0, "b", 1.0) == Outcome.CONFIRMED
    assert ms.apply_suspect("n0", 0, "b", 1.0) == Outcome.IGNORED  # same confirmer twice
    assert ms.apply_alive("n0", A, 0, 1.0) == Outcome.IGNORED  # refutation needs a higher one
    assert ms.apply_alive("n0", A, 1, 1.0) == Outcome.CHANGED
    assert ms.get("n0").state == "alive"  # type: ignore[union-attr]
    assert ms.apply_suspect("n0", 0, "a", 2.0) == Outcome.IGNORED  # about an older incarnation
    assert ms.apply_dead("n0", 1, "a", 2.0) == Outcome.CHANGED
    assert "n0" not in ms.active and "n0" in ms.failed and "n0" in ms.recent_dead
    assert ms.apply_dead("n0", 1, "b", 2.0) == Outcome.IGNORED
    assert ms.apply_suspect("n0", 5, "a", 2.0) == Outcome.IGNORED  # dead is final until alive
    assert ms.apply_dead("n0", 1, "n0", 2.0) == Outcome.CHANGED  # it left after all
    assert ms.get("n0").state == "left" and "n0" not in ms.failed  # type: ignore[union-attr]
    assert ms.apply_alive("n0", A, 1, 3.0) == Outcome.IGNORED
    assert ms.apply_alive("n0", A, 2, 3.0) == Outcome.CHANGED  # rejoined
    assert "n0" in ms.active
    assert [c[2] for c in rec.changes] == ["suspect", "alive", "dead", "left", "alive"]


def test_unknown_members_only_come_from_alive() -> None:
    ms, rec = make()
    assert ms.apply_suspect("ghost", 9, "a", 0.0) == Outcome.IGNORED
    assert ms.apply_dead("ghost", 9, "a", 0.0) == Outcome.IGNORED
    assert ms.get("ghost") is None and rec.changes == []


@pytest.mark.parametrize(
    "apply",
    [
        lambda ms: ms.apply_suspect("me", 0, "x", 1.0),
        lambda ms: ms.apply_dead("me", 0, "x", 1.0),
        lambda ms: ms.apply_dead("me", 0, "me", 1.0),  # an old "left" of a previous life
        lambda ms: ms.apply_alive("me", ("10.0.0.100", 7946), 1, 1.0),  # stale, higher
        lambda ms: ms.apply_alive("me", ("10.9.9.9", 1), 0, 1.0),  # someone else's addr
    ],
)
def test_self_refutes(apply) -> None:  # type: ignore[no-untyped-def]
    ms, _ = make()
    assert apply(ms) == Outcome.REFUTE
    assert ms.local.incarnation >= 1 and ms.local.state == "alive"
    inc = ms.local.incarnation
    assert ms.apply_suspect("me", inc - 1, "x", 1.0) == Outcome.IGNORED  # already refuted


def test_left_node_does_not_refute() -> None:
    ms, _ = make()
    ms.leave(1.0)
    assert ms.left
    assert ms.apply_dead("me", 0, "x", 1.0) == Outcome.IGNORED
    assert ms.apply_suspect("me", 5, "x", 1.0) == Outcome.IGNORED


def test_suspicion_timeouts_shrink_with_confirmations() -> None:
    s = Suspicion(0, "a", 10.0, k=3, min_t=0.5, max_t=4.0)
    assert s.deadline == 14.0
    deadlines = []
    for who in ("b", "c", "d"):
        assert s.confirm(who)
        deadlines.append(s.deadline)
    assert deadlines[0] == pytest.approx(10.0 + 4.0 - 3.5 * math.log(2) / math.log(4))
    assert deadlines == sorted(deadlines, reverse=True) and deadlines[-1] == 10.5
    assert not s.confirm("e")  # beyond k: no further effect, not re-broadcast
    assert not s.confirm("a")  # the accuser does not confirm itself
    assert Suspicion(0, "a", 0.0, k=0, min_t=0.5, max_t=4.0).deadline == 0.5


def test_suspicion_scales_with_cluster_size() -> None:
    small, _ = make(4)  # 5 members: k = 3, max = 4 s, min = 0.5 s
    small.apply_suspect("n0", 0, "n1", 0.0)
    s = small.get("n0").suspicion  # type: ignore[union-attr]
    assert (s.k, s.max_t, s.min_t) == (3, 4.0, 0.5)  # type: ignore[union-attr]
    big, _ = make(99)  # 100 members: 4 * log10(100) = 8 s, capped at 6 s
    big.apply_suspect("n0", 0, "n1", 0.0)
    s = big.get("n0").suspicion  # type: ignore[union-attr]
    assert (s.k, s.max_t) == (3, 6.0)  # type: ignore[union-attr]
    pair, _ = make(1)  # 2 members: nobody can confirm
    pair.apply_suspect("n0", 0, "x", 0.0)
    assert pair.get("n0").suspicion.k == 0  # type: ignore[union-attr]


def test_round_robin_probes_everyone_each_round() -> None:
    ms, _ = make(10)
    for _ in range(3):
        seen = [ms.next_probe_target(set()) for _ in range(10)]
        assert sorted(seen) == sorted(f"n{i}" for i in range(10))  # type: ignore[type-var]
    assert ms.next_probe_target({f"n{i}" for i in range(10)}) is None


def test_ring_successor_and_predecessor_are_consistent() -> None:
    rings = {}
    names = [f"node-{i}" for i in range(8)]
    for me in names:
        ms = Membership(me, A, GossipTuning(), random.Random(0), 0.0, lambda *a: None)
        for other in names:
            if other != me:
                ms.apply_alive(other, B, 0, 0.0)
        rings[me] = (ms.ring_predecessor(), ms.ring_successor())
    # Following successors visits every node once: a single ring, the same on every node.
    cur, visited = names[0], []
    for _ in names:
        visited.append(cur)
        cur = rings[cur][1]  # type: ignore[assignment]
    assert cur == names[0] and sorted(visited) == sorted(names)
    for me, (pred, _) in rings.items():
        assert rings[pred][1] == me  # type: ignore[index]


def test_ring_skips_dead_members() -> None:
    ms, _ = make(3)
    succ = ms.ring_successor()
    assert succ is not None
    ms.apply_dead(succ, 0, "x", 1.0)
    assert ms.ring_successor() not in (None, succ)
    alone, _ = make()
    assert alone.ring_successor() is None and alone.ring_predecessor() is None


def test_gossip_targets_include_the_recently_dead_only() -> None:
    cfg = GossipTuning(gossip_to_dead=10.0)
    ms, _ = make(3, cfg)
    ms.apply_dead("n0", 0, "x", 100.0)
    seen = set()
    for _ in range(50):
        seen.update(ms.gossip_targets(3, 105.0, set()))
    assert seen == {"n0", "n1", "n2"}
    later = set()
    for _ in range(50):
        later.update(ms.gossip_targets(3, 111.0, {"n1"}))
    assert later == {"n2"}
