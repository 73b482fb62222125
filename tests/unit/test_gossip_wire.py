"""The binary encoding: every message round-trips, and every malformed input is refused
with DecodeError (and nothing else)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.gossip import wire
from agent.gossip.common import DecodeError

names = st.text(min_size=1, max_size=40).filter(lambda s: 0 < len(s.encode()) <= 255)
addrs = st.tuples(names, st.integers(0, 65535))
u32 = st.integers(0, wire.MAX_U32)
u64 = st.integers(0, wire.MAX_U64)

messages = st.one_of(
    st.builds(wire.Ping, u32, names, u64),
    st.builds(wire.PingReq, u32, names, addrs),
    st.builds(wire.Ack, u32),
    st.builds(wire.Alive, names, addrs, u32),
    st.builds(wire.Suspect, names, u32, names),
    st.builds(wire.Dead, names, u32, names),
    st.builds(wire.NetMsg, names, names, u64, st.booleans()),
    st.builds(wire.EntryMsg, names, names, names, u64, st.booleans(), st.binary(max_size=300)),
)
push_pulls = st.builds(
    wire.PushPull,
    st.booleans(),
    st.booleans(),
    st.lists(
        st.builds(wire.MemberRecord, names, addrs, st.sampled_from(sorted(wire.STATE_CODES)), u32),
        max_size=5,
    ),
    st.lists(st.builds(wire.NetMsg, names, names, u64, st.booleans()), max_size=5),
    st.lists(
        st.builds(wire.EntryMsg, names, names, names, u64, st.booleans(), st.binary(max_size=50)),
        max_size=5,
    ),
)


@given(messages)
def test_message_roundtrip(msg: wire.Message) -> None:
    raw = wire.encode_message(msg)
    assert wire.decode_message(raw) == msg
    assert raw[0] in range(1, 9) and int.from_bytes(raw[1:3], "big") == len(raw) - 3


@given(st.lists(messages, max_size=6), names, u64, u64, addrs)
def test_datagram_roundtrip(
    msgs: list[wire.Message], sender: str, epoch: int, seq: int, dest: wire.Addr
) -> None:
    raws = [wire.encode_message(m) for m in msgs]
    data = wire.encode_datagram(sender, epoch, seq, dest, raws)
    header, decoded = wire.decode_datagram(data)
    assert header == wire.Header(wire.KIND_DATAGRAM, sender, epoch, seq, dest)
    assert decoded == msgs
    _, pos = wire.decode_header(data)
    assert wire.split_messages(data, pos) == raws


@given(push_pulls, names, u64, u64, addrs)
@settings(max_examples=60)
def test_stream_roundtrip(
    pp: wire.PushPull, sender: str, epoch: int, seq: int, dest: wire.Addr
) -> None:
    data = wire.encode_stream(sender, epoch, seq, dest, pp)
    header, got = wire.decode_stream(data)
    assert header.kind == wire.KIND_STREAM and header.sender == sender
    assert got == pp


def test_kind_is_checked() -> None:
    dgram = wire.encode_datagram("a", 1, 1, ("h", 1), [])
    stream = wire.encode_stream("a", 1, 1, ("h", 1), wire.PushPull(False, False, [], [], []))
    with pytest.raises(DecodeError):
        wire.decode_stream(dgram)
    with pytest.raises(DecodeError):
        wire.decode_datagram(stream)


@given(messages)
@settings(max_examples=50)
def test_every_truncation_of_a_message_is_refused(msg: wire.Message) -> None:
    raw = wire.encode_message(msg)
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            wire.decode_message(raw[:cut])
    # A frame whose length claims less or more than it holds is refused too.
    with pytest.raises(DecodeError):
        wire.decode_message(raw + b"\x00")


def test_every_truncation_of_a_stream_is_refused() -> None:
    pp = wire.PushPull(
        True,
        False,
        [wire.MemberRecord("n1", ("10.0.0.1", 7946), "suspect", 3)],
        [wire.NetMsg("n1", "net", 5, True)],
        [wire.EntryMsg("net", "k", "n1", 9, False, b"value")],
    )
    data = wire.encode_stream("n1", 2, 3, ("10.0.0.2", 7946), pp)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            wire.decode_stream(data[:cut])
    with pytest.raises(DecodeError):
        wire.decode_stream(data + b"x")


def _frame(t: int, body: bytes) -> bytes:
    return bytes([t]) + len(body).to_bytes(2, "big") + body


@pytest.mark.parametrize(
    "raw",
    [
        _frame(99, b""),  # unknown type
        _frame(wire.T_ACK, b"\x00\x00\x00"),  # short ack
        _frame(wire.T_PING, b"\x00\x00\x00\x01" + b"\x00"),  # empty name
        _frame(wire.T_PING, b"\x00\x00\x00\x01" + b"\x02\xff\xfe"),  # bad UTF-8
        _frame(wire.T_NET, b"\x00" * 8 + b"\x02" + b"\x01a\x01b"),  # flag byte 2
        _frame(wire.T_ENTRY, b"\x00" * 8 + b"\x00" + b"\x01a\x01b\x01c" + b"\x00\x05ab"),
        b"\x03\x00",  # frame header cut
    ],
    ids=["type", "ack", "empty", "utf8", "flag", "value", "frame"],
)
def test_malformed_messages(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        wire.decode_message(raw)


def test_counts_are_bounded_before_allocating() -> None:
    header = wire.header_prefix(wire.KIND_STREAM, "a", 1) + (1).to_bytes(8, "big")
    header += wire.header_dest(("h", 1))
    huge = header + bytes([0]) + (2**32 - 1).to_bytes(4, "big") + bytes(8)
    with pytest.raises(DecodeError, match="counts exceed"):
        wire.decode_stream(huge)
    with pytest.raises(DecodeError):
        wire.decode_stream(header + bytes([8]) + bytes(12))  # unknown flag bit


def test_compressed_push_pull() -> None:
    pp = wire.PushPull(
        False,
        True,
        [wire.MemberRecord(f"node-{i}", ("10.0.0.1", 7946), "alive", i) for i in range(200)],
        [wire.NetMsg(f"node-{i}", "net", i, True) for i in range(200)],
        [wire.EntryMsg("net", "k", "node-1", 3, False, b"v" * 100)],
    )
    plain, packed = wire.encode_push_pull(pp), wire.encode_push_pull(pp, compress=True)
    assert len(packed) * 3 < len(plain) and packed[0] & wire.F_ZLIB
    assert wire.decode_push_pull(packed) == wire.decode_push_pull(plain) == pp
    # A decompression bomb is refused before it inflates past the limit.
    with pytest.raises(DecodeError, match="too large"):
        wire.decode_push_pull(packed, max_size=1000)
    for bad in (packed[:-1], packed + b"x", packed[:1] + b"not zlib at all"):
        with pytest.raises(DecodeError):
            wire.decode_push_pull(bad)


def test_split_messages_checks_framing() -> None:
    ok = wire.encode_ack(1)
    assert wire.split_messages(ok + ok, 0) == [ok, ok]
    with pytest.raises(DecodeError):
        wire.split_messages(ok + ok[:-1], 0)
    with pytest.raises(DecodeError):
        wire.split_messages(ok + b"\x03", 0)


def test_header_errors() -> None:
    good = wire.encode_datagram("a", 1, 1, ("h", 1), [])
    for bad in (b"", b"\x02" + good[1:], good[:1] + b"\x09" + good[2:], good[:10]):
        with pytest.raises(DecodeError):
            wire.decode_header(bad)


def test_encoder_limits() -> None:
    with pytest.raises(ValueError):
        wire.str8("")
    with pytest.raises(ValueError):
        wire.str8("é" * 128)  # 256 bytes
    assert wire.str8("é" * 127)[0] == 254
    with pytest.raises(ValueError):
        wire.encode_entry("n", "k", "o", 1, False, bytes(70_000))
