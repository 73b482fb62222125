"""manager/ca/authz.py: who may call what, decided from the caller's certificate."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from manager.ca import authz
from manager.ca.authz import Peer
from manager.errors import OvnetError
from security import pki

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CONTROL = ("admin", "manager")
DISPATCHER = ("worker", "manager")


def denied(peer: Peer, method: str, roles: tuple[str, ...], **kw: object) -> OvnetError:
    with pytest.raises(OvnetError) as info:
        authz.authorize(peer, method, roles, **kw)  # type: ignore[arg-type]
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    return info.value


def test_role_must_be_among_the_methods_roles() -> None:
    e = denied(Peer("n1", "worker"), "Control.CreateNetwork", CONTROL, removed=set())
    assert e.message == (
        "a worker certificate may not call Control.CreateNetwork (allowed: admin, manager)"
    )
    e = denied(Peer("admin-1", "admin"), "Dispatcher.Session", DISPATCHER, removed=set())
    assert e.message == (
        "an admin certificate may not call Dispatcher.Session (allowed: worker, manager)"
    )
    authz.authorize(Peer("admin-1", "admin"), "Control.CreateNetwork", CONTROL, set())
    authz.authorize(Peer("m1", "manager"), "Control.CreateNetwork", CONTROL, set())
    authz.authorize(Peer("n1", "worker"), "Dispatcher.Session", DISPATCHER, set())


def test_removed_node_is_refused_whatever_it_calls() -> None:
    e = denied(Peer("n1", "worker"), "Dispatcher.Heartbeat", DISPATCHER, removed={"n1"})
    assert e.message == "node n1 was removed from the cluster: join again with a token"
    authz.authorize(Peer("n2", "worker"), "Dispatcher.Heartbeat", DISPATCHER, {"n1"})


def test_a_node_may_act_only_as_itself() -> None:
    e = denied(
        Peer("n1", "worker"),
        "Dispatcher.Heartbeat",
        DISPATCHER,
        removed=set(),
        request_node_id="n2",
    )
    assert "node n1 may not act as node n2" in e.message
    authz.authorize(Peer("n1", "worker"), "Dispatcher.Heartbeat", DISPATCHER, set(), "n1")
    authz.authorize(Peer("n1", "worker"), "Dispatcher.Register", DISPATCHER, set(), "")
    with pytest.raises(OvnetError):
        authz.authorize(Peer("m1", "manager"), "Dispatcher.Heartbeat", DISPATCHER, set(), "n2")


def test_peer_is_read_from_a_certificate_of_this_cluster() -> None:
    root, root_key = pki.new_root("c1", NOW)

    def cert(r: object, k: pki.PrivateKey, role: str, **kw: object) -> bytes:
        c = pki.issue(r, k, pki.make_csr(pki.new_key()), node_id="n9", role=role, now=NOW, **kw)  # type: ignore[arg-type]
        return pki.cert_pem(c)

    assert authz.peer_from_cert(cert(root, root_key, "worker"), root, NOW) == Peer("n9", "worker")
    expired = cert(root, root_key, "admin", lifetime=dt.timedelta(seconds=1))
    with pytest.raises(OvnetError) as info:
        authz.peer_from_cert(expired, root, NOW + dt.timedelta(minutes=1))
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in info.value.message
    other, other_key = pki.new_root("c1", NOW)
    with pytest.raises(OvnetError, match="not issued by this cluster's root CA"):
        authz.peer_from_cert(cert(other, other_key, "admin"), root, NOW)
    with pytest.raises(OvnetError, match="not a PEM certificate"):
        authz.peer_from_cert(b"junk", root, NOW)


def test_removed_ids_from_tombstone_keys() -> None:
    keys = [b"/p/ca/removed/a", b"/p/ca/removed/b", b"/p/other"]
    assert authz.removed_ids(keys, b"/p/ca/removed/") == {"a", "b"}


def test_peer_cache_rechecks_time_on_every_call_and_bounds_itself() -> None:
    root, root_key = pki.new_root("c1", NOW)
    cache = authz.PeerCache(root, size=2)

    def cert(node_id: str) -> bytes:
        c = pki.issue(
            root, root_key, pki.make_csr(pki.new_key()), node_id=node_id, role="worker",
            now=NOW, lifetime=dt.timedelta(hours=1),
        )  # fmt: skip
        return pki.cert_pem(c)

    first = cert("n1")
    assert cache.peer(first, NOW) == Peer("n1", "worker")
    assert cache.peer(first, NOW + dt.timedelta(minutes=30)) == Peer("n1", "worker")
    # Cached, yet refused once expired: time is checked on every call.
    with pytest.raises(OvnetError) as info:
        cache.peer(first, NOW + dt.timedelta(hours=2))
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in info.value.message
    # Another cluster's certificate is refused, and never cached.
    other_root, other_key = pki.new_root("c2", NOW)
    foreign = pki.issue(
        other_root, other_key, pki.make_csr(pki.new_key()), node_id="x", role="admin", now=NOW
    )
    for _ in range(2):
        with pytest.raises(OvnetError) as info:
            cache.peer(pki.cert_pem(foreign), NOW)
        assert "not issued by this cluster's root CA" in info.value.message
    for n in ("n2", "n3", "n4"):
        assert cache.peer(cert(n), NOW).node_id == n
    assert len(cache._checked) <= 2
