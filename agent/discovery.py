"""The agent's use of gossip: tell the other hosts about local endpoints, learn theirs.

`Discovery` owns this host's `GossipNode` and its transport. The daemon hands it, on every
pass, the networks this host has sandboxes on and the endpoint records of its running tasks;
it answers with the endpoints of other hosts. It writes only differences into the gossip
tables, so a pass that changes nothing sends nothing.

The keyring and seed peers come from the manager (a `GossipConfig` assignment item, the proto
message; this host's timing knobs are the separate `GossipTuning`). The
members this host has seen are kept on disk so that an agent restarted while every manager is
down can find its peers again by itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from agent.endpoints import BadRecord, EndpointRecord, remotes
from agent.gossip import Addr, GossipNode, GossipTuning, Keyring
from agent.gossip.transport import GossipTransport
from agent.model import RemoteEndpoint
from osutil.files import atomic_write
from osutil.hostport import join_hostport, split_hostport
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_GOSSIP_PORT = 7946
PEERS_FILE = "gossip-peers.json"
STATUS_FILE = "gossip-status.json"
# An unchanged status is rewritten this often, only so that its updated_ms keeps telling a
# reader that the agent is alive (a changed one is written at once).
STATUS_REFRESH = 30.0


def peer_addrs(texts: Iterable[str], what: str) -> list[Addr]:
    """The HOST:PORT addresses of ``texts`` that parse; the others are logged and skipped (a
    bad seed from the manager or a damaged peers file must not stop gossip)."""
    out: list[Addr] = []
    for text in texts:
        try:
            out.append(split_hostport(text))
        except ValueError as e:
            log.warning("gossip %s ignored: %s", what, e)
    return out


def parse_bool(text: str) -> bool:
    value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(
        text.strip().lower()
    )
    if value is None:
        raise ValueError(f"{text!r} is not a boolean (true/false)")
    return value


def tuning_from_options(options: Mapping[str, str]) -> GossipTuning:
    """A GossipTuning from NAME=VALUE options (`--gossip-opt probe_interval=0.5`)."""
    known = {f.name: f for f in fields(GossipTuning)}
    values: dict[str, Any] = {}
    for name, text in options.items():
        f = known.get(name)
        if f is None:
            raise ValueError(f"unknown gossip option {name!r}; known: {', '.join(sorted(known))}")
        kind = type(getattr(GossipTuning(), name))
        try:
            values[name] = parse_bool(text) if kind is bool else kind(text)
        except ValueError as e:
            raise ValueError(f"gossip option {name}: {e}") from e
    return GossipTuning(**values)


class Discovery:
    def __init__(
        self,
        vtep: str,
        port: int,
        state_dir: Path,
        config: GossipTuning | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.vtep = vtep
        self.port = port
        self.state_dir = state_dir
        self.config = config or GossipTuning()
        self.on_change = on_change
        self.node: GossipNode | None = None
        self.transport: GossipTransport | None = None
        self._keys: tuple[bytes, ...] = ()
        self._seeds: tuple[str, ...] = ()  # as the manager wrote them
        # What this host has written to the tables: (network, task ID) -> encoded record.
        self._announced: dict[tuple[str, str], bytes] = {}
        self._decoded: dict[bytes, EndpointRecord] = {}
        self._saved_peers = b""
        # The last status written (serialized without updated_ms) and when (monotonic).
        self._saved_status: tuple[bytes, float] | None = None
        # The last sync's wall-clock time, converted once per sync: converting it on every
        # call would jitter by a millisecond and make an idle status look changed.
        self._last_sync_ms: tuple[float, int] | None = None
        self.bad_records = 0

    @property
    def running(self) -> bool:
        return self.node is not None

    @property
    def synced(self) -> bool:
        """Whether this host's view of the records is whole: gossip runs and has exchanged full
        state with a peer at least once, or has no peer to ask (a one-host cluster)."""
        node = self.node
        if node is None:
            return False
        if node.stats.last_sync is not None:
            return True
        return not self._seeds and all(m.name == node.name for m in node.members())

    async def configure(self, node_id: str, cfg: dpb.GossipConfig | None) -> None:
        """Start gossip once the node has an ID and a keyring; follow key and seed changes."""
        if cfg is None or not cfg.keys or not node_id:
            return
        keys = tuple(cfg.keys)
        if self.node is not None and self.node.name != node_id:
            # The node was removed and registered again under a new ID: a new member.
            await self.close()
        try:
            keyring = Keyring(list(keys))
        except ValueError as e:
            log.error("gossip keyring from the manager refused: %s", e)
            return
        seeds = tuple(p.addr for p in cfg.seeds)
        if self.node is None:
            node = GossipNode(
                node_id, (self.vtep, self.port), keyring, self.config, random.Random(),
                time.monotonic(),
            )  # fmt: skip
            transport = GossipTransport(node, (self.vtep, self.port), on_events=self._on_events)
            try:
                await transport.start()
            except OSError as e:  # the address is not up yet, or the port is taken: next pass
                await transport.close()
                log.warning("gossip cannot listen on %s:%d yet: %s", self.vtep, self.port, e)
                return
            self.node, self.transport = node, transport
            self._keys, self._seeds = keys, ()
            log.info("gossip started on %s:%d as %s", self.vtep, self.port, node_id)
            known = self._load_peers()
            if known:
                self._join(known)
        elif keys != self._keys:
            self.node.set_keyring(keyring)
            self._keys = keys
            log.info("gossip keyring updated (%d keys)", len(keys))
        if seeds != self._seeds:  # parsed (and a bad one reported) once per change
            self._seeds = seeds
            self._join(peer_addrs(seeds, "seed from the manager"))

    def _join(self, seeds: Iterable[Addr]) -> None:
        own = (self.vtep, self.port)
        peers = [s for s in seeds if s != own]
        if peers and self.node is not None and self.transport is not None:
            node = self.node
            self.transport.feed(lambda now: node.join(now, peers))

    def _on_events(self, events: list[object]) -> None:
        if events and self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------------ tables

    def sync(
        self, networks: Iterable[str], records: Mapping[tuple[str, str], EndpointRecord]
    ) -> None:
        """Take part in exactly `networks` and announce exactly `records` (keyed by
        (network ID, task ID)); only the differences go into the tables."""
        node, transport = self.node, self.transport
        if node is None or transport is None:
            return
        wanted = set(networks) | {net for net, _ in records}
        encoded = {k: r.encode() for k, r in records.items()}

        def step(now: float) -> None:
            have = node.networks()
            for net in sorted(wanted - have):
                node.join_network(now, net)
            for key, value in encoded.items():
                if self._announced.get(key) != value:
                    try:
                        node.put(now, key[0], key[1], value)
                    except (ValueError, KeyError) as e:  # e.g. a record over max_value
                        log.warning("endpoint %s/%s not announced: %s", key[0], key[1], e)
                        continue
                    self._announced[key] = value
            for key in [k for k in self._announced if k not in encoded]:
                if key[0] in node.networks():
                    node.delete(now, key[0], key[1])
                del self._announced[key]
            for net in sorted(have - wanted):
                node.leave_network(now, net)

        transport.feed(step)

    def records(self, networks: Iterable[str]) -> list[EndpointRecord]:
        """Every visible record on `networks` (this host's own included)."""
        if self.node is None:
            return []
        out = []
        # Every pass reads every record: decode each value once (the previous pass's
        # decodings are kept for values still present, the rest dropped).
        cache, self._decoded = self._decoded, {}
        for net in networks:
            for entry in self.node.entries(net).values():
                rec = cache.get(entry.value)
                try:
                    rec = rec or EndpointRecord.decode(entry.value)
                except BadRecord as e:
                    self.bad_records += 1
                    log.debug(
                        "gossip entry %s/%s from %s ignored: %s", net, entry.key, entry.owner, e
                    )
                    continue
                self._decoded[entry.value] = rec
                out.append(rec)
        return out

    def remotes(self, networks: Iterable[str]) -> dict[str, frozenset[RemoteEndpoint]]:
        nets = list(networks)
        return remotes(self.records(nets), nets, self.vtep)

    # ------------------------------------------------------------------ observability

    def status(self) -> pb.GossipStatus | None:
        if self.node is None:
            return None
        node = self.node
        summary = node.status(time.monotonic())
        st = pb.GossipStatus(updated_ms=int(time.time() * 1000))
        for m in summary["members"]:
            st.members.add(
                node_id=m["name"], addr=m["addr"], state=m["state"], incarnation=m["incarnation"]
            )
        for net, view in sorted(summary["networks"].items()):
            st.networks.add(network_id=net, entries=view["entries"], peers=view["peers"])
        stats = node.stats
        if stats.last_sync is not None:
            if self._last_sync_ms is None or self._last_sync_ms[0] != stats.last_sync:
                wall = int((time.time() - (time.monotonic() - stats.last_sync)) * 1000)
                self._last_sync_ms = (stats.last_sync, wall)
            st.last_sync_ms = self._last_sync_ms[1]
        for reason, count in stats.dropped.items():
            st.dropped[reason] = count
        st.packets_in, st.packets_out = stats.packets_in, stats.packets_out
        st.bytes_in, st.bytes_out = stats.bytes_in, stats.bytes_out
        return st

    def save(self) -> None:
        """Keep the members seen alive (for a restart without managers) and a readable status
        (for `ovnet-agent --gossip-status` while no manager can show it). Each file is
        written only when its content changed (the status also every STATUS_REFRESH s, for
        its updated_ms): an idle agent then writes nothing every few seconds."""
        if self.node is None:
            return
        peers = sorted(
            join_hostport(*m.addr)
            for m in self.node.members()
            if m.state in ("alive", "suspect") and m.name != self.node.name
        )
        with contextlib.suppress(OSError):
            data = json.dumps(peers).encode()
            if peers and data != self._saved_peers:
                # Private: it tells who the cluster's members are. Durable: a restart relies on it.
                path = self.state_dir / PEERS_FILE
                atomic_write(path, data, mode=0o600, durable=True, mkdir=True)
                self._saved_peers = data
            st = self.status()
            if st is not None:
                self._save_status(st)

    def _save_status(self, st: pb.GossipStatus) -> None:
        updated_ms, st.updated_ms = st.updated_ms, 0
        content = st.SerializeToString(deterministic=True)
        now = time.monotonic()
        saved = self._saved_status
        if saved is not None and saved[0] == content and now - saved[1] < STATUS_REFRESH:
            return
        st.updated_ms = updated_ms
        from google.protobuf import json_format

        atomic_write(
            self.state_dir / STATUS_FILE,
            json_format.MessageToJson(st, preserving_proto_field_name=True).encode(),
            mode=0o600,
            durable=False,  # a view for people, rewritten when it changes
            mkdir=True,
        )
        self._saved_status = (content, now)

    def _load_peers(self) -> list[Addr]:
        try:
            items = json.loads((self.state_dir / PEERS_FILE).read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(items, list):
            return []
        return peer_addrs((str(x) for x in items), f"peer in {PEERS_FILE}")

    async def close(self, leave: bool = False) -> None:
        """Stop gossiping. `leave` announces a graceful leave first: only when this host
        keeps no running task, since the others would hide its endpoints at once."""
        if self.node is not None and self.transport is not None:
            self.save()
            if leave:
                node = self.node
                self.transport.feed(node.leave)
            await self.transport.close()
        self.node = self.transport = None
        self._announced.clear()
