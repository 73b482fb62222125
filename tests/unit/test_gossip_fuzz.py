"""Fuzzing the receive path with a fixed budget: random and mutated packets never raise, and
every packet that is bad is counted as dropped, exactly once.

The corpus is real traffic (datagrams and push-pull frames) captured from a small cluster.
Mutations: random bytes, truncations, bit flips, the right plaintext under a wrong key, random
plaintext under the right key, and replays of packets already accepted. Each of these must be
dropped. Plaintext mutated under the right key can still be a valid packet (a changed sequence
number, say), so those are only required not to raise.

The nodes are `strict` (see `Net`): any exception other than a decoding or authentication
error, anywhere on the receive path, is a bug and raises out of the test instead of being
counted as a drop; the decoders themselves may raise `DecodeError` and nothing else.
"""

from __future__ import annotations

import contextlib
import random

from agent.gossip import DecodeError, Keyring, crypto, wire
from tests.unit.test_gossip_node import Net

BUDGET = 20_000
WRONG = Keyring([bytes(range(7, 39))])
# Every reason a bad input may be dropped for; anything else would be a new, unexplained path.
KNOWN_DROPS = {"auth", "malformed", "replay", "misdirected", "loop", "too_large"}


def capture() -> tuple[Net, list[tuple[bytes, bool]]]:
    """A 3-node cluster with traffic of every kind; the packets n1 received (and accepted)."""
    net = Net(seed=99)
    net.cluster(3)
    corpus: list[tuple[bytes, bool]] = []
    n1 = net.nodes["n1"]
    recv, recv_stream = n1.receive, n1.receive_stream

    def spy(now: float, src: wire.Addr, data: bytes) -> None:
        corpus.append((data, False))
        recv(now, src, data)

    def spy_stream(now: float, src: wire.Addr, data: bytes) -> None:
        corpus.append((data, True))
        recv_stream(now, src, data)

    n1.receive = spy  # type: ignore[method-assign]
    n1.receive_stream = spy_stream  # type: ignore[method-assign]
    net.call("n0", lambda n: n.put(net.now, "net", "k", b"value"))
    net.call("n2", lambda n: n.put(net.now, "net", "j", b"other"))
    net.run(1.0)
    net.kill("n2")  # suspicions, confirmations, a death
    net.run(8.0)
    net.call("n0", lambda n: n._sync.send_push_pull(n1.addr, False, False, {"net"}))
    net.run(1.0)
    n1.receive, n1.receive_stream = recv, recv_stream  # type: ignore[method-assign]
    assert any(s for _, s in corpus) and len(corpus) > 20
    assert n1.stats.total_dropped() == 0  # all of it was accepted
    return net, corpus


def mutate(rng: random.Random, data: bytes, keyring: Keyring) -> bytes:
    """A packet that must be dropped, made from a valid one."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 1500))
    if kind == 1:
        return data[: rng.randrange(len(data))]
    if kind == 2:
        bad = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        return bytes(bad)
    if kind == 3:
        return crypto.seal(WRONG, crypto.open(keyring, data))
    if kind == 4:
        return crypto.seal(keyring, rng.randbytes(rng.randrange(0, 300)))
    return data  # a replay: the target already accepted this exact packet


def mutate_plaintext(rng: random.Random, data: bytes, keyring: Keyring) -> bytes:
    """A validly sealed packet with a damaged plaintext (what a buggy or hostile key holder
    could send): it may well be accepted, but it must never make the node raise."""
    plain = bytearray(crypto.open(keyring, data))
    for _ in range(rng.randint(1, 3)):
        if not plain:
            break
        op = rng.randrange(3)
        i = rng.randrange(len(plain))
        if op == 0:
            plain[i] = rng.randrange(256)
        elif op == 1:
            del plain[i:]
        else:
            plain[i:i] = rng.randbytes(rng.randint(1, 8))
    return crypto.seal(keyring, bytes(plain))


def feed(net: Net, pkt: bytes, stream: bool) -> None:
    node = net.nodes["n1"]
    if stream:
        node.receive_stream(net.now, net.nodes["n0"].addr, pkt)
    else:
        node.receive(net.now, net.nodes["n0"].addr, pkt)
    node.take_outgoing()
    node.take_events()


def test_every_bad_packet_is_dropped_and_counted_once() -> None:
    net, corpus = capture()
    node = net.nodes["n1"]
    rng = random.Random(1234)
    for i in range(BUDGET):
        data, stream = corpus[rng.randrange(len(corpus))]
        pkt = mutate(rng, data, net.keyring)
        feed(net, pkt, stream)
        assert node.stats.total_dropped() == i + 1, (pkt[:40], node.stats.dropped)
    got = node.stats.dropped
    assert node.stats.bugs == 0 and {"auth", "malformed", "replay"} <= set(got), got
    assert set(got) <= KNOWN_DROPS, got
    # None of it disturbed the node: the cluster (minus the killed n2) stays as it was.
    net.run(5.0)
    assert {m.name for m in node.members() if m.state == "alive"} == {"n0", "n1"}
    assert net.nodes["n1"].entries("net")["k"].value == b"value"


def test_damaged_plaintext_under_the_right_key_never_raises() -> None:
    net, corpus = capture()
    node = net.nodes["n1"]
    rng = random.Random(4321)
    for _ in range(BUDGET // 2):
        data, stream = corpus[rng.randrange(len(corpus))]
        feed(net, mutate_plaintext(rng, data, net.keyring), stream)
    assert node.stats.bugs == 0 and set(node.stats.dropped) <= KNOWN_DROPS, node.stats.dropped
    assert node.stats.dropped.get("malformed", 0) > 0
    net.run(5.0)  # and it keeps running
    assert node.next_deadline() < float("inf")


def test_decoders_raise_only_decode_error() -> None:
    rng = random.Random(99)
    net, corpus = capture()
    plains = [crypto.open(net.keyring, d) for d, _ in corpus]
    ok = 0
    for i in range(BUDGET // 2):
        if i % 4 == 0:
            buf = rng.randbytes(rng.randrange(0, 200))
        else:
            work = bytearray(plains[rng.randrange(len(plains))])
            for _ in range(rng.randint(1, 4)):
                if not work:
                    break
                j = rng.randrange(len(work))
                if rng.random() < 0.5:
                    work[j] = rng.randrange(256)
                else:
                    del work[j : j + rng.randint(1, 9)]
            buf = bytes(work)
        for decode in (wire.decode_datagram, wire.decode_stream):
            try:
                decode(buf)
                ok += 1
            except DecodeError:
                pass
        with contextlib.suppress(DecodeError):
            wire.decode_push_pull(buf)
        try:
            for raw in wire.split_messages(buf, 0):
                wire.decode_message(raw)
        except DecodeError:
            pass
    assert ok > 0  # some mutations are still valid packets: the fuzzer reaches deep
