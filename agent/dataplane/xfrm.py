"""The kernel side of IPsec (the plan is agent/dataplane/ipsec.py): whether this kernel can do
ESP at all, what the agent's SAs and policies are now, and applying a plan. pyroute2 has no
XFRM API, so this uses iproute2's `ip xfrm` (text output; changes in one `ip -batch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network

from agent.dataplane.ipsec import (
    AEAD,
    ICV_BITS,
    KEEPALIVE_S,
    SA,
    SA_KEY_BYTES,
    EspWatch,
    Policy,
    XfrmOp,
    XfrmTables,
    batch_line,
    desired_tables,
    plan_tables,
    stages,
)
from agent.model import DesiredState, HostConfig
from osutil.netns import error_in_new_netns
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

KEEPALIVE = bytes(8)

NO_ESP = "this host's kernel cannot encrypt (no ESP support)"
NO_AEAD = f"this host's kernel cannot encrypt (no {AEAD} for ESP)"
_PROBE_SA = ("src", "198.51.100.1", "dst", "198.51.100.2", "proto", "esp", "spi", "0x100")


def esp_unavailable() -> str:
    """Why this host cannot carry encrypted networks ("" if it can).

    The test is the real thing: an ESP SA of the kind the agent makes, added in a namespace
    of its own (`unshare --net`, gone with the process, so nothing is left in this host's
    tables). Without the AEAD the kernel answers "Requested AEAD algorithm not found"; a
    second SA with the null cipher then tells a kernel without ESP at all ("Requested type
    not found", this machine's) from one missing only the algorithm. Anything else that
    stops the check is reported as it is."""
    aead = ("aead", AEAD, "0x" + "00" * SA_KEY_BYTES, str(ICV_BITS))
    err = _add_state(aead)
    if err and "AEAD algorithm not found" in err:
        null = _add_state(("enc", "cipher_null", ""))
        return NO_ESP if "Requested type not found" in null else NO_AEAD
    if err and "Requested type not found" in err:
        return NO_ESP
    return f"cannot check for ESP support: ip xfrm state add said: {err}" if err else ""


def _add_state(algorithm: tuple[str, ...]) -> str:
    """Add a transport-mode ESP SA in a throwaway namespace; the error ("" on success)."""
    try:
        return error_in_new_netns(
            ["ip", "xfrm", "state", "add", *_PROBE_SA, "mode", "transport", *algorithm]
        )
    except OSError as e:
        return str(e)


class XfrmError(Exception):
    """`ip xfrm` refused a change or could not be run; the next pass observes and tries again."""


def observe(reqid: int, netns: str | None = None) -> XfrmTables:
    """The SAs and policies carrying `reqid` (the agent's), from `ip xfrm` (iproute2 prints
    xfrm as text only: `-j` is ignored for it)."""
    states = _ip(["xfrm", "state", "list", "reqid", str(reqid)], netns)
    policies = _ip(["xfrm", "policy", "list"], netns)
    return XfrmTables(parse_states(states, reqid), parse_policies(policies, reqid))


def apply(ops: Sequence[XfrmOp], reqid: int, netns: str | None = None) -> None:
    """All of `ops`, in order, in one `ip -batch` (it stops at the first failure)."""
    if ops:
        _ip(["-batch", "-"], netns, "".join(batch_line(op, reqid) + "\n" for op in ops))


def _ip(args: list[str], netns: str | None, stdin: str | None = None) -> str:
    """`ip` (in the named netns if given: tests point the data plane at one)."""
    where = ["-n", netns] if netns is not None else []
    try:
        res = subprocess.run(
            ["ip", *where, *args], input=stdin, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise XfrmError(f"ip {' '.join(args)}: {e}") from e
    if res.returncode != 0:
        raise XfrmError(f"ip {' '.join(args)}: {' '.join(res.stderr.split())}")
    return res.stdout


def _records(text: str) -> list[list[str]]:
    """`ip xfrm` output split into records (a record starts at an unindented line), each as
    its words."""
    out: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace() or not out:
            out.append([])
        out[-1].extend(line.split())
    return out


def _after(words: list[str], key: str, start: int = 0) -> str | None:
    try:
        return words[words.index(key, start) + 1]
    except (ValueError, IndexError):
        return None


def parse_states(text: str, reqid: int) -> frozenset[SA]:
    """ESP SAs with `reqid` from `ip xfrm state list`: anything else (another reqid, another
    protocol, another algorithm) is not the agent's and is left out."""
    out: set[SA] = set()
    for w in _records(text):
        if _after(w, "proto") != "esp" or (_after(w, "reqid") or "").split("(")[0] != str(reqid):
            continue
        src, dst, spi, alg = _after(w, "src"), _after(w, "dst"), _after(w, "spi"), _after(w, "aead")
        key = _after(w, alg) if alg == AEAD else None
        if not (src and dst and spi and key and key.startswith("0x")):
            continue
        spi_hex = spi.split("(")[0]
        out.add(SA(IPv4Address(src), IPv4Address(dst), int(spi_hex, 16), bytes.fromhex(key[2:])))
    return frozenset(out)


_PACKETS = re.compile(r"^(\d+)\(packets\)$")


def parse_packets_in(text: str, reqid: int, local: IPv4Address) -> dict[IPv4Address, int]:
    """Packets decrypted per peer (summed over its inbound SAs to `local`), from the "lifetime
    current: N(bytes), M(packets)" lines of `ip -s xfrm state list`."""
    out: dict[IPv4Address, int] = {}
    for w in _records(text):
        # With -s, ip prints "reqid 4097(0x00001001)" and "spi 0x00001001(4097)".
        if (_after(w, "reqid") or "").split("(")[0] != str(reqid) or _after(w, "dst") != str(local):
            continue
        src = _after(w, "src")
        if "current:" not in w or src is None:
            continue
        counts = [m.group(1) for m in map(_PACKETS.match, w[w.index("current:") :]) if m]
        if counts:
            peer = IPv4Address(src)
            out[peer] = out.get(peer, 0) + int(counts[0])
    return out


def parse_policies(text: str, reqid: int) -> frozenset[Policy]:
    """Policies whose template carries `reqid`, from `ip xfrm policy list`."""
    out: set[Policy] = set()
    for w in _records(text):
        if "tmpl" not in w:
            continue
        t = w.index("tmpl")
        if _after(w, "reqid", t) != str(reqid):
            continue
        src, dst, port, direction = (
            _after(w, "src"),
            _after(w, "dst"),
            _after(w, "dport"),
            _after(w, "dir"),
        )
        if not (src and dst and port and direction in ("in", "out")):
            continue
        spi = _after(w, "spi", t)
        out.add(
            Policy(
                direction,
                IPv4Network(src),
                IPv4Network(dst),
                int(port),
                int(spi, 16) if spi else 0,
                "block" if _after(w, "action") == "block" else "allow",
            )
        )
    return frozenset(out)


class IpsecTables:
    """Keeps this host's xfrm tables at what its desired data plane needs, in two stages
    around the rest of a reconcile (`ipsec.stages`): `prepare` before (new SAs, guards, policy
    switches), `finish` after (removals).

    Observing costs two `ip` processes, so it is skipped while the wanted tables are the ones
    last applied, except every RECHECK_S (drift is repaired within that); a host without
    encrypted networks looks once (a previous run's leftovers) and then no more."""

    RECHECK_S = 5.0

    def __init__(self, host: HostConfig, netns: str | None = None) -> None:
        self.host = host
        self.netns = netns
        self.reqid = host.names.xfrm_reqid
        self._applied: XfrmTables | None = None  # None: unknown (start, or after an error)
        self._checked = 0.0
        self._late: list[XfrmOp] = []
        self._esp = EspWatch()
        self._silent: dict[IPv4Address, int] = {}
        self._status: pb.IpsecStatus | None = None
        self._watch: asyncio.Task[None] | None = None

    def wanted(self, desired: DesiredState) -> XfrmTables:
        return desired_tables(
            self.host.vtep,
            desired.encrypted_peers(),
            desired.ipsec_keys,
            self.host.encrypted_vxlan_port,
            encrypted=any(n.encrypted for n in desired.networks.values()),
        )

    async def prepare(self, desired: DesiredState) -> tuple[DesiredState, dict[str, str]]:
        """Stage 1. If it fails, the encrypted networks are left out of `desired` (returned)
        and each task on one gets the reason (second value): nothing runs in clear."""
        self._late = []
        if self.host.ipsec_unavailable:
            return desired, {}  # no task gets an encrypted network here (controller)
        want = self.wanted(desired)
        now = time.monotonic()
        if want == self._applied and (not want.policies or now - self._checked < self.RECHECK_S):
            # Nothing wanted and nothing there at the last look: nothing can drift.
            return desired, {}
        try:
            have = await asyncio.to_thread(observe, self.reqid, self.netns)
            self._checked = now
            early, self._late = stages(plan_tables(want, have))
            if early:
                await asyncio.to_thread(apply, early, self.reqid, self.netns)
            self._applied = want
            if desired.keep_remotes and self._late:
                # Peers may only be missing from an incomplete view: keep their SAs, and look
                # again once the view is whole.
                self._late, self._applied = [], None
            if want.sas and self._watch is None and self.netns is None:
                # (In a named netns, tests only, the keepalive socket would be elsewhere.)
                self._watch = asyncio.create_task(self.watch(), name="ipsec-watch")
        except XfrmError as e:
            self._applied, self._late = None, []
            log.warning("IPsec: %s", e)
            return _without_encrypted(desired, f"IPsec setup failed: {e}")
        return desired, {}

    def status(self) -> pb.IpsecStatus | None:
        """The latest IPsec report (None on a host that never had encrypted peers)."""
        return self._status

    def _peers(self) -> list[IPv4Address]:
        applied = self._applied or XfrmTables()
        return sorted(
            p.dst.network_address
            for p in applied.policies
            if p.direction == "out" and p.action == "allow"
        )

    async def watch(self) -> None:
        """Every KEEPALIVE_S, `check` (until closed)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            while True:
                await asyncio.sleep(KEEPALIVE_S)
                await self.check(sock.sendto)
        finally:
            sock.close()

    async def check(self, sendto: Callable[[bytes, tuple[str, int]], object]) -> None:
        """A keepalive to each peer through its SA (so ESP from a healthy peer never stops,
        task traffic or not), then ESP per peer and the kernel's cleartext counters read into
        `status`. A peer silent for SILENT_AFTER_S is logged (and reported: `ovctl network
        inspect`); so is its recovery. Once no encrypted network has a peer here the report
        still goes out, with no peers: the manager keeps a node's last report, which must not
        go on showing peers this host no longer has."""
        peers = self._peers()
        counts: dict[IPv4Address, int] = {}
        if peers:
            port = self.host.encrypted_vxlan_port
            for peer in peers:
                # A VXLAN header without the I flag: the peer's VXLAN socket drops it once
                # decrypted. Refused here (no SA yet: the block policy) is fine.
                with contextlib.suppress(OSError):
                    sendto(KEEPALIVE, (str(peer), port))
            try:
                text = await asyncio.to_thread(
                    _ip, ["-s", "xfrm", "state", "list", "reqid", str(self.reqid)], None
                )
            except XfrmError as e:
                log.warning("IPsec: cannot read SA counters: %s", e)
                return
            counts = parse_packets_in(text, self.reqid, self.host.vtep)
        silent = self._esp.update(
            {p: counts.get(p, 0) for p in peers}, time.monotonic(), int(time.time() * 1000)
        )
        self._log_changes(silent)
        stats = _xfrm_stats()
        self._status = pb.IpsecStatus(
            peers=[
                pb.IpsecPeer(addr=str(p), silent_since_ms=since)
                for p, since in sorted(silent.items())
            ],
            cleartext_dropped_in=stats.get("XfrmInTmplMismatch", 0),
            cleartext_blocked_out=stats.get("XfrmOutPolBlock", 0),
        )

    def _log_changes(self, silent: dict[IPv4Address, int]) -> None:
        for peer, since in silent.items():
            was = self._silent.get(peer, 0)
            if since and not was:
                log.warning(
                    "IPsec: no ESP from %s for %d s (ESP blocked or NATed on the way, or the "
                    "peer is missing its SAs)",
                    peer,
                    (time.time() * 1000 - since) // 1000,
                )
            elif was and not since:
                log.info("IPsec: ESP from %s arrives again", peer)
        self._silent = silent

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def finish(self) -> None:
        """Stage 2: what `prepare` left for after the VXLAN devices changed."""
        late, self._late = self._late, []
        if late:
            try:
                await asyncio.to_thread(apply, late, self.reqid, self.netns)
            except XfrmError as e:
                self._applied = None  # observed again next pass
                log.warning("IPsec: %s", e)


def _without_encrypted(desired: DesiredState, why: str) -> tuple[DesiredState, dict[str, str]]:
    keep = {nid: n for nid, n in desired.networks.items() if not n.encrypted}
    dropped = {
        tid
        for tid, sb in desired.sandboxes.items()
        if any(e.network_id not in keep for e in sb.endpoints)
    }
    return (
        dataclasses.replace(
            desired,
            networks=keep,
            sandboxes={t: sb for t, sb in desired.sandboxes.items() if t not in dropped},
            attachments={a: v for a, v in desired.attachments.items() if v.network_id in keep},
            remotes={n: r for n, r in desired.remotes.items() if n in keep},
        ),
        {
            **{tid: why for tid in dropped},
            **{a: why for a, v in desired.attachments.items() if v.network_id not in keep},
        },
    )


def _xfrm_stats() -> dict[str, int]:
    """This namespace's xfrm counters (/proc/net/xfrm_stat); empty if it cannot be read."""
    out: dict[str, int] = {}
    try:
        with open("/proc/net/xfrm_stat") as f:
            for line in f:
                name, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    out[name.strip()] = int(value)
    except OSError:
        pass
    return out
