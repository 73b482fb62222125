"""Compose (the subset `docker stack deploy` honours) to ovnet specs, with no I/O.

`convert(loaded, stack, environ)` reads the merged compose value (ovctl/stack/load.py) and
returns every network and service spec the stack needs, named `STACK_NAME` and labelled with
the stack (Docker's `com.docker.stack.namespace`), each service reachable by its short name on
the stack's networks (an alias, as Docker gives). Every problem is found before anything is
sent to a manager, and named with its file, line and key.

Keys are in four groups, as in docker/cli's converter: honoured (`_SERVICE_KEYS`); ignored by
Docker too, reported once ("Ignoring unsupported options: build, links"); refused by Docker
(extends, volumes_from); and compose keys ovnet does not do yet (volumes, secrets, ...),
refused with "not supported by ovnet yet" rather than dropped: a stack that deploys runs as
its file says. Validation is by hand: no maintained Python package ships the compose schema.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovctl.specs.values import (
    ENDPOINT_MODES,
    UPDATE_FAILURE_ACTIONS,
    UPDATE_ORDERS,
    SpecError,
    choice,
    parse_cidr,
    parse_constraint,
    parse_ip,
    parse_publish,
    parse_ratio,
)
from ovctl.stack import typed
from ovctl.stack.load import ComposeError, Loaded
from proto import objects_pb2 as pb

STACK_LABEL = "com.docker.stack.namespace"
DEFAULT_NETWORK = "default"

# Keys docker stack deploy ignores (with a warning) and keys it refuses.
IGNORED_KEYS = frozenset(
    [
        "build",
        "cgroup_parent",
        "cgroupns_mode",
        "container_name",
        "depends_on",
        "devices",
        "domainname",
        "external_links",
        "ipc",
        "links",
        "mac_address",
        "network_mode",
        "pid",
        "privileged",
        "restart",
        "security_opt",
        "shm_size",
        "ulimits",
        "userns_mode",
    ]
)
REFUSED_KEYS = frozenset({"extends", "volumes_from"})
# Compose keys a swarm honours that ovnet does not do yet.
NOT_YET_KEYS = frozenset(
    [
        "volumes",
        "secrets",
        "configs",
        "user",
        "hostname",
        "dns",
        "dns_search",
        "dns_opt",
        "cap_add",
        "cap_drop",
        "logging",
        "sysctls",
        "tmpfs",
        "init",
        "isolation",
        "stop_signal",
        "extra_hosts",
        "expose",
        "credential_spec",
        "group_add",
        "read_only",
        "tty",
        "stdin_open",
        "platform",
    ]
)
_SERVICE_KEYS = frozenset(
    [
        "image",
        "command",
        "entrypoint",
        "environment",
        "env_file",
        "working_dir",
        "labels",
        "networks",
        "ports",
        "healthcheck",
        "deploy",
        "stop_grace_period",
    ]
)
_DEPLOY_KEYS = frozenset(
    [
        "mode",
        "replicas",
        "labels",
        "placement",
        "update_config",
        "restart_policy",
        "endpoint_mode",
        "resources",
        "rollback_config",
    ]
)
_NETWORK_KEYS = frozenset(
    ["driver", "driver_opts", "attachable", "internal", "labels", "ipam", "external", "name"]
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Stack:
    """What a stack deploy creates or updates, by full name, and what it noticed."""

    name: str
    networks: dict[str, pb.NetworkSpec] = field(default_factory=dict)
    # compose key -> the existing network's name (`external: true`): never created here.
    external: dict[str, str] = field(default_factory=dict)
    services: dict[str, pb.ServiceSpec] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def full_name(stack: str, name: str) -> str:
    return f"{stack}_{name}"


def convert(loaded: Loaded, stack: str, environ: Mapping[str, str]) -> Stack:
    if not _NAME.match(stack):
        raise ComposeError(
            f"invalid stack name {stack!r}: letters, digits, '_', '.' and '-', starting with a "
            "letter or digit"
        )
    data = loaded.data
    for key in data:
        if key not in ("services", "networks", "volumes", "secrets", "configs", "name"):
            raise loaded.error("unknown top-level key (expected services, networks)", key)
        if key in ("volumes", "secrets", "configs") and data[key]:
            raise loaded.error("not supported by ovnet yet", key)
    services = typed.mapping(loaded, data.get("services"), "services")
    if not services:
        raise loaded.error("the file defines no service: a stack needs at least one", "services")
    out = Stack(name=stack)
    declared = _networks(loaded, stack, out)
    ignored: set[str] = set()
    for name in services:
        spec = _service(loaded, stack, str(name), declared, environ, ignored)
        out.services[full_name(stack, str(name))] = spec
    if (
        any(
            any(a.target == full_name(stack, DEFAULT_NETWORK) for a in s.networks)
            for s in out.services.values()
        )
        and DEFAULT_NETWORK not in declared
    ):
        out.networks[full_name(stack, DEFAULT_NETWORK)] = pb.NetworkSpec(
            name=full_name(stack, DEFAULT_NETWORK), labels={STACK_LABEL: stack}
        )
    _check_ports(loaded, out)
    out.ignored = sorted(ignored)
    return out


def _check_ports(loaded: Loaded, stack: Stack) -> None:
    """Two services of the file publishing one port: the second is refused, naming both."""
    seen: dict[tuple[int, int], str] = {}
    for name, spec in stack.services.items():
        short = name.removeprefix(f"{stack.name}_")
        for i, port in enumerate(spec.endpoint.ports):
            key = (port.protocol, port.published_port)
            if port.published_port and key in seen:
                raise loaded.error(
                    f"port {port.published_port} is already published by service {seen[key]!r}",
                    "services",
                    short,
                    "ports",
                    i,
                )
            seen.setdefault(key, short)


# ---------------------------------------------------------------- networks


def _networks(loaded: Loaded, stack: str, out: Stack) -> dict[str, str]:
    """The top-level networks: compose key -> the name services attach to."""
    declared: dict[str, str] = {}
    nets = typed.mapping(loaded, loaded.data.get("networks"), "networks")
    for key, value in nets.items():
        path = ("networks", key)
        net = typed.mapping(loaded, value, *path)
        for k in net:
            if k not in _NETWORK_KEYS:
                raise loaded.error("unknown network key", *path, k)
        external = net.get("external")
        if external:
            name = str(net.get("name") or key)
            if isinstance(external, dict):
                name = str(external.get("name") or name)
            elif external is not True:
                raise loaded.error("expected true or {name: NAME}", *path, "external")
            out.external[str(key)] = name
            declared[str(key)] = name
            continue
        name = full_name(stack, str(net.get("name") or key))
        out.networks[name] = _network_spec(loaded, stack, name, net, path)
        declared[str(key)] = name
    return declared


def _network_spec(
    loaded: Loaded, stack: str, name: str, net: dict[str, Any], path: tuple[str, ...]
) -> pb.NetworkSpec:
    driver = net.get("driver", "overlay")
    if driver != "overlay":
        raise loaded.error(f"driver {driver!r}: ovnet networks are overlays", *path, "driver")
    spec = pb.NetworkSpec(
        name=name,
        attachable=typed.boolean(loaded, net.get("attachable", False), *path, "attachable"),
        internal=typed.boolean(loaded, net.get("internal", False), *path, "internal"),
    )
    spec.labels.update(typed.labels(loaded, net.get("labels"), *path, "labels"))
    spec.labels[STACK_LABEL] = stack
    for k, v in typed.mapping(loaded, net.get("driver_opts"), *path, "driver_opts").items():
        if k == "encrypted":
            # Docker: the option's presence encrypts ("encrypted": "" is how it is written).
            spec.encrypted = str(v).lower() not in ("false", "0", "no")
        else:
            spec.options[str(k)] = "" if v is None else str(v)
    ipam = typed.mapping(loaded, net.get("ipam"), *path, "ipam")
    configs = ipam.get("config") or []
    if not isinstance(configs, list):
        raise loaded.error("expected a list", *path, "ipam", "config")
    if len(configs) > 1:
        raise loaded.error("ovnet networks have one subnet: give one config", *path, "ipam")
    for i, cfg in enumerate(configs):
        cpath: tuple[str | int, ...] = (*path, "ipam", "config", i)
        cfg = typed.mapping(loaded, cfg, *cpath)
        try:
            if cfg.get("subnet"):
                spec.subnet = parse_cidr(str(cfg["subnet"]), "subnet")
            if cfg.get("gateway"):
                spec.gateway = parse_ip(str(cfg["gateway"]), "gateway")
            if cfg.get("ip_range"):
                spec.ip_range = parse_cidr(str(cfg["ip_range"]), "IP range")
        except SpecError as e:
            raise loaded.error(str(e), *cpath) from None
    return spec


# ---------------------------------------------------------------- services


def _service(
    loaded: Loaded,
    stack: str,
    name: str,
    networks: Mapping[str, str],
    environ: Mapping[str, str],
    ignored: set[str],
) -> pb.ServiceSpec:
    path = ("services", name)
    svc = typed.mapping(loaded, loaded.data["services"][name], *path)
    for key in svc:
        if key in IGNORED_KEYS:
            ignored.add(str(key))
        elif key in REFUSED_KEYS:
            raise loaded.error("not supported by docker stack deploy nor ovnet", *path, key)
        elif key in NOT_YET_KEYS:
            raise loaded.error("not supported by ovnet yet", *path, key)
        elif key not in _SERVICE_KEYS:
            raise loaded.error("unknown service key", *path, key)
    spec = pb.ServiceSpec(name=full_name(stack, name))
    image = svc.get("image")
    if image is not None:
        spec.image = typed.string(loaded, image, *path, "image")
    spec.command.extend(_command(loaded, svc, path, bool(spec.image)))
    if not spec.image and not spec.command:
        raise loaded.error("a service needs an image or a command", *path)
    spec.env.extend(_environment(loaded, svc, path, environ))
    if "working_dir" in svc:
        spec.workdir = typed.string(loaded, svc["working_dir"], *path, "working_dir")
    spec.labels.update(typed.labels(loaded, svc.get("labels"), *path, "labels"))
    spec.networks.extend(_attachments(loaded, stack, name, svc.get("networks"), networks, path))
    for i, port in enumerate(typed.listing(loaded, svc.get("ports"), *path, "ports")):
        spec.endpoint.ports.append(_port(loaded, port, (*path, "ports", i)))
    if "healthcheck" in svc:
        _healthcheck(loaded, spec, svc["healthcheck"], (*path, "healthcheck"))
    if "stop_grace_period" in svc:
        spec.stop_grace_period_ms = typed.duration(
            loaded, svc["stop_grace_period"], *path, "stop_grace_period"
        )
    _deploy(loaded, spec, svc.get("deploy"), (*path, "deploy"))
    spec.labels[STACK_LABEL] = stack
    return spec


def _command(loaded: Loaded, svc: dict[str, Any], path: tuple[str, ...], image: bool) -> list[str]:
    command = _words(loaded, svc.get("command"), *path, "command")
    if "entrypoint" in svc:
        if image:
            raise loaded.error(
                "not supported by ovnet yet with an image (the image's own entrypoint runs): "
                "put the whole command in `command`",
                *path,
                "entrypoint",
            )
        # A process service has no image entrypoint: the two make its command line.
        command = _words(loaded, svc["entrypoint"], *path, "entrypoint") + command
    return command


def _words(loaded: Loaded, value: Any, *path: str | int) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as e:
            raise loaded.error(f"cannot split {value!r} into words: {e}", *path) from None
    if isinstance(value, list) and all(isinstance(w, (str, int, float)) for w in value):
        return [str(w) for w in value]
    raise loaded.error("expected a string or a list of strings", *path)


def _environment(
    loaded: Loaded, svc: dict[str, Any], path: tuple[str, ...], environ: Mapping[str, str]
) -> list[str]:
    """env_file entries first, then `environment` over them (compose's precedence); a
    variable without a value takes the deploying shell's, or is left out."""
    env: dict[str, str] = {}
    files = svc.get("env_file")
    for i, f in enumerate(
        [files] if isinstance(files, str) else typed.listing(loaded, files, *path, "env_file")
    ):
        env.update(
            _env_file(loaded, typed.string(loaded, f, *path, "env_file", i), (*path, "env_file", i))
        )
    raw = svc.get("environment")
    items: dict[str, Any] = {}
    if isinstance(raw, list):
        for i, entry in enumerate(raw):
            key, sep, value = typed.string(loaded, entry, *path, "environment", i).partition("=")
            items[key] = value if sep else None
    elif raw is not None:
        items = typed.mapping(loaded, raw, *path, "environment")
    for key, value in items.items():
        if not key:
            raise loaded.error("a variable without a name", *path, "environment")
        if value is None:
            if key in environ:
                env[str(key)] = environ[key]
        else:
            env[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)
    return [f"{k}={v}" for k, v in env.items()]


def _env_file(loaded: Loaded, name: str, path: tuple[str | int, ...]) -> dict[str, str]:
    file = loaded.files[0].parent / name
    try:
        text = Path(file).read_text()
    except OSError as e:
        raise loaded.error(f"cannot read {file}: {e.strerror}", *path) from None
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ComposeError(f"{file}:{n}: expected KEY=VALUE, got {line!r}")
        out[key.strip()] = value
    return out


def _attachments(
    loaded: Loaded,
    stack: str,
    name: str,
    value: Any,
    networks: Mapping[str, str],
    path: tuple[str, ...],
) -> list[pb.NetworkAttachmentConfig]:
    """Its networks (the stack's `default` when none), each with the service's short name as
    an alias, so `web` reaches `STACK_web` as in Docker."""
    wanted: dict[str, Any]
    if value is None:
        wanted = {DEFAULT_NETWORK: None}
    elif isinstance(value, list):
        wanted = {typed.string(loaded, n, *path, "networks", i): None for i, n in enumerate(value)}
    else:
        wanted = typed.mapping(loaded, value, *path, "networks")
    out = []
    for key, opts in wanted.items():
        if key == DEFAULT_NETWORK and key not in networks:
            target = full_name(stack, DEFAULT_NETWORK)
        elif key in networks:
            target = networks[key]
        else:
            raise loaded.error(
                f"network {key!r} is not defined under the top-level networks", *path, "networks"
            )
        aliases = [name]
        if opts is not None:
            opts = typed.mapping(loaded, opts, *path, "networks", key)
            for k in opts:
                if k != "aliases":
                    raise loaded.error("not supported by ovnet yet", *path, "networks", key, k)
            more = typed.listing(loaded, opts.get("aliases"), *path, "networks", key, "aliases")
            aliases += [str(a) for a in more if str(a) != name]
        out.append(pb.NetworkAttachmentConfig(target=target, aliases=aliases))
    return out


def _port(loaded: Loaded, value: Any, path: tuple[str | int, ...]) -> pb.PortConfig:
    try:
        if isinstance(value, (str, int)):
            text = str(value)
            if text.count(":") > 1:
                raise SpecError(f"{text!r}: a service port cannot name a host address")
            if "-" in text:
                raise SpecError(f"{text!r}: port ranges are not supported by ovnet yet")
            return parse_publish(text)
        port = typed.mapping(loaded, value, *path)
        for k in port:
            if k not in ("target", "published", "protocol", "mode", "name"):
                raise loaded.error("unknown port key", *path, k)
        parts = [f"target={port.get('target')}"]
        for k in ("published", "protocol", "mode"):
            if port.get(k) is not None:
                parts.append(f"{k}={port[k]}")
        config = parse_publish(",".join(parts))
        if port.get("name"):
            config.name = str(port["name"])
        return config
    except SpecError as e:
        raise loaded.error(str(e), *path) from None


def _healthcheck(loaded: Loaded, spec: pb.ServiceSpec, value: Any, path: tuple[str, ...]) -> None:
    hc = typed.mapping(loaded, value, *path)
    for k in hc:
        if k not in ("test", "interval", "timeout", "retries", "start_period", "disable"):
            raise loaded.error("unknown healthcheck key", *path, k)
    if typed.boolean(loaded, hc.get("disable", False), *path, "disable"):
        return
    test = hc.get("test")
    words = [test] if isinstance(test, str) else _words(loaded, test, *path, "test")
    if isinstance(test, str):
        command = ["sh", "-c", test]
    elif words and words[0] == "NONE":
        return
    elif words and words[0] == "CMD" and len(words) > 1:
        command = words[1:]
    elif words and words[0] == "CMD-SHELL" and len(words) == 2:
        command = ["sh", "-c", words[1]]
    else:
        raise loaded.error(
            'expected ["CMD", ARG...], ["CMD-SHELL", "COMMAND"], ["NONE"] or a string',
            *path,
            "test",
        )
    h = spec.health_check
    h.command.extend(command)
    for key, attr in (
        ("interval", "interval_ms"),
        ("timeout", "timeout_ms"),
        ("start_period", "start_period_ms"),
    ):
        if key in hc:
            setattr(h, attr, typed.duration(loaded, hc[key], *path, key))
    if "retries" in hc:
        h.retries = typed.uint(loaded, hc["retries"], *path, "retries")


def _deploy(loaded: Loaded, spec: pb.ServiceSpec, value: Any, path: tuple[str, ...]) -> None:
    d = typed.mapping(loaded, value, *path)
    for k in d:
        if k not in _DEPLOY_KEYS:
            raise loaded.error("unknown deploy key", *path, k)
        if k == "resources":
            raise loaded.error("not supported by ovnet yet", *path, k)
    mode = d.get("mode", "replicated")
    if mode == "global":
        if "replicas" in d:
            raise loaded.error("replicas cannot be used with mode: global", *path, "replicas")
        getattr(spec, "global").SetInParent()
    elif mode == "replicated":
        spec.replicated.replicas = typed.uint(loaded, d.get("replicas", 1), *path, "replicas")
    else:
        raise loaded.error(f"{mode!r}: expected replicated or global", *path, "mode")
    spec.labels.update(typed.labels(loaded, d.get("labels"), *path, "labels"))
    placement = typed.mapping(loaded, d.get("placement"), *path, "placement")
    for i, c in enumerate(
        typed.listing(loaded, placement.get("constraints"), *path, "placement", "constraints")
    ):
        try:
            spec.placement.constraints.append(parse_constraint(str(c)))
        except SpecError as e:
            raise loaded.error(str(e), *path, "placement", "constraints", i) from None
    if "max_replicas_per_node" in placement:
        spec.placement.max_replicas_per_node = typed.uint(
            loaded, placement["max_replicas_per_node"], *path, "placement", "max_replicas_per_node"
        )
    if "endpoint_mode" in d:
        try:
            spec.endpoint.mode = choice(ENDPOINT_MODES, str(d["endpoint_mode"]), "endpoint mode")
        except SpecError as e:
            raise loaded.error(str(e), *path, "endpoint_mode") from None
    for key in ("update_config", "rollback_config"):
        if key in d:
            _update_config(loaded, getattr(spec, key), d[key], (*path, key))
    _restart_policy(loaded, spec, d.get("restart_policy"), (*path, "restart_policy"))


def _update_config(
    loaded: Loaded, config: pb.UpdateConfig, value: Any, path: tuple[str, ...]
) -> None:
    """deploy.update_config or deploy.rollback_config (the same keys)."""
    u = typed.mapping(loaded, value, *path)
    config.SetInParent()
    for k, v in u.items():
        if k == "parallelism":
            config.parallelism = typed.uint(loaded, v, *path, k)
        elif k == "delay":
            config.delay_ms = typed.duration(loaded, v, *path, k)
        elif k == "monitor":
            config.monitor_ms = typed.duration(loaded, v, *path, k)
        elif k in ("failure_action", "order"):
            table: dict[str, int] = (
                UPDATE_FAILURE_ACTIONS if k == "failure_action" else UPDATE_ORDERS  # type: ignore[assignment]
            )
            try:
                setattr(config, k, choice(table, str(v), k.replace("_", " ")))
            except SpecError as e:
                raise loaded.error(str(e), *path, k) from None
            if path[-1] == "rollback_config" and v == "rollback":
                raise loaded.error("a rollback cannot roll back: use pause or continue", *path, k)
        elif k == "max_failure_ratio":
            try:
                config.max_failure_ratio = parse_ratio(str(v), "max failure ratio")
            except SpecError as e:
                raise loaded.error(str(e), *path, k) from None
        else:
            raise loaded.error(f"unknown {path[-1]} key", *path, k)


def _restart_policy(
    loaded: Loaded, spec: pb.ServiceSpec, value: Any, path: tuple[str, ...]
) -> None:
    r = typed.mapping(loaded, value, *path)
    if not r:
        return
    p = spec.restart_policy
    p.SetInParent()
    for k, v in r.items():
        if k == "condition":
            names = {
                "none": pb.RESTART_CONDITION_NONE,
                "on-failure": pb.RESTART_CONDITION_ON_FAILURE,
                "any": pb.RESTART_CONDITION_ANY,
            }
            if v not in names:
                raise loaded.error(f"{v!r}: expected none, on-failure or any", *path, k)
            p.condition = names[v]
        elif k == "delay":
            p.delay_ms = typed.duration(loaded, v, *path, k)
        elif k == "max_attempts":
            p.max_attempts = typed.uint(loaded, v, *path, k)
        elif k == "window":
            p.window_ms = typed.duration(loaded, v, *path, k)
        else:
            raise loaded.error("unknown restart_policy key", *path, k)
