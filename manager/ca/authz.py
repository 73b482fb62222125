"""Who may call what: the caller's identity from its certificate, checked against the roles each
RPC declares in the .proto files (``option (ovnet.v1.roles)``).

Pure: the gRPC edge (manager/rpcedge.py) reads the peer's certificate and the set of removed
nodes, and turns the errors raised here into statuses. The roles live with the API definition,
not here, so that adding an RPC without deciding who may call it fails at startup
(`service_roles`) instead of silently opening it to everyone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from manager.errors import PermissionDenied, Unauthenticated
from proto import ca_pb2
from security import pki

# A caller without a certificate: only the join listener serves it.
ANONYMOUS = "anonymous"
KNOWN_ROLES = frozenset({*pki.ROLES, ANONYMOUS})
# Roles that act as a node: a request naming a node must name their own.
NODE_ROLES = frozenset({pki.ROLE_WORKER, pki.ROLE_MANAGER})


class RolesError(ValueError):
    """An RPC declares no roles (or unknown ones): the manager does not start."""


@dataclass(frozen=True)
class Peer:
    """An authenticated caller: the CN and OU of its certificate."""

    node_id: str
    role: str


def method_roles(method: MethodDescriptor) -> tuple[str, ...]:
    # The generated stub types `roles` as a plain FieldDescriptor, not an extension handle.
    return tuple(method.GetOptions().Extensions[ca_pb2.roles])  # type: ignore[index]


def service_roles(services: Iterable[ServiceDescriptor]) -> dict[str, tuple[str, ...]]:
    """Full method name ("Control.CreateNetwork") -> allowed roles, for every method.

    Raises RolesError naming every method that declares no role or an unknown one: the manager
    refuses to start rather than serve an RPC nobody decided about."""
    out: dict[str, tuple[str, ...]] = {}
    problems: list[str] = []
    for svc in services:
        for method in svc.methods:
            name = f"{svc.name}.{method.name}"
            roles = method_roles(method)
            unknown = sorted(set(roles) - KNOWN_ROLES)
            if not roles:
                problems.append(f"{name} declares no roles")
            elif unknown:
                problems.append(f"{name} declares unknown role(s) {', '.join(unknown)}")
            out[name] = roles
    if problems:
        raise RolesError(
            "every RPC must declare who may call it with option (ovnet.v1.roles): "
            + "; ".join(problems)
        )
    return out


def peer_from_cert(pem: bytes, root: x509.Certificate, now: dt.datetime) -> Peer:
    """The caller of a certificate the TLS layer accepted, checked again against the root
    (defense in depth: the handshake already verified the chain, not our cluster ID or role)."""
    try:
        ci = pki.check(pki.load_cert(pem), root, now)
    except pki.CertError as e:
        raise Unauthenticated(f"client certificate refused: {e}") from None
    return Peer(node_id=ci.node_id, role=ci.role)


class PeerCache:
    """`peer_from_cert` for every RPC without parsing and verifying the same certificate each
    time (heartbeats and task reports come from the same few certificates): what does not
    change for a given certificate and root is kept; validity in time is checked on every call.
    Bounded: when full it starts over."""

    def __init__(self, root: x509.Certificate, size: int = 4096) -> None:
        self.root = root
        self.size = size
        self._checked: dict[bytes, pki.CertInfo] = {}

    def peer(self, pem: bytes, now: dt.datetime) -> Peer:
        ci = self._checked.get(pem)
        try:
            if ci is None:
                ci = pki.check(pki.load_cert(pem), self.root, now)
                if len(self._checked) >= self.size:
                    self._checked.clear()
                self._checked[pem] = ci
            else:
                pki.check_validity(ci, now)
        except pki.CertError as e:
            raise Unauthenticated(f"client certificate refused: {e}") from None
        return Peer(node_id=ci.node_id, role=ci.role)


def authorize(
    peer: Peer,
    method: str,
    roles: tuple[str, ...],
    removed: Container[str],
    request_node_id: str = "",
) -> None:
    """Raise PermissionDenied unless `peer` may call `method` ("Service.Method") with a request
    whose `node_id` field (if it has one) is `request_node_id`."""
    if peer.role not in roles:
        article = "an" if peer.role[:1] in "aeiou" else "a"
        raise PermissionDenied(
            f"{article} {peer.role} certificate may not call {method} (allowed: {', '.join(roles)})"
        )
    if peer.node_id in removed:
        raise PermissionDenied(
            f"node {peer.node_id} was removed from the cluster: join again with a token"
        )
    if peer.role in NODE_ROLES and request_node_id and request_node_id != peer.node_id:
        raise PermissionDenied(
            f"node {peer.node_id} may not act as node {request_node_id} "
            "(the request's node_id must be the certificate's)"
        )


def removed_ids(keys: Mapping[bytes, bytes] | Iterable[bytes], prefix: bytes) -> set[str]:
    """Node IDs from tombstone keys ``{prefix}<node id>``."""
    return {k[len(prefix) :].decode() for k in keys if k.startswith(prefix)}
