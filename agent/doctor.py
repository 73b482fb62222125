"""`ovctl doctor` on the agent: what the kernel lacks or holds too much of, right now.

The drift of a host is exactly what its next pass would change: the data-plane planner's ops
for the desired state the daemon last built (observe + plan, nothing applied), plus the
balancers' tables whose chains differ from the last spec applied (agent/lb/drift.py). Each op
becomes one row in words (`op_row`, pure). The check holds the daemon's pass lock, so it
never looks at a kernel a pass is halfway through changing. With repair, it runs a pass at
once (with the drifted balancer tables replaced whole: their updates only send differences)
and reports the rows that pass fixed as repaired, and whatever is still drifted after it.

Not compared: IPsec states and policies (planned apart, agent/dataplane/xfrm.py), the
contents of the maps of balancer tables (only their chains' rule counts), and the gossip view
against the FDB (the FDB is planned from the gossip records, so a difference there is the
planner's drift, which is compared).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.dataplane import ops
from agent.dataplane.observed import Link, Observed
from agent.model import DesiredState, Names
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

if TYPE_CHECKING:
    from agent.daemon import AgentDaemon

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowContext:
    """What turning an op into words needs besides the op: the snapshot it was planned
    from, the agent's names, and network ID -> name."""

    observed: Observed
    names: Names
    networks: Mapping[str, str]


def _where(ns: str | None) -> str:
    return f"netns {ns}" if ns else "host netns"


def _link(observed: Observed, ns: str | None, name: str) -> Link | None:
    if ns is None:
        return observed.host_links.get(name)
    if ns in observed.networks:
        return observed.networks[ns].links.get(name)
    if ns in observed.sandboxes:
        return observed.sandboxes[ns].links.get(name)
    return None


def _link_words(link: Link | None) -> str:
    if link is None:
        return "missing"
    parts = [link.kind, f"mtu {link.mtu}"]
    if link.master:
        parts.append(f"master {link.master}")
    if link.mac:
        parts.append(f"mac {link.mac}")
    parts.append("up" if link.up else "down")
    return " ".join(parts)


def _addrs(addrs: Iterable[object]) -> str:
    return ", ".join(sorted(str(a) for a in addrs)) or "none"


def _entry_row(op: ops.Op, vxlan: str) -> tuple[str, str, str, str] | None:
    match op:
        case ops.AddFdb(ns=ns, mac=mac, dst=dst):
            return "fdb", f"fdb {mac} dst {dst} dev {vxlan} ({_where(ns)})", "present", "missing"
        case ops.DelFdb(ns=ns, mac=mac, dst=dst):
            return "fdb", f"fdb {mac} dst {dst} dev {vxlan} ({_where(ns)})", "absent", "present"
        case ops.AddNeigh(ns=ns, ip=ip, mac=mac):
            obj = f"neighbour {ip} lladdr {mac} dev {vxlan} ({_where(ns)})"
            return "neighbour", obj, "present", "missing"
        case ops.DelNeigh(ns=ns, ip=ip, mac=mac):
            obj = f"neighbour {ip} lladdr {mac} dev {vxlan} ({_where(ns)})"
            return "neighbour", obj, "absent", "present"
    return None


def _link_row(op: ops.Op, obs: Observed) -> tuple[str, str, str, str] | None:
    match op:
        case ops.CreateBridge(ns=ns, name=name, mtu=mtu, address=addr, mac=mac):
            want = f"bridge mtu {mtu} mac {mac} {addr} up"
            return "link", f"{name} ({_where(ns)})", want, _link_words(_link(obs, ns, name))
        case ops.CreateVxlan(ns=ns, name=name, params=p, mtu=mtu, master=master):
            want = f"vxlan id {p.vni} dstport {p.port} local {p.local} mtu {mtu} master {master}"
            return "link", f"{name} ({_where(ns)})", want, _link_words(_link(obs, ns, name))
        case ops.CreateVeth(ns=ns, name=name, master=master, mtu=mtu, peer_ns=pns, peer_name=pn):
            want = f"veth mtu {mtu} master {master}, peer {pn} in {pns}"
            return "link", f"{name} ({_where(ns)})", want, _link_words(_link(obs, ns, name))
        case ops.SetLink(ns=ns, name=name, mtu=mtu, master=master, mac=mac):
            want = " ".join(
                [f"mtu {mtu}"]
                + ([f"master {master}"] if master else [])
                + ([f"mac {mac}"] if mac else [])
                + ["up"]
            )
            return "link", f"{name} ({_where(ns)})", want, _link_words(_link(obs, ns, name))
        case ops.DeleteLink(ns=ns, name=name):
            return "link", f"{name} ({_where(ns)})", "absent", _link_words(_link(obs, ns, name))
        case ops.SetAddresses(ns=ns, name=name, addresses=addrs):
            link = _link(obs, ns, name)
            found = _addrs(link.addresses) if link is not None else "missing link"
            return "address", f"addresses of {name} ({_where(ns)})", _addrs(addrs), found
        case ops.SetLoUp(ns=ns):
            return "link", f"lo ({_where(ns)})", "up", "down"
    return None


def _other_row(op: ops.Op, obs: Observed) -> tuple[str, str, str, str] | None:
    match op:
        case ops.CreateNetns(ns=ns):
            return "netns", f"netns {ns}", "present", "missing"
        case ops.DeleteNetns(ns=ns):
            return "netns", f"netns {ns}", "absent", "present"
        case ops.SetDefaultRoute(ns=ns, gateway=gw):
            sb = obs.sandboxes.get(ns)
            have = sb.default_gateway if sb is not None else None
            found = f"via {have}" if have else "none"
            return "route", f"default route ({_where(ns)})", f"via {gw}" if gw else "none", found
        case ops.WriteSandboxFiles(ns=ns):
            found = "differs" if ns in obs.files else "missing"
            return "file", f"/etc/netns/{ns}/resolv.conf, hosts", "as rendered", found
        case ops.RemoveSandboxFiles(ns=ns):
            return "file", f"/etc/netns/{ns}", "absent", "present"
        case ops.EnsureNft(table=table, gwbridge=br, subnet=subnet):
            want = f"masquerade {subnet} out of {br}, from_loopback, forward"
            return "nft", f"table ip {table} (host netns)", want, "missing or incomplete"
        case ops.DeleteNft(table=table):
            return "nft", f"table ip {table} (host netns)", "absent", "present"
        case ops.SetIpForward():
            return "sysctl", "net.ipv4.ip_forward", "1", "0"
        case ops.SetRouteLocalnet(bridge=br):
            return "sysctl", f"net.ipv4.conf.{br}.route_localnet", "1", "0"
    return None


def op_row(op: ops.Op, ctx: RowContext) -> pb.DriftRow:
    """One planned op as a drift row: the object, what the op would make it, what is there."""
    words = (
        _entry_row(op, ctx.names.vxlan)
        or _link_row(op, ctx.observed)
        or _other_row(op, ctx.observed)
        or (type(op).__name__.lower(), op.describe(), "applied", "not applied")
    )
    kind, obj, expected, found = words
    if op.task_id and not op.network_id:
        obj = f"{obj} [task {op.task_id}]"
    network = ctx.networks.get(op.network_id, op.network_id) if op.network_id else ""
    return pb.DriftRow(network=network, kind=kind, object=obj, expected=expected, found=found)


def wanted(op: ops.Op, network_ids: frozenset[str]) -> bool:
    """Whether an op is about the networks asked for (all of them: everything)."""
    return not network_ids or op.network_id in network_ids


def row_key(row: pb.DriftRow) -> tuple[str, str, str]:
    return (row.network, row.kind, row.object)


def after_repair(before: list[pb.DriftRow], after: list[pb.DriftRow]) -> list[pb.DriftRow]:
    """The rows a repair reports: those drifted before and not after (repaired), then those
    still (or newly) drifted."""
    still = {row_key(r) for r in after}
    out = []
    for r in before:
        if row_key(r) not in still:
            fixed = pb.DriftRow()
            fixed.CopyFrom(r)
            fixed.repaired = True
            out.append(fixed)
    return out + list(after)


class AgentDoctor:
    """Answers the manager's DoctorCheck for one daemon (set as the session's `on_doctor`)."""

    def __init__(self, daemon: AgentDaemon) -> None:
        self.daemon = daemon

    async def check(self, order: dpb.DoctorCheck) -> tuple[list[pb.DriftRow], str]:
        """(rows, error): the drift now, or with repair what the pass fixed and what is left."""
        d = self.daemon
        ids = frozenset(order.network_ids)
        try:
            async with d.pass_lock:
                desired = d.last_desired
                if desired is None:
                    return [], "the agent has not built its data plane yet"
                before, lb_keys = await self._drift(desired, ids)
                if not order.repair:
                    return before, ""
                for key in lb_keys:
                    d.lb.invalidate(key)
                await d.step()
                desired = d.last_desired or desired
                after, _ = await self._drift(desired, ids)
                return after_repair(before, after), ""
        except Exception as e:
            log.exception("doctor check failed")
            return [], f"the check failed: {e}"

    async def _drift(
        self, desired: DesiredState, ids: frozenset[str]
    ) -> tuple[list[pb.DriftRow], set[str]]:
        """The rows, and the balancer keys that drifted."""
        d = self.daemon
        observed, todo = await d.dataplane.drift(desired)
        names = {nid: net.spec.name for nid, net in d.session.assignments.networks.items()}
        ctx = RowContext(observed, d.host.names, names)
        rows = [op_row(op, ctx) for op in todo if wanted(op, ids)]
        drifted: set[str] = set()
        if not ids:  # balancer tables belong to sandboxes and the host, not to one network
            for key in sorted(d.lb.keys()):
                for lbd in await d.lb.drift(key):
                    drifted.add(key)
                    rows.append(
                        pb.DriftRow(
                            kind="nft", object=lbd.object, expected=lbd.expected, found=lbd.found
                        )
                    )
        return rows, drifted
