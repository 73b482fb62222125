"""Real sockets around the sans-IO `GossipNode`: one UDP socket and one TCP listener, both on
the host's underlay address and the gossip port.

Datagrams carry probes and piggybacked broadcasts. Stream frames (push-pull: a full state
exchange that can outgrow a datagram) go over TCP, one frame per connection, each preceded by
the sender's gossip port so the receiver can name the sender by the address it listens on
(the connection's own source port is ephemeral). That port is only a routing hint: who sent
a frame is proven by the sealed payload, which the core checks.

The transport owns no protocol state: it feeds the core, runs its timers at `next_deadline()`
and writes whatever it says to write. Every feed is followed by a flush, so a reply leaves in
the same event-loop turn as the packet that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

from agent.gossip.node import GossipNode

log = logging.getLogger(__name__)

Addr = tuple[str, int]
# Frames larger than this are refused: a full state of 100k endpoints is about 10 MB.
MAX_FRAME = 64 << 20
_HEADER = struct.Struct("!HI")  # sender's gossip port, frame length
STREAM_TIMEOUT = 5.0
# Inbound frames being read at once; more are refused before anything is buffered, so that
# nobody can make the agent hold many large unauthenticated frames.
MAX_INBOUND_STREAMS = 8


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: GossipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.owner.feed(lambda now: self.owner.node.receive(now, (addr[0], addr[1]), data))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (a peer's port unreachable) surface here on Linux; the protocol notices
        # a dead peer by its missing acks, so this is only worth a debug line.
        log.debug("gossip socket: %s", exc)


class GossipTransport:
    def __init__(
        self,
        node: GossipNode,
        bind: Addr,
        on_events: Callable[[list[object]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.bind = bind
        self.on_events = on_events
        self.clock = clock
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._streams: set[asyncio.Task[None]] = set()
        self._inbound = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=self.bind, reuse_port=False
        )
        try:
            self._server = await asyncio.start_server(
                self._accept, host=self.bind[0], port=self.bind[1], reuse_address=True
            )
        except OSError:
            self._udp.close()
            self._udp = None
            raise
        self._timer = asyncio.create_task(self._timers())
        self.flush()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        for t in list(self._streams):
            t.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
            await asyncio.sleep(0)  # the socket closes on the next loop turn: let it, so the
            # port can be bound again at once

    # ------------------------------------------------------------------ core driving

    def feed(self, step: Callable[[float], None]) -> None:
        """Run one input through the core and send what it produced. Never raises: a bug in
        handling one packet must not take the agent's gossip down."""
        try:
            step(self.clock())
        except Exception:
            log.exception("gossip core failed on an input")
        self.flush()

    def flush(self) -> None:
        for out in self.node.take_outgoing():
            if out.stream:
                self._spawn(self._send_stream(out.dest, out.data))
            elif self._udp is not None:
                try:
                    self._udp.sendto(out.data, out.dest)
                except OSError as e:  # no route (a host whose link is down): like a loss
                    log.debug("gossip send to %s: %s", out.dest, e)
        events = self.node.take_events()
        if events and self.on_events is not None:
            self.on_events(list(events))
        self._wake.set()  # the deadline may have moved

    async def _timers(self) -> None:
        while True:
            self._wake.clear()
            delay = max(0.0, self.node.next_deadline() - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(delay, 1.0))
            if self.clock() >= self.node.next_deadline():
                self.feed(self.node.tick)

    # ------------------------------------------------------------------ streams

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    async def _send_stream(self, dest: Addr, data: bytes) -> None:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(dest[0], dest[1], local_addr=(self.bind[0], 0)),
                STREAM_TIMEOUT,
            )
            try:
                writer.write(_HEADER.pack(self.bind[1], len(data)) + data)
                await asyncio.wait_for(writer.drain(), STREAM_TIMEOUT)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        except (OSError, TimeoutError) as e:
            log.debug("gossip stream to %s failed: %s", dest, e)
            self.feed(lambda now: self.node.stream_failed(now, dest))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._inbound >= MAX_INBOUND_STREAMS:
            log.debug("gossip stream from %s refused: %d frames being read", peer, self._inbound)
            writer.close()
            return
        self._inbound += 1
        try:
            head = await asyncio.wait_for(reader.readexactly(_HEADER.size), STREAM_TIMEOUT)
            port, length = _HEADER.unpack(head)
            if length > MAX_FRAME or port == 0:
                log.debug("gossip stream from %s refused: frame of %d bytes", peer, length)
                return
            data = await asyncio.wait_for(reader.readexactly(length), STREAM_TIMEOUT * 4)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            log.debug("gossip stream from %s broken: %s", peer, e)
            return
        finally:
            self._inbound -= 1
            writer.close()
        src = (str(peer[0]), int(port))
        self.feed(lambda now: self.node.receive_stream(now, src, data))
