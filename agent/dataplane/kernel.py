"""The data plane's I/O edge: observe the kernel, apply planned ops, reconcile.

`DataPlane` keeps one rtnetlink socket per namespace it manages (made in the namespace by a
short-lived thread, so no helper process is forked), nl.RawNetlink: dumps, bulk FDB /
neighbour programming and the link, address and route changes all go through it. Those
requests are synchronous calls on the event loop's thread, as cheap as the send() that
pyroute2's AsyncIPRoute used to make there (the kernel answers inside the send()); observe's
dumps and large bulks go to a worker thread. Handles of deleted namespaces are closed at once:
an open socket would keep a deleted namespace, and everything in it, alive.

The host namespace is the one the agent runs in; tests (and the dev cluster, if it wishes) can
point the DataPlane at a named netns instead (`host_netns`), in which case host-side sockets,
sysctls and the nftables context are made there. The gateway bridge's masquerade table goes
through the same in-process libnftables binding as the balancers (agent/lb/nft.py): no `nft`
process is started.

Turning dumps into the planner's records is observe.py; this module keeps the handles, the
order of applying and the netlink calls of each op.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface

from agent.dataplane import nl, nlmsg, observe, ops
from agent.dataplane.desired import allocate_gw_addresses, problems, wants_egress
from agent.dataplane.observed import NetworkNs, Observed, SandboxNs
from agent.dataplane.plan import plan
from agent.dataplane.repairs import repairs
from agent.dataplane.xfrm import IpsecTables
from agent.lb.nft import Nft, NftError
from agent.model import DesiredState, HostConfig
from osutil.files import atomic_write
from osutil.netns import netns_path
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
ENODEV, ENOENT, ESRCH, EEXIST = 19, 2, 3, 17
# Re-check the nftables table (a listing of it) at most this often on a no-op reconcile:
# idle passes stay cheap, and a table someone deleted comes back within this time.
NFT_RECHECK_S = 30.0
BULK_IN_THREAD = 256


@dataclass(frozen=True)
class Failure:
    """An op that failed, in words, with whom it affects."""

    op: ops.Op
    error: str

    @property
    def owner(self) -> str:
        return self.op.owner

    def __str__(self) -> str:
        return f"{self.owner}: {self.op.describe()} failed: {self.error}"


@dataclass
class ApplyResult:
    """What a reconcile (or apply) did: ops applied, failures, planner input problems."""

    applied: int = 0
    failures: list[Failure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ops: int = 0
    seconds: float = 0.0
    # Sandboxes left out of this reconcile, and why (encrypted networks whose IPsec could
    # not be set up: never built without it).
    unbuilt: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.problems


def route_localnet_path(bridge: str) -> str:
    """The gwbridge's route_localnet sysctl (see ops.SetRouteLocalnet)."""
    return f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet"


class DataPlane:
    """Builds and repairs the kernel objects of one host's overlay networks."""

    def __init__(self, host: HostConfig, host_netns: str | None = None) -> None:
        self.host = host
        self.names = host.names
        self.host_netns = host_netns
        self._ns: dict[str | None, nl.RawNetlink] = {}
        self._lock = asyncio.Lock()
        self._nft_seen: bool | None = None
        self._nft_ctx: Nft | None = None  # made on first use (see `_nft`)
        self._nft_checked = 0.0
        # Each egress sandbox's gwbridge address as of the last reconcile (task ID -> IP).
        self.gw_addresses: dict[str, str] = {}
        self._ipsec = IpsecTables(host, host_netns)
        # Ops that repaired drift so far, by kind (repairs.py), and the desired state the last
        # fully successful reconcile applied (None: nothing settled yet, or it failed).
        self.repairs: dict[str, int] = {}
        self._settled: DesiredState | None = None

    # ---------------------------------------------------------------- handles

    def sandbox_path(self, task_id: str) -> str:
        return netns_path(self.names.sandbox_ns(task_id))

    def _handle(self, ns: str | None) -> nl.RawNetlink:
        h = self._ns.get(ns)
        if h is None:
            (sock,) = nl.open_sockets(ns if ns is not None else self.host_netns)
            h = nl.RawNetlink(sock)
            self._ns[ns] = h
        return h

    def _drop(self, ns: str) -> None:
        h = self._ns.pop(ns, None)
        if h is not None:
            h.close()

    def ipsec_status(self) -> pb.IpsecStatus | None:
        return self._ipsec.status()

    async def close(self) -> None:
        await self._ipsec.close()
        for h in self._ns.values():
            h.close()
        self._ns.clear()
        if self._nft_ctx is not None:
            self._nft_ctx.close()
            self._nft_ctx = None

    def _ours(self, ns: str) -> bool:
        return self.names.is_network_ns(ns) or self.names.is_sandbox_ns(ns)

    # ---------------------------------------------------------------- observe

    async def observe(self) -> Observed:
        """A snapshot of everything with the agent's prefix (dumps run in a worker thread)."""
        # Handles of namespaces that vanished are closed here, before the dumps (each open
        # socket keeps its namespace alive).
        for stale in [n for n in self._ns if n is not None and not os.path.exists(netns_path(n))]:
            self._drop(stale)
        obs = await asyncio.to_thread(self._observe_sync)
        now = time.monotonic()
        if self._nft_seen is None or now - self._nft_checked > NFT_RECHECK_S:
            self._nft_seen = await self._nft_present()
            self._nft_checked = now
        return dataclasses.replace(obs, nft=self._nft_seen)

    def _observe_sync(self) -> Observed:
        present = [n for n in nl.list_netns() if self._ours(n)]
        networks: dict[str, NetworkNs] = {}
        sandboxes: dict[str, SandboxNs] = {}
        for ns in present:
            try:
                h = self._handle(ns)
                if self.names.is_network_ns(ns):
                    networks[ns] = observe.network(h, self.names)
                else:
                    sandboxes[ns] = observe.sandbox(h, self.names)
            except OSError as e:  # deleted meanwhile, or not a netns mount
                log.warning("cannot observe netns %s: %s", ns, e)
        host_links = observe.host_links(self._handle(None), self.names)
        fwd = nl.read_sysctl(self.host_netns, IP_FORWARD) == "1"
        localnet = (
            self.names.gwbridge in host_links
            and nl.read_sysctl(self.host_netns, route_localnet_path(self.names.gwbridge)) == "1"
        )
        return Observed(
            networks=networks,
            sandboxes=sandboxes,
            host_links=host_links,
            ip_forward=fwd,
            route_localnet=localnet,
            files=observe.sandbox_files(self.host.etc_netns, self.names),
        )

    async def _nft_present(self) -> bool:
        """The table is there, and current: a table an older agent made, without the
        from_loopback chain, counts as absent and is replaced whole."""
        return await self._nft(f"list chain ip {self.names.nft_table} from_loopback") is None

    async def _nft(self, script: str) -> str | None:
        """Run an nft script in the host's namespace through the in-process libnftables
        binding the balancers use (agent/lb/nft.py); None if it went through, else nft's
        error text."""
        if self._nft_ctx is None or not self._nft_ctx.alive():
            if self._nft_ctx is not None:
                self._nft_ctx.close()
            # Made in a thread: the context is created inside the namespace it acts in.
            try:
                self._nft_ctx = await asyncio.to_thread(Nft, self.host_netns)
            except NftError as e:
                self._nft_ctx = None
                return str(e)  # no nftables here: what needs it fails, saying so
        try:
            await self._nft_ctx.arun(script)
        except NftError as e:
            return str(e)
        return None

    # ---------------------------------------------------------------- apply

    async def apply(self, todo: Sequence[ops.Op]) -> ApplyResult:
        """Apply the ops `todo` in order; a failure is recorded and the ops that depend on a
        namespace that could not be made are skipped, the rest go on. Runs of FDB/neighbour
        ops on one network are sent in bulk."""
        t0 = time.perf_counter()
        result = ApplyResult(ops=len(todo))
        broken: set[str] = set()
        i = 0
        while i < len(todo):
            op = todo[i]
            entry_ns = _entry_ns(op)
            if entry_ns is not None:
                j = i + 1
                while j < len(todo) and _entry_ns(todo[j]) == entry_ns:
                    j += 1
                batch = todo[i:j]
                if entry_ns in broken:
                    result.failures.append(
                        Failure(op, f"skipped {len(batch)} entries: netns broken")
                    )
                else:
                    failed = await self._entries(entry_ns, batch)
                    result.failures.extend(failed)
                    result.applied += len(batch) - len(failed)
                i = j
                continue
            i += 1
            deps = {
                n for n in (getattr(op, "ns", None), getattr(op, "peer_ns", None)) if n is not None
            }
            if deps & broken and not isinstance(op, ops.DeleteNetns):
                msg = f"skipped: netns {', '.join(sorted(deps & broken))} could not be made"
                result.failures.append(Failure(op, msg))
                continue
            try:
                await self._apply_one(op)
                result.applied += 1
            except Exception as e:
                msg = _error_text(e)
                log.warning("%s: %s failed: %s", op.owner, op.describe(), msg)
                result.failures.append(Failure(op, msg))
                if isinstance(op, ops.CreateNetns):
                    broken.add(op.ns)
        result.seconds = time.perf_counter() - t0
        return result

    async def reconcile(self, desired: DesiredState) -> ApplyResult:
        """observe + plan + apply, one at a time; IPsec's additions before everything else
        and its removals after (agent/dataplane/xfrm.py), so nothing goes out in clear."""
        async with self._lock:
            t0 = time.perf_counter()
            observed = await self.observe()
            desired, unbuilt = await self._ipsec.prepare(desired)
            todo = plan(self.host, desired, observed)
            # The same choice plan() made: what load balancing DNATs host-mode ports to.
            egress = [t for t, sb in desired.sandboxes.items() if wants_egress(desired, sb)]
            self.gw_addresses = {
                t: str(a.ip) for t, a in allocate_gw_addresses(self.host, egress, observed).items()
            }
            result = await self.apply(todo) if todo else ApplyResult()
            if todo and self._settled is not None:
                before = plan(self.host, self._settled, observed)
                for kind, n in repairs(todo, before, (f.op for f in result.failures)).items():
                    self.repairs[kind] = self.repairs.get(kind, 0) + n
            self._settled = None if result.failures else desired
            await self._ipsec.finish()
            result.problems = problems(desired)
            result.unbuilt = unbuilt
            result.seconds = time.perf_counter() - t0
            return result

    async def drift(self, desired: DesiredState) -> tuple[Observed, list[ops.Op]]:
        """What a reconcile to `desired` would change now, without changing it (`ovctl
        doctor`), and the snapshot it was planned from. The nftables table is looked at
        afresh (a pass trusts its check for NFT_RECHECK_S). IPsec is not planned here: its
        states and policies are not compared."""
        async with self._lock:
            self._nft_seen = None
            observed = await self.observe()
            return observed, plan(self.host, desired, observed)

    async def remove_all(self) -> None:
        """Delete everything carrying the prefix (tests, `ovnet-agent --cleanup`)."""
        async with self._lock:
            self._nft_seen = None
            observed = await self.observe()
            await self._ipsec.prepare(DesiredState())
            await self.apply(plan(self.host, DesiredState(), observed))
            await self._ipsec.finish()
            # Whatever is left (e.g. a netns that could not be read) goes too.
            for ns in nl.list_netns():
                if self._ours(ns):
                    self._drop(ns)
                    nl.delete_netns(ns)
            if await self._nft_present():
                await self._nft(f"delete table ip {self.names.nft_table}")
            self._nft_seen = False

    async def _apply_one(self, op: ops.Op) -> None:
        match op:
            case ops.CreateNetns(ns=ns):
                (sock,) = await asyncio.to_thread(nl.create_netns, ns, self.host_netns)
                self._ns[ns] = nl.RawNetlink(sock)
            case ops.DeleteNetns(ns=ns):
                if self.names.is_network_ns(ns) and ns in self._ns:
                    # The kernel tears a netns down asynchronously; its VXLAN device would hold
                    # the VNI (the UDP socket is in the host ns) for a while after, so that a
                    # network re-created at once could not get it. Delete the device now.
                    with contextlib.suppress(Exception):
                        self._ns[ns].call(nlmsg.link_del(self.names.vxlan))
                self._drop(ns)
                await asyncio.to_thread(nl.delete_netns, ns)
            case ops.DeleteLink(ns=ns, name=name):
                try:
                    self._handle(ns).call(nlmsg.link_del(name))
                except Exception as e:
                    if _errno(e) not in (ENODEV,):
                        raise
            case ops.CreateBridge(ns=ns, name=name, mtu=mtu, address=addr, mac=mac):
                raw = self._handle(ns)
                raw.call(nlmsg.link_add(name, "bridge", mtu))
                idx = raw.link_index(name)
                raw.call(nlmsg.link_set(idx, mac=mac))
                raw.call(nlmsg.addr(True, idx, addr))
                raw.call(nlmsg.link_set(idx, up=True))
            case ops.CreateVxlan():
                await self._create_vxlan(op)
            case ops.CreateVeth():
                self._create_veth(op)
            case ops.SetLink(ns=ns, name=name, mtu=mtu, master=master, mac=mac):
                raw = self._handle(ns)
                idx = raw.link_index(name)
                master_idx = raw.link_index(master) if master is not None else None
                raw.call(nlmsg.link_set(idx, mtu=mtu, master=master_idx, mac=mac))
                raw.call(nlmsg.link_set(idx, up=True))
            case ops.SetAddresses(ns=ns, name=name, addresses=addrs):
                self._set_addresses(ns, name, addrs)
            case ops.SetDefaultRoute(ns=ns, gateway=gw):
                try:
                    self._handle(ns).call(nlmsg.default_route(gw))
                except Exception as e:
                    if gw is not None or _errno(e) not in (ESRCH, ENOENT):
                        raise
            case ops.SetLoUp(ns=ns):
                self._handle(ns).call(nlmsg.link_set(1, up=True))
            case ops.WriteSandboxFiles(ns=ns, resolv=resolv, hosts=hosts):
                d = self.host.etc_netns / ns
                atomic_write(d / "resolv.conf", resolv, mkdir=True)
                atomic_write(d / "hosts", hosts)
            case ops.RemoveSandboxFiles(ns=ns):
                shutil.rmtree(self.host.etc_netns / ns, ignore_errors=True)
            case ops.EnsureNft():
                err = await self._nft(nft_ruleset(op))
                if err is not None:
                    raise RuntimeError(f"nft: {err}")
                self._nft_seen = True
            case ops.DeleteNft(table=table):
                err = await self._nft(f"delete table ip {table}")
                self._nft_seen = False
                if err is not None and "No such file" not in err:
                    raise RuntimeError(f"nft delete table: {err}")
            case ops.SetIpForward():
                await asyncio.to_thread(nl.write_sysctl, self.host_netns, IP_FORWARD, "1")
            case ops.SetRouteLocalnet(bridge=bridge):
                path = route_localnet_path(bridge)
                await asyncio.to_thread(nl.write_sysctl, self.host_netns, path, "1")
            case _:
                raise TypeError(f"cannot apply {op!r}")

    async def _create_vxlan(self, op: ops.CreateVxlan) -> None:
        """Made in the host namespace under a staging name (its UDP socket lives where it is
        made), moved into the network's namespace, then renamed and enslaved there."""
        host = self._handle(None)
        with contextlib.suppress(Exception):  # a staging device left by a crash
            host.call(nlmsg.link_del(op.staging))
        p = op.params
        data = nlmsg.vxlan_data(p.vni, p.local, p.port, p.learning, p.proxy)
        for attempt in range(20):
            try:
                host.call(nlmsg.link_add(op.staging, "vxlan", op.mtu, data))
                break
            except Exception as e:
                # EEXIST: the VNI is still held by a device in a namespace being torn down.
                if _errno(e) != EEXIST or attempt == 19:
                    raise
                await asyncio.sleep(0.05)
        idx = host.link_index(op.staging)
        fd = os.open(netns_path(op.ns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            host.call(nlmsg.link_set(idx, netns_fd=fd))
        except Exception:
            with contextlib.suppress(Exception):
                host.call(nlmsg.link_del(index=idx))
            raise
        finally:
            os.close(fd)
        raw = self._handle(op.ns)
        idx = raw.link_index(op.staging)
        master = raw.link_index(op.master)
        raw.call(nlmsg.link_set(idx, name=op.name))
        raw.call(nlmsg.link_set(idx, master=master, up=True))

    def _create_veth(self, op: ops.CreateVeth) -> None:
        """The pair is made with its peer directly in `peer_ns` (named, MTU and MAC set)."""
        raw = self._handle(op.ns)
        fd = os.open(netns_path(op.peer_ns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            peer = nlmsg.veth_peer(op.peer_name, op.mtu, op.peer_mac, fd)
            raw.call(nlmsg.link_add(op.name, "veth", op.mtu, peer))
        finally:
            os.close(fd)
        idx = raw.link_index(op.name)
        raw.call(nlmsg.link_set(idx, master=raw.link_index(op.master), up=True))
        if op.isolated:
            raw.call(nlmsg.brport_isolated(idx))
        inner = self._handle(op.peer_ns)
        inner.call(nlmsg.link_set(inner.link_index(op.peer_name), up=True))

    def _set_addresses(self, ns: str | None, name: str, want: frozenset[IPv4Interface]) -> None:
        raw = self._handle(ns)
        idx = raw.link_index(name)
        have = raw.addresses().get(idx, set())
        for a in sorted(have - want):
            raw.call(nlmsg.addr(False, idx, a))
        for a in sorted(want - have):
            raw.call(nlmsg.addr(True, idx, a))

    async def _entries(self, ns: str, batch: Sequence[ops.Op]) -> list[Failure]:
        """FDB/neighbour ops on one network's VXLAN device, sent in bulk on the raw socket."""
        try:
            h = self._handle(ns)
            idx = h.link_index(self.names.vxlan)
        except Exception as e:
            return [Failure(batch[0], f"{len(batch)} entries not programmed: {_error_text(e)}")]
        rf = nlmsg.NLM_F_REQUEST
        add_vtep = rf | nlmsg.NLM_F_CREATE | nlmsg.NLM_F_APPEND  # zero MAC: one entry per VTEP
        add_mac = rf | nlmsg.NLM_F_CREATE | nlmsg.NLM_F_REPLACE
        msgs = []
        for op in batch:
            match op:
                case ops.AddFdb(mac=mac, dst=dst):
                    flags = add_vtep if mac == "00:00:00:00:00:00" else add_mac
                    msgs.append(_msg(nlmsg.RTM_NEWNEIGH, flags, nlmsg.AF_BRIDGE, idx, mac, dst))
                case ops.DelFdb(mac=mac, dst=dst):
                    msgs.append(_msg(nlmsg.RTM_DELNEIGH, rf, nlmsg.AF_BRIDGE, idx, mac, dst))
                case ops.AddNeigh(ip=ip, mac=mac):
                    msgs.append(_msg(nlmsg.RTM_NEWNEIGH, add_mac, nlmsg.AF_INET, idx, mac, ip))
                case ops.DelNeigh(ip=ip, mac=mac):
                    msgs.append(_msg(nlmsg.RTM_DELNEIGH, rf, nlmsg.AF_INET, idx, mac, ip))
        if len(msgs) > BULK_IN_THREAD:
            errs = await asyncio.to_thread(h.bulk, msgs)
        else:
            errs = h.bulk(msgs)
        failures = []
        for i, err in errs:
            op = batch[i]
            if isinstance(op, ops.DelFdb | ops.DelNeigh) and err in (ENOENT, ENODEV):
                continue
            failures.append(Failure(op, nl.errno_name(err)))
        return failures


def _entry_ns(op: ops.Op) -> str | None:
    """The network netns of an FDB/neighbour op (None: another kind of op)."""
    if isinstance(op, ops.AddFdb | ops.DelFdb | ops.AddNeigh | ops.DelNeigh):
        return op.ns
    return None


def _msg(cmd: int, flags: int, family: int, idx: int, mac: str, dst: str) -> Callable[[int], bytes]:
    return lambda seq: nlmsg.neigh_msg(cmd, flags, family, idx, mac, dst, seq)


def nft_ruleset(op: ops.EnsureNft) -> str:
    """The whole table, replaced in one transaction (create-if-missing, delete, add)."""
    t, br = op.table, op.gwbridge
    return (
        f"table ip {t} {{}}\n"
        f"delete table ip {t}\n"
        f"table ip {t} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    ip saddr {op.subnet} oifname != "{br}" masquerade\n'
        "  }\n"
        # Host connections to 127.0.0.1 DNATed to a published port's target behind the
        # gwbridge (see ops.SetRouteLocalnet): answers must come back to a real address.
        "  chain from_loopback {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    ip saddr 127.0.0.0/8 oifname "{br}" masquerade\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname "{br}" oifname "{br}" drop\n'
        "  }\n"
        "}\n"
    )


def _errno(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    if isinstance(code, int):
        return code
    return getattr(e, "errno", None)


def _error_text(e: BaseException) -> str:
    if isinstance(e, nl.NetlinkError):
        return str(e)
    code = _errno(e)
    if isinstance(code, int) and code > 0:
        return nl.errno_name(code) + (f" ({e})" if str(e) else "")
    return f"{type(e).__name__}: {e}"
