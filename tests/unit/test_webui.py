"""The web view's pure parts: tokens, the snapshot, request parsing, access decisions and
response/event framing (manager/webui)."""

from __future__ import annotations

import asyncio
import json

import pytest

from manager.state import ClusterState
from manager.store import Batch
from manager.webui import assets, http, server, snapshot
from manager.webui import token as tokens
from proto import objects_pb2 as pb
from security import pki

KEY = tokens.derive_key(pki.new_key())


# ---------------------------------------------------------------- tokens


def test_token_round_trip_and_expiry() -> None:
    tok, expiry = tokens.issue(KEY, now=1000.0, ttl_s=600)
    assert expiry == 1600
    assert tokens.verify(KEY, tok, now=1599.0) == 1600
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(KEY, tok, now=1600.0)


def test_token_forgery_and_other_cluster_are_refused() -> None:
    tok, _ = tokens.issue(KEY, now=1000.0)
    version, expiry, nonce, mac = tok.split(".")
    forged = ".".join([version, str(int(expiry) + 86400), nonce, mac])
    with pytest.raises(tokens.TokenError, match="not issued"):
        tokens.verify(KEY, forged, now=1000.0)
    other = tokens.derive_key(pki.new_key())
    with pytest.raises(tokens.TokenError, match="not issued"):
        tokens.verify(other, tok, now=1000.0)
    for bad in ("", "v1.x.y.z", "v2.1.a.b", tok + ".x", "v1.99999999999.n." + "A" * 300):
        with pytest.raises(tokens.TokenError):
            tokens.verify(KEY, bad, now=1000.0)


def test_key_is_the_same_for_the_same_ca_key() -> None:
    ca_key = pki.new_key()
    assert tokens.derive_key(ca_key) == tokens.derive_key(ca_key)


def test_token_lifetime_is_bounded() -> None:
    for ttl in (0, -1, tokens.MAX_TTL_S + 1):
        with pytest.raises(ValueError):
            tokens.issue(KEY, 0.0, ttl)


# ---------------------------------------------------------------- snapshot


def _state() -> ClusterState:
    node = pb.Node(meta=pb.Meta(id="n1"))
    node.description.hostname = "host-a"
    node.description.addr = "198.51.100.2"
    node.status.state = pb.NODE_STATE_READY
    net = pb.Network(meta=pb.Meta(id="net1"), subnet="10.0.1.0/24")
    net.spec.name = "front"
    net.spec.encrypted = True
    svc = pb.Service(meta=pb.Meta(id="s1"))
    svc.spec.name = "web"
    svc.spec.replicated.replicas = 2
    svc.spec.networks.add(target="net1")
    svc.endpoint.ports.add(target_port=80, published_port=8080)
    running = pb.Task(meta=pb.Meta(id="t1"), service_id="s1", service_name="web", slot=1)
    running.node_id = "n1"
    running.spec.command.extend(["httpd", "-f"])
    running.desired_state = pb.TASK_STATE_RUNNING
    running.status.state = pb.TASK_STATE_RUNNING
    failed = pb.Task(meta=pb.Meta(id="t0"), service_id="s1", service_name="web", slot=1)
    failed.node_id = "n1"
    failed.desired_state = pb.TASK_STATE_SHUTDOWN
    failed.status.state = pb.TASK_STATE_FAILED
    failed.status.err = "exit status 1"
    pending = pb.Task(meta=pb.Meta(id="t2"), service_id="s1", service_name="web", slot=2)
    pending.desired_state = pb.TASK_STATE_RUNNING
    pending.status.state = pb.TASK_STATE_PENDING
    state = ClusterState()
    batch = Batch()
    for kind, obj in (
        ("nodes", node),
        ("networks", net),
        ("services", svc),
        ("tasks", running),
        ("tasks", failed),
        ("tasks", pending),
    ):
        batch.create(kind, obj)
    state.apply(batch, 7)
    return state


def test_snapshot_from_state() -> None:
    snap = snapshot.build(_state(), manager_id="m0", leader=True)
    json.dumps(snap)  # plain data
    assert snap["revision"] == 7 and snap["leader"]
    assert snap["nodes"] == [
        {
            "id": "n1",
            "hostname": "host-a",
            "role": "worker",
            "state": "ready",
            "availability": "active",
            "addr": "198.51.100.2",
        }
    ]
    tasks = {t["id"]: t for t in snap["tasks"]}
    assert tasks["t1"]["name"] == "web.1" and tasks["t1"]["class"] == "running"
    assert tasks["t1"]["what"] == "httpd -f" and tasks["t1"]["current"]
    assert tasks["t0"]["class"] == "failed" and not tasks["t0"]["current"]
    assert tasks["t0"]["message"] == "exit status 1"
    assert tasks["t2"]["class"] == "starting" and tasks["t2"]["node_id"] == ""
    assert snap["services"] == [
        {
            "id": "s1",
            "name": "web",
            "mode": "replicated",
            "replicas": 2,
            "ports": ["8080:80/tcp"],
            "networks": ["front"],
        }
    ]
    assert snap["networks"][0]["subnet"] == "10.0.1.0/24" and snap["networks"][0]["encrypted"]


def test_every_task_state_has_a_colour() -> None:
    for value in pb.TaskState.values():
        assert snapshot.task_state(value) in snapshot.STATE_CLASS


def test_follower_snapshot_names_the_leader() -> None:
    snap = snapshot.not_leading("m1", "198.51.100.1:4242")
    assert not snap["leader"] and snap["leader_addr"] == "198.51.100.1:4242"
    assert snap["nodes"] == snap["tasks"] == []


# ---------------------------------------------------------------- requests


def _req(target: str, *headers: str, method: str = "GET") -> http.Request:
    head = "\r\n".join([f"{method} {target} HTTP/1.1", "Host: x", *headers]) + "\r\n\r\n"
    return http.parse_head(head.encode())


def test_parse_head() -> None:
    req = _req("/events?token=abc", "Cookie: a=1; ovnet_ui=tok")
    assert (req.method, req.path, req.query) == ("GET", "/events", {"token": ["abc"]})
    assert req.cookie("ovnet_ui") == "tok" and req.cookie("b") == ""


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/2\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\n\r\n", 405),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n X: y\r\n\r\n", 400),
        ("GET /\u00e9 HTTP/1.1\r\n\r\n".encode(), 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * http.MAX_HEAD + b"\r\n\r\n", 431),
    ],
)
def test_bad_requests(head: bytes, status: int) -> None:
    with pytest.raises(http.HttpError) as e:
        http.parse_head(head)
    assert e.value.status == status


def _verify(token: str) -> int:
    return tokens.verify(KEY, token, 1000.0)


def test_admin_certificate_grants_access() -> None:
    assert http.authorize(_req("/"), pki.ROLE_ADMIN, _verify, 1000.0).status == 200


def test_no_credentials_is_401_and_wrong_role_403() -> None:
    for path in ("/", "/events", "/app.js", "/app.css", "/nope"):
        assert http.authorize(_req(path), None, _verify, 1000.0).status == 401
        assert http.authorize(_req(path), pki.ROLE_WORKER, _verify, 1000.0).status == 403


def test_token_in_query_moves_into_a_cookie() -> None:
    tok, _ = tokens.issue(KEY, 1000.0, 600)
    access = http.authorize(_req(f"/?token={tok}"), None, _verify, 1000.0)
    assert access.status == 303 and access.cookie == tok and access.cookie_max_age == 600
    raw = http.redirect_with_cookie("/", access).decode()
    assert raw.startswith("HTTP/1.1 303 See Other\r\n")
    assert "Location: /\r\n" in raw
    assert (
        f"Set-Cookie: ovnet_ui={tok}; Max-Age=600; Path=/; HttpOnly; Secure; SameSite=Strict" in raw
    )
    cookie = http.authorize(_req("/events", f"Cookie: ovnet_ui={tok}"), None, _verify, 1000.0)
    assert cookie.status == 200 and cookie.expiry == 1600


def test_bad_or_expired_token_is_401_without_echoing_it() -> None:
    tok, _ = tokens.issue(KEY, 0.0, 600)  # expired at 600
    for req in (_req(f"/?token={tok}"), _req("/events", f"Cookie: ovnet_ui={tok}")):
        access = http.authorize(req, pki.ROLE_WORKER, _verify, 1000.0)
        assert access.status == 401 and tok not in access.reason
    assert http.authorize(_req("/?token=junk"), None, _verify, 1000.0).status == 401


def test_response_framing() -> None:
    raw = http.response(200, b"hello", "text/plain")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == b"hello"
    assert b"Content-Length: 5" in head and b"Connection: close" in head
    assert b"Content-Security-Policy: default-src 'self'" in head
    head_only = http.response(200, b"hello", head_only=True)
    assert head_only.endswith(b"\r\n\r\n") and b"hello" not in head_only
    err = http.error_response(401, "no")
    assert err.startswith(b"HTTP/1.1 401 Unauthorized\r\n") and b"WWW-Authenticate" in err


def test_event_stream_framing() -> None:
    assert http.stream_head().startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/event-stream" in http.stream_head()
    assert b"Content-Length" not in http.stream_head()
    ev = http.event({"a": "x\ny"})
    assert ev == b'event: snapshot\ndata: {"a":"x\\ny"}\n\n'
    assert http.KEEPALIVE.startswith(b":") and http.KEEPALIVE.endswith(b"\n\n")


def test_assets_are_self_contained() -> None:
    for path, (_ctype, body) in assets.ASSETS.items():
        text = body.decode()
        assert "http://" not in text and "https://" not in text, path
    html = assets.ASSETS["/"][1].decode()
    assert 'src="/app.js"' in html and 'href="/app.css"' in html
    js = assets.ASSETS["/app.js"][1].decode()
    for hook in ("data-node-hostname", "data-task-id", "data-state", 'EventSource("/events")'):
        assert hook in js


# ---------------------------------------------------------------- the hub


def test_hub_rebuilds_only_when_the_state_moved() -> None:
    builds: list[int] = []
    revision = [1]

    def view() -> server.View:
        rev = revision[0]

        def build() -> dict[str, int]:
            builds.append(rev)
            return {"revision": rev}

        return rev, build

    hub = server.Hub(view)
    assert hub.refresh() and hub.data == {"revision": 1} and hub.seq == 1
    assert not hub.refresh() and builds == [1]
    revision[0] = 2
    assert hub.refresh() and hub.seq == 2 and builds == [1, 2]


def test_hub_wakes_streams_once_per_change() -> None:
    revision = [1]
    hub = server.Hub(lambda: (revision[0], lambda: {"revision": revision[0]}))

    async def scenario() -> None:
        hub.watchers = 1
        runner = asyncio.create_task(hub.run())
        try:
            await asyncio.sleep(0.05)
            seq = hub.seq
            assert not await hub.wait_newer(seq, 0.3)  # nothing moved: timeout
            revision[0] = 5
            assert await hub.wait_newer(seq, 2.0)
            assert hub.data == {"revision": 5}
        finally:
            runner.cancel()

    asyncio.run(scenario())


def test_advertised_host_of_a_wildcard_listener() -> None:
    assert server.advertise_host("0.0.0.0:8443", "198.51.100.1:4242") == "198.51.100.1"
    assert server.advertise_host("127.0.0.1:8443", "198.51.100.1:4242") == "127.0.0.1"
