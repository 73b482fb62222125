"""What a node sends: sealed datagrams and stream frames, queued for the driver.

Every part of the node (probing, dissemination, sync) sends through one `Outbox`, which owns
the things all sends share: the keyring that seals them, the per-node sequence number the
receivers' replay windows check, the header bytes, the packet size budget and the counters.
Nothing leaves the core by itself: the driver drains `take()` after each input.
"""

from __future__ import annotations

from agent.gossip import crypto, wire
from agent.gossip.common import Addr
from agent.gossip.config import GossipTuning
from agent.gossip.crypto import Keyring
from agent.gossip.events import Outgoing, Stats


class Outbox:
    __slots__ = (
        "_config",
        "_dest_cache",
        "_out",
        "_prefix",
        "_seq",
        "_stats",
        "epoch",
        "keyring",
        "name",
    )

    def __init__(
        self, name: str, epoch: int, keyring: Keyring, config: GossipTuning, stats: Stats
    ) -> None:
        self.name = name
        self.epoch = epoch
        self.keyring = keyring
        self._config = config
        self._stats = stats
        self._seq = 0  # one sequence for datagrams and streams: the replay window is per sender
        self._out: list[Outgoing] = []
        self._prefix = wire.header_prefix(wire.KIND_DATAGRAM, name, epoch)
        self._dest_cache: dict[Addr, bytes] = {}

    def take(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def _dest(self, addr: Addr) -> bytes:
        d = self._dest_cache.get(addr)
        if d is None:
            if len(self._dest_cache) > 4096:
                self._dest_cache.clear()
            d = self._dest_cache[addr] = wire.header_dest(addr)
        return d

    def budget(self, addr: Addr) -> int:
        """Bytes of messages that fit into one datagram to ``addr``."""
        return (
            self._config.max_packet
            - crypto.SEAL_OVERHEAD
            - len(self._prefix)
            - 8
            - len(self._dest(addr))
        )

    def send(self, dest: Addr, msgs: list[bytes]) -> None:
        """One datagram carrying ``msgs`` (the caller keeps them within `budget`)."""
        self._seq += 1
        plain = b"".join([self._prefix, wire.encode_seq(self._seq), self._dest(dest), *msgs])
        data = crypto.seal(self.keyring, plain)
        self._out.append(Outgoing(dest, data, False))
        self._stats.packets_out += 1
        self._stats.bytes_out += len(data)

    def send_stream(self, dest: Addr, body: bytes) -> None:
        """One stream frame (a push-pull body). A frame over max_stream is counted as
        dropped (too_large), not sent: our own state outgrew the limit the peer enforces."""
        self._seq += 1
        plain = wire.stream_frame(self.name, self.epoch, self._seq, dest, body)
        data = crypto.seal(self.keyring, plain)
        if len(data) > self._config.max_stream:
            self._stats.drop("too_large")
            return
        self._out.append(Outgoing(dest, data, True))
        self._stats.streams_out += 1
        self._stats.stream_bytes_out += len(data)
