"""`ovnet-cni`: the CNI plugin a runtime (podman, containerd, CRI-O, Kubernetes) executes.

It does nothing to the host itself: it turns the runtime's environment and network
configuration into one `protocol.Request`, hands it to the local agent over its unix socket and
turns the `protocol.Answer` into what the CNI spec (0.4.0 and 1.0.0) wants on stdout. The agent
knows the cluster and builds the veth; the plugin stays a thin relay, because a runtime starts a
fresh one for every container and every command (so: standard library and `protocol` only).

The core is pure - `parse` (env + stdin -> an `Invocation` or a `CniError`) and `render_add`
(an `Endpoint` + a version -> the result object) - so every refusal is tested without a
process. `run` adds the I/O that must happen before anything is sent (does the netns exist?)
and the socket; `main` is stdin, stdout and the exit status. A bad input is refused before the
agent hears of it: the agent should only see requests it can act on.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.cni.protocol import (
    COMMANDS,
    DECODE_FAILURE,
    DEFAULT_SOCKET,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    IO_FAILURE,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    Answer,
    Endpoint,
    ProtocolError,
    Request,
)

# The version VERSION reports (and errors carry) when the configuration names none we know.
DEFAULT_VERSION = "1.0.0"
# Where the agent's socket is when the configuration has no "socket" key.
SOCKET_ENV = "OVNET_CNI_SOCKET"
# How long the agent may take to attach (it may ask the manager, which may be electing a
# leader): a runtime waits for us, so give up with "try again later" rather than hang.
ANSWER_TIMEOUT = 120.0
# An answer is one JSON line of a few hundred bytes; anything this long is not one.
MAX_ANSWER = 1 << 20

# The spec's rules for the two identifiers (section 2, "Parameters").
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_IFNAME_MAX = 15


class CniError(Exception):
    """A failure the runtime is told about: the spec's error object, exit status 1."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


@dataclass(frozen=True)
class Invocation:
    """Everything one ADD, DEL or CHECK needs, checked: what to send, where, how to answer."""

    request: Request
    socket_path: str
    cni_version: str
    prev_result: dict[str, Any] | None = None


# --- the pure core -------------------------------------------------------------------------


def reply_version(stdin: bytes) -> str:
    """The cniVersion an error or VERSION answer carries: the configuration's when it is one we
    speak (the spec wants the output consistent with the input), else DEFAULT_VERSION."""
    try:
        conf = json.loads(stdin) if stdin.strip() else None
    except (ValueError, RecursionError):
        return DEFAULT_VERSION
    v = conf.get("cniVersion") if isinstance(conf, dict) else None
    return v if v in SUPPORTED_VERSIONS else DEFAULT_VERSION


def version_output(stdin: bytes) -> dict[str, Any]:
    """VERSION's answer. The runtime may pass {"cniVersion": ...} or nothing at all."""
    return {"cniVersion": reply_version(stdin), "supportedVersions": list(SUPPORTED_VERSIONS)}


def error_output(err: CniError, cni_version: str) -> dict[str, Any]:
    return {"cniVersion": cni_version, "code": err.code, "msg": err.msg, "details": err.details}


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS: "K=V;K=V" (an empty one is no arguments)."""
    out: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(
                INVALID_ENVIRONMENT,
                f"CNI_ARGS has {pair!r}, not a KEY=VALUE pair",
                f'CNI_ARGS is "KEY=VALUE;KEY=VALUE"; it was {raw!r}',
            )
        out[key] = value
    return out


def parse(env: Mapping[str, str], stdin: bytes) -> Invocation:
    """An ADD, DEL or CHECK as the runtime asked for it, or the CniError saying what is wrong.

    The environment is checked first (as libcni's skel does), then the configuration. Whether
    the netns path exists is left to `run`: this function does no I/O.
    """
    command = _command(env)
    container_id, ifname, netns = _environment(env, command)
    conf = _config(stdin)
    version = _cni_version(conf)
    name = _conf_str(conf, "name")
    _conf_str(conf, "type")
    network = _conf_str(conf, "network", name)
    socket_path = _conf_str(conf, "socket", env.get(SOCKET_ENV) or DEFAULT_SOCKET)
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise _bad_key("prevResult", prev, "an object (the previous plugin's result)")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    request = Request(
        command=command,
        network=network,
        container_id=container_id,
        ifname=ifname,
        netns=netns,
        name=args.get("K8S_POD_NAME", ""),
        aliases=_aliases(conf, name, network),
    )
    return Invocation(request, socket_path, version, prev)


def _command(env: Mapping[str, str]) -> str:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        what = f"is {command!r}" if command else "is not set"
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_COMMAND {what}: ovnet-cni does ADD, DEL, CHECK and VERSION",
            "ovnet-cni is a CNI plugin: a container runtime runs it with CNI_COMMAND, "
            "CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME set and the network configuration on stdin",
        )
    return command


def _environment(env: Mapping[str, str], command: str) -> tuple[str, str, str]:
    """(CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS), each as the spec allows it."""
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    netns = env.get("CNI_NETNS", "")
    if not container_id:
        raise _bad_env("CNI_CONTAINERID is not set", "the runtime names the container in it")
    if not _CONTAINER_ID.fullmatch(container_id):
        raise _bad_env(
            f"CNI_CONTAINERID {container_id!r} is not a container ID",
            "it starts with a letter or digit, then letters, digits, '_', '.' or '-'",
        )
    if not ifname:
        raise _bad_env("CNI_IFNAME is not set", "the runtime names the interface to make in it")
    if (
        len(ifname) > _IFNAME_MAX
        or ifname in (".", "..")
        or any(c in "/:" or c.isspace() for c in ifname)
    ):
        raise _bad_env(
            f"CNI_IFNAME {ifname!r} is not an interface name",
            f"at most {_IFNAME_MAX} characters, not '.' or '..', no '/', ':' or whitespace",
        )
    if not netns and command != "DEL":
        raise _bad_env(
            f"CNI_NETNS is not set, and {command} needs the container's network namespace",
            "the runtime passes its path, e.g. /proc/PID/ns/net or /run/netns/NAME",
        )
    return container_id, ifname, netns


def _bad_env(msg: str, details: str) -> CniError:
    return CniError(INVALID_ENVIRONMENT, msg, details)


def _config(stdin: bytes) -> dict[str, Any]:
    if not stdin.strip():
        raise CniError(
            DECODE_FAILURE,
            "no network configuration on stdin",
            "the runtime passes the network's configuration (from its conflist) as JSON on stdin",
        )
    try:
        conf = json.loads(stdin)
    except (ValueError, RecursionError) as e:
        raise CniError(
            DECODE_FAILURE, "the network configuration on stdin is not JSON", str(e)
        ) from None
    if not isinstance(conf, dict):
        raise CniError(
            INVALID_CONFIG,
            f"the network configuration is a JSON {type(conf).__name__}, not an object",
        )
    return conf


def _cni_version(conf: dict[str, Any]) -> str:
    version = conf.get("cniVersion")
    if version is None:
        # libcni reads a configuration without cniVersion as 0.1.0.
        raise CniError(
            INCOMPATIBLE_VERSION,
            'ovnet-cni supports CNI 0.4.0 and 1.0.0; the configuration has no "cniVersion" '
            "(which means 0.1.0)",
            'set "cniVersion": "1.0.0" in the conflist',
        )
    if not isinstance(version, str):
        raise _bad_key("cniVersion", version, "a string")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"ovnet-cni supports CNI {' and '.join(SUPPORTED_VERSIONS)}, not {version}",
            'set "cniVersion": "1.0.0" in the conflist',
        )
    return version


_REQUIRED = object()


def _conf_str(conf: dict[str, Any], key: str, default: object = _REQUIRED) -> str:
    """A non-empty string field of the configuration (its default when absent, if it has one)."""
    if key not in conf:
        if default is _REQUIRED:
            raise CniError(INVALID_CONFIG, f'the network configuration has no "{key}"')
        return str(default)
    value = conf[key]
    if not isinstance(value, str) or not value:
        raise _bad_key(key, value, "a non-empty string")
    return value


def _bad_key(key: str, value: object, wanted: str) -> CniError:
    shown = json.dumps(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return CniError(
        INVALID_CONFIG, f'the network configuration\'s "{key}" is {shown}, not {wanted}'
    )


def _aliases(conf: dict[str, Any], name: str, network: str) -> tuple[str, ...]:
    """The DNS aliases podman passes for this network (capability "aliases":
    runtimeConfig.aliases is {network name: [alias, ...]})."""
    runtime = conf.get("runtimeConfig")
    if runtime is None:
        return ()
    if not isinstance(runtime, dict):
        raise _bad_key("runtimeConfig", runtime, "an object")
    by_net = runtime.get("aliases")
    if by_net is None:
        return ()
    if not isinstance(by_net, dict):
        raise _bad_key("runtimeConfig.aliases", by_net, "an object of lists of names")
    found = by_net.get(name, by_net.get(network)) or []
    if not isinstance(found, list) or not all(isinstance(a, str) and a for a in found):
        raise _bad_key(f"runtimeConfig.aliases.{name}", found, "a list of names")
    return tuple(dict.fromkeys(found))


def render_add(ep: Endpoint, inv: Invocation, prev: dict[str, Any] | None = None) -> dict[str, Any]:
    """ADD's result in the configuration's version.

    1.0.0 dropped the per-address "version" that 0.4.0 requires. An interface's "mtu" is
    only defined from spec 1.1.0, but libcni decodes 1.0.0 and 1.1.0 results with one type
    that reads it, so a 1.0.0 result carries it for the runtime; a 0.4.0 result keeps to
    0.4.0's fields. A `prevResult` (a plugin before us in the chain) is kept and ours appended
    to it: the spec forbids a plugin to ignore it.
    """
    req = inv.request
    iface: dict[str, Any] = {"name": req.ifname, "mac": ep.mac}
    if inv.cni_version != "0.4.0":
        iface["mtu"] = ep.mtu
    iface["sandbox"] = req.netns
    prev = prev or {}
    interfaces = [*_list(prev, "interfaces"), iface]
    ip: dict[str, Any] = {"address": ep.address, "gateway": ep.gateway}
    if inv.cni_version == "0.4.0":
        ip = {"version": "6" if ":" in ep.address else "4", **ip}
    ip["interface"] = len(interfaces) - 1
    return {
        "cniVersion": inv.cni_version,
        "interfaces": interfaces,
        "ips": [*_list(prev, "ips"), ip],
        "routes": _list(prev, "routes"),
        "dns": {"nameservers": list(ep.nameservers), "search": list(ep.search)},
    }


def _list(d: dict[str, Any], key: str) -> list[Any]:
    v = d.get(key)
    return list(v) if isinstance(v, list) else []


def outcome(inv: Invocation, answer: Answer) -> dict[str, Any] | None:
    """What the runtime gets for the agent's answer: ADD's result, nothing for DEL and CHECK,
    or (raised) the agent's own error, relayed."""
    if not answer.ok:
        if answer.code < 1:  # 0 means success in CNI: an error must not carry it
            raise CniError(
                IO_FAILURE,
                "the ovnet agent refused without an error code",
                f"its message: {answer.msg}",
            )
        raise CniError(answer.code, answer.msg, answer.details)
    if inv.request.command != "ADD":
        return None
    if answer.endpoint is None:
        raise CniError(IO_FAILURE, "the ovnet agent accepted the ADD but sent no attachment")
    return render_add(answer.endpoint, inv, inv.prev_result)


# --- the edge: the socket, the process -----------------------------------------------------


def relay(request: Request, socket_path: str, timeout: float = ANSWER_TIMEOUT) -> Answer:
    """Send ``request`` to the agent at ``socket_path`` and read its one-line answer."""
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(request.encode())
            data = _read_line(sock, deadline)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise CniError(
            TRY_AGAIN_LATER,
            f"no ovnet agent is listening on {socket_path}: try again later",
            f"{e.strerror}. The ovnet agent is not running on this host (systemctl status "
            f'ovnet-agent); if it listens elsewhere, set "socket" in the ovnet conflist (or '
            f"{SOCKET_ENV} in the runtime's environment) to the path of its CNI socket",
        ) from None
    except TimeoutError:
        raise CniError(
            TRY_AGAIN_LATER,
            f"the ovnet agent on {socket_path} did not answer within {timeout:g} s: "
            "try again later",
            "it may be waiting for a manager; see journalctl -u ovnet-agent",
        ) from None
    except OSError as e:
        raise CniError(
            IO_FAILURE, f"cannot talk to the ovnet agent on {socket_path}: {e.strerror or e}"
        ) from None
    try:
        return Answer.decode(data)
    except ProtocolError as e:
        raise CniError(
            IO_FAILURE,
            f"the ovnet agent on {socket_path} answered something that is not an answer",
            f"{e}; it sent {data[:200]!r}",
        ) from None


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            if not buf:
                raise ConnectionResetError(0, "the agent closed the connection without answering")
            break
        buf += chunk
        if len(buf) > MAX_ANSWER:
            break
    return bytes(buf.partition(b"\n")[0])


def run(
    env: Mapping[str, str],
    stdin: bytes,
    send: Callable[[Request, str], Answer] = relay,
) -> tuple[int, str]:
    """(exit status, stdout) for one execution of the plugin."""
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return 0, json.dumps(version_output(stdin))
    try:
        inv = parse(env, stdin)
        netns = inv.request.netns
        if inv.request.command != "DEL" and not os.path.exists(netns):
            raise CniError(
                UNKNOWN_CONTAINER,
                f"the network namespace {netns} (CNI_NETNS) does not exist",
                "the container is gone, or the runtime passed a wrong path",
            )
        out = outcome(inv, send(inv.request, inv.socket_path))
    except CniError as e:
        return 1, json.dumps(error_output(e, reply_version(stdin)))
    return 0, "" if out is None else json.dumps(out)


def _stdin() -> bytes:
    """The configuration; nothing when stdin is a terminal (VERSION typed by hand)."""
    if sys.stdin is None or sys.stdin.isatty():
        return b""
    return sys.stdin.buffer.read()


def main() -> None:
    try:
        stdin = _stdin()
    except OSError as e:
        code, out = (
            1,
            json.dumps(
                error_output(CniError(IO_FAILURE, f"cannot read stdin: {e}"), DEFAULT_VERSION)
            ),
        )
    else:
        code, out = run(os.environ, stdin)
    if out:
        sys.stdout.write(out + "\n")
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
