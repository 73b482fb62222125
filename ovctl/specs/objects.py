"""Whole API objects built from the CLI's options, with no I/O: a network spec, a service spec
(health check, restart and update policy), and the changes `service update` and `node update`
make to the spec the manager returned (`SpecConflict` when a change does not fit it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ovctl.specs.values import (
    ENDPOINT_MODES,
    NODE_AVAILABILITIES,
    NODE_ROLES,
    RESTART_CONDITIONS,
    UPDATE_FAILURE_ACTIONS,
    UPDATE_ORDERS,
    SpecConflict,
    SpecError,
    choice,
    parse_bool,
    parse_cidr,
    parse_constraint,
    parse_env,
    parse_ip,
    parse_key_value,
)
from proto import objects_pb2 as pb

__all__ = [
    "HealthOptions",
    "RunOptions",
    "ServiceChanges",
    "ServiceOptions",
    "UpdateOptions",
    "apply_health",
    "apply_node_changes",
    "apply_service_changes",
    "apply_update_options",
    "network_spec",
    "run_spec",
    "service_spec",
]

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
    image: str | None = None
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
    update: UpdateOptions = field(default_factory=lambda: UpdateOptions())
    rollback: UpdateOptions = field(default_factory=lambda: UpdateOptions())
    health: HealthOptions | None = None
    stop_grace_period_ms: int | None = None


def service_spec(o: ServiceOptions) -> pb.ServiceSpec:
    """Sub-messages are only set when the user gave one of their options, so the manager's
    defaults (e.g. a restart delay) apply to everything left out."""
    if not o.command and not o.image:
        raise SpecError(
            "a service needs an image (--image) or a command: put it after --, "
            "e.g. -- sleep infinity"
        )
    if o.mode == "global" and o.replicas is not None:
        raise SpecError("--replicas cannot be used with --mode global")
    spec = pb.ServiceSpec(name=o.name, command=o.command, networks=o.networks)
    if o.image:
        spec.image = o.image
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
            spec.endpoint.mode = choice(ENDPOINT_MODES, o.endpoint_mode, "endpoint mode")
    if o.constraints or o.max_replicas_per_node is not None:
        spec.placement.constraints.extend(parse_constraint(c) for c in o.constraints)
        if o.max_replicas_per_node is not None:
            spec.placement.max_replicas_per_node = o.max_replicas_per_node
    _apply_restart(
        spec, o.restart_condition, o.restart_delay_ms, o.restart_max_attempts, o.restart_window_ms
    )
    apply_update_options(spec, "update_config", o.update)
    apply_update_options(spec, "rollback_config", o.rollback)
    apply_health(spec, o.health)
    if o.stop_grace_period_ms is not None:
        spec.stop_grace_period_ms = o.stop_grace_period_ms
    return spec


@dataclass
class RunOptions:
    """What `ovctl run` was given (a standalone task, see manager/standalone.py)."""

    name: str
    command: list[str]
    image: str | None = None
    node: str | None = None
    networks: list[pb.NetworkAttachmentConfig] = field(default_factory=list)
    ports: list[pb.PortConfig] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    restart_condition: str | None = None


def run_spec(o: RunOptions) -> pb.ServiceSpec:
    """The spec of a standalone task; the manager picks the node when none is given."""
    if not o.command and not o.image:
        raise SpecError("ovctl run needs an image (--image) or a command after --")
    spec = pb.ServiceSpec(name=o.name, command=o.command, networks=o.networks)
    spec.replicated.replicas = 1
    spec.standalone.SetInParent()
    spec.standalone.node_id = o.node or ""
    if o.image:
        spec.image = o.image
    spec.env.extend(parse_env(e) for e in o.env)
    if o.workdir:
        spec.workdir = o.workdir
    spec.endpoint.ports.extend(o.ports)
    _apply_restart(spec, o.restart_condition, None, None, None)
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
        policy.condition = choice(RESTART_CONDITIONS, condition, "restart condition")
    if delay_ms is not None:
        policy.delay_ms = delay_ms
    if max_attempts is not None:
        policy.max_attempts = max_attempts
    if window_ms is not None:
        policy.window_ms = window_ms


@dataclass(frozen=True)
class UpdateOptions:
    """--update-* (or --rollback-*) options as given; None: not given."""

    parallelism: int | None = None
    delay_ms: int | None = None
    failure_action: str | None = None
    monitor_ms: int | None = None
    max_failure_ratio: float | None = None
    order: str | None = None


def apply_update_options(spec: pb.ServiceSpec, name: str, o: UpdateOptions) -> None:
    """Set what was given on `spec.<name>` (update_config or rollback_config), leaving the
    rest (and an absent config) as it was."""
    if o == UpdateOptions():
        return
    config: pb.UpdateConfig = getattr(spec, name)
    config.SetInParent()
    if o.parallelism is not None:
        config.parallelism = o.parallelism
    if o.delay_ms is not None:
        config.delay_ms = o.delay_ms
    if o.failure_action is not None:
        config.failure_action = choice(UPDATE_FAILURE_ACTIONS, o.failure_action, "failure action")
    if o.monitor_ms is not None:
        config.monitor_ms = o.monitor_ms
    if o.max_failure_ratio is not None:
        config.max_failure_ratio = o.max_failure_ratio
    if o.order is not None:
        config.order = choice(UPDATE_ORDERS, o.order, "update order")


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
    update: UpdateOptions = field(default_factory=lambda: UpdateOptions())
    rollback: UpdateOptions = field(default_factory=lambda: UpdateOptions())
    restart_condition: str | None = None
    restart_delay_ms: int | None = None
    restart_max_attempts: int | None = None
    restart_window_ms: int | None = None
    command: list[str] | None = None
    image: str | None = None
    label_add: list[str] = field(default_factory=list)
    label_rm: list[str] = field(default_factory=list)
    health: HealthOptions = field(default_factory=HealthOptions)
    no_healthcheck: bool = False
    stop_grace_period_ms: int | None = None


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
    apply_update_options(spec, "update_config", c.update)
    apply_update_options(spec, "rollback_config", c.rollback)
    _apply_restart(
        spec, c.restart_condition, c.restart_delay_ms, c.restart_max_attempts, c.restart_window_ms
    )
    apply_health(spec, c.health, clear=c.no_healthcheck)
    if c.stop_grace_period_ms is not None:
        spec.stop_grace_period_ms = c.stop_grace_period_ms
    if c.image is not None:
        if not c.image:
            raise SpecError("--image needs an image reference, e.g. --image localhost/web:2")
        spec.image = c.image
    if c.command is not None:
        if not c.command and not spec.image:
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
        spec.availability = choice(NODE_AVAILABILITIES, availability, "availability")
    if role is not None:
        spec.role = choice(NODE_ROLES, role, "role")
    for key in label_rm:
        if key not in spec.labels:
            raise SpecConflict(f"node has no label {key!r}")
        del spec.labels[key]
    for label in label_add:
        key, value = parse_key_value(label, "label")
        spec.labels[key] = value
    return spec
