"""Turn the text a person types into API messages, with no I/O.

Everything here raises `SpecError` with a message that names the bad input and says what would
be accepted, so the CLI can print it unchanged as a usage error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

from proto import objects_pb2 as pb

_E = TypeVar("_E")


class SpecError(ValueError):
    """A value given on the command line cannot be turned into a request."""


class SpecConflict(SpecError):
    """The change is well formed but does not fit the object as the manager returned it."""


# ---------------------------------------------------------------- scalars

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def parse_duration(text: str) -> int:
    """Milliseconds from Go-style durations ("500ms", "5s", "1m30s", "1.5h").

    A unit is required (except for "0") because a bare number is ambiguous between the seconds
    docker users expect and the milliseconds the API stores.
    """
    s = text.strip()
    if s == "0":
        return 0
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            break
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise SpecError(
            f"invalid duration {text!r}: use a number with a unit ms, s, m or h "
            "(e.g. 500ms, 5s, 1m30s)"
        )
    return round(total)


def parse_uint(text: str, what: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise SpecError(f"invalid {what} {text!r}: expected a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and {maximum}" if maximum is not None else ""
        bound = f"between {minimum}{upper}" if maximum is not None else f">= {minimum}"
        raise SpecError(f"invalid {what} {value}: must be {bound}")
    return value


def parse_port(text: str, what: str = "port") -> int:
    return parse_uint(text, what, minimum=1, maximum=65535)


def parse_key_value(text: str, what: str, *, value_required: bool = False) -> tuple[str, str]:
    """Split "k=v"; "k" alone means an empty value where docker allows that (labels, options)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not key:
        raise SpecError(f"invalid {what} {text!r}: the key before '=' is empty")
    if value_required and not sep:
        raise SpecError(f"invalid {what} {text!r}: expected KEY=VALUE")
    return key, value


def parse_env(text: str) -> str:
    """Validate "K=V": the spec carries environment entries verbatim, so only the shape matters."""
    key, value = parse_key_value(text, "environment variable", value_required=True)
    return f"{key}={value}"


def parse_cidr(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=True))
    except ValueError as e:
        raise SpecError(f"invalid {what} {text!r}: {e}") from None


def parse_ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise SpecError(f"invalid {what} {text!r}: expected an IP address") from None


def parse_bool(text: str, what: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("", "true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise SpecError(f"invalid {what} {text!r}: expected true or false")


# ---------------------------------------------------------------- enums

_PROTOCOLS = {"tcp": pb.PROTOCOL_TCP, "udp": pb.PROTOCOL_UDP}
_PUBLISH_MODES = {"ingress": pb.PUBLISH_MODE_INGRESS, "host": pb.PUBLISH_MODE_HOST}
ENDPOINT_MODES = {"vip": pb.ENDPOINT_MODE_VIP, "dnsrr": pb.ENDPOINT_MODE_DNSRR}
RESTART_CONDITIONS = {
    "any": pb.RESTART_CONDITION_ANY,
    "on-failure": pb.RESTART_CONDITION_ON_FAILURE,
    "none": pb.RESTART_CONDITION_NONE,
}
NODE_AVAILABILITIES = {
    "active": pb.NODE_AVAILABILITY_ACTIVE,
    "pause": pb.NODE_AVAILABILITY_PAUSE,
    "drain": pb.NODE_AVAILABILITY_DRAIN,
}
NODE_ROLES = {"worker": pb.NODE_ROLE_WORKER, "manager": pb.NODE_ROLE_MANAGER}


def _choice(table: dict[str, _E], text: str, what: str) -> _E:
    try:
        return table[text.strip().lower()]
    except KeyError:
        raise SpecError(f"invalid {what} {text!r}: expected one of {', '.join(table)}") from None


# The stubs type enum values as plain ints; these are TaskState values by construction.
_TASK_STATES = {
    name.removeprefix("TASK_STATE_").lower(): cast(pb.TaskState, value)
    for name, value in pb.TaskState.items()
}


def parse_task_state(text: str) -> pb.TaskState:
    """Any task state by its short name ("running", "shutdown"), as `--filter desired-state=`."""
    return _choice(_TASK_STATES, text, "task state")


# ---------------------------------------------------------------- ports

_SHORT_PUBLISH = re.compile(
    r"^(?:(?P<published>[^:/]+):)?(?P<target>[^:/]+)(?:/(?P<proto>[^:/]+))?$"
)


def parse_publish(text: str) -> pb.PortConfig:
    """A `--publish` value in docker's short ("8080:80/udp", "80") or long form.

    The long form is comma-separated `published=`, `target=`, `protocol=`, `mode=`. A missing
    published port stays 0, which asks the manager to allocate one.
    """
    s = text.strip()
    if "=" in s:
        return _parse_long_publish(s)
    m = _SHORT_PUBLISH.match(s)
    if m is None:
        raise SpecError(
            f"invalid publish {text!r}: expected PUBLISHED:TARGET[/tcp|udp], TARGET, or "
            "published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]"
        )
    port = pb.PortConfig(target_port=parse_port(m["target"], "target port"))
    if m["published"] is not None:
        port.published_port = parse_port(m["published"], "published port")
    if m["proto"] is not None:
        port.protocol = _choice(_PROTOCOLS, m["proto"], "protocol")
    return port


def _parse_long_publish(text: str) -> pb.PortConfig:
    port = pb.PortConfig()
    seen_target = False
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep:
            raise SpecError(f"invalid publish {text!r}: {item!r} is not KEY=VALUE")
        if key == "target":
            port.target_port = parse_port(value, "target port")
            seen_target = True
        elif key == "published":
            port.published_port = parse_port(value, "published port")
        elif key == "protocol":
            port.protocol = _choice(_PROTOCOLS, value, "protocol")
        elif key == "mode":
            port.publish_mode = _choice(_PUBLISH_MODES, value, "publish mode")
        else:
            raise SpecError(
                f"invalid publish {text!r}: unknown key {key!r} "
                "(expected published, target, protocol, mode)"
            )
    if not seen_target:
        raise SpecError(f"invalid publish {text!r}: target=PORT is required")
    return port


def parse_port_ref(text: str) -> tuple[int, int | None]:
    """`--publish-rm` value "TARGET[/PROTO]": the protocol is None when any protocol matches."""
    target, _, proto = text.strip().partition("/")
    return (
        parse_port(target, "target port"),
        _choice(_PROTOCOLS, proto, "protocol") if proto else None,
    )


# ---------------------------------------------------------------- networks, placement


def parse_network_attachment(text: str) -> pb.NetworkAttachmentConfig:
    """`--network NET[,alias=A...]`; docker's long form `name=NET,alias=A` is accepted too."""
    att = pb.NetworkAttachmentConfig()
    for i, item in enumerate(text.split(",")):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep and i == 0:
            att.target = key
        elif sep and key in ("name", "target"):
            att.target = value
        elif sep and key == "alias":
            if not value:
                raise SpecError(f"invalid network {text!r}: alias= is empty")
            att.aliases.append(value)
        else:
            raise SpecError(
                f"invalid network {text!r}: expected NETWORK[,alias=ALIAS...] (unexpected {item!r})"
            )
    if not att.target:
        raise SpecError(f"invalid network {text!r}: the network name is empty")
    return att


_CONSTRAINT = re.compile(r"^\s*(?P<key>[A-Za-z0-9_.\-/]+)\s*(?P<op>==|!=)\s*(?P<value>\S.*?)\s*$")


def parse_constraint(text: str) -> str:
    """Check the KEY==VALUE / KEY!=VALUE shape and normalise spacing, so that `--constraint-rm`
    matches an expression however it was spaced when added. Which keys exist is the manager's
    business."""
    m = _CONSTRAINT.match(text)
    if m is None:
        raise SpecError(
            f"invalid constraint {text!r}: expected KEY==VALUE or KEY!=VALUE "
            "(e.g. node.labels.zone==a, node.role!=manager)"
        )
    return f"{m['key']}{m['op']}{m['value']}"


# ---------------------------------------------------------------- filters, scale


def parse_filters(items: Iterable[str], allowed: Sequence[str]) -> dict[str, list[str]]:
    """`--filter KEY=VALUE` options grouped by key; repeated keys accumulate, as in docker."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or not value:
            raise SpecError(f"invalid filter {item!r}: expected KEY=VALUE")
        if key not in allowed:
            raise SpecError(
                f"invalid filter {item!r}: unknown key {key!r} (expected {', '.join(allowed)})"
            )
        out.setdefault(key, []).append(value)
    return out


def parse_scale(text: str) -> tuple[str, int]:
    name, sep, count = text.rpartition("=")
    if not sep or not name:
        raise SpecError(f"invalid scale {text!r}: expected SERVICE=REPLICAS")
    return name, parse_uint(count, f"replica count for {name}")


def parse_tail(text: str) -> int:
    """`--tail N` or `--tail all`; 0 asks the manager for everything it keeps."""
    return 0 if text.strip().lower() == "all" else parse_uint(text, "tail")


# ---------------------------------------------------------------- network spec


def network_spec(
    *,
    name: str,
    subnet: str | None = None,
    gateway: str | None = None,
    ip_range: str | None = None,
    internal: bool = False,
    attachable: bool = False,
    ingress: bool = False,
    opts: Sequence[str] = (),
    labels: Sequence[str] = (),
) -> pb.NetworkSpec:
    """`encrypted` is an option in docker's syntax but a first-class field in the API."""
    spec = pb.NetworkSpec(name=name, internal=internal, attachable=attachable, ingress=ingress)
    if subnet:
        spec.subnet = parse_cidr(subnet, "subnet")
    if gateway:
        spec.gateway = parse_ip(gateway, "gateway")
    if ip_range:
        spec.ip_range = parse_cidr(ip_range, "IP range")
    for opt in opts:
        key, value = parse_key_value(opt, "option")
        if key == "encrypted":
            spec.encrypted = parse_bool(value, "option encrypted")
        else:
            spec.options[key] = value
    for label in labels:
        key, value = parse_key_value(label, "label")
        spec.labels[key] = value
    return spec


# ---------------------------------------------------------------- service spec


@dataclass
class HealthOptions:
    """The `--health-*` flags; None where a flag was not given."""

    cmd: str | None = None
    tcp_port: int | None = None
    interval_ms: int | None = None
    timeout_ms: int | None = None
    retries: int | None = None
    start_period_ms: int | None = None

    def given(self) -> bool:
        return any(v is not None for v in vars(self).values())


def apply_health(spec: pb.ServiceSpec, h: HealthOptions | None, *, clear: bool = False) -> None:
    """Set the health check from the flags, on top of the one `spec` has.

    `--health-cmd STRING` is run by a shell (stored as ["sh", "-c", STRING]), as docker's
    `--health-cmd` is. Giving a command replaces a TCP check and the other way round, so that
    `service update --health-tcp 80` switches kinds without a separate removal. `clear`
    (`--no-healthcheck`) removes the check and admits no other health flag.
    """
    given = h is not None and h.given()
    if clear:
        if given:
            raise SpecError("--no-healthcheck cannot be combined with other --health-* options")
        spec.ClearField("health_check")
        return
    if h is None or not given:
        return
    if h.cmd is not None and h.tcp_port is not None:
        raise SpecError("--health-cmd and --health-tcp are exclusive: give one of them")
    hc = spec.health_check
    hc.SetInParent()
    if h.cmd is not None:
        if not h.cmd.strip():
            raise SpecError("--health-cmd is empty: give a command, e.g. --health-cmd 'true'")
        del hc.command[:]
        hc.command.extend(["sh", "-c", h.cmd])
        hc.tcp_port = 0
    if h.tcp_port is not None:
        del hc.command[:]
        hc.tcp_port = h.tcp_port
    if h.interval_ms is not None:
        hc.interval_ms = h.interval_ms
    if h.timeout_ms is not None:
        hc.timeout_ms = h.timeout_ms
    if h.retries is not None:
        hc.retries = h.retries
    if h.start_period_ms is not None:
        hc.start_period_ms = h.start_period_ms


@dataclass
class ServiceOptions:
    """What `service create` was given, already parsed into API values where that is local."""

    name: str
    command: list[str]
    networks: list[pb.NetworkAttachmentConfig] = field(default_factory=list)
    replicas: int | None = None
    mode: str | None = None
    ports: list[pb.PortConfig] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    max_replicas_per_node: int | None = None
    endpoint_mode: str | None = None
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    labels: list[str] = field(default_factory=list)
    restart_condition: str | None = None
    restart_delay_ms: int | None = None
    restart_max_attempts: int | None = None
    restart_window_ms: int | None = None
    update_parallelism: int | None = None
    update_delay_ms: int | None = None
    health: HealthOptions | None = None


def service_spec(o: ServiceOptions) -> pb.ServiceSpec:
    """Sub-messages are only set when the user gave one of their options, so the manager's
    defaults (e.g. a restart delay) apply to everything left out."""
    if not o.command:
        raise SpecError("a service needs a command: put it after --, e.g. -- sleep infinity")
    if o.mode == "global" and o.replicas is not None:
        raise SpecError("--replicas cannot be used with --mode global")
    spec = pb.ServiceSpec(name=o.name, command=o.command, networks=o.networks)
    if o.mode == "global":
        getattr(spec, "global").SetInParent()  # `global` is a Python keyword
    else:
        spec.replicated.replicas = 1 if o.replicas is None else o.replicas
    spec.env.extend(parse_env(e) for e in o.env)
    if o.workdir:
        spec.workdir = o.workdir
    for label in o.labels:
        key, value = parse_key_value(label, "label")
        spec.labels[key] = value
    if o.ports or o.endpoint_mode:
        spec.endpoint.ports.extend(o.ports)
        if o.endpoint_mode:
            spec.endpoint.mode = _choice(ENDPOINT_MODES, o.endpoint_mode, "endpoint mode")
    if o.constraints or o.max_replicas_per_node is not None:
        spec.placement.constraints.extend(parse_constraint(c) for c in o.constraints)
        if o.max_replicas_per_node is not None:
            spec.placement.max_replicas_per_node = o.max_replicas_per_node
    _apply_restart(
        spec, o.restart_condition, o.restart_delay_ms, o.restart_max_attempts, o.restart_window_ms
    )
    _apply_update_config(spec, o.update_parallelism, o.update_delay_ms)
    apply_health(spec, o.health)
    return spec


def _apply_restart(
    spec: pb.ServiceSpec,
    condition: str | None,
    delay_ms: int | None,
    max_attempts: int | None,
    window_ms: int | None,
) -> None:
    if condition is None and delay_ms is None and max_attempts is None and window_ms is None:
        return
    policy = spec.restart_policy
    policy.SetInParent()
    if condition is not None:
        policy.condition = _choice(RESTART_CONDITIONS, condition, "restart condition")
    if delay_ms is not None:
        policy.delay_ms = delay_ms
    if max_attempts is not None:
        policy.max_attempts = max_attempts
    if window_ms is not None:
        policy.window_ms = window_ms


def _apply_update_config(
    spec: pb.ServiceSpec, parallelism: int | None, delay_ms: int | None
) -> None:
    if parallelism is None and delay_ms is None:
        return
    spec.update_config.SetInParent()
    if parallelism is not None:
        spec.update_config.parallelism = parallelism
    if delay_ms is not None:
        spec.update_config.delay_ms = delay_ms


@dataclass
class ServiceChanges:
    """What `service update` asks for; applied to a spec read from the manager."""

    replicas: int | None = None
    env_add: list[str] = field(default_factory=list)
    env_rm: list[str] = field(default_factory=list)
    publish_add: list[pb.PortConfig] = field(default_factory=list)
    publish_rm: list[tuple[int, int | None]] = field(default_factory=list)
    constraint_add: list[str] = field(default_factory=list)
    constraint_rm: list[str] = field(default_factory=list)
    network_add: list[pb.NetworkAttachmentConfig] = field(default_factory=list)
    # The reference as given, and every name it may be stored under (as given, ID, name).
    network_rm: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    update_parallelism: int | None = None
    update_delay_ms: int | None = None
    restart_condition: str | None = None
    restart_delay_ms: int | None = None
    restart_max_attempts: int | None = None
    restart_window_ms: int | None = None
    command: list[str] | None = None
    label_add: list[str] = field(default_factory=list)
    label_rm: list[str] = field(default_factory=list)
    health: HealthOptions = field(default_factory=HealthOptions)
    no_healthcheck: bool = False


def apply_service_changes(current: pb.ServiceSpec, c: ServiceChanges) -> pb.ServiceSpec:
    """A new spec from `current` with the changes applied; `current` is left untouched.

    Removals run before additions so that `--env-rm A --env-add A=2` (or a port moved to a new
    published port) does what it says.
    """
    spec = pb.ServiceSpec()
    spec.CopyFrom(current)
    if c.replicas is not None:
        if spec.WhichOneof("mode") == "global":
            raise SpecConflict(
                f"service {spec.name} is global: --replicas only applies to replicated services"
            )
        spec.replicated.replicas = c.replicas
    _update_env(spec, c.env_add, c.env_rm)
    _update_ports(spec, c.publish_add, c.publish_rm)
    _update_constraints(spec, c.constraint_add, c.constraint_rm)
    _update_networks(spec, c.network_add, c.network_rm)
    _apply_update_config(spec, c.update_parallelism, c.update_delay_ms)
    _apply_restart(
        spec, c.restart_condition, c.restart_delay_ms, c.restart_max_attempts, c.restart_window_ms
    )
    apply_health(spec, c.health, clear=c.no_healthcheck)
    if c.command is not None:
        if not c.command:
            raise SpecError("--command needs the new command after --")
        del spec.command[:]
        spec.command.extend(c.command)
    for key in c.label_rm:
        if key not in spec.labels:
            raise SpecConflict(f"service {spec.name} has no label {key!r}")
        del spec.labels[key]
    for label in c.label_add:
        key, value = parse_key_value(label, "label")
        spec.labels[key] = value
    return spec


def _update_env(spec: pb.ServiceSpec, add: Sequence[str], remove: Sequence[str]) -> None:
    added = [parse_env(e) for e in add]
    drop = set(remove) | {e.partition("=")[0] for e in added}
    kept = [e for e in spec.env if e.partition("=")[0] not in drop]
    del spec.env[:]
    spec.env.extend(kept + added)


def _update_ports(
    spec: pb.ServiceSpec, add: Sequence[pb.PortConfig], remove: Sequence[tuple[int, int | None]]
) -> None:
    ports = list(spec.endpoint.ports)
    for target, proto in remove:
        kept = [
            p
            for p in ports
            if not (p.target_port == target and (proto is None or p.protocol == proto))
        ]
        if len(kept) == len(ports):
            raise SpecConflict(f"service {spec.name} publishes no port with target {target}")
        ports = kept
    ports.extend(p for p in add if p not in ports)
    if ports or spec.HasField("endpoint"):
        del spec.endpoint.ports[:]
        spec.endpoint.ports.extend(ports)


def _update_constraints(spec: pb.ServiceSpec, add: Sequence[str], remove: Sequence[str]) -> None:
    current = list(spec.placement.constraints)
    for expr in (parse_constraint(r) for r in remove):
        if expr not in current:
            raise SpecConflict(f"service {spec.name} has no constraint {expr!r}")
        current.remove(expr)
    current.extend(e for e in (parse_constraint(a) for a in add) if e not in current)
    if current or spec.HasField("placement"):
        del spec.placement.constraints[:]
        spec.placement.constraints.extend(current)


def _update_networks(
    spec: pb.ServiceSpec,
    add: Sequence[pb.NetworkAttachmentConfig],
    remove: Sequence[tuple[str, frozenset[str]]],
) -> None:
    nets = list(spec.networks)
    for ref, names in remove:
        kept = [n for n in nets if n.target not in names]
        if len(kept) == len(nets):
            raise SpecConflict(f"service {spec.name} is not attached to network {ref!r}")
        nets = kept
    nets.extend(add)
    del spec.networks[:]
    spec.networks.extend(nets)


def apply_node_changes(
    current: pb.NodeSpec,
    *,
    availability: str | None = None,
    role: str | None = None,
    label_add: Sequence[str] = (),
    label_rm: Sequence[str] = (),
) -> pb.NodeSpec:
    spec = pb.NodeSpec()
    spec.CopyFrom(current)
    if availability is not None:
        spec.availability = _choice(NODE_AVAILABILITIES, availability, "availability")
    if role is not None:
        spec.role = _choice(NODE_ROLES, role, "role")
    for key in label_rm:
        if key not in spec.labels:
            raise SpecConflict(f"node has no label {key!r}")
        del spec.labels[key]
    for label in label_add:
        key, value = parse_key_value(label, "label")
        spec.labels[key] = value
    return spec
