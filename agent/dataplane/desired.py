"""The desired side of the data plane, derived from `DesiredState` without looking at the kernel
(except for the gwbridge addresses, which keep what a running task already has).

Input errors: a sandbox endpoint whose network is not in ``desired.networks`` (or whose index
repeats, or whose address lies outside the network's subnet) cannot be built; the planner skips
it and `problems(desired)` lists it in words, so that the caller can report it instead of failing
the whole host.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Interface

from agent.dataplane.observed import Observed
from agent.model import (
    INGRESS_SANDBOX,
    AttachmentConfig,
    DesiredState,
    HostConfig,
    LocalEndpoint,
    RemoteEndpoint,
    SandboxConfig,
)

ZERO_MAC = "00:00:00:00:00:00"
RESOLV_CONF = "nameserver 127.0.0.11\noptions ndots:0\n"
HOSTS_HEADER = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

# Names the agent manages inside a sandbox; anything else there belongs to the task.
_SANDBOX_IF = re.compile(r"^eth\d+$")


def problems(desired: DesiredState) -> list[str]:
    """Input errors in `desired` that make `plan` skip an endpoint, in words."""
    return [msg for _, msg in _endpoint_errors(desired)] + [
        msg for att in desired.attachments.values() if (msg := _attachment_error(desired, att))
    ]


def _attachment_error(desired: DesiredState, att: AttachmentConfig) -> str:
    net = desired.networks.get(att.network_id)
    if net is None:
        return f"attachment {att.id}: network {att.network_id} is not desired"
    if att.address.ip not in net.subnet:
        return f"attachment {att.id}: {att.address} is outside {net.subnet} ({net.id})"
    return ""


def valid_attachments(desired: DesiredState) -> list[AttachmentConfig]:
    """The attachments that can be built (the others are reported by `problems`)."""
    return [
        att for _, att in sorted(desired.attachments.items()) if not _attachment_error(desired, att)
    ]


def _endpoint_errors(desired: DesiredState) -> list[tuple[LocalEndpoint, str]]:
    return [e for sb in desired.sandboxes.values() for e in _sandbox_errors(desired, sb)]


def _sandbox_errors(desired: DesiredState, sb: SandboxConfig) -> list[tuple[LocalEndpoint, str]]:
    out: list[tuple[LocalEndpoint, str]] = []
    seen: set[int] = set()
    for ep in sb.endpoints:
        net = desired.networks.get(ep.network_id)
        if net is None:
            out.append((ep, f"task {sb.task_id}: network {ep.network_id} is not desired"))
        elif ep.index in seen:
            out.append((ep, f"task {sb.task_id}: eth{ep.index} attached twice"))
        elif ep.address.ip not in net.subnet:
            out.append((ep, f"task {sb.task_id}: {ep.address} is outside {net.subnet} ({net.id})"))
        seen.add(ep.index)
    return out


def valid_endpoints(desired: DesiredState, sb: SandboxConfig) -> list[LocalEndpoint]:
    """The sandbox's endpoints that can be built (the others are reported by `problems`)."""
    bad = {id(ep) for ep, _ in _sandbox_errors(desired, sb)}
    return [ep for ep in sb.endpoints if id(ep) not in bad]


def wants_egress(desired: DesiredState, sb: SandboxConfig) -> bool:
    """A leg on the gwbridge unless the task asked for none or every network is internal."""
    eps = valid_endpoints(desired, sb)
    if not sb.egress:
        return False
    return not eps or any(not desired.networks[ep.network_id].internal for ep in eps)


def render_hosts(sb: SandboxConfig, endpoints: Iterable[LocalEndpoint]) -> str:
    lines = [HOSTS_HEADER]
    if sb.hostname:
        lines += [f"{ep.address.ip}\t{sb.hostname}\n" for ep in endpoints]
    return "".join(lines)


def gwbridge_address(host: HostConfig) -> IPv4Interface:
    net = host.gwbridge_subnet
    return IPv4Interface(f"{net.network_address + 1}/{net.prefixlen}")


def ingress_gw_address(host: HostConfig) -> IPv4Interface:
    """The ingress sandbox's gwbridge address (the second of the subnet, after the bridge's)."""
    net = host.gwbridge_subnet
    return IPv4Interface(f"{net.network_address + 2}/{net.prefixlen}")


def allocate_gw_addresses(
    host: HostConfig, egress_tasks: Sequence[str], observed: Observed
) -> dict[str, IPv4Interface]:
    """gw0 address per egress task: what the kernel already has (so that a reconcile never
    renumbers a running task), else the lowest free address of the gwbridge subnet."""
    net = host.gwbridge_subnet
    ingress = ingress_gw_address(host)
    reserved = {net.network_address, net.broadcast_address, gwbridge_address(host).ip, ingress.ip}
    names = host.names
    out: dict[str, IPv4Interface] = {}
    if INGRESS_SANDBOX in egress_tasks:
        # The host's published ports are DNATed to it: a fixed address, known without a lookup.
        out[INGRESS_SANDBOX] = ingress
    used: set[IPv4Address] = set(reserved)
    for task_id in sorted(egress_tasks):
        if task_id == INGRESS_SANDBOX:
            continue
        sb = observed.sandboxes.get(names.sandbox_ns(task_id))
        gw = sb.links.get(names.sandbox_gw_if) if sb else None
        if gw is None:
            continue
        for a in sorted(gw.addresses):
            if a.network == net and a.ip not in used:
                out[task_id] = a
                used.add(a.ip)
                break
    free = (ip for ip in net.hosts() if ip not in used)
    for task_id in sorted(egress_tasks):
        if task_id not in out:
            ip = next(free)
            used.add(ip)
            out[task_id] = IPv4Interface(f"{ip}/{net.prefixlen}")
    return out


def desired_entries(
    host: HostConfig, network_id: str, remotes: Iterable[RemoteEndpoint]
) -> tuple[frozenset[tuple[str, str]], frozenset[tuple[str, str]]]:
    """FDB (mac, vtep) incl. the zero MAC per remote VTEP (BUM), and neighbours (ip, mac)."""
    fdb: set[tuple[str, str]] = set()
    neigh: set[tuple[str, str]] = set()
    vteps: dict[IPv4Address, str] = {}
    for r in remotes:
        if r.network_id != network_id or r.vtep == host.vtep:
            continue
        # endpoint_mac(r.address), and str() of addresses, without ipaddress's slow paths:
        # this loop runs over every remote endpoint of a network on every reconcile.
        packed = r.address.packed
        mac = "02:42:" + packed.hex(":")
        vtep = vteps.get(r.vtep)
        if vtep is None:
            vtep = vteps[r.vtep] = str(r.vtep)
            fdb.add((ZERO_MAC, vtep))
        fdb.add((mac, vtep))
        neigh.add((socket.inet_ntoa(packed), mac))
    return frozenset(fdb), frozenset(neigh)


def is_sandbox_if(name: str, names_gw_if: str = "gw0") -> bool:
    """Whether a sandbox interface is the agent's (eth<i> or gw0) rather than the task's."""
    return bool(_SANDBOX_IF.match(name)) or name == names_gw_if
