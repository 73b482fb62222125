"""Turn API responses into the text `ovctl` prints, with no I/O.

Tables are plain aligned columns (as docker prints them) rather than boxes, so that `awk`,
`cut` and `grep` work on the output. JSON output is the protobuf JSON mapping of the messages
with proto field names (snake_case), enum values by name, every field present even when it holds
its default, and 64-bit integers as strings (the proto3 JSON rule): a stable contract scripts
can rely on, which changes only when the .proto files do.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from osutil.hostport import next_port
from proto import control_pb2
from proto import objects_pb2 as pb

SHORT_ID_LEN = 12
_COLUMN_GAP = "   "


def short_id(object_id: str) -> str:
    return object_id[:SHORT_ID_LEN]


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns; the last column is not padded so lines carry no trailing blanks."""
    all_rows = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)]
        lines.append(_COLUMN_GAP.join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def to_dict(msg: Message) -> dict[str, Any]:
    """The one place messages become JSON-able dicts, so every command prints the same shape."""
    return MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def to_json(value: Message | Sequence[Message]) -> str:
    """One message as an object, several (inspect) as a list, indented as `docker inspect`."""
    if isinstance(value, Message):
        return json.dumps(to_dict(value), indent=4)
    return json.dumps([to_dict(m) for m in value], indent=4)


def _enum_prefix(wrapper: EnumTypeWrapper) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", wrapper.DESCRIPTOR.name).upper() + "_"


def enum_word(wrapper: EnumTypeWrapper, value: int) -> str:
    """TASK_STATE_RUNNING → "running"; a value newer than this client prints as its number."""
    try:
        name = wrapper.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(_enum_prefix(wrapper)).lower().replace("_", "-")


def enum_label(wrapper: EnumTypeWrapper, value: int) -> str:
    """TASK_STATE_RUNNING → "Running", NODE_AVAILABILITY_DRAIN → "Drain", as docker prints them."""
    return enum_word(wrapper, value).capitalize()


def human_duration(seconds: float) -> str:
    """Docker's rough "how long ago" wording ("5 seconds", "About a minute", "3 hours")."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = round(s / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"


def port_text(port: pb.PortConfig) -> str:
    """`*:8080->80/tcp`; a port the manager has not allocated yet shows as `*:?`."""
    published = str(port.published_port) if port.published_port else "?"
    proto = enum_word(pb.Protocol, port.protocol)
    host = " (host)" if port.publish_mode == pb.PUBLISH_MODE_HOST else ""
    return f"{port.published_ip or '*'}:{published}->{port.target_port}/{proto}{host}"


def service_ports(service: pb.Service) -> list[pb.PortConfig]:
    """The allocated ports once the manager has filled them in, else the ports asked for."""
    return list(service.endpoint.ports) or list(service.spec.endpoint.ports)


# ---------------------------------------------------------------- networks

NETWORK_HEADERS = ("NETWORK ID", "NAME", "SUBNET", "GATEWAY", "VNI", "FLAGS")


def network_flags(spec: pb.NetworkSpec) -> str:
    flags = [
        name
        for name, on in (
            ("internal", spec.internal),
            ("encrypted", spec.encrypted),
            ("attachable", spec.attachable),
            ("ingress", spec.ingress),
        )
        if on
    ]
    return ",".join(flags)


def network_row(n: pb.Network) -> list[str]:
    return [
        short_id(n.meta.id),
        n.spec.name,
        n.subnet or n.spec.subnet,
        n.gateway or n.spec.gateway,
        str(n.vni) if n.vni else "",
        network_flags(n.spec),
    ]


def network_table(networks: Iterable[pb.Network]) -> str:
    ordered = sorted(networks, key=lambda n: n.spec.name)
    return table(NETWORK_HEADERS, (network_row(n) for n in ordered))


# ---------------------------------------------------------------- services

SERVICE_HEADERS = ("ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS", "COMMAND")


def service_mode(spec: pb.ServiceSpec) -> str:
    return "global" if spec.WhichOneof("mode") == "global" else "replicated"


def service_row(s: pb.Service, running: int, desired: int) -> list[str]:
    return [
        short_id(s.meta.id),
        s.spec.name,
        service_mode(s.spec),
        f"{running}/{desired}",
        s.spec.image or "-",
        ", ".join(port_text(p) for p in service_ports(s)),
        shlex.join(s.spec.command),
    ]


def service_table(resp: control_pb2.ListServicesResponse) -> str:
    ordered = sorted(resp.services, key=lambda s: s.spec.name)
    rows = (
        service_row(s, resp.running_tasks.get(s.meta.id, 0), resp.desired_tasks.get(s.meta.id, 0))
        for s in ordered
    )
    return table(SERVICE_HEADERS, rows)


def service_pretty(s: pb.Service) -> str:
    """`service inspect --pretty`: the parts of a service a person checks before an update."""
    spec = s.spec
    mode = service_mode(spec)
    if mode == "replicated":
        mode += f" ({spec.replicated.replicas} replicas)"
    ports = ", ".join(port_text(p) for p in service_ports(s))
    vips = ", ".join(f"{v.addr} ({short_id(v.network_id)})" for v in s.endpoint.virtual_ips)
    lines = [
        f"ID:               {s.meta.id}",
        f"Name:             {spec.name}",
        f"Mode:             {mode}",
        f"Spec version:     {s.spec_version}",
        f"Image:            {spec.image or '- (process tasks)'}",
        f"Command:          {shlex.join(spec.command) or '(the image default)'}",
        f"Ports:            {ports or '-'}",
        f"Virtual IPs:      {vips or '-'}",
        f"Update:           {update_config_text(spec.update_config)}",
        f"Rollback:         {update_config_text(spec.rollback_config)}",
        f"Health check:     {health_check_text(spec.health_check)}",
    ]
    status = s.update_status
    if status.state:
        lines.append(f"Update status:    {enum_word(pb.UpdateStatus.State, status.state)}")
        if status.message:
            lines.append(f"  Message:        {status.message}")
    return "\n".join(lines)


def update_config_text(c: pb.UpdateConfig) -> str:
    """`parallelism 1, delay 0 ms, stop-first, on failure pause, monitor 0 ms, max failure
    ratio 0` (docker's --update-* names, in one line)."""
    monitor = c.monitor_ms if c.HasField("monitor_ms") else 0
    return (
        f"parallelism {c.parallelism or 'all'}, delay {c.delay_ms} ms, "
        f"{enum_word(pb.UpdateOrder, c.order)}, "
        f"on failure {enum_word(pb.UpdateFailureAction, c.failure_action)}, "
        f"monitor {monitor} ms, max failure ratio {c.max_failure_ratio:g}"
    )


# ---------------------------------------------------------------- standalone tasks

STANDALONE_HEADERS = ("ID", "NAME", "IMAGE", "COMMAND", "NODE", "STATUS", "PORTS")


def mapped_port_text(port: pb.PortConfig) -> str:
    """`0.0.0.0:8081->80/tcp`, as `docker ps` shows a mapping (`?` until allocated)."""
    published = str(port.published_port) if port.published_port else "?"
    addr = port.published_ip or "0.0.0.0"
    return f"{addr}:{published}->{port.target_port}/{enum_word(pb.Protocol, port.protocol)}"


def standalone_table(
    services: Iterable[pb.Service],
    latest: Mapping[str, pb.Task],
    hostnames: Mapping[str, str],
    now_ms: int,
) -> str:
    """`ovctl ps`: one line per standalone task, its latest run's state (and error)."""
    rows = []
    for s in services:
        task = latest.get(s.meta.id)
        if task is None:
            status = "Pending (no task yet)"
        else:
            status = current_state(task.status, now_ms)
            if task.status.err:
                status += f": {task.status.err}"
        node = s.spec.standalone.node_id
        rows.append(
            [
                short_id(s.meta.id),
                s.spec.name,
                s.spec.image or "-",
                shlex.join(s.spec.command) or "(image default)",
                hostnames.get(node, node),
                status,
                ", ".join(mapped_port_text(p) for p in service_ports(s)),
            ]
        )
    return table(STANDALONE_HEADERS, rows)


# ---------------------------------------------------------------- tasks

TASK_HEADERS = ("ID", "NAME", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "ADDRESSES")
_HISTORY_MARK = " \\_ "


def task_name(t: pb.Task) -> str:
    """`service.slot` for replicated tasks, `service.node` for global ones (slot 0)."""
    return f"{t.service_name}.{t.slot if t.slot else t.node_id}"


def current_state(status: pb.TaskStatus, now_ms: int) -> str:
    """`Running 5 seconds ago`, with the health verdict of a checked task after it, as
    `docker ps` prints `Up 5 seconds (healthy)`."""
    label = enum_label(pb.TaskState, status.state)
    if status.timestamp_ms:
        ago = max(0, now_ms - status.timestamp_ms) / 1000
        label = f"{label} {human_duration(ago)} ago"
    if status.health != pb.TASK_HEALTH_NONE:
        label += f" ({enum_word(pb.TaskHealth, status.health)})"
    return label


def health_check_text(hc: pb.HealthCheck) -> str:
    """One line for a service's health check: what is checked, then the timing, with the
    defaults the agent applies to the values left at 0."""
    if hc.command:
        words = list(hc.command)
        what = words[2] if words[:2] == ["sh", "-c"] and len(words) == 3 else shlex.join(words)
        kind = f"cmd {what!r}"
    elif hc.tcp_port:
        kind = f"tcp port {hc.tcp_port}"
    else:
        return "none"
    interval = hc.interval_ms or 1000
    timeout = hc.timeout_ms or 1000
    retries = hc.retries or 3
    return (
        f"{kind}, every {interval} ms, timeout {timeout} ms, {retries} retries, "
        f"start period {hc.start_period_ms} ms"
    )


def order_tasks(
    tasks: Iterable[pb.Task], hostnames: Mapping[str, str]
) -> list[tuple[pb.Task, bool]]:
    """Tasks grouped by slot (by node for global services), newest first, each with whether it
    is an older task of its slot: `docker service ps` shows a slot's history beneath it."""
    slots: dict[str, list[pb.Task]] = {}
    for t in tasks:
        slots.setdefault(task_name(t), []).append(t)

    def slot_order(name: str) -> tuple[str, int, str]:
        first = slots[name][0]
        return (first.service_name, first.slot, hostnames.get(first.node_id, first.node_id))

    ordered: list[tuple[pb.Task, bool]] = []
    for name in sorted(slots, key=slot_order):
        history = sorted(slots[name], key=lambda t: t.meta.created_at_ms, reverse=True)
        ordered.extend((t, i > 0) for i, t in enumerate(history))
    return ordered


def task_row(t: pb.Task, older: bool, hostnames: Mapping[str, str], now_ms: int) -> list[str]:
    return [
        short_id(t.meta.id),
        _HISTORY_MARK + task_name(t) if older else task_name(t),
        hostnames.get(t.node_id, t.node_id),
        enum_label(pb.TaskState, t.desired_state),
        current_state(t.status, now_ms),
        t.status.err,
        ",".join(a for n in t.networks for a in n.addresses),
    ]


def task_table(tasks: Iterable[pb.Task], hostnames: Mapping[str, str], now_ms: int) -> str:
    rows = (task_row(t, older, hostnames, now_ms) for t, older in order_tasks(tasks, hostnames))
    return table(TASK_HEADERS, rows)


# ---------------------------------------------------------------- nodes, cluster

NODE_HEADERS = ("ID", "HOSTNAME", "STATUS", "AVAILABILITY", "ROLE", "ADDRESS")


def node_row(n: pb.Node) -> list[str]:
    return [
        short_id(n.meta.id),
        n.description.hostname,
        enum_label(pb.NodeState, n.status.state),
        enum_label(pb.NodeAvailability, n.spec.availability),
        enum_word(pb.NodeRole, n.spec.role),
        n.description.addr,
    ]


def node_table(nodes: Iterable[pb.Node]) -> str:
    ordered = sorted(nodes, key=lambda n: n.description.hostname)
    return table(NODE_HEADERS, (node_row(n) for n in ordered))


def cluster_info_text(resp: control_pb2.GetClusterInfoResponse) -> str:
    leader = next((m for m in resp.managers if m.leader), None)
    leader_text = (
        f"{leader.manager_id} ({leader.addr})" if leader else resp.leader_id or "none elected"
    )
    managers = table(
        ("MANAGER ID", "ADDRESS", "LEADER"),
        ([m.manager_id, m.addr, "yes" if m.leader else ""] for m in resp.managers),
    )
    return f"Leader: {leader_text}\netcd revision: {resp.etcd_revision}\n\n{managers}"


def join_token_text(role: str, token: str, managers: Sequence[str], rotated: bool) -> str:
    """What `cluster join-token` prints, as `docker swarm join-token` does: the command to run
        on the new node. `managers` come leader first; a manager joins through the leader's join
    listener (its port + 1)."""
    head = f"Successfully rotated {role} join token.\n\n" if rotated else ""
    if role == "manager":
        command = (
            f"ovnet-manager --etcd ETCD_ENDPOINTS --join {next_port(managers[0])} "
            f"--join-token {token}"
        )
    else:
        command = f"ovnet-agent --manager {','.join(managers)} --join-token {token}"
    return f"{head}To add a {role} to this cluster, run on it:\n  {command}"


def log_lines(line: control_pb2.LogLine, hostnames: Mapping[str, str]) -> list[str]:
    """`task@node | text` for every line the message carries (a chunk may hold several)."""
    prefix = f"{line.task_name}@{hostnames.get(line.node_id, line.node_id)} | "
    text = line.data.decode("utf-8", errors="replace")
    return [prefix + part for part in text.removesuffix("\n").split("\n")]


# ---------------------------------------------------------------- node inspect --pretty

GOSSIP_MEMBER_HEADERS = ("NODE", "ADDRESS", "STATE", "INCARNATION")
GOSSIP_NETWORK_HEADERS = ("NETWORK", "ENTRIES", "PEERS")


def human_bytes(n: int) -> str:
    """1536 → "1.5 KiB" (binary units, as `ip -s -h link` prints them)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def ago(then_ms: int, now_ms: int) -> str:
    """How long ago, as docker words it ("5 seconds ago"); "never" for 0 (unset in the proto)."""
    if not then_ms:
        return "never"
    return f"{human_duration(max(0, now_ms - then_ms) / 1000)} ago"


def _named(node_id: str, hostnames: Mapping[str, str]) -> str:
    """A node's hostname with its short ID, or the bare ID of a node the manager does not know
    (gossip may still hear of a node that has been removed)."""
    name = hostnames.get(node_id)
    return f"{name} ({short_id(node_id)})" if name else node_id


def gossip_text(
    status: pb.GossipStatus,
    now_ms: int,
    hostnames: Mapping[str, str],
    networks: Mapping[str, str],
) -> str:
    """A node's gossip view: who it sees in which state, what it holds per network, how fresh
    its last full sync is, what it dropped and how much it sent and received."""
    if not status.updated_ms:
        return "Gossip:\n  (no report from this node's agent to the current leader yet)"
    dropped = ", ".join(f"{reason}={n}" for reason, n in sorted(status.dropped.items()) if n)
    lines = [
        f"Gossip (reported {ago(status.updated_ms, now_ms)}):",
        f"  Last sync:  {ago(status.last_sync_ms, now_ms)}",
        f"  Received:   {status.packets_in} packets, {human_bytes(status.bytes_in)}",
        f"  Sent:       {status.packets_out} packets, {human_bytes(status.bytes_out)}",
        f"  Dropped:    {dropped or 'none'}",
        f"  Members ({len(status.members)}):",
    ]
    members = sorted(status.members, key=lambda m: (hostnames.get(m.node_id, "~"), m.node_id))
    rows = ([_named(m.node_id, hostnames), m.addr, m.state, str(m.incarnation)] for m in members)
    lines += ["    " + line for line in table(GOSSIP_MEMBER_HEADERS, rows).splitlines()]
    lines.append(f"  Networks ({len(status.networks)}):")
    if status.networks:
        views = sorted(
            status.networks, key=lambda v: (networks.get(v.network_id, "~"), v.network_id)
        )
        net_rows = (
            [
                networks.get(v.network_id, v.network_id),
                str(v.entries),
                ", ".join(sorted(_named(p, hostnames) for p in v.peers)) or "-",
            ]
            for v in views
        )
        lines += ["    " + ln for ln in table(GOSSIP_NETWORK_HEADERS, net_rows).splitlines()]
    return "\n".join(lines)


def node_pretty(
    node: pb.Node,
    gossip: pb.GossipStatus,
    now_ms: int,
    hostnames: Mapping[str, str],
    networks: Mapping[str, str],
    ipsec: pb.IpsecStatus | None = None,
) -> str:
    """`node inspect --pretty`: the node as docker prints it, then its IPsec and gossip
    views."""
    d = node.description
    labels = ", ".join(f"{k}={v}" for k, v in sorted(node.spec.labels.items()))
    status = enum_label(pb.NodeState, node.status.state)
    if node.status.message:
        status += f" ({node.status.message})"
    lines = [
        f"ID:               {node.meta.id}",
        f"Hostname:         {d.hostname}",
        f"Joined:           {ago(node.meta.created_at_ms, now_ms)}",
        f"Status:           {status}",
        f"Last heartbeat:   {ago(node.status.last_heartbeat_ms, now_ms)}",
        f"Availability:     {enum_label(pb.NodeAvailability, node.spec.availability)}",
        f"Role:             {enum_word(pb.NodeRole, node.spec.role)}",
        f"Address:          {d.addr}",
        f"Ingress address:  {ingress_address(node) or '-'}",
        f"Gossip port:      {d.gossip_port or '-'}",
        f"Platform:         {d.platform or '-'}",
        f"Agent version:    {d.agent_version or '-'}",
        f"Labels:           {labels or '-'}",
        *(f"Unavailable:      {k}: {v}" for k, v in sorted(d.unavailable.items())),
        *ipsec_lines(ipsec, now_ms),
        "",
        gossip_text(gossip, now_ms, hostnames, networks),
    ]
    return "\n".join(lines)


def ipsec_lines(st: pb.IpsecStatus | None, now_ms: int) -> list[str]:
    """The node's view of ESP from each peer host, and the cleartext its kernel refused."""
    if st is None or not (st.peers or st.cleartext_dropped_in or st.cleartext_blocked_out):
        return []
    lines = [
        f"IPsec:            cleartext refused: {st.cleartext_dropped_in} in, "
        f"{st.cleartext_blocked_out} out"
    ]
    for p in st.peers:
        silent = max(0, now_ms - p.silent_since_ms) // 1000
        state = "ok" if not p.silent_since_ms else f"no ESP for {silent} s"
        lines.append(f"  ESP from {p.addr}: {state}")
    return lines


def ingress_address(node: pb.Node) -> str:
    """The node's own address on the ingress network (the only kind of node attachment)."""
    return ", ".join(a for att in node.attachments for a in att.addresses)


def network_inspect_dict(resp: control_pb2.GetNetworkResponse) -> dict[str, Any]:
    """`network inspect` JSON: the Network, plus "endpoints" (every task, standalone task,
    attached container and node holding an address on it, as docker's "Containers"), and
    for an encrypted one "ipsec": each host's view of ESP from each other host on it."""
    out = to_dict(resp.network)
    out["endpoints"] = [to_dict(e) for e in resp.endpoints]
    if resp.network.spec.encrypted:
        out["ipsec"] = [to_dict(link) for link in resp.ipsec]
    return out


ENDPOINT_HEADERS = ("NODE", "KIND", "NAME", "ADDRESS", "STATE")


def endpoint_lines(endpoints: Sequence[control_pb2.NetworkEndpoint]) -> list[str]:
    """The Endpoints part of `network inspect --pretty`: one row per address, as the manager
    ordered them (by node, kind, name); a task not placed yet shows node "-"."""
    if not endpoints:
        return ["Endpoints:  -"]
    rows = ([e.node or "-", e.kind, e.name, e.address, e.state or "-"] for e in endpoints)
    return ["Endpoints:", *("  " + line for line in table(ENDPOINT_HEADERS, rows).splitlines())]


def network_pretty(resp: control_pb2.GetNetworkResponse) -> str:
    """`network inspect --pretty`."""
    net = resp.network
    s = net.spec
    options = {
        "encrypted": s.encrypted,
        "internal": s.internal,
        "attachable": s.attachable,
        "ingress": s.ingress,
    }
    flags = [name for name, on in options.items() if on]
    lines = [
        f"ID:         {net.meta.id}",
        f"Name:       {s.name}",
        f"Subnet:     {net.subnet}",
        f"Gateway:    {net.gateway}",
        f"VNI:        {net.vni}",
        f"Options:    {', '.join(flags) or '-'}",
    ]
    if s.encrypted:
        lines.append(
            "IPsec:" + ("" if resp.ipsec else "      - (fewer than two hosts run tasks on it)")
        )
        lines += [f"  {link.node} <- {link.peer}: {link.state}" for link in resp.ipsec]
    lines += endpoint_lines(resp.endpoints)
    return "\n".join(lines)


def node_inspect_dict(resp: control_pb2.GetNodeResponse) -> dict[str, Any]:
    """`node inspect` JSON: the Node object, plus its agent's gossip report under "gossip"
    and its IPsec report under "ipsec"."""
    return {**to_dict(resp.node), "gossip": to_dict(resp.gossip), "ipsec": to_dict(resp.ipsec)}
