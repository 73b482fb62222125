"""Subnets, gateways, VNIs, task addresses, service VIPs and published ports, in memory.

The leading manager rebuilds this from the stored objects when it takes over (`restore`) and asks
it before every etcd transaction that creates or changes a network, service or task. Nothing here
does I/O, so a request is checked against the whole cluster's allocations without a round trip.

Every allocating call is all-or-nothing: when it raises, the allocator is exactly as it was, so a
refused request leaves nothing behind. When the caller's etcd commit fails afterwards, the caller
hands back what it got (`release_network`, `release_endpoint`, `release_task`,
`release_attachments`). A node's address on the ingress network comes from `allocate_task` too
(it is one attachment, like a task's) and is restored from `Node.attachments`; so does an
address of an `Attachment` (a container joined through the CNI plugin), restored from those.

Published ports are the whole cluster's (the routing mesh takes them on every node; a
host-mode port of a service may land on any node), except the host-mode ports of a standalone
task (`ServiceSpec.standalone`, `ovctl run -p`), which are its node's alone: the same port may
be mapped on two nodes, never twice on one, nor where the cluster publishes it.

It stays whole (over 600 lines): every allocating call takes subnets, VNIs, addresses and
ports under one all-or-nothing undo log; split, the transaction would span modules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from manager.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from manager.intervals import CursorPool, IntervalSet, Undo, all_or_nothing
from proto import objects_pb2 as pb

_MIN_PREFIX = 8
_MAX_PREFIX = 29
_MAX_PORT = 65535
_MAX_VNI = (1 << 24) - 1
_PROTOCOLS: dict[int, str] = {pb.PROTOCOL_TCP: "tcp", pb.PROTOCOL_UDP: "udp"}

_PortKey = tuple[int, int]  # (protocol, published port)


@dataclass(frozen=True)
class NetworkAllocation:
    subnet: str  # "10.0.3.0/24"
    gateway: str  # "10.0.3.1" (no prefix length)
    vni: int

    def network(self, net_id: str, spec: pb.NetworkSpec, now_ms: int) -> pb.Network:
        """The network object to store for `spec` with this allocation."""
        return pb.Network(
            meta=pb.Meta(id=net_id, created_at_ms=now_ms, updated_at_ms=now_ms),
            spec=spec,
            subnet=self.subnet,
            gateway=self.gateway,
            vni=self.vni,
        )


@dataclass
class _Network:
    id: str
    name: str
    subnet: ipaddress.IPv4Network
    gateway: int
    vni: int
    addresses: CursorPool  # the usable part of ip_range (or of the subnet); holds the gateway

    def label(self) -> str:
        return f"network {self.name!r} ({self.id})" if self.name else f"network {self.id}"

    def address_range(self) -> str:
        lo, hi = ipaddress.IPv4Address(self.addresses.lo), ipaddress.IPv4Address(self.addresses.hi)
        return f"{lo}-{hi}"

    def parse_address(self, text: str) -> int | None:
        """The address of a stored "a.b.c.d/len" if it is one this network hands out."""
        try:
            addr = ipaddress.ip_interface(text).ip
        except ValueError:
            return None
        if not isinstance(addr, ipaddress.IPv4Address) or addr not in self.subnet:
            return None
        value = int(addr)
        return None if value == self.gateway else value

    def cidr(self, value: int) -> str:
        return f"{ipaddress.IPv4Address(value)}/{self.subnet.prefixlen}"


def _parse_network(what: str, text: str) -> ipaddress.IPv4Network:
    if "/" not in text:
        raise InvalidArgument(
            f"invalid {what} {text!r}: expected CIDR notation such as 10.0.3.0/24"
        )
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(
            f"invalid {what} {text!r}: expected CIDR notation such as 10.0.3.0/24"
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidArgument(f"invalid {what} {text!r}: only IPv4 is supported")
    try:
        return ipaddress.IPv4Network(text)
    except ValueError:
        raise InvalidArgument(
            f"invalid {what} {text!r}: has host bits set (did you mean {net}?)"
        ) from None


def _usable(net: ipaddress.IPv4Network) -> tuple[int, int]:
    """First and last address a host may have: not the network or broadcast address."""
    return int(net.network_address) + 1, int(net.broadcast_address) - 1


def _node_of(spec: pb.ServiceSpec) -> str:
    """The node a standalone task's host-mode ports belong to ("": not standalone)."""
    return spec.standalone.node_id if spec.HasField("standalone") else ""


def _on_node(node: str, port: pb.PortConfig) -> str:
    """The node whose port this is: a standalone task's host-mode ports are its node's."""
    return node if port.publish_mode == pb.PUBLISH_MODE_HOST else ""


def _port_label(key: _PortKey) -> str:
    return f"{key[1]}/{_PROTOCOLS[key[0]]}"


class Allocator:
    def __init__(
        self,
        pools: Sequence[str] = ("10.0.0.0/8",),
        subnet_size: int = 24,
        vni_range: tuple[int, int] = (4096, 16_777_215),
        port_range: tuple[int, int] = (30000, 32767),
        host_port_range: tuple[int, int] = (32768, 60999),
        node_name: Callable[[str], str] = str,
    ) -> None:
        if not _MIN_PREFIX <= subnet_size <= _MAX_PREFIX:
            raise ValueError(f"subnet_size must be between {_MIN_PREFIX} and {_MAX_PREFIX}")
        self._pools = [ipaddress.IPv4Network(p) for p in pools]
        for pool in self._pools:
            if pool.prefixlen > subnet_size:
                raise ValueError(f"pool {pool} is smaller than a /{subnet_size} subnet")
        if not 1 <= vni_range[0] <= vni_range[1] <= _MAX_VNI:
            raise ValueError(f"vni_range must lie within 1-{_MAX_VNI}")
        if not 1 <= port_range[0] <= port_range[1] <= _MAX_PORT:
            raise ValueError(f"port_range must lie within 1-{_MAX_PORT}")
        self._subnet_size = subnet_size
        self._networks: dict[str, _Network] = {}
        # Address space taken by any network's subnet, explicit or automatic.
        self._occupied = IntervalSet()
        self._vnis = CursorPool(*vni_range)
        self._ports = {proto: CursorPool(*port_range) for proto in _PROTOCOLS}
        self._port_owners: dict[_PortKey, str] = {}
        # Standalone tasks' host-mode ports: (protocol, port) -> {node ID: service ID}. An
        # automatic one comes from `host_port_range` (Linux's ephemeral range, as Docker's -p).
        self._node_ports: dict[_PortKey, dict[str, str]] = {}
        self._host_range = host_port_range
        # Only for messages: a conflict should name the service and node the user knows.
        self._service_names: dict[str, str] = {}
        self._node_name = node_name

    # ------------------------------------------------------------------ restore

    def restore(
        self,
        networks: Iterable[pb.Network],
        services: Iterable[pb.Service],
        tasks: Iterable[pb.Task],
        nodes: Iterable[pb.Node] = (),
        *,
        attachments: Iterable[pb.Attachment] = (),
    ) -> None:
        """Mark as used everything stored objects hold: network subnets/gateways/VNIs, service
        VIPs and published ports, task addresses, nodes' own (ingress) addresses, and the
        addresses of nodes' attachments on attachable networks (CNI containers).

        Additive: it can also put back a stored service's allocations after a released endpoint
        (see `reallocate_service`). Cursors of pools that were empty before the call are moved
        just past the highest value now in use; pools that already had allocations keep theirs.
        """
        vnis_fresh = not self._vnis.used
        ports_fresh = [pool for pool in self._ports.values() if not pool.used]
        restored = []
        for stored in networks:
            if stored.meta.id not in self._networks and stored.subnet:
                net = self._stored_network(stored)
                self._add_network(net)
                self._vnis.used.add(net.vni, net.vni)
                restored.append(net)
        for svc in services:
            self._service_names[svc.meta.id] = svc.spec.name
            svc_node = _node_of(svc.spec)
            for port in svc.endpoint.ports:
                if port.published_port and port.protocol in _PROTOCOLS:
                    key = (port.protocol, port.published_port)
                    if on_node := _on_node(svc_node, port):
                        self._node_ports.setdefault(key, {}).setdefault(on_node, svc.meta.id)
                        continue
                    self._port_owners.setdefault(key, svc.meta.id)
                    self._ports[port.protocol].used.add(port.published_port, port.published_port)
            for vip in svc.endpoint.virtual_ips:
                self._mark_address(vip.network_id, vip.addr)
        for task in tasks:
            for att in task.networks:
                for addr in att.addresses:
                    self._mark_address(att.network_id, addr)
        held = [att for node in nodes for att in node.attachments]
        held += [attachment.network for attachment in attachments]
        for att in held:
            for addr in att.addresses:
                self._mark_address(att.network_id, addr)
        for net in restored:
            net.addresses.resume_after_highest(ignore=net.gateway)
        if vnis_fresh:
            self._vnis.resume_after_highest()
        for pool in ports_fresh:
            pool.resume_after_highest()

    def _stored_network(self, stored: pb.Network) -> _Network:
        try:
            subnet = ipaddress.IPv4Network(stored.subnet)
            gateway = ipaddress.IPv4Address(stored.gateway)
            ip_range = ipaddress.IPv4Network(stored.spec.ip_range) if stored.spec.ip_range else None
        except ValueError as exc:
            raise ValueError(f"stored network {stored.meta.id} is malformed: {exc}") from None
        return self._make_network(
            stored.meta.id, stored.spec.name, subnet, int(gateway), ip_range, stored.vni
        )

    def _mark_address(self, network_id: str, text: str) -> None:
        net = self._networks.get(network_id)
        value = net.parse_address(text) if net is not None else None
        if net is not None and value is not None:
            net.addresses.used.add(value, value)

    # ------------------------------------------------------------------ networks

    def allocate_network(self, network_id: str, spec: pb.NetworkSpec) -> NetworkAllocation:
        if network_id in self._networks:
            raise AlreadyExists(f"network {network_id} already has an allocation")
        if spec.subnet:
            subnet = self._explicit_subnet(spec.subnet)
            # Mistakes in what was asked are reported before conflicts with other networks.
            gateway = self._gateway(spec.gateway, subnet)
            ip_range = self._ip_range(spec.ip_range, subnet, gateway) if spec.ip_range else None
            self._check_free(subnet)
        elif spec.gateway or spec.ip_range:
            raise InvalidArgument(
                "a gateway or ip_range needs an explicit subnet: give the subnet as well"
            )
        else:
            subnet = self._free_subnet()
            gateway = self._gateway("", subnet)
            ip_range = None
        with all_or_nothing() as undo:
            vni = self._vnis.take_next(undo)
            if vni is None:
                raise ResourceExhausted(
                    f"no free VXLAN VNI left in {self._vnis.lo}-{self._vnis.hi}: "
                    "remove networks that are no longer used"
                )
            self._add_network(
                self._make_network(network_id, spec.name, subnet, gateway, ip_range, vni)
            )
        return NetworkAllocation(str(subnet), str(ipaddress.IPv4Address(gateway)), vni)

    def release_network(self, network: pb.Network) -> None:
        net = self._networks.pop(network.meta.id, None)
        if net is None:
            return
        self._occupied.remove(*self._span(net.subnet))
        self._vnis.used.remove(net.vni, net.vni)

    def _explicit_subnet(self, text: str) -> ipaddress.IPv4Network:
        subnet = _parse_network("subnet", text)
        if not _MIN_PREFIX <= subnet.prefixlen <= _MAX_PREFIX:
            raise InvalidArgument(
                f"invalid subnet {text!r}: prefix length must be between /{_MIN_PREFIX} "
                f"and /{_MAX_PREFIX}"
            )
        return subnet

    def _check_free(self, subnet: ipaddress.IPv4Network) -> None:
        if self._occupied.last_run_touching(*self._span(subnet)) is not None:
            other = min(
                (n for n in self._networks.values() if n.subnet.overlaps(subnet)),
                key=lambda n: n.subnet,
            )
            raise FailedPrecondition(
                f"subnet {subnet} overlaps subnet {other.subnet} of {other.label()}: "
                "choose a subnet that no other network uses"
            )

    def _free_subnet(self) -> ipaddress.IPv4Network:
        """First fit, jumping over whole runs of taken space rather than trying every block."""
        size = 1 << (32 - self._subnet_size)
        for pool in self._pools:
            candidate, last = self._span(pool)
            while candidate + size - 1 <= last:
                blocker = self._occupied.last_run_touching(candidate, candidate + size - 1)
                if blocker is None:
                    return ipaddress.IPv4Network((candidate, self._subnet_size))
                candidate = -(-(blocker[1] + 1) // size) * size  # next block boundary
        pools = ", ".join(str(p) for p in self._pools)
        raise ResourceExhausted(
            f"no free /{self._subnet_size} subnet left in address pool(s) {pools}: remove "
            "networks that are no longer used, or give an explicit subnet"
        )

    @staticmethod
    def _gateway(text: str, subnet: ipaddress.IPv4Network) -> int:
        first, last = _usable(subnet)
        if not text:
            return first
        try:
            gateway = ipaddress.ip_address(text)
        except ValueError:
            raise InvalidArgument(
                f"invalid gateway {text!r}: expected an IPv4 address such as "
                f"{ipaddress.IPv4Address(first)}, without a prefix length"
            ) from None
        if not isinstance(gateway, ipaddress.IPv4Address):
            raise InvalidArgument(f"invalid gateway {text!r}: only IPv4 is supported")
        if gateway not in subnet:
            raise InvalidArgument(f"gateway {gateway} is outside subnet {subnet}")
        if gateway == subnet.network_address:
            raise InvalidArgument(
                f"gateway {gateway} is the network address of subnet {subnet}: use an address "
                f"from {ipaddress.IPv4Address(first)} to {ipaddress.IPv4Address(last)}"
            )
        if gateway == subnet.broadcast_address:
            raise InvalidArgument(
                f"gateway {gateway} is the broadcast address of subnet {subnet}: use an address "
                f"from {ipaddress.IPv4Address(first)} to {ipaddress.IPv4Address(last)}"
            )
        return int(gateway)

    @staticmethod
    def _ip_range(text: str, subnet: ipaddress.IPv4Network, gateway: int) -> ipaddress.IPv4Network:
        ip_range = _parse_network("ip_range", text)
        if not ip_range.subnet_of(subnet):
            raise InvalidArgument(f"ip_range {ip_range} is not inside subnet {subnet}")
        first, last = _usable(subnet)
        lo = max(int(ip_range.network_address), first)
        hi = min(int(ip_range.broadcast_address), last)
        if hi < lo or (lo == hi == gateway):
            raise InvalidArgument(
                f"ip_range {ip_range} leaves no address for tasks in subnet {subnet} (the "
                "network address, broadcast address and gateway are never handed out)"
            )
        return ip_range

    @staticmethod
    def _span(net: ipaddress.IPv4Network) -> tuple[int, int]:
        return int(net.network_address), int(net.broadcast_address)

    @staticmethod
    def _make_network(
        network_id: str,
        name: str,
        subnet: ipaddress.IPv4Network,
        gateway: int,
        ip_range: ipaddress.IPv4Network | None,
        vni: int,
    ) -> _Network:
        first, last = _usable(subnet)
        if ip_range is not None:
            first = max(first, int(ip_range.network_address))
            last = min(last, int(ip_range.broadcast_address))
        addresses = CursorPool(first, last)
        addresses.used.add(gateway, gateway)
        return _Network(network_id, name, subnet, gateway, vni, addresses)

    def _add_network(self, net: _Network) -> None:
        self._networks[net.id] = net
        self._occupied.add(*self._span(net.subnet))

    # ------------------------------------------------------------------ services

    def allocate_service(
        self,
        service_id: str,
        spec: pb.ServiceSpec,
        network_ids: Sequence[str],
        held_on_node: Mapping[_PortKey, str] | None = None,
    ) -> pb.Endpoint:
        """`held_on_node`: for a standalone task, the ports programs listen on at its node
        (its agent's report), which its mappings may not take: (protocol, port) -> holder."""
        self._service_names[service_id] = spec.name
        return self._allocate_endpoint(
            service_id, spec, network_ids, pb.Endpoint(), held_on_node or {}
        )

    def reallocate_service(
        self, service: pb.Service, spec: pb.ServiceSpec, network_ids: Sequence[str]
    ) -> pb.Endpoint:
        """The endpoint for an updated spec: VIPs on networks still attached and published ports
        still asked for are kept (an automatic port stays with its (protocol, target port)).

        On success the old endpoint's VIPs and ports that the new one does not keep are released
        at once. To undo after a failed commit, `release_endpoint(id, new_endpoint)` and then
        `restore([], [service], [])` with the service as still stored: that puts back exactly the
        old endpoint (reallocating for the old spec would give fresh VIPs, not the stored ones).
        """
        old = service.endpoint
        new = self._allocate_endpoint(service.meta.id, spec, network_ids, old)
        new_ports = {(p.protocol, p.published_port) for p in new.ports}
        for port in old.ports:
            key = (port.protocol, port.published_port)
            if key not in new_ports:
                self._release_port(service.meta.id, key)
        new_vips = {(v.network_id, v.addr) for v in new.virtual_ips}
        for vip in old.virtual_ips:
            if (vip.network_id, vip.addr) not in new_vips:
                self._release_address(vip.network_id, vip.addr)
        return new

    def release_service(self, service: pb.Service) -> None:
        self.release_endpoint(service.meta.id, service.endpoint)
        self._service_names.pop(service.meta.id, None)

    def release_endpoint(self, service_id: str, endpoint: pb.Endpoint) -> None:
        for port in endpoint.ports:
            self._release_port(service_id, (port.protocol, port.published_port))
        for vip in endpoint.virtual_ips:
            self._release_address(vip.network_id, vip.addr)

    def _allocate_endpoint(
        self,
        service_id: str,
        spec: pb.ServiceSpec,
        network_ids: Sequence[str],
        old: pb.Endpoint,
        held: Mapping[_PortKey, str] | None = None,
    ) -> pb.Endpoint:
        endpoint_spec = spec.endpoint
        if endpoint_spec.mode not in (pb.ENDPOINT_MODE_VIP, pb.ENDPOINT_MODE_DNSRR):
            raise InvalidArgument(f"unknown endpoint mode {endpoint_spec.mode}")
        node = _node_of(spec)
        held = held or {}
        self._check_ports(service_id, endpoint_spec.ports, node, held)
        nets = self._attached(network_ids)
        explicit: set[_PortKey] = {
            (p.protocol, p.published_port) for p in endpoint_spec.ports if p.published_port
        }
        reusable = self._reusable_auto_ports(service_id, old, explicit, node)
        old_vips = {v.network_id: v.addr for v in old.virtual_ips}

        endpoint = pb.Endpoint()
        endpoint.spec.CopyFrom(endpoint_spec)
        endpoint.ports.extend(endpoint_spec.ports)
        with all_or_nothing() as undo:
            # Explicit ports first, so that an automatic one cannot take a port asked for later.
            for port in endpoint_spec.ports:
                if port.published_port:
                    key = (port.protocol, port.published_port)
                    self._claim_port(service_id, key, undo, _on_node(node, port))
            for filled in endpoint.ports:
                if filled.published_port:
                    continue
                kept = reusable.get((filled.protocol, filled.target_port))
                if kept:
                    filled.published_port = kept.pop(0)
                elif on_node := _on_node(node, filled):
                    filled.published_port = self._next_node_port(
                        service_id, on_node, filled.protocol, undo, held
                    )
                else:
                    filled.published_port = self._next_port(service_id, filled.protocol, undo)
            if endpoint_spec.mode == pb.ENDPOINT_MODE_VIP:
                for net in nets:
                    addr = old_vips.get(net.id)
                    if addr is None or net.parse_address(addr) is None:
                        addr = self._next_address(net, undo)
                    endpoint.virtual_ips.add(network_id=net.id, addr=addr)
        return endpoint

    def _check_ports(
        self,
        service_id: str,
        ports: Iterable[pb.PortConfig],
        node: str,
        held: Mapping[_PortKey, str],
    ) -> None:
        seen: set[_PortKey] = set()
        for port in ports:
            if port.protocol not in _PROTOCOLS:
                raise InvalidArgument(
                    f"unknown protocol {port.protocol} for target port {port.target_port}: "
                    "use tcp or udp"
                )
            proto = _PROTOCOLS[port.protocol]
            if not 1 <= port.target_port <= _MAX_PORT:
                raise InvalidArgument(
                    f"target port {port.target_port}/{proto} is out of range 1-{_MAX_PORT}"
                )
            if port.published_port > _MAX_PORT:
                pool = self._ports[port.protocol]
                raise InvalidArgument(
                    f"published port {port.published_port}/{proto} is out of range "
                    f"1-{_MAX_PORT} (leave it at 0 to get a free one from {pool.lo}-{pool.hi})"
                )
            if not port.published_port:
                continue
            key = (port.protocol, port.published_port)
            if key in seen:
                raise InvalidArgument(
                    f"port {_port_label(key)} is published more than once in the service spec"
                )
            seen.add(key)
            owner = self._port_owners.get(key)
            if owner is not None and owner != service_id:
                raise FailedPrecondition(
                    f"port {_port_label(key)} is already published by service {self._who(owner)}"
                )
            held_by = {n: s for n, s in self._node_ports.get(key, {}).items() if s != service_id}
            on_node = _on_node(node, port)
            holder_node = (
                on_node if on_node in held_by else ("" if on_node else next(iter(held_by), ""))
            )
            if holder_node:
                raise FailedPrecondition(
                    f"port {_port_label(key)} on node {self._node_name(holder_node)} is already "
                    f"taken by {self._who(held_by[holder_node])}"
                )
            if on_node and key in held:
                raise FailedPrecondition(
                    f"port {_port_label(key)} on node {self._node_name(on_node)} is already "
                    f"taken by {held[key]}, listening there"
                )

    def _who(self, service_id: str) -> str:
        name = self._service_names.get(service_id)
        return f"{name!r} ({service_id})" if name else service_id

    def _reusable_auto_ports(
        self, service_id: str, old: pb.Endpoint, explicit: set[_PortKey], node: str = ""
    ) -> dict[tuple[int, int], list[int]]:
        """The automatic ports the old endpoint holds, by (protocol, target port). The stored
        endpoint's spec tells which of its ports were automatic: it keeps the ports' order."""
        reusable: dict[tuple[int, int], list[int]] = {}
        if len(old.spec.ports) != len(old.ports):
            return reusable
        for asked, got in zip(old.spec.ports, old.ports, strict=True):
            key = (got.protocol, got.published_port)
            on_node = _on_node(node, got)
            holder = (
                self._node_ports.get(key, {}).get(on_node)
                if on_node
                else self._port_owners.get(key)
            )
            if not asked.published_port and key not in explicit and holder == service_id:
                reusable.setdefault((got.protocol, got.target_port), []).append(got.published_port)
        return reusable

    def _claim_port(self, service_id: str, key: _PortKey, undo: Undo, node: str = "") -> None:
        if node:
            holders = self._node_ports.setdefault(key, {})
            if node not in holders:
                holders[node] = service_id
                undo.append(lambda: holders.pop(node))
            return
        if self._port_owners.get(key) == service_id:
            return
        self._port_owners[key] = service_id
        undo.append(lambda: self._port_owners.pop(key))
        self._ports[key[0]].take(key[1], undo)

    def _next_port(self, service_id: str, protocol: int, undo: Undo) -> int:
        pool = self._ports[protocol]
        port = pool.take_next(undo)
        if port is None:
            raise ResourceExhausted(
                f"no free {_PROTOCOLS[protocol]} port left to publish in {pool.lo}-{pool.hi}: "
                "remove services that publish ports, or publish an explicit port"
            )
        key = (protocol, port)
        self._port_owners[key] = service_id
        undo.append(lambda: self._port_owners.pop(key))
        return port

    def _next_node_port(
        self, service_id: str, node: str, protocol: int, undo: Undo, held: Mapping[_PortKey, str]
    ) -> int:
        """The first port of the host range free on `node` (no mapping, no program listening)
        and not published cluster-wide."""
        lo, hi = self._host_range
        for port in range(lo, hi + 1):
            key = (protocol, port)
            if (
                key not in self._port_owners
                and node not in self._node_ports.get(key, {})
                and key not in held
            ):
                self._claim_port(service_id, key, undo, node)
                return port
        raise ResourceExhausted(
            f"no free {_PROTOCOLS[protocol]} port left on node {self._node_name(node)} in "
            f"{lo}-{hi}: remove tasks that map ports there, or map an explicit port"
        )

    def _release_port(self, service_id: str, key: _PortKey) -> None:
        holders = self._node_ports.get(key, {})
        for node in [n for n, s in holders.items() if s == service_id]:
            del holders[node]
        if not holders:
            self._node_ports.pop(key, None)
        if self._port_owners.get(key) == service_id:
            del self._port_owners[key]
            self._ports[key[0]].used.remove(key[1], key[1])

    # ------------------------------------------------------------------ tasks

    def allocate_task(self, network_ids: Sequence[str]) -> list[str]:
        nets = self._attached(network_ids)
        with all_or_nothing() as undo:
            return [self._next_address(net, undo) for net in nets]

    def release_task(self, task: pb.Task) -> None:
        self.release_attachments(task.networks)

    def release_attachments(self, attachments: Iterable[pb.NetworkAttachment]) -> None:
        """Give back the addresses of a task's or a node's network attachments."""
        for att in attachments:
            for addr in att.addresses:
                self._release_address(att.network_id, addr)

    def _attached(self, network_ids: Sequence[str]) -> list[_Network]:
        nets: dict[str, _Network] = {}
        for network_id in network_ids:
            net = self._networks.get(network_id)
            if net is None:
                raise NotFound(f"network {network_id} not found")
            if network_id in nets:
                raise InvalidArgument(f"{net.label()} is attached more than once")
            nets[network_id] = net
        return list(nets.values())

    @staticmethod
    def _next_address(net: _Network, undo: Undo) -> str:
        value = net.addresses.take_next(undo)
        if value is None:
            raise ResourceExhausted(
                f"{net.label()} has no free address left in {net.address_range()}: remove "
                "tasks or services attached to it, or use a network with a larger subnet"
            )
        return net.cidr(value)

    def _release_address(self, network_id: str, text: str) -> None:
        net = self._networks.get(network_id)
        value = net.parse_address(text) if net is not None else None
        if net is not None and value is not None:
            net.addresses.used.remove(value, value)

    # ------------------------------------------------------------------ for tests

    def _in_use(self) -> dict[str, Any]:
        """Everything allocated, without the cursors: what `restore` must rebuild."""
        return {
            "networks": {
                n.id: (
                    str(n.subnet),
                    n.gateway,
                    n.vni,
                    n.addresses.lo,
                    n.addresses.hi,
                    n.addresses.used.runs(),
                )
                for n in self._networks.values()
            },
            "subnets": self._occupied.runs(),
            "vnis": self._vnis.used.runs(),
            "ports": dict(self._port_owners),
            "port_values": {proto: pool.used.runs() for proto, pool in self._ports.items()},
        }

    def _snapshot(self) -> dict[str, Any]:
        """The whole state, cursors included: a failed call must leave it equal."""
        return {
            **self._in_use(),
            "cursors": (
                {n.id: n.addresses.cursor for n in self._networks.values()},
                self._vnis.cursor,
                {proto: pool.cursor for proto, pool in self._ports.items()},
            ),
        }
