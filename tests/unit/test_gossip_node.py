"""`GossipNode` end to end on a tiny in-test network with an injected clock.

The harness (`Net`) delivers every datagram and stream frame after a fixed delay, lets a
test cut, slow, drop or tap traffic, and records every node's events. It is deliberately
simpler than `agent.gossip.sim` (which the simulator tests exercise): a few nodes, every
decision visible in the test.
"""

from __future__ import annotations

import heapq
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import pytest

from agent.gossip import (
    DecodeError,
    EntryChanged,
    GossipNode,
    GossipTuning,
    Keyring,
    MemberChanged,
    Outgoing,
    crypto,
    wire,
)

KEY = bytes(range(32))
Addr = tuple[str, int]


class Net:
    def __init__(self, seed: int = 1, delay: float = 0.001, config: GossipTuning | None = None):
        self.rng = random.Random(seed)
        self.config = config or GossipTuning()
        self.keyring = Keyring([KEY])
        self.delay = delay
        self.now = 0.0
        self.nodes: dict[str, GossipNode] = {}
        self.addrs: dict[Addr, str] = {}
        self.down: set[str] = set()
        self.slow: dict[str, float] = {}  # extra one-way delay of a node's traffic
        self.stalled: dict[str, float] = {}  # node -> until when it processes nothing
        self.cut: set[frozenset[str]] = set()
        self.drop: Callable[[str, str, Outgoing], bool] | None = None
        self.taps: list[Callable[[str, str, Outgoing], None]] = []
        self.events: dict[str, list[Any]] = {}
        self._heap: list[tuple[float, int, str, Any]] = []
        self._n = 0
        self.epochs: dict[str, int] = {}

    # -- nodes
    def add(self, name: str, keyring: Keyring | None = None) -> GossipNode:
        addr = (f"198.51.100.{len(self.addrs) + 1}", 7946)
        if name in self.nodes:
            addr = self.nodes[name].addr
        self.epochs[name] = self.epochs.get(name, 0) + 1
        node = GossipNode(
            name,
            addr,
            keyring or self.keyring,
            self.config,
            random.Random(self.rng.getrandbits(64)),
            self.now,
            epoch=self.epochs[name],
            strict=True,  # a bug raises out of the test instead of counting as a drop
        )
        self.nodes[name] = node
        self.addrs[addr] = name
        self.events[name] = []
        self.down.discard(name)
        return node

    def cluster(self, n: int, networks: tuple[str, ...] = ("net",)) -> list[str]:
        names = [f"n{i}" for i in range(n)]
        for name in names:
            self.add(name)
            for net in networks:
                self.nodes[name].join_network(self.now, net)
                self._drain(name)
        seed = self.nodes[names[0]].addr
        for name in names[1:]:
            self.call(name, lambda nd: nd.join(self.now, [seed]))
        assert self.run_until_true(lambda: self.converged(), 10.0), self.views()
        self.run(1.0)
        return names

    def kill(self, name: str) -> None:
        self.down.add(name)

    def call(self, name: str, fn: Callable[[GossipNode], Any]) -> Any:
        out = fn(self.nodes[name])
        self._drain(name)
        return out

    # -- running
    def _drain(self, name: str) -> None:
        node = self.nodes[name]
        for out in node.take_outgoing():
            dest = self.addrs.get(out.dest)
            for tap in self.taps:
                tap(name, dest or "?", out)
            if dest is None:
                continue
            d = self.delay + self.slow.get(name, 0.0) + self.slow.get(dest, 0.0)
            self._n += 1
            heapq.heappush(self._heap, (self.now + d, self._n, "pkt", (name, dest, out, node)))
        self.events[name].extend(node.take_events())

    def _step(self, t_end: float) -> bool:
        t_pkt = self._heap[0][0] if self._heap else float("inf")
        live = [
            (n.next_deadline(), name) for name, n in self.nodes.items() if name not in self.down
        ]
        t_tick, who = min(live) if live else (float("inf"), "")
        t = min(t_pkt, t_tick)
        if t > t_end:
            return False
        self.now = max(self.now, t)
        if t_pkt <= t_tick:
            _, _, _, (src, dest, out, sender) = heapq.heappop(self._heap)
            node = self.nodes[dest]
            if self.stalled.get(dest, 0.0) > self.now:  # a paused process reads it later
                self._n += 1
                item = (src, dest, out, sender)
                heapq.heappush(self._heap, (self.stalled[dest], self._n, "pkt", item))
                return True
            if self.nodes[src] is not sender or src in self.down:
                return True  # sent by a previous (killed) instance
            blocked = dest in self.down or frozenset((src, dest)) in self.cut
            if blocked or (self.drop is not None and self.drop(src, dest, out)):
                if out.stream and not blocked:
                    return True
                if out.stream:
                    sender.stream_failed(self.now, out.dest)
                    self._drain(src)
                return True
            if out.stream:
                node.receive_stream(self.now, sender.addr, out.data)
            else:
                node.receive(self.now, sender.addr, out.data)
            self._drain(dest)
        else:
            self.nodes[who].tick(self.now)
            self._drain(who)
        return True

    def run_until(self, t_end: float) -> None:
        while self._step(t_end):
            pass
        self.now = max(self.now, t_end)

    def run(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until_true(self, cond: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
        end = self.now + timeout
        while self.now < end:
            if cond():
                return True
            self.run(step)
        return cond()

    # -- views
    def state(self, observer: str, name: str) -> str | None:
        for m in self.nodes[observer].members():
            if m.name == name:
                return m.state
        return None

    def live(self) -> list[str]:
        return [n for n in self.nodes if n not in self.down]

    def converged(self) -> bool:
        live = set(self.live())
        return all(
            {m.name for m in self.nodes[o].members() if m.state == "alive"} == live for o in live
        )

    def views(self) -> dict[str, dict[str, str]]:
        return {o: {m.name: m.state for m in self.nodes[o].members()} for o in self.live()}

    def visible(self, net: str, key: str) -> dict[str, bytes | None]:
        out = {}
        for o in self.live():
            e = self.nodes[o].entries(net).get(key) if net in self.nodes[o].networks() else None
            out[o] = None if e is None else e.value
        return out


# ---------------------------------------------------------------- membership


def test_join_through_one_seed_converges() -> None:
    net = Net()
    names = net.cluster(6)
    for o in names:
        infos = net.nodes[o].members()
        assert sorted(m.name for m in infos) == names
        assert all(m.state == "alive" and m.incarnation == 0 for m in infos)
    # Everyone heard of everyone else joining.
    joins = {
        (o, e.name)
        for o in names
        for e in net.events[o]
        if isinstance(e, MemberChanged) and e.state == "alive"
    }
    assert joins == {(o, x) for o in names for x in names if o != x}


def test_join_retries_until_a_seed_answers() -> None:
    net = Net()
    a, b = net.add("a"), net.add("b")
    net.kill("a")
    net.call("b", lambda n: n.join(net.now, [a.addr, a.addr, b.addr]))  # own addr ignored
    net.run(3.5)
    assert net.state("b", "a") is None
    net.down.discard("a")  # the seed comes up
    assert net.run_until_true(lambda: net.state("b", "a") == "alive", 2.0)
    assert net.run_until_true(lambda: net.state("a", "b") == "alive", 1.0)
    sent = b.stats.streams_out
    net.run(5.0)
    assert b.stats.streams_out - sent <= 2  # retries stopped (at most the resync is left)


def test_killed_node_is_dead_everywhere_fast() -> None:
    net = Net(seed=3)
    names = net.cluster(5)
    net.run(0.37)
    t0 = net.now
    net.kill("n3")
    others = [n for n in names if n != "n3"]
    assert net.run_until_true(lambda: all(net.state(o, "n3") == "dead" for o in others), 5.0)
    took = net.now - t0
    assert took < 2.6, took
    # Suspected first, then dead; every observer saw it.
    for o in others:
        states = [e.state for e in net.events[o] if isinstance(e, MemberChanged) and e.name == "n3"]
        assert states[-1] == "dead"


def test_detection_time_over_many_kills() -> None:
    """Median and worst detection time at 5 nodes over kills at different probe phases
    (the sim suite measures it too; this keeps the core's own guarantee in its suite)."""
    times = []
    for seed in range(8):
        net = Net(seed=seed)
        names = net.cluster(5)
        net.run(random.Random(seed).random())
        t0 = net.now
        victim = names[1 + seed % 4]
        net.kill(victim)
        others = [n for n in names if n != victim]

        def dead_everywhere(net: Net = net, v: str = victim, others: list[str] = others) -> bool:
            return all(net.state(o, v) == "dead" for o in others)

        assert net.run_until_true(dead_everywhere, 6.0)
        times.append(net.now - t0)
    times.sort()
    assert times[len(times) // 2] < 2.2 and times[-1] < 2.6, times


def test_slow_node_is_not_declared_dead() -> None:
    """A node whose every packet takes 450 ms each way (RTT 0.9 s, well over the probe
    timeout) is never declared dead: a late ack still counts until the probe interval
    ends."""
    net = Net(seed=5)
    names = net.cluster(5)
    for o in names:
        net.events[o].clear()
    net.slow["n2"] = 0.45
    net.run(30.0)
    for o in names:
        states = [e.state for e in net.events[o] if isinstance(e, MemberChanged) and e.name == "n2"]
        assert states == [], (o, states)


def test_stalled_node_refutes_and_survives() -> None:
    """A node that stops processing for 1.2 s (a long pause of its process) is suspected
    by whoever probed it early in the pause, learns of it when it wakes up and refutes
    before the suspicion runs out. Several pause phases; none ends dead."""
    refuted = 0
    for seed in range(6):
        net = Net(seed=30 + seed)
        names = net.cluster(5)
        net.run(random.Random(seed).random())
        net.stalled["n2"] = net.now + 1.2
        net.run(8.0)
        for o in names:
            if o == "n2":
                continue
            states = [
                e.state for e in net.events[o] if isinstance(e, MemberChanged) and e.name == "n2"
            ]
            assert "dead" not in states, (seed, o, states)
            assert net.state(o, "n2") == "alive"
        refuted += net.nodes["n2"].incarnation > 0
    assert refuted >= 1  # the suspicion/refutation path was taken at least once


def test_suspected_live_node_refutes() -> None:
    net = Net(seed=2)
    names = net.cluster(4)
    victim = net.nodes["n1"]
    accuser = net.nodes["n0"]
    # n0 wrongly suspects n1 (as after a lost ack); the news reaches n1, which refutes.
    net.call("n0", lambda n: n._members.apply_suspect("n1", 0, "n0", net.now))
    net.call(
        "n0", lambda n: n._dissem.suspicion_news("n1", "n0", wire.encode_suspect("n1", 0, "n0"))
    )
    net.call("n0", lambda n: n._flush(net.now))
    assert accuser.members()  # (no exception)
    assert net.run_until_true(lambda: victim.incarnation == 1, 1.0)
    assert net.run_until_true(lambda: all(net.state(o, "n1") == "alive" for o in names), 1.0), (
        net.views()
    )
    net.run(5.0)
    assert all(net.state(o, "n1") == "alive" for o in names)


def test_graceful_leave_is_left_not_dead() -> None:
    net = Net(seed=4)
    names = net.cluster(5)
    net.call("n4", lambda n: n.put(net.now, "net", "ep", b"x"))
    net.run(0.5)
    assert set(net.visible("net", "ep").values()) == {b"x"}
    net.call("n4", lambda n: n.leave(net.now))
    net.run(0.5)
    net.kill("n4")
    net.run(5.0)
    others = names[:4]
    assert all(net.state(o, "n4") == "left" for o in others)
    for o in others:
        states = [e.state for e in net.events[o] if isinstance(e, MemberChanged) and e.name == "n4"]
        assert "dead" not in states and "suspect" not in states
    assert all(v is None for v in net.visible("net", "ep").values())


def test_dead_members_and_tombstones_are_reaped() -> None:
    net = Net(seed=21, config=GossipTuning(dead_member_reap=20.0, tombstone_reap=10.0))
    names = net.cluster(4)
    net.call("n0", lambda n: n.put(net.now, "net", "gone", b"x"))
    net.call("n3", lambda n: n.put(net.now, "net", "k", b"v"))
    net.run(0.5)
    net.call("n0", lambda n: n.delete(net.now, "net", "gone"))
    net.kill("n3")
    net.run(5.0)
    assert all(net.state(o, "n3") == "dead" for o in names[:3])
    stored = net.nodes["n1"].stored_entries("net")
    assert {(e.key, e.deleted) for e in stored} == {("gone", True), ("k", False)}
    net.run(8.0)  # tombstones are older than 10 s; n3 has been dead for ~10 s
    assert {e.key for e in net.nodes["n1"].stored_entries("net")} == {"k"}
    assert net.state("n1", "n3") == "dead"
    net.run(15.0)  # n3 dead for more than 20 s: forgotten, with its entries
    assert all(net.state(o, "n3") is None for o in names[:3])
    assert net.nodes["n1"].stored_entries("net") == []
    assert net.converged()


def test_left_node_goes_quiet() -> None:
    net = Net()
    net.cluster(3)
    node = net.nodes["n2"]
    net.call("n2", lambda n: n.leave(net.now))
    net.run(10.0)
    sent = node.stats.packets_out
    net.run(10.0)
    assert node.stats.packets_out == sent  # no probes, no gossip, no syncs
    assert node.next_deadline() == float("inf")


# ---------------------------------------------------------------- tables


def test_entry_reaches_participants_only() -> None:
    net = Net(seed=6)
    names = [f"n{i}" for i in range(6)]
    for i, name in enumerate(names):
        net.add(name).join_network(net.now, "red" if i < 3 else "blue")
        net._drain(name)
    for name in names[1:]:
        net.call(name, lambda n: n.join(net.now, [net.nodes["n0"].addr]))
    assert net.run_until_true(net.converged, 5.0)
    net.run(1.0)
    leaked: list[str] = []

    def tap(src: str, dest: str, out: Outgoing) -> None:
        if b"SECRET" in crypto.open(net.keyring, out.data) and dest not in names[:3]:
            leaked.append(dest)

    net.taps.append(tap)
    net.call("n1", lambda n: n.put(net.now, "red", "k", b"SECRET"))
    net.run(0.1)
    vis = net.visible("red", "k")
    assert [o for o in names[:3] if vis[o] != b"SECRET"] == []
    assert [o for o in names[3:] if vis[o] is not None] == []
    net.run(40.0)  # through periodic push-pulls too
    assert leaked == []
    with pytest.raises(KeyError):
        net.call("n4", lambda n: n.put(net.now, "red", "k", b"x"))


def test_eager_push_beats_the_gossip_interval() -> None:
    """Forwarding news on receipt spreads it in network hops, not gossip rounds: most nodes
    have it within a few 1 ms hops; the few the eager wave missed get it at the next
    gossip tick."""
    net = Net(seed=7)
    names = net.cluster(20)
    t0 = net.now
    seen: dict[str, float] = {}

    def poll() -> bool:
        for o, v in net.visible("net", "k").items():
            if v == b"v":
                seen.setdefault(o, net.now - t0)
        return len(seen) == len(names)

    net.call("n5", lambda n: n.put(net.now, "net", "k", b"v"))
    assert net.run_until_true(poll, 2.0, step=0.001)
    times = sorted(seen.values())
    assert times[int(0.8 * len(times))] < 0.03, times
    assert times[-1] < net.config.gossip_interval + 0.05, times


def test_put_update_delete_propagate_and_events() -> None:
    net = Net(seed=8)
    names = net.cluster(4)
    net.call("n0", lambda n: n.put(net.now, "net", "k", b"1"))
    net.run(0.5)
    net.call("n0", lambda n: n.put(net.now, "net", "k", b"2"))
    net.run(0.5)
    assert set(net.visible("net", "k").values()) == {b"2"}
    net.call("n0", lambda n: n.delete(net.now, "net", "k"))
    net.run(0.5)
    assert set(net.visible("net", "k").values()) == {None}
    for o in names[1:]:
        evs = [(e.key, e.value) for e in net.events[o] if isinstance(e, EntryChanged)]
        assert evs == [("k", b"1"), ("k", b"2"), ("k", None)]


def test_value_limits() -> None:
    net = Net(config=GossipTuning(max_packet=600, max_value=300))
    net.cluster(2)
    node = net.nodes["n0"]
    with pytest.raises(ValueError):
        node.put(net.now, "net", "k", bytes(301))
    with pytest.raises(ValueError):
        node.put(net.now, "net", "k" * 250, bytes(300))  # the whole entry does not fit
    with pytest.raises(KeyError):
        node.put(net.now, "nope", "k", b"")
    node.put(net.now, "net", "k", bytes(300))  # fits
    net.run(1.0)
    assert net.nodes["n1"].entries("net")["k"].value == bytes(300)


def test_dead_owner_hidden_then_restored_and_restart_cleans_up() -> None:
    net = Net(seed=9)
    names = net.cluster(5)
    net.call("n4", lambda n: n.put(net.now, "net", "a", b"a1"))
    net.call("n4", lambda n: n.put(net.now, "net", "b", b"b1"))
    net.run(0.5)
    net.kill("n4")
    others = names[:4]
    assert net.run_until_true(lambda: all(net.state(o, "n4") == "dead" for o in others), 5.0)
    assert all(v is None for v in net.visible("net", "a").values())
    for o in others:  # hidden, with an event per entry
        gone = [(e.key, e.value) for e in net.events[o] if isinstance(e, EntryChanged)][-2:]
        assert sorted(gone) == [("a", None), ("b", None)]
    # A fresh life: empty state, new epoch; it joins, re-announces "a" only.
    net.add("n4")
    net.call("n4", lambda n: n.join_network(net.now, "net"))
    net.call("n4", lambda n: n.join(net.now, [net.nodes["n0"].addr]))
    net.call("n4", lambda n: n.put(net.now, "net", "a", b"a2"))
    assert net.run_until_true(
        lambda: (
            net.converged()
            and set(net.visible("net", "a").values()) == {b"a2"}
            and set(net.visible("net", "b").values()) == {None}
        ),
        5.0,
    ), (net.views(), net.visible("net", "a"), net.visible("net", "b"))
    assert net.nodes["n4"].incarnation > 0  # refuted its old death
    stored = {e.key: e for e in net.nodes["n0"].stored_entries("net") if e.owner == "n4"}
    assert stored["b"].deleted  # tombstoned by its owner, not merely hidden


def test_dead_owner_comes_back_entries_return() -> None:
    """A node cut off long enough to be declared dead, which did not restart: once it can
    talk again it refutes, and its entries (kept, hidden) are visible again."""
    net = Net(seed=10)
    names = net.cluster(4)
    net.call("n3", lambda n: n.put(net.now, "net", "k", b"v"))
    net.run(0.5)
    for o in names[:3]:
        net.cut.add(frozenset((o, "n3")))
    assert net.run_until_true(lambda: all(net.state(o, "n3") == "dead" for o in names[:3]), 6.0)
    assert all(net.visible("net", "k")[o] is None for o in names[:3])
    net.cut.clear()
    assert net.run_until_true(
        lambda: net.converged() and set(net.visible("net", "k").values()) == {b"v"}, 15.0
    ), net.views()


def test_partition_heals_by_itself() -> None:
    net = Net(seed=11)
    names = net.cluster(6)
    left, right = names[:3], names[3:]
    for a in left:
        for b in right:
            net.cut.add(frozenset((a, b)))
    net.call("n0", lambda n: n.put(net.now, "net", "L", b"l"))
    net.call("n5", lambda n: n.put(net.now, "net", "R", b"r"))
    assert net.run_until_true(lambda: net.state("n0", "n5") == "dead", 8.0)
    assert net.run_until_true(lambda: net.state("n5", "n0") == "dead", 8.0)
    net.run(5.0)
    net.cut.clear()
    assert net.run_until_true(
        lambda: (
            net.converged()
            and set(net.visible("net", "L").values()) == {b"l"}
            and set(net.visible("net", "R").values()) == {b"r"}
        ),
        40.0,
        step=0.1,
    ), net.views()


def test_tombstone_survives_a_stale_peer() -> None:
    net = Net(seed=12)
    names = net.cluster(4)
    net.call("n0", lambda n: n.put(net.now, "net", "k", b"old"))
    net.run(0.5)
    for o in names[:3]:
        net.cut.add(frozenset((o, "n3")))
    net.call("n0", lambda n: n.delete(net.now, "net", "k"))
    net.run(1.0)
    assert net.visible("net", "k") == {"n0": None, "n1": None, "n2": None, "n3": b"old"}
    net.cut.clear()
    net.run(45.0)  # readmitted, pushes and pulls
    assert set(net.visible("net", "k").values()) == {None}


def test_push_pull_repairs_lost_broadcasts() -> None:
    net = Net(seed=13)
    net.cluster(4)
    # Every datagram to n3 is lost for a while: it misses the entry's broadcasts.
    net.drop = lambda src, dest, out: dest == "n3" and not out.stream
    net.call("n0", lambda n: n.put(net.now, "net", "k", b"v"))
    net.run(0.3)
    assert net.visible("net", "k")["n3"] is None
    net.drop = None
    # Only anti-entropy can bring it (the broadcast's retransmissions are over).
    assert net.run_until_true(lambda: net.visible("net", "k")["n3"] == b"v", 65.0, step=0.5)
    assert net.nodes["n3"].stats.last_sync is not None


def test_join_network_syncs_at_once() -> None:
    net = Net(seed=14)
    names = net.cluster(4, networks=())
    net.call("n0", lambda n: n.join_network(net.now, "late"))
    net.call("n1", lambda n: n.join_network(net.now, "late"))
    net.run(0.5)
    net.call("n0", lambda n: n.put(net.now, "late", "k", b"v"))
    net.run(0.5)
    net.call("n2", lambda n: n.join_network(net.now, "late"))
    net.run(0.05)  # no gossip round needed: the join syncs with a participant
    assert net.nodes["n2"].entries("late")["k"].value == b"v"
    assert net.nodes["n3"].entries("late") == {} and "late" not in net.nodes["n3"].networks()
    net.call("n2", lambda n: n.leave_network(net.now, "late"))
    assert "late" not in net.nodes["n2"].networks() and net.nodes["n2"].entries("late") == {}
    assert names


def test_leave_network_hides_own_entries_everywhere() -> None:
    net = Net(seed=15)
    net.cluster(4)
    net.call("n2", lambda n: n.put(net.now, "net", "k", b"v"))
    net.run(0.5)
    net.call("n2", lambda n: n.leave_network(net.now, "net"))
    net.run(0.5)
    assert all(v is None for o, v in net.visible("net", "k").items())


# ---------------------------------------------------------------- security and robustness


def _valid_packet(net: Net, src: str, dest: str) -> bytes:
    """A fresh valid datagram from src to dest (an ack, which changes no state)."""
    node = net.nodes[src]
    node._outbox.send(net.nodes[dest].addr, [wire.encode_ack(12345)])
    return node.take_outgoing()[-1].data


def test_bad_packets_are_dropped_and_counted() -> None:
    net = Net(seed=16)
    net.cluster(3)
    a, b = net.nodes["n0"], net.nodes["n1"]
    good = _valid_packet(net, "n0", "n1")
    b.receive(net.now, a.addr, good)
    before = dict(b.stats.dropped)
    b.receive(net.now, a.addr, good)  # replayed
    b.receive(net.now, a.addr, b"garbage")
    b.receive(net.now, a.addr, good[:-3])  # truncated
    b.receive(net.now, a.addr, crypto.seal(Keyring([bytes(16)]), b"x" * 40))  # wrong key
    b.receive(net.now, a.addr, crypto.seal(net.keyring, b"\x01\x01junk"))  # bad plaintext
    b.receive(net.now, a.addr, _valid_packet(net, "n0", "n2"))  # sealed for n2
    b.receive(net.now, a.addr, _valid_packet(net, "n1", "n1"))  # our own name
    b.receive_stream(net.now, a.addr, good)  # a datagram as a stream frame
    after = b.stats.dropped
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta == {
        "replay": 1,
        "malformed": 3,
        "auth": 2,
        "misdirected": 1,
        "loop": 1,
    }
    assert b.stats.total_dropped() == sum(after.values())


def test_a_bug_in_a_handler_is_not_counted_as_a_drop(caplog: pytest.LogCaptureFixture) -> None:
    """h11's rule: bad input is a drop; the core failing on valid input is a bug, logged with
    its traceback and counted apart (and raised when strict, as in the tests and the sim)."""
    net = Net(seed=23)
    net.cluster(3)
    a, b = net.nodes["n0"], net.nodes["n1"]
    b.strict = False  # as the agent runs it

    def broken_ack(seq: int) -> None:
        raise RuntimeError("bug in the ack handler")

    b._prober.on_ack = broken_ack  # type: ignore[method-assign]
    before = dict(b.stats.dropped)
    with caplog.at_level(logging.ERROR, logger="agent.gossip.node"):
        b.receive(net.now, a.addr, _valid_packet(net, "n0", "n1"))  # a valid ack
    assert b.stats.dropped == before  # not garbage: nothing dropped
    assert b.stats.bugs == 1 and b.status(net.now)["bugs"] == 1
    logged = [r for r in caplog.records if r.exc_info is not None]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert logged[0].exc_info[0] is RuntimeError  # with its traceback

    b.strict = True
    with pytest.raises(RuntimeError, match="bug in the ack handler"):
        b.receive(net.now, a.addr, _valid_packet(net, "n0", "n1"))
    assert b.stats.bugs == 2 and b.stats.dropped == before

    # A decoding error raised deep in a handler still counts as bad input, not as a bug.
    def undecodable(seq: int) -> None:
        raise DecodeError("bad field")

    b._prober.on_ack = undecodable  # type: ignore[method-assign]
    b.receive(net.now, a.addr, _valid_packet(net, "n0", "n1"))
    assert (
        b.stats.bugs == 2 and b.stats.dropped.get("malformed", 0) == before.get("malformed", 0) + 1
    )


def test_a_bug_on_the_stream_path_raises_when_strict() -> None:
    net = Net(seed=24)
    net.cluster(2)
    a, b = net.nodes["n0"], net.nodes["n1"]

    def broken_merge(*args: object) -> None:
        raise KeyError("bug in merge")

    b._sync.received = broken_merge  # type: ignore[method-assign, assignment]
    a._sync.send_push_pull(b.addr, False, False)
    frame = a.take_outgoing()[-1]
    assert frame.stream
    with pytest.raises(KeyError):
        b.receive_stream(net.now, a.addr, frame.data)
    assert b.stats.bugs == 1 and b.stats.total_dropped() == 0


def test_foreign_key_node_never_joins() -> None:
    net = Net(seed=17)
    names = net.cluster(3)
    net.add("evil", keyring=Keyring([bytes(range(1, 33))]))
    net.call("evil", lambda n: n.join(net.now, [net.nodes["n0"].addr]))
    net.run(5.0)
    assert all(net.state(o, "evil") is None for o in names)
    assert [m.name for m in net.nodes["evil"].members()] == ["evil"]
    assert net.nodes["n0"].stats.dropped.get("auth", 0) > 0


def test_key_rotation_without_a_flag_day() -> None:
    net = Net(seed=18)
    names = net.cluster(4)
    new = bytes(range(50, 82))
    for o in names:  # 1: everyone accepts the new key
        net.nodes[o].set_keyring(Keyring([KEY, new]))
    net.run(2.0)
    for o in names:  # 2: one by one, the new key becomes primary
        net.nodes[o].set_keyring(Keyring([new, KEY]))
        net.run(1.0)
    for o in names:  # 3: the old key is dropped
        net.nodes[o].set_keyring(Keyring([new]))
    net.run(5.0)
    assert net.converged()
    assert sum(net.nodes[o].stats.dropped.get("auth", 0) for o in names) == 0
    assert net.nodes["n0"].keyring.primary == new


def test_idle_cluster_sends_only_probes() -> None:
    net = Net(seed=19)
    names = net.cluster(5)
    net.run(3.0)
    kinds: dict[str, int] = {}

    def tap(src: str, dest: str, out: Outgoing) -> None:
        if out.stream:
            kinds["stream"] = kinds.get("stream", 0) + 1
            return
        _, msgs = wire.decode_datagram(crypto.open(net.keyring, out.data))
        for m in msgs:
            kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1

    net.taps.append(tap)
    net.run(10.0)
    assert set(kinds) <= {"Ping", "Ack", "Alive", "stream"}, kinds
    # Two probes per node and second (ring + round robin), each answered.
    assert 90 <= kinds["Ping"] <= 110 and kinds["Ack"] >= 90
    assert kinds.get("stream", 0) <= 8  # a push-pull now and then
    assert names


def _count_ticks(node: GossipNode) -> list[float]:
    """Record the times the driver runs ``node``'s timers (each is a wake-up of its loop)."""
    times: list[float] = []
    tick = node.tick

    def counting(now: float) -> None:
        times.append(now)
        tick(now)

    node.tick = counting  # type: ignore[method-assign]
    return times


def test_lone_node_pauses_gossip_ticks_until_a_peer_appears() -> None:
    # Alone, its own alive message stays pending (there is nobody to send it to): the gossip
    # tick (every 0.2 s) must not run for that, only the probe tick (1 s) and the rare syncs.
    net = Net(seed=23)
    net.add("n0").join_network(net.now, "net")
    net._drain("n0")
    net.run(1.0)
    ticks = _count_ticks(net.nodes["n0"])
    net.run(10.0)
    assert net.nodes["n0"].status(net.now)["pending_broadcasts"] > 0
    assert len(ticks) <= 13, ticks  # 10 probe ticks, a reconnect and a push-pull tick
    # A peer joins: gossip resumes on n0 and its pending news goes out.
    net.add("n1")
    net.call("n1", lambda n: n.join(net.now, [net.nodes["n0"].addr]))
    joined = net.now
    assert net.run_until_true(net.converged, 5.0), net.views()
    net.run(1.0)
    # Gossip ticks ran (0.2 s apart; the probe tick alone would be one per second).
    assert sum(1 for t in ticks if joined < t <= joined + 0.5) >= 2, ticks
    assert net.run_until_true(
        lambda: net.nodes["n0"].status(net.now)["pending_broadcasts"] == 0, 5.0
    )
    # Alone again once the peer is gone for good: the ticks stop again.
    net.kill("n1")
    net.run(60.0)
    del ticks[:]
    net.run(10.0)
    assert len(ticks) <= 13, ticks


def test_status_is_json_and_complete() -> None:
    net = Net(seed=20)
    net.cluster(3)
    net.call("n0", lambda n: n.put(net.now, "net", "k", b"v"))
    net.run(1.0)
    st = net.nodes["n1"].status(net.now)
    json.dumps(st)
    assert st["name"] == "n1" and st["state"] == "alive" and st["alive"] == 3
    assert [m["name"] for m in st["members"]] == ["n0", "n1", "n2"]
    assert st["networks"]["net"]["entries"] == 1 and st["networks"]["net"]["peers"] == ["n0", "n2"]
    assert st["last_sync_age"] is not None and st["last_sync_age"] >= 0
    assert st["dropped"] == {}


def test_same_seed_same_run() -> None:
    def run(seed: int) -> list[tuple[float, str, int]]:
        net = Net(seed=seed)
        trace: list[tuple[float, str, int]] = []
        net.taps.append(lambda s, d, o: trace.append((round(net.now, 6), d, len(o.data))))
        net.cluster(5)
        net.call("n1", lambda n: n.put(net.now, "net", "k", b"v"))
        net.kill("n2")
        net.run(5.0)
        return trace

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_constructor_validation() -> None:
    cfg = GossipTuning()
    kr = Keyring([KEY])
    with pytest.raises(ValueError):
        GossipNode("", ("h", 1), kr, cfg, random.Random(), 0.0)
    with pytest.raises(ValueError):
        GossipNode("x", ("h", 1), kr, cfg, random.Random(), 0.0, epoch=-1)
    with pytest.raises(ValueError):
        GossipTuning(probe_timeout=2.0)
    with pytest.raises(ValueError):
        GossipTuning(max_value=1300)
    assert issubclass(DecodeError, ValueError)
