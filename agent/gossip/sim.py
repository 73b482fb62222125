"""A deterministic discrete-event simulator that runs many real `GossipNode`s in one process.

Why: the gossip core is sans-IO (time, packets and randomness are passed in), so the protocol
can be exercised at a scale and with faults that real sockets on one machine cannot give: a
thousand nodes, 10 % packet loss, partitions, SIGKILL and restart with fresh state, all
reproducible from one seed. Tests and `bench/gossip.py` measure convergence, failure detection
and bandwidth with it.

The model:
- One heap of ``(time, seq, kind, a, b, c)`` events; ``seq`` breaks ties so that the order of
  simultaneous events is the order they were scheduled in, never a comparison of payloads.
- Each node's ``tick()`` is scheduled at its ``next_deadline()``; after every input (packet,
  timer, API call) the node is drained (``take_outgoing``, ``take_events``) and its deadline
  re-read, exactly as the real transport does after each feed.
- Datagrams take ``delay + U(0, jitter)`` and are lost with probability ``loss``. Stream frames
  (push-pull) are reliable and take longer (TCP handshake, size / bandwidth); when the path is
  cut or the destination is down, the sender's ``stream_failed()`` runs after
  ``stream_fail_after``.
- Processing time is not modelled: a node answers at the instant a packet arrives.
- ``partition(groups)`` drops every packet between different groups (nodes named in no group
  form one more group together); ``heal()`` ends it.
- ``kill(name)`` stops a node dead: no more timers, nothing delivered to or from it (packets in
  flight included). ``revive(name)`` starts a FRESH node under the same name and address, with
  a new epoch and empty state, which joins through the seeds, as a restarted agent does.
- All randomness (the network's and every node's) derives from ``random.Random(seed)``, so the
  same seed gives the same run.

The measurements built on it (propagation, failure detection) are in `simwatch`.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.gossip.common import Addr
from agent.gossip.config import GossipTuning
from agent.gossip.crypto import Keyring
from agent.gossip.simwatch import Rate, Traffic

_DGRAM, _STREAM, _STREAM_FAIL, _TICK, _CALL = range(5)
_INF = math.inf
# Consecutive ticks at one instant after which the core is declared to be busy-looping (a
# deadline that never moves forward would otherwise hang the simulation silently).
_MAX_SPIN = 10_000


class NodeLike(Protocol):
    """The part of the `GossipNode` contract the simulator drives."""

    def receive(self, now: float, src: Addr, data: bytes) -> None: ...
    def receive_stream(self, now: float, src: Addr, data: bytes) -> None: ...
    def stream_failed(self, now: float, dest: Addr) -> None: ...
    def tick(self, now: float) -> None: ...
    def next_deadline(self) -> float: ...
    def take_outgoing(self) -> Sequence[Any]: ...
    def take_events(self) -> Sequence[Any]: ...
    def join(self, now: float, seeds: Iterable[Addr]) -> None: ...
    def leave(self, now: float) -> None: ...
    def members(self) -> Sequence[Any]: ...
    def join_network(self, now: float, network: str) -> None: ...
    def leave_network(self, now: float, network: str) -> None: ...
    def networks(self) -> set[str]: ...
    def put(self, now: float, network: str, key: str, value: bytes) -> None: ...
    def delete(self, now: float, network: str, key: str) -> None: ...
    def entries(self, network: str) -> dict[str, Any]: ...


# (name, addr, keyring, config, rng, now, epoch) -> node
NodeFactory = Callable[[str, Addr, Keyring, GossipTuning, random.Random, float, int], NodeLike]


def _real_node(
    name: str,
    addr: Addr,
    keyring: Keyring,
    config: GossipTuning,
    rng: random.Random,
    now: float,
    epoch: int,
) -> NodeLike:
    from agent.gossip.node import GossipNode  # late: tests may pass another factory

    # Strict: a bug in the core raises out of the run instead of being counted as a drop.
    return GossipNode(name, addr, keyring, config, rng, now, epoch=epoch, strict=True)


@dataclass(frozen=True)
class NetConfig:
    """The simulated network. The defaults model a switched LAN: 0.2 ms one way plus up to
    0.3 ms of jitter, no loss."""

    delay: float = 0.0002  # one-way datagram latency (s)
    jitter: float = 0.0003  # plus U(0, jitter) per packet
    loss: float = 0.0  # probability that a datagram is lost (streams are reliable)
    stream_delay: float = 0.0006  # extra one-way time of a stream frame (TCP handshake)
    bandwidth: float = 125e6  # bytes/s a stream frame is transferred at (1 Gbit/s)
    stream_fail_after: float = 1.0  # a stream to a cut path / dead host fails after this


class SimNode:
    """One running instance of a node. A revive makes a new SimNode, so packets and timers
    that belong to the previous instance are recognised as stale by identity."""

    __slots__ = (
        "addr",
        "alive",
        "bytes_in",
        "bytes_out",
        "generation",
        "name",
        "node",
        "pkts_in",
        "pkts_out",
        "spin",
        "started",
        "stream_bytes_out",
        "streams_out",
        "tick_at",
    )

    def __init__(self, name: str, addr: Addr, node: NodeLike, generation: int, now: float):
        self.name = name
        self.addr = addr
        self.node = node
        self.generation = generation
        self.started = now
        self.alive = True
        self.tick_at = _INF
        self.spin = 0
        self.pkts_out = 0
        self.bytes_out = 0
        self.pkts_in = 0
        self.bytes_in = 0
        self.streams_out = 0
        self.stream_bytes_out = 0


class Simulator:
    """N real gossip nodes on a simulated network. See the module docstring for the model."""

    def __init__(
        self,
        *,
        seed: int = 0,
        config: GossipTuning | None = None,
        net: NetConfig | None = None,
        keyring: Keyring | None = None,
        seed_count: int = 3,
        factory: NodeFactory | None = None,
        start: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config if config is not None else GossipTuning()
        self.net = net if net is not None else NetConfig()
        self.keyring = (
            keyring
            if keyring is not None
            else Keyring([random.Random(seed ^ 0x5EED).randbytes(32)])
        )
        self.seed_count = seed_count
        self.factory: NodeFactory = factory if factory is not None else _real_node
        self.now = start
        self._heap: list[tuple[float, int, int, Any, Any, Any]] = []
        self._seq = 0
        self._nodes: dict[str, SimNode] = {}  # current instance per name (alive or not)
        self._by_addr: dict[Addr, SimNode] = {}
        self._order: list[str] = []  # names in creation order (seeds are the first ones)
        self._groups: dict[str, int] | None = None
        self._watchers: list[Any] = []
        self._keyrings: dict[str, Keyring] = {}
        # Called as tap(now, sender, dest, data, stream) for every packet a node sends (before
        # loss): lets a test look inside packets without touching the core.
        self.taps: list[Callable[[float, str, Addr, bytes, bool], None]] = []
        self._digest = hashlib.blake2b(digest_size=16)
        self.trace_digest = True  # fold every delivery into `digest()` (cheap)
        self.counters: dict[str, int] = {
            "sent": 0,
            "delivered": 0,
            "lost": 0,
            "cut": 0,
            "to_dead": 0,
            "from_dead": 0,
            "unknown_dest": 0,
            "streams": 0,
            "streams_failed": 0,
            "ticks": 0,
        }

    # ------------------------------------------------------------------ nodes

    def add_node(self, name: str | None = None, keyring: Keyring | None = None) -> str:
        """Create (not join) a node. Addresses are 198.51.100.x, one port per 254 nodes.
        ``keyring`` overrides the cluster's (a node with a foreign key, say)."""
        index = len(self._order)
        name = name if name is not None else f"n{index:04d}"
        if name in self._nodes:
            raise ValueError(f"duplicate node {name}")
        addr = (f"198.51.100.{1 + index % 254}", 7946 + index // 254)
        self._order.append(name)
        if keyring is not None:
            self._keyrings[name] = keyring
        self._start_instance(name, addr, generation=0)
        return name

    def add_nodes(self, n: int) -> list[str]:
        return [self.add_node() for _ in range(n)]

    def _start_instance(self, name: str, addr: Addr, generation: int) -> SimNode:
        rng = random.Random(self.rng.getrandbits(64))
        # Epochs grow with each restart of a name, as a real agent's start time would.
        keyring = self._keyrings.get(name, self.keyring)
        node = self.factory(name, addr, keyring, self.config, rng, self.now, generation + 1)
        sn = SimNode(name, addr, node, generation, self.now)
        self._nodes[name] = sn
        self._by_addr[addr] = sn
        self._after(sn)
        return sn

    def node(self, name: str) -> NodeLike:
        return self._nodes[name].node

    def addr(self, name: str) -> Addr:
        return self._nodes[name].addr

    def name_of(self, addr: Addr) -> str | None:
        sn = self._by_addr.get(addr)
        return sn.name if sn is not None else None

    def names(self) -> list[str]:
        return list(self._order)

    def live(self) -> list[str]:
        return [n for n in self._order if self._nodes[n].alive]

    def is_alive(self, name: str) -> bool:
        return self._nodes[name].alive

    def seeds(self, exclude: str | None = None) -> list[Addr]:
        """The seed addresses a manager would hand out: the first ``seed_count`` nodes."""
        return [self._nodes[n].addr for n in self._order[: self.seed_count] if n != exclude]

    # ------------------------------------------------------------------ driving a node

    def call(self, name: str, fn: Callable[[NodeLike, float], Any]) -> Any:
        """Run ``fn(node, now)`` on a live node and flush what it produced."""
        sn = self._nodes[name]
        if not sn.alive:
            raise RuntimeError(f"{name} is not running")
        result = fn(sn.node, self.now)
        self._after(sn)
        return result

    def join(self, name: str, seeds: Iterable[Addr] | None = None) -> None:
        s = list(seeds) if seeds is not None else self.seeds(exclude=name)
        self.call(name, lambda node, now: node.join(now, s))

    def join_all(self, spread: float = 0.0) -> None:
        """Every node joins through the seeds, at random times within ``spread`` seconds."""
        for name in self._order:
            if spread <= 0:
                self.join(name)
            else:
                self.at(self.now + self.rng.uniform(0, spread), functools.partial(self.join, name))

    def join_network(self, name: str, network: str) -> None:
        self.call(name, lambda node, now: node.join_network(now, network))

    def leave_network(self, name: str, network: str) -> None:
        self.call(name, lambda node, now: node.leave_network(now, network))

    def put(self, name: str, network: str, key: str, value: bytes) -> None:
        self.call(name, lambda node, now: node.put(now, network, key, value))

    def delete(self, name: str, network: str, key: str) -> None:
        self.call(name, lambda node, now: node.delete(now, network, key))

    def at(self, when: float, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` at simulated time ``when`` (scheduled actions: joins, faults)."""
        self._push(max(when, self.now), _CALL, fn, None, None)

    # ------------------------------------------------------------------ faults

    def kill(self, name: str) -> None:
        """SIGKILL: the node stops at once; nothing more is delivered to or from it."""
        sn = self._nodes[name]
        sn.alive = False
        sn.tick_at = _INF

    def leave(self, name: str, linger: float = 1.0) -> None:
        """Graceful leave: the node announces it, keeps running ``linger`` seconds so the
        announcement spreads (as an agent flushing before exit), then stops."""
        self.call(name, lambda node, now: node.leave(now))
        sn = self._nodes[name]
        self.at(self.now + linger, lambda: self._stop(sn))

    def _stop(self, sn: SimNode) -> None:
        if self._nodes.get(sn.name) is sn:
            self.kill(sn.name)

    def revive(self, name: str, join: bool = True) -> None:
        """Restart a killed node: a fresh instance (new epoch, empty state) at the same
        address, which joins through the seeds."""
        old = self._nodes[name]
        if old.alive:
            raise RuntimeError(f"{name} is still running")
        self._start_instance(name, old.addr, old.generation + 1)
        if join:
            self.join(name)

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the network into groups; nodes in no group form one more group together."""
        g: dict[str, int] = {}
        for i, names in enumerate(groups):
            for n in names:
                g[n] = i
        self._groups = g

    def heal(self) -> None:
        self._groups = None

    def linked(self, a: str, b: str) -> bool:
        g = self._groups
        return g is None or g.get(a, -1) == g.get(b, -1)

    # ------------------------------------------------------------------ the event loop

    def _push(self, t: float, kind: int, a: Any, b: Any, c: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b, c))

    def _after(self, sn: SimNode) -> None:
        """Drain a node after an input: send its packets, dispatch its events, reschedule."""
        node = sn.node
        outs = node.take_outgoing()
        if outs:
            self._send(sn, outs)
        evs = node.take_events()
        if evs and self._watchers:
            now = self.now
            name = sn.name
            for ev in evs:
                for w in self._watchers:
                    w.feed(now, name, ev)
        if not sn.alive:
            return
        d = node.next_deadline()
        if d < sn.tick_at:
            if d < self.now:
                d = self.now
            sn.tick_at = d
            self._seq += 1
            heapq.heappush(self._heap, (d, self._seq, _TICK, sn, None, None))

    def _send(self, sn: SimNode, outs: Sequence[Any]) -> None:
        net = self.net
        rnd = self.rng.random
        push = heapq.heappush
        heap = self._heap
        now = self.now
        c = self.counters
        taps = self.taps
        for o in outs:
            data = o.data
            for tap in taps:
                tap(now, sn.name, o.dest, data, o.stream)
            c["sent"] += 1
            self._seq += 1
            if o.stream:
                sn.streams_out += 1
                sn.stream_bytes_out += len(data)
                c["streams"] += 1
                t = now + net.delay + net.stream_delay + len(data) / net.bandwidth
                t += rnd() * net.jitter
                push(heap, (t, self._seq, _STREAM, o.dest, sn, data))
            else:
                sn.pkts_out += 1
                sn.bytes_out += len(data)
                if net.loss > 0 and rnd() < net.loss:
                    c["lost"] += 1
                    continue
                t = now + net.delay + rnd() * net.jitter
                push(heap, (t, self._seq, _DGRAM, o.dest, sn, data))

    def _deliverable(self, src: SimNode, dest: SimNode | None) -> bool:
        c = self.counters
        if dest is None:
            c["unknown_dest"] += 1
            return False
        if not src.alive:
            c["from_dead"] += 1
            return False
        if not dest.alive:
            c["to_dead"] += 1
            return False
        g = self._groups
        if g is not None and g.get(src.name, -1) != g.get(dest.name, -1):
            c["cut"] += 1
            return False
        return True

    def run_until(self, t_end: float) -> None:
        """Process every event up to and including ``t_end``; then ``now == t_end``."""
        heap = self._heap
        pop = heapq.heappop
        by_addr = self._by_addr
        c = self.counters
        digest = self._digest.update if self.trace_digest else None
        while heap and heap[0][0] <= t_end:
            t, _seq, kind, a, b, data = pop(heap)
            self.now = t
            if kind == _TICK:
                sn: SimNode = a
                if not sn.alive or t != sn.tick_at:
                    continue  # superseded by an earlier deadline, or the node is gone
                sn.tick_at = _INF
                c["ticks"] += 1
                sn.node.tick(t)
                self._after(sn)
                if sn.tick_at <= t:
                    sn.spin += 1
                    if sn.spin > _MAX_SPIN:
                        raise RuntimeError(f"{sn.name}: next_deadline() does not advance")
                else:
                    sn.spin = 0
            elif kind in (_DGRAM, _STREAM):
                dest = by_addr.get(a)
                if not self._deliverable(b, dest):
                    if kind == _STREAM and b.alive:
                        c["streams_failed"] += 1
                        self._push(t + self.net.stream_fail_after, _STREAM_FAIL, b, a, None)
                    continue
                assert dest is not None
                c["delivered"] += 1
                dest.pkts_in += 1
                dest.bytes_in += len(data)
                if digest is not None:
                    digest(f"{t!r}|{kind}|{b.name}>{dest.name}|{len(data)};".encode())
                if kind == _DGRAM:
                    dest.node.receive(t, b.addr, data)
                else:
                    dest.node.receive_stream(t, b.addr, data)
                self._after(dest)
            elif kind == _STREAM_FAIL:
                src = a
                if src.alive:
                    src.node.stream_failed(t, b)
                    self._after(src)
            else:  # _CALL
                a()
        if t_end > self.now:
            self.now = t_end

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until_true(
        self, pred: Callable[[], bool], timeout: float, step: float = 0.01
    ) -> float | None:
        """Run until ``pred()`` holds (checked every ``step`` s); the elapsed time, or None
        after ``timeout`` seconds."""
        start = self.now
        end = start + timeout
        while True:
            if pred():
                return self.now - start
            if self.now >= end:
                return None
            self.run_until(min(end, self.now + step))

    def digest(self) -> str:
        """A hash of every delivery so far (time, kind, endpoints, size): equal digests mean
        two runs did the same thing."""
        return self._digest.hexdigest()

    # ------------------------------------------------------------------ views

    def alive_view(self, observer: str) -> set[str]:
        """Names the observer holds alive (itself included)."""
        return {m.name for m in self.node(observer).members() if m.state == "alive"}

    def member_state(self, observer: str, name: str) -> str | None:
        for m in self.node(observer).members():
            if m.name == name:
                return str(m.state)
        return None

    def converged(self, names: Sequence[str] | None = None) -> bool:
        """Every node of ``names`` (default: the live ones) holds exactly ``names`` alive."""
        group = set(names if names is not None else self.live())
        return all(self.alive_view(obs) | {obs} == group for obs in group)

    def wait_converged(self, timeout: float, step: float = 0.1) -> float | None:
        """Run until membership has converged. Checks the least converged node first so a
        poll usually costs one node's view, not all of them."""
        pending = list(self.live())

        def done() -> bool:
            live = set(self.live())
            while pending:
                obs = pending[-1]
                if obs not in live:
                    pending.pop()
                    continue
                if self.alive_view(obs) | {obs} != live:
                    return False
                pending.pop()
            return self.converged()

        return self.run_until_true(done, timeout, step)

    def visible(self, observer: str, network: str, key: str) -> Any | None:
        """The entry ``observer`` shows for ``network/key`` (None if not visible)."""
        sn = self._nodes[observer]
        if network not in sn.node.networks():
            return None
        return sn.node.entries(network).get(key)

    def participants(self, network: str) -> list[str]:
        return [n for n in self.live() if network in self._nodes[n].node.networks()]

    # ------------------------------------------------------------------ measurements

    def watch(self, w: Any) -> Any:
        self._watchers.append(w)
        return w

    def unwatch(self, w: Any) -> None:
        self._watchers.remove(w)

    def traffic(self) -> dict[str, Traffic]:
        """Cumulative traffic sent by the current instance of every node."""
        return {
            n: Traffic(sn.pkts_out, sn.bytes_out, sn.streams_out, sn.stream_bytes_out)
            for n, sn in self._nodes.items()
        }

    def rates(
        self, before: dict[str, Traffic], seconds: float, udp_overhead: int = 28
    ) -> dict[str, Rate]:
        """Per live node, what it sent per second since the snapshot ``before``. Datagram
        bytes include ``udp_overhead`` per packet (IPv4 + UDP headers): wire bytes."""
        zero = Traffic(0, 0, 0, 0)
        out: dict[str, Rate] = {}
        for n in self.live():
            b = before.get(n, zero)
            sn = self._nodes[n]
            dp = sn.pkts_out - b.packets
            dgram = sn.bytes_out - b.bytes + udp_overhead * dp
            stream = sn.stream_bytes_out - b.stream_bytes
            out[n] = Rate(dp / seconds, (dgram + stream) / seconds, stream / seconds)
        return out
