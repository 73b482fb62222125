"""Endpoint records: what one host tells the others, through gossip, about a task's address.

The gossip tables are generic (a network, a key, an opaque value, an owner); this module is
the one place that knows what an overlay endpoint's value holds and how a host's running
tasks turn into records. Everything the data plane (FDB and neighbour entries), DNS and load
balancing need about a remote task is in its record, so none of them has to ask a manager.

The key of a record is the task ID: a task has at most one address per network.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from agent.controller import task_hostname
from agent.model import RemoteEndpoint, endpoint_mac
from proto import objects_pb2 as pb

# The gossip table endpoint records live in; one per network.
TABLE = "endpoints"


class BadRecord(ValueError):
    """A value in the table that is not an endpoint record this version understands."""


@dataclass(frozen=True)
class PortRecord:
    """One port of the record's service, as the service's endpoint has it."""

    name: str  # "" when unnamed (only named ports get SRV records)
    protocol: str  # "tcp" | "udp"
    target: int
    published: int = 0  # 0: not published
    mode: str = "ingress"  # "ingress" (routing mesh) | "host" (only where a task runs)


@dataclass(frozen=True)
class EndpointRecord:
    network_id: str
    # CIDR notation, with the network's prefix length: 10.0.0.5/24
    addr: str
    mac: str
    # The owning host's underlay address: where VXLAN packets for `addr` go.
    vtep: str
    node_id: str
    task_id: str
    # SERVICE.SLOT.TASKID, the name Swarm gives a task (and its DNS name).
    task_name: str
    service_id: str
    service_name: str
    slot: int
    # The service's virtual IP on this network (empty for endpoint mode dnsrr).
    vip: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # False while the task is not to receive traffic (unhealthy or draining before a stop).
    enabled: bool = True
    ports: tuple[PortRecord, ...] = field(default_factory=tuple)

    @property
    def ip(self) -> str:
        return self.addr.split("/", 1)[0]

    @property
    def is_task(self) -> bool:
        """False for a node's own endpoint (its ingress address): FDB only, no name, no LB."""
        return bool(self.service_id)

    def encode(self) -> bytes:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        d["ports"] = [[p.name, p.protocol, p.target, p.published, p.mode] for p in self.ports]
        if not self.ports:
            del d["ports"]
        return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> EndpointRecord:
        try:
            d = json.loads(data)
            rec = cls(
                network_id=str(d["network_id"]),
                addr=str(d["addr"]),
                mac=str(d["mac"]),
                vtep=str(d["vtep"]),
                node_id=str(d["node_id"]),
                task_id=str(d["task_id"]),
                task_name=str(d["task_name"]),
                service_id=str(d["service_id"]),
                service_name=str(d["service_name"]),
                slot=int(d["slot"]),
                vip=str(d.get("vip", "")),
                aliases=tuple(str(a) for a in d.get("aliases", ())),
                enabled=bool(d.get("enabled", True)),
                ports=tuple(
                    PortRecord(str(n), str(pr), int(t), int(pub), str(m))
                    for n, pr, t, pub, m in d.get("ports", ())
                ),
            )
            ipaddress.IPv4Interface(rec.addr)
            ipaddress.IPv4Address(rec.vtep)
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
            raise BadRecord(f"not an endpoint record: {e}") from e
        return rec

    def remote(self) -> RemoteEndpoint:
        return RemoteEndpoint(
            network_id=self.network_id,
            address=ipaddress.IPv4Interface(self.addr).ip,
            vtep=ipaddress.IPv4Address(self.vtep),
        )


def service_ports(svc: pb.Service | None) -> tuple[PortRecord, ...]:
    """The service's ports (as allocated, published ports filled in) as records carry them."""
    if svc is None:
        return ()
    return tuple(
        PortRecord(
            name=p.name,
            protocol="udp" if p.protocol == pb.PROTOCOL_UDP else "tcp",
            target=p.target_port,
            published=p.published_port,
            mode="host" if p.publish_mode == pb.PUBLISH_MODE_HOST else "ingress",
        )
        for p in svc.endpoint.ports
    )


def node_record(network_id: str, addr: str, node_id: str, vtep: str) -> EndpointRecord:
    """A host's own endpoint on a network (its ingress sandbox's address): other hosts need its
    FDB and neighbour entries to send replies back through it; DNS and LB ignore it."""
    return EndpointRecord(
        network_id=network_id,
        addr=addr,
        mac=endpoint_mac(addr),
        vtep=vtep,
        node_id=node_id,
        task_id=f"node-{node_id}",
        task_name="",
        service_id="",
        service_name="",
        slot=0,
    )


def local_records(
    tasks: Iterable[pb.Task],
    services: Mapping[str, pb.Service],
    node_id: str,
    vtep: str,
    disabled: Iterable[str] = (),
) -> dict[tuple[str, str], EndpointRecord]:
    """The records this host announces: one per network of each task given (the caller passes
    the tasks whose process runs), keyed by (network ID, task ID). Tasks in `disabled`
    (unhealthy, not yet healthy, or draining before a stop) are announced with enabled=False:
    still reachable at their address, so connections they already have go on, but given no new
    ones."""
    off = set(disabled)
    out: dict[tuple[str, str], EndpointRecord] = {}
    for task in tasks:
        svc = services.get(task.service_id)
        ports = service_ports(svc)
        vips = (
            {
                v.network_id: str(ipaddress.IPv4Interface(v.addr).ip)
                for v in svc.endpoint.virtual_ips
            }
            if svc is not None
            else {}
        )
        for att in task.networks:
            if not att.addresses:
                continue
            addr = att.addresses[0]
            out[(att.network_id, task.meta.id)] = EndpointRecord(
                network_id=att.network_id,
                addr=addr,
                mac=endpoint_mac(addr),
                vtep=vtep,
                node_id=node_id,
                task_id=task.meta.id,
                task_name=task_hostname(task),
                service_id=task.service_id,
                service_name=task.service_name,
                slot=task.slot,
                vip=vips.get(att.network_id, ""),
                aliases=tuple(att.aliases),
                enabled=task.meta.id not in off,
                ports=ports,
            )
    return out


def attachment_records(
    attachments: Iterable[pb.Attachment], node_id: str, vtep: str
) -> dict[tuple[str, str], EndpointRecord]:
    """The records of this host's attachments (containers of other runtimes), keyed as
    `local_records`: each resolves by its name and aliases like a standalone task (its own
    one-endpoint "service", no VIP), so tasks and other containers reach it by name."""
    out: dict[tuple[str, str], EndpointRecord] = {}
    for att in attachments:
        if not att.network.addresses:
            continue
        addr = att.network.addresses[0]
        out[(att.network.network_id, att.meta.id)] = EndpointRecord(
            network_id=att.network.network_id,
            addr=addr,
            mac=endpoint_mac(addr),
            vtep=vtep,
            node_id=node_id,
            task_id=att.meta.id,
            task_name=att.name,
            service_id=att.meta.id,
            service_name=att.name,
            slot=0,
            aliases=tuple(att.network.aliases),
        )
    return out


def remotes(
    records: Iterable[EndpointRecord], networks: Iterable[str], vtep: str
) -> dict[str, frozenset[RemoteEndpoint]]:
    """Per network (of those given), the endpoints of other hosts the data plane must reach.

    Two records can claim one address for a moment (a task rescheduled from a dead host whose
    record is still visible): the data plane needs one VTEP per address, so the
    lexicographically greatest (task ID, VTEP) wins on every host alike.
    """
    wanted = set(networks)
    best: dict[tuple[str, str], EndpointRecord] = {}
    for rec in records:
        if rec.network_id not in wanted or rec.vtep == vtep:
            continue
        k = (rec.network_id, rec.addr.split("/")[0])
        cur = best.get(k)
        if cur is None or (rec.task_id, rec.vtep) > (cur.task_id, cur.vtep):
            best[k] = rec
    out: dict[str, set[RemoteEndpoint]] = {n: set() for n in wanted}
    for (net, _), rec in best.items():
        out[net].add(rec.remote())
    return {n: frozenset(s) for n, s in out.items()}
