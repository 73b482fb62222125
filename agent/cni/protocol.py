"""What the `ovnet-cni` plugin and the agent say to each other on the agent's unix socket.

One request per connection: the plugin writes one JSON object and a newline, the agent answers
with one JSON object and a newline, then closes. Plain JSON keeps the plugin free of anything
but the standard library (a runtime starts it for every container), and an answer carries the
CNI error code itself: the agent knows why an attach failed, the plugin only relays it.

Request:  {"command": "ADD"|"DEL"|"CHECK", "network": NAME-OR-ID, "container_id": ...,
           "ifname": ..., "netns": PATH, "name": ..., "aliases": [...]}
Answer:   {"ok": true, "attachment": {...Endpoint...}}       (ADD, CHECK; DEL: no attachment)
          {"ok": false, "code": N, "msg": ..., "details": ...}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Where the agent listens unless its --cni-socket (and the conflist's "socket") say otherwise.
DEFAULT_SOCKET = "/run/ovnet/cni.sock"
# The plugin's `type` in a conflist: the name of the executable in the runtime's plugin path.
PLUGIN_TYPE = "ovnet-cni"
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0")
COMMANDS = ("ADD", "DEL", "CHECK")
# The resolver every ovnet sandbox has (agent/dns): the address a result names as nameserver.
NAMESERVER = "127.0.0.11"

# CNI's well-known error codes (the spec's "Error" section).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
# Plugin-specific codes start at 100.
ATTACH_REFUSED = 100


class ProtocolError(ValueError):
    """A request or answer that is not what this module describes."""


@dataclass(frozen=True)
class Request:
    command: str
    network: str
    container_id: str
    ifname: str
    netns: str = ""
    name: str = ""
    aliases: tuple[str, ...] = ()

    def encode(self) -> bytes:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        return json.dumps(d, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> Request:
        d = _object(data)
        aliases = d.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise ProtocolError("bad request: 'aliases' is not a list of strings")
        try:
            req = cls(
                command=_str(d, "command"),
                network=_str(d, "network"),
                container_id=_str(d, "container_id"),
                ifname=_str(d, "ifname"),
                netns=_str(d, "netns", ""),
                name=_str(d, "name", ""),
                aliases=tuple(aliases),
            )
        except TypeError as e:
            raise ProtocolError(f"bad request: {e}") from None
        if req.command not in COMMANDS:
            raise ProtocolError(f"unknown command {req.command!r}")
        return req


@dataclass(frozen=True)
class Endpoint:
    """What the agent made for an attachment: everything a CNI result says."""

    attachment_id: str
    address: str  # CIDR: 10.0.5.3/24
    gateway: str  # the network's gateway (no prefix length)
    mac: str
    mtu: int
    netns: str
    ifname: str
    nameservers: tuple[str, ...] = (NAMESERVER,)
    search: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["nameservers"] = list(self.nameservers)
        d["search"] = list(self.search)
        return d

    @classmethod
    def from_json(cls, d: Any) -> Endpoint:
        if not isinstance(d, dict):
            raise ProtocolError("the answer's attachment is not an object")
        try:
            return cls(
                attachment_id=_str(d, "attachment_id"),
                address=_str(d, "address"),
                gateway=_str(d, "gateway"),
                mac=_str(d, "mac"),
                mtu=int(d["mtu"]),
                netns=_str(d, "netns"),
                ifname=_str(d, "ifname"),
                nameservers=tuple(str(n) for n in d.get("nameservers") or ()),
                search=tuple(str(n) for n in d.get("search") or ()),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"bad attachment in the answer: {e}") from None


@dataclass(frozen=True)
class Answer:
    ok: bool
    endpoint: Endpoint | None = None
    code: int = 0
    msg: str = ""
    details: str = ""

    def encode(self) -> bytes:
        d: dict[str, Any] = {"ok": self.ok}
        if self.ok:
            if self.endpoint is not None:
                d["attachment"] = self.endpoint.to_json()
        else:
            d.update(code=self.code, msg=self.msg, details=self.details)
        return json.dumps(d, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> Answer:
        d = _object(data)
        if d.get("ok") is True:
            ep = d.get("attachment")
            return cls(ok=True, endpoint=Endpoint.from_json(ep) if ep is not None else None)
        try:
            return cls(
                ok=False,
                code=int(d["code"]),
                msg=str(d["msg"]),
                details=str(d.get("details", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"bad error answer: {e}") from None

    @classmethod
    def error(cls, code: int, msg: str, details: str = "") -> Answer:
        return cls(ok=False, code=code, msg=msg, details=details)


def _object(data: bytes) -> dict[str, Any]:
    try:
        d = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise ProtocolError("not a JSON object")
    return d


_MISSING = object()


def _str(d: dict[str, Any], key: str, default: object = _MISSING) -> str:
    v = d.get(key, default)
    if v is _MISSING:
        raise TypeError(f"{key!r} is missing")
    if not isinstance(v, str):
        raise TypeError(f"{key!r} is not a string")
    return v
