"""Checks on what users send, before anything is allocated or written.

Pure functions: each raises InvalidArgument with a message that names the bad value and says
what would be accepted, because that message is all `ovctl` shows.
"""

from __future__ import annotations

import ipaddress
import re

from manager.errors import InvalidArgument
from proto import objects_pb2 as pb

MAX_NAME = 63
MAX_REPLICAS = 10_000
MAX_HEALTH_RETRIES = 100
# Docker's rule for object names; services additionally become DNS labels, so no dots there.
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# As swarmkit's: '_' too (a stack's services are STACK_NAME, and resolve so in Docker).
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An image reference as the distribution spec (and podman) read it: [HOST[:PORT]/]PATH[:TAG]
# [@DIGEST], the path in lower case. Checked here so that a typo is refused at create time
# rather than failing every task on every node.
_IMAGE_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_IMAGE_HOST = rf"(?:{_IMAGE_LABEL}(?:\.{_IMAGE_LABEL})*(?::[0-9]+)?/)?"
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
_IMAGE_REF = re.compile(
    rf"^{_IMAGE_HOST}{_IMAGE_PATH}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,})?$"
)
MAX_IMAGE_REF = 255

TRUE_WORDS = {"", "true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off"}


def check_name(kind: str, name: str, *, dns: bool = False) -> None:
    if not name:
        raise InvalidArgument(f"{kind} name must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidArgument(
            f"{kind} name {name[:20]!r}... is {len(name)} characters long; at most {MAX_NAME} "
            "are allowed"
        )
    pattern = _SERVICE_NAME if dns else _NETWORK_NAME
    if not pattern.match(name):
        allowed = (
            "letters, digits, '-' and '_', starting and ending with a letter or digit"
            if dns
            else "letters, digits, '_', '.' and '-', starting with a letter or digit"
        )
        raise InvalidArgument(f"invalid {kind} name {name!r}: use {allowed}")


def check_image(ref: str) -> None:
    """An image reference podman can resolve: refused here, named, when it cannot be one."""
    if len(ref) > MAX_IMAGE_REF or not _IMAGE_REF.match(ref):
        raise InvalidArgument(
            f"invalid image reference {ref[:80]!r}: use [HOST[:PORT]/]NAME[:TAG][@DIGEST] with "
            "NAME in lower case, e.g. localhost/web:1 or docker.io/library/nginx:1.25"
        )


def check_published_ip(port: pb.PortConfig) -> None:
    """A port bound to one address of a node: host mode, and an IPv4 address."""
    if not port.published_ip:
        return
    if port.publish_mode != pb.PUBLISH_MODE_HOST:
        raise InvalidArgument(
            f"port {port.target_port} is bound to {port.published_ip}: only a host-mode port "
            "opens on one address of its node (the routing mesh opens on all of them)"
        )
    try:
        addr = ipaddress.ip_address(port.published_ip)
    except ValueError:
        addr = None
    if not isinstance(addr, ipaddress.IPv4Address) or addr.is_unspecified:
        raise InvalidArgument(
            f"invalid host address {port.published_ip!r} for port {port.target_port}: use one "
            "IPv4 address of the node, e.g. 127.0.0.1"
        )


def check_labels(kind: str, labels: dict[str, str]) -> None:
    for key in labels:
        if not _LABEL_KEY.match(key) or len(key) > 255:
            raise InvalidArgument(
                f"invalid {kind} label key {key!r}: use letters, digits, '_', '.', '-' and '/'"
            )


def normalize_network_spec(spec: pb.NetworkSpec) -> None:
    """Lift `--opt encrypted[=true]` into the typed field, as the overlay driver reads it."""
    check_name("network", spec.name)
    check_labels("network", dict(spec.labels))
    if "encrypted" in spec.options:
        value = spec.options["encrypted"].strip().lower()
        if value in TRUE_WORDS:
            spec.encrypted = True
        elif value not in FALSE_WORDS:
            raise InvalidArgument(
                f"invalid value {spec.options['encrypted']!r} for option 'encrypted': "
                "use true or false"
            )
        del spec.options["encrypted"]
    if spec.ingress and spec.internal:
        raise InvalidArgument("an ingress network cannot be internal: it carries published ports")


def check_service_spec(spec: pb.ServiceSpec) -> None:
    """Structural checks that need no cluster state (networks, ports and constraints are checked
    where that state lives: the control API, the allocator and the scheduler)."""
    check_name("service", spec.name, dns=True)
    check_labels("service", dict(spec.labels))
    if spec.image:
        check_image(spec.image)
        if spec.command and not spec.command[0]:
            raise InvalidArgument(f"service {spec.name!r} has an empty command word first")
    elif not spec.command or not spec.command[0]:
        raise InvalidArgument(
            f"service {spec.name!r} has no command and no image: give an image (--image) or a "
            "command after '--', e.g. ovctl service create --name web -- python3 -m http.server 80"
        )
    for item in spec.env:
        key, sep, _ = item.partition("=")
        if not sep or not _ENV_KEY.match(key):
            raise InvalidArgument(
                f"invalid environment variable {item!r}: use KEY=VALUE with KEY made of letters, "
                "digits and '_'"
            )
    if spec.stop_grace_period_ms < 0:
        raise InvalidArgument(
            f"stop grace period {spec.stop_grace_period_ms} ms is negative: give a duration "
            "such as 10s, or 0 for the agent's --stop-timeout"
        )
    for name in ("update_config", "rollback_config"):
        _check_update_config(name, getattr(spec, name))
    if spec.WhichOneof("mode") is None:
        spec.replicated.replicas = 1
    if spec.WhichOneof("mode") == "replicated" and spec.replicated.replicas > MAX_REPLICAS:
        raise InvalidArgument(
            f"replicas {spec.replicated.replicas} is out of range: at most {MAX_REPLICAS}"
        )
    seen: set[str] = set()
    for att in spec.networks:
        if not att.target:
            raise InvalidArgument("a network attachment needs a network name or ID")
        for alias in att.aliases:
            check_name("alias", alias, dns=True)
    for att in spec.networks:
        if att.target in seen:
            raise InvalidArgument(f"network {att.target!r} is attached more than once")
        seen.add(att.target)
    if spec.endpoint.mode == pb.ENDPOINT_MODE_DNSRR:
        for port in spec.endpoint.ports:
            if port.publish_mode == pb.PUBLISH_MODE_INGRESS:
                raise InvalidArgument(
                    "port published with ingress mode can't be used with endpoint mode dnsrr: "
                    "use mode=host for the port, or endpoint mode vip"
                )
    for port in spec.endpoint.ports:
        check_published_ip(port)
    check_health_check(spec.health_check)
    if spec.placement.max_replicas_per_node > MAX_REPLICAS:
        raise InvalidArgument(
            f"max replicas per node {spec.placement.max_replicas_per_node} is out of range"
        )


def check_health_check(hc: pb.HealthCheck) -> None:
    """A health check is a command or a TCP port, never both.

    Zero durations and retries are stored as given and mean the defaults (interval 1 s,
    timeout 1 s, 3 retries, no start period): the agent fills them in, so that a later change
    of the defaults reaches services that never chose a value."""
    checked = bool(hc.command) or bool(hc.tcp_port)
    if hc.command and hc.tcp_port:
        raise InvalidArgument(
            "a health check is either a command (--health-cmd) or a TCP port (--health-tcp), "
            "not both: drop one of them"
        )
    if hc.command and not hc.command[0]:
        raise InvalidArgument(
            "the health check command is empty: give one, e.g. --health-cmd 'curl -f localhost'"
        )
    if hc.tcp_port > 65535:
        raise InvalidArgument(f"health check TCP port {hc.tcp_port} is out of range 1-65535")
    if not checked and (hc.interval_ms or hc.timeout_ms or hc.retries or hc.start_period_ms):
        raise InvalidArgument(
            "health check options need something to check: add --health-cmd CMD or "
            "--health-tcp PORT"
        )
    if hc.interval_ms and hc.timeout_ms and hc.timeout_ms > hc.interval_ms:
        raise InvalidArgument(
            f"health check timeout {hc.timeout_ms} ms exceeds its interval {hc.interval_ms} ms: "
            "a check must finish before the next one starts; lower --health-timeout or raise "
            "--health-interval"
        )
    if hc.retries > MAX_HEALTH_RETRIES:
        raise InvalidArgument(
            f"health check retries {hc.retries} is out of range: at most {MAX_HEALTH_RETRIES}"
        )


def _check_update_config(name: str, config: pb.UpdateConfig) -> None:
    """Values a client could send that the enums and the ratio do not allow."""
    if config.failure_action not in pb.UpdateFailureAction.values():
        raise InvalidArgument(
            f"{name}: failure action {config.failure_action} is unknown: use pause, continue "
            "or rollback"
        )
    if config.order not in pb.UpdateOrder.values():
        raise InvalidArgument(
            f"{name}: order {config.order} is unknown: use stop-first or start-first"
        )
    if not 0.0 <= config.max_failure_ratio <= 1.0:
        raise InvalidArgument(
            f"{name}: max failure ratio {config.max_failure_ratio:g} is out of range: give a "
            "fraction of the tasks between 0 and 1"
        )


def has_health_check(hc: pb.HealthCheck) -> bool:
    """Whether a task with this check must be reported healthy before it takes traffic."""
    return bool(hc.command) or bool(hc.tcp_port)
