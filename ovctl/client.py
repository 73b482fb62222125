"""Which managers to talk to, with which credentials, and a Control stub that fails over
between them.

Several managers may run; only one leads, and the others answer UNAVAILABLE (or are down). The
client therefore tries the addresses in order and moves on when one is UNAVAILABLE, and keeps
using the one that answered for the rest of the command.

Every channel is mutual TLS with the admin certificate `ovnet-manager init --admin-dir DIR`
writes (DIR/ca.pem, DIR/admin.crt, DIR/admin.key). ovctl finds them through its context file:
the files named under ``tls:`` in it, else those three next to it. A manager refuses a bad
certificate in the TLS handshake, where gRPC can only say "Socket closed"; so when no manager
answers, ovctl looks at its own certificate and says what is wrong with it, if anything.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf.message import Message

from osutil.failover import Rotation
from osutil.hostport import normalize_hostport
from proto import control_pb2_grpc
from security import pki
from security.credentials import MANAGER_CHANNEL_OPTIONS, NodeCredentials, diagnose

DEFAULT_PORT = 4242
DEFAULT_ADDR = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_CONFIG = Path("~/.config/ovnet/context.yaml")
# What `ovnet-manager init --admin-dir DIR` writes, found next to the context file by default.
TLS_FILE_NAMES = {"ca": "ca.pem", "cert": "admin.crt", "key": "admin.key"}
# Server-streaming RPCs: failover is only safe before the first message has been printed.
_STREAMING = frozenset({"ServiceLogs"})


class ConfigError(Exception):
    """The manager list from the flag, environment or context file cannot be used."""


class ManagerUnreachable(Exception):
    """Every manager answered UNAVAILABLE (not the leader, etcd away) or could not be reached."""

    def __init__(self, addrs: Sequence[str], details: str, hint: str = "") -> None:
        super().__init__(
            f"no manager could serve the request (tried {', '.join(addrs)}): {details}"
            + (f"; {hint}" if hint else "")
        )
        self.addrs = list(addrs)
        self.details = details
        self.hint = hint


@dataclass(frozen=True)
class TLSFiles:
    """Where ovctl's CA certificate, admin certificate and key are."""

    ca: Path
    cert: Path
    key: Path

    def paths(self) -> list[Path]:
        return [self.ca, self.cert, self.key]


@dataclass(frozen=True)
class AdminCredentials:
    """The admin's certificate and key with the cluster's root, read from `files`."""

    creds: NodeCredentials
    files: TLSFiles

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return self.creds.channel_credentials()

    def diagnose(self, details: str = "") -> str:
        """Why the handshake might have failed, given gRPC's `details` ("" if nothing is
        wrong locally): the managers refuse our certificate (expired, another CA's...), or we
        refuse theirs (not signed by our ca.pem: a manager of another cluster)."""
        now = pki.utcnow()
        if diagnose(self.creds, now):
            try:
                self.creds.validate()
                pki.check(self.creds.cert, self.creds.root, now)
            except pki.CertError as e:
                detail = str(e).removeprefix("the certificate ")
                return f"the managers refuse the admin certificate: it {detail} ({self.files.cert})"
        if "CERTIFICATE_VERIFY_FAILED" in details:
            return (
                f"the manager's certificate is not signed by the cluster CA in {self.files.ca} "
                "(a manager of another cluster?)"
            )
        return ""


def normalize_addr(addr: str) -> str:
    """host[:port]; the default port is added, and a bare IPv6 address gets brackets.
    ConfigError when it is not an address."""
    try:
        return normalize_hostport(addr, DEFAULT_PORT)
    except ValueError as e:
        raise ConfigError(f"bad manager address: {e}") from None


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


def context_file(env: Mapping[str, str]) -> Path:
    """$OVCTL_CONFIG, else ~/.config/ovnet/context.yaml."""
    return Path(env.get("OVCTL_CONFIG") or DEFAULT_CONFIG).expanduser()


def tls_from_context(text: str | None, path: Path) -> TLSFiles:
    """The `tls: {ca, cert, key}` of a context file (paths relative to the file), else
    ca.pem / admin.crt / admin.key next to it (also when there is no context file)."""
    doc = None
    if text is not None:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    section = doc.get("tls") if isinstance(doc, dict) else None
    if section is None:
        return TLSFiles(**{k: path.parent / name for k, name in TLS_FILE_NAMES.items()})
    if not isinstance(section, dict) or not all(
        isinstance(section.get(k), str) and section.get(k) for k in TLS_FILE_NAMES
    ):
        raise ConfigError(
            f"{path}: expected 'tls:' to name three files: ca, cert and key "
            "(e.g. tls: {ca: ca.pem, cert: admin.crt, key: admin.key})"
        )
    return TLSFiles(**{k: path.parent / Path(section[k]).expanduser() for k in TLS_FILE_NAMES})


def resolve_tls(env: Mapping[str, str]) -> TLSFiles:
    """The TLS files the context file names (or the default ones next to it). `--host` and
    $OVCTL_HOST choose managers only, never credentials."""
    path = context_file(env)
    try:
        text: str | None = path.read_text()
    except FileNotFoundError:
        if env.get("OVCTL_CONFIG"):
            raise ConfigError(f"{path} (from OVCTL_CONFIG) does not exist") from None
        text = None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    return tls_from_context(text, path)


def load_credentials(files: TLSFiles) -> AdminCredentials:
    """Read the admin credentials; ConfigError naming what is missing or unusable, and how to
    make them."""
    missing = [p for p in files.paths() if not p.is_file()]
    if missing:
        admin_dir = files.cert.parent
        raise ConfigError(
            f"ovctl's TLS credentials are missing: {', '.join(map(str, missing))} "
            f"{'does' if len(missing) == 1 else 'do'} not exist. Every manager requires a "
            "client certificate: run `ovnet-manager init --admin-dir "
            f"{admin_dir}` when creating the cluster (or copy ca.pem, admin.crt and admin.key "
            "from the admin directory of the host where it ran), or name the files under "
            "'tls:' in the context file"
        )
    try:
        root, cert, key = (p.read_bytes() for p in files.paths())
    except OSError as e:
        raise ConfigError(f"{e.filename}: {e.strerror}") from None
    for pem, path, load in (
        (root, files.ca, pki.load_cert),
        (cert, files.cert, pki.load_cert),
        (key, files.key, pki.load_key),
    ):
        try:
            load(pem)
        except pki.CertError as e:
            raise ConfigError(f"{path}: {e}") from None
    return AdminCredentials(NodeCredentials(root_pem=root, cert_pem=cert, key_pem=key), files)


def resolve_credentials(env: Mapping[str, str]) -> AdminCredentials:
    return load_credentials(resolve_tls(env))


def resolve_managers(host_flag: str | None, env: Mapping[str, str]) -> list[str]:
    """--host, else $OVCTL_HOST, else the context file ($OVCTL_CONFIG or the default path),
    else the local manager: the same precedence docker uses for its daemon address."""
    for given in (host_flag, env.get("OVCTL_HOST")):
        if given and given.strip():
            addrs = split_addrs(given)
            if addrs:
                return addrs
    path = context_file(env)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if env.get("OVCTL_CONFIG"):
            raise ConfigError(f"{path} (from OVCTL_CONFIG) does not exist") from None
        return [DEFAULT_ADDR]
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    return managers_from_context(text, str(path))


def open_channel(addr: str, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    """The only place a channel is made, so transport security is decided here alone: mutual
    TLS, the manager checked by the name every manager certificate carries (not the address,
    which may be anything the operator typed)."""
    return grpc.secure_channel(addr, credentials, options=MANAGER_CHANNEL_OPTIONS)


class FailoverStub:
    """Quacks like `ControlStub`: `stub.ListNetworks(request)` returns the response (a line
    iterator for ServiceLogs), with the per-call timeout applied and failover on UNAVAILABLE.

    Any other error is the manager's answer and is raised unchanged. When no manager answers,
    `diagnose()` (if given) says what might be wrong with our own certificate, since a
    manager refusing it in the handshake looks like one that is not there (it is given the
    last error's details).
    """

    def __init__(
        self,
        addrs: Sequence[str],
        timeout: float,
        channel_factory: Callable[[str], grpc.Channel],
        diagnose: Callable[[str], str] = lambda details: "",
    ) -> None:
        if not addrs:
            raise ValueError("at least one manager address is needed")
        self.addrs = list(addrs)
        self.timeout = timeout
        self._channel_factory = channel_factory
        self._diagnose = diagnose
        self._channels: dict[str, grpc.Channel] = {}
        self._rotation = Rotation(self.addrs)
        # Server streams in flight, for `cancel_streams` (from another thread).
        self._calls: set[Any] = set()

    @property
    def current_addr(self) -> str:
        """The manager that answered last (the first address before any call)."""
        return self._rotation.current

    def _stub(self, addr: str) -> Any:
        if addr not in self._channels:
            self._channels[addr] = self._channel_factory(addr)
        return control_pb2_grpc.ControlStub(self._channels[addr])

    def __getattr__(self, method: str) -> Callable[[Message], Any]:
        if method.startswith("_") or not hasattr(control_pb2_grpc.ControlServicer, method):
            raise AttributeError(method)
        if method in _STREAMING:
            return lambda request: self._stream(method, request)
        return lambda request: self._unary(method, request)

    def _unary(self, method: str, request: Message) -> Any:
        last = ""
        for addr in list(self._rotation.order()):
            try:
                response = getattr(self._stub(addr), method)(request, timeout=self.timeout)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                last = e.details() or str(e)
                continue
            self._rotation.succeeded(addr)
            return response
        raise self._unreachable(last)

    def _unreachable(self, details: str) -> ManagerUnreachable:
        return ManagerUnreachable(self.addrs, details, self._diagnose(details))

    def _stream(self, method: str, request: Message) -> Iterator[Any]:
        last = ""
        # A followed stream (`logs -f`) lasts as long as the user wants, not the call timeout.
        timeout = None if getattr(request, "follow", False) else self.timeout
        for addr in list(self._rotation.order()):
            call = getattr(self._stub(addr), method)(request, timeout=timeout)
            self._calls.add(call)
            try:
                try:
                    first = next(call)
                except StopIteration:
                    self._rotation.succeeded(addr)
                    return
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    last = e.details() or str(e)
                    continue
                self._rotation.succeeded(addr)
                yield first
                yield from call
                return
            finally:
                self._calls.discard(call)
        raise self._unreachable(last)

    def cancel_streams(self) -> None:
        """End every stream in flight (their iterators raise CANCELLED); thread-safe."""
        for call in list(self._calls):
            call.cancel()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> FailoverStub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    addrs: Sequence[str], credentials: AdminCredentials, timeout: float = 30.0
) -> FailoverStub:
    """A Control client over `addrs` (tried in order) with the admin's certificate; channels
    open lazily on first use."""
    return FailoverStub(
        addrs,
        timeout,
        functools.partial(open_channel, credentials=credentials.channel_credentials()),
        credentials.diagnose,
    )
