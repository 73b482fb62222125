"""Single values a person types (durations, ports, CIDRs, publish specs, filters...) parsed
into what the API takes, with no I/O; every error is a `SpecError` naming the bad input."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import TypeVar, cast

from proto import objects_pb2 as pb

__all__ = [
    "ENDPOINT_MODES",
    "NODE_AVAILABILITIES",
    "NODE_ROLES",
    "RESTART_CONDITIONS",
    "UPDATE_FAILURE_ACTIONS",
    "UPDATE_ORDERS",
    "SpecConflict",
    "SpecError",
    "parse_bool",
    "parse_cidr",
    "parse_constraint",
    "parse_duration",
    "parse_env",
    "parse_filters",
    "parse_ip",
    "parse_key_value",
    "parse_mapping",
    "parse_network_attachment",
    "parse_port",
    "parse_port_ref",
    "parse_publish",
    "parse_ratio",
    "parse_scale",
    "parse_tail",
    "parse_task_state",
    "parse_uint",
]

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


def parse_ratio(text: str, what: str) -> float:
    """A fraction between 0 and 1 (Docker's --update-max-failure-ratio)."""
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"invalid {what} {text!r}: expected a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise SpecError(f"invalid {what} {text!r}: expected a number between 0 and 1")
    return value


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
UPDATE_FAILURE_ACTIONS = {
    "pause": pb.UPDATE_FAILURE_ACTION_PAUSE,
    "continue": pb.UPDATE_FAILURE_ACTION_CONTINUE,
    "rollback": pb.UPDATE_FAILURE_ACTION_ROLLBACK,
}
UPDATE_ORDERS = {
    "stop-first": pb.UPDATE_ORDER_STOP_FIRST,
    "start-first": pb.UPDATE_ORDER_START_FIRST,
}


def choice(table: dict[str, _E], text: str, what: str) -> _E:
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
    return choice(_TASK_STATES, text, "task state")


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
        port.protocol = choice(_PROTOCOLS, m["proto"], "protocol")
    return port


_MAPPING = re.compile(
    r"^(?:(?:(?P<ip>[^:/]*):)?(?P<published>[^:/]+):)?(?P<target>[^:/]+)(?:/(?P<proto>[^:/]+))?$"
)


def parse_mapping(text: str) -> pb.PortConfig:
    """An `ovctl run -p` value, as `docker run -p`: "8081:80[/udp]" maps the node's port 8081
    to the task's 80, "127.0.0.1:8081:80" on that address of the node only, "80" picks a free
    node port. Host mode: the task's node only."""
    m = _MAPPING.match(text.strip())
    if m is None:
        raise SpecError(
            f"invalid port mapping {text!r}: expected HOSTPORT:PORT[/tcp|udp] or PORT[/tcp|udp]"
        )
    port = pb.PortConfig(
        target_port=parse_port(m["target"], "container port"),
        publish_mode=pb.PUBLISH_MODE_HOST,
    )
    if m["ip"] and m["ip"] != "0.0.0.0":  # docker's spelling of every address
        port.published_ip = parse_ip(m["ip"], "host address")
    if m["published"] is not None:
        port.published_port = parse_port(m["published"], "host port")
    if m["proto"] is not None:
        port.protocol = choice(_PROTOCOLS, m["proto"], "protocol")
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
            port.protocol = choice(_PROTOCOLS, value, "protocol")
        elif key == "mode":
            port.publish_mode = choice(_PUBLISH_MODES, value, "publish mode")
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
        choice(_PROTOCOLS, proto, "protocol") if proto else None,
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
