"""Which managers to talk to, and a Control stub that fails over between them.

Several managers may run; only one leads, and the others answer UNAVAILABLE (or are down). The
client therefore tries the addresses in order and moves on when one is UNAVAILABLE, and keeps
using the one that answered for the rest of the command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf.message import Message

from proto import control_pb2_grpc

DEFAULT_PORT = 4242
DEFAULT_ADDR = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_CONFIG = Path("~/.config/ovnet/context.yaml")
# Server-streaming RPCs: failover is only safe before the first message has been printed.
_STREAMING = frozenset({"ServiceLogs"})


class ConfigError(Exception):
    """The manager list from the flag, environment or context file cannot be used."""


class ManagerUnreachable(Exception):
    """Every manager answered UNAVAILABLE (not the leader, etcd away) or could not be reached."""

    def __init__(self, addrs: Sequence[str], details: str) -> None:
        super().__init__(
            f"no manager could serve the request (tried {', '.join(addrs)}): {details}"
        )
        self.addrs = list(addrs)
        self.details = details


def normalize_addr(addr: str) -> str:
    """host[:port]; the default port is added, and a bare IPv6 address gets brackets."""
    a = addr.strip()
    if not a:
        raise ConfigError("empty manager address")
    if a.startswith("["):
        return a if "]:" in a else f"{a}:{DEFAULT_PORT}"
    if a.count(":") > 1:
        return f"[{a}]:{DEFAULT_PORT}"
    return a if ":" in a else f"{a}:{DEFAULT_PORT}"


def split_addrs(text: str) -> list[str]:
    return [normalize_addr(a) for a in text.split(",") if a.strip()]


def managers_from_context(text: str, source: str) -> list[str]:
    """The `managers:` list of a context file (a YAML list, or one comma-separated string)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    managers = doc.get("managers") if isinstance(doc, dict) else None
    if isinstance(managers, str):
        managers = split_addrs(managers)
    if not isinstance(managers, list) or not managers:
        raise ConfigError(f"{source}: expected a non-empty list under 'managers:'")
    return [normalize_addr(str(m)) for m in managers]


def resolve_managers(host_flag: str | None, env: Mapping[str, str]) -> list[str]:
    """--host, else $OVCTL_HOST, else the context file ($OVCTL_CONFIG or the default path),
    else the local manager: the same precedence docker uses for its daemon address."""
    for given in (host_flag, env.get("OVCTL_HOST")):
        if given and given.strip():
            addrs = split_addrs(given)
            if addrs:
                return addrs
    path = Path(env.get("OVCTL_CONFIG") or DEFAULT_CONFIG).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        if env.get("OVCTL_CONFIG"):
            raise ConfigError(f"{path} (from OVCTL_CONFIG) does not exist") from None
        return [DEFAULT_ADDR]
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    return managers_from_context(text, str(path))


def open_channel(addr: str) -> grpc.Channel:
    """The only place a channel is made, so transport security is decided here alone."""
    return grpc.insecure_channel(addr)


class FailoverStub:
    """Quacks like `ControlStub`: `stub.ListNetworks(request)` returns the response (a line
    iterator for ServiceLogs), with the per-call timeout applied and failover on UNAVAILABLE.

    Any other error is the manager's answer and is raised unchanged.
    """

    def __init__(
        self,
        addrs: Sequence[str],
        timeout: float,
        channel_factory: Callable[[str], grpc.Channel] = open_channel,
    ) -> None:
        if not addrs:
            raise ValueError("at least one manager address is needed")
        self.addrs = list(addrs)
        self.timeout = timeout
        self._channel_factory = channel_factory
        self._channels: dict[str, grpc.Channel] = {}
        self._current = 0

    def _stub(self, addr: str) -> Any:
        if addr not in self._channels:
            self._channels[addr] = self._channel_factory(addr)
        return control_pb2_grpc.ControlStub(self._channels[addr])

    def _order(self) -> list[int]:
        n = len(self.addrs)
        return [(self._current + i) % n for i in range(n)]

    def __getattr__(self, method: str) -> Callable[[Message], Any]:
        if method.startswith("_") or not hasattr(control_pb2_grpc.ControlServicer, method):
            raise AttributeError(method)
        if method in _STREAMING:
            return lambda request: self._stream(method, request)
        return lambda request: self._unary(method, request)

    def _unary(self, method: str, request: Message) -> Any:
        last = ""
        for i in self._order():
            try:
                response = getattr(self._stub(self.addrs[i]), method)(request, timeout=self.timeout)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                last = e.details() or str(e)
                continue
            self._current = i
            return response
        raise ManagerUnreachable(self.addrs, last)

    def _stream(self, method: str, request: Message) -> Iterator[Any]:
        last = ""
        for i in self._order():
            call = getattr(self._stub(self.addrs[i]), method)(request, timeout=self.timeout)
            try:
                first = next(call)
            except StopIteration:
                self._current = i
                return
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                last = e.details() or str(e)
                continue
            self._current = i
            yield first
            yield from call
            return
        raise ManagerUnreachable(self.addrs, last)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> FailoverStub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(addrs: Sequence[str], timeout: float = 30.0) -> FailoverStub:
    """A Control client over `addrs` (tried in order); channels open lazily on first use."""
    return FailoverStub(addrs, timeout)
