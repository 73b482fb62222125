"""The manager's web view over real HTTPS: access with the admin certificate or a token from
`ovctl cluster ui-url`, refusals without either, and the event stream following a change
(manager/webui)."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ovctl.devcluster.procs import free_ports
from tests.integration.conftest import ManagerCluster
from tests.support.etcd import EtcdHandle
from tests.support.procs import ProcessSpawner

pytestmark = pytest.mark.integration


@pytest.fixture
def ui_cluster(etcd: EtcdHandle, spawn_process: ProcessSpawner) -> Iterator[ManagerCluster]:
    (port,) = free_ports(1)
    cluster = ManagerCluster(etcd, spawn_process, **{"ui-listen": f"127.0.0.1:{port}"})
    cluster.ui_port = port  # type: ignore[attr-defined]
    cluster.add()
    cluster.wait_leader()
    try:
        yield cluster
    finally:
        cluster.close()


def tls(
    cluster: ManagerCluster, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context that verifies the manager against the cluster's CA (the manager's
    certificate names `ovnet-manager`, not 127.0.0.1: the chain is checked, not the name)."""
    ctx = ssl.create_default_context(cafile=str(cluster.admin_dir / "ca.pem"))
    ctx.check_hostname = False
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def admin_tls(cluster: ManagerCluster) -> ssl.SSLContext:
    return tls(cluster, cluster.admin_dir / "admin.crt", cluster.admin_dir / "admin.key")


def get(
    cluster: ManagerCluster, path: str, ctx: ssl.SSLContext, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1",
        cluster.ui_port,  # type: ignore[attr-defined]
        context=ctx,
        timeout=10,
    )
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = b"" if path.startswith("/events") and resp.status == 200 else resp.read()
    return resp.status, resp, body


def next_snapshot(resp: http.client.HTTPResponse, deadline: float) -> dict:
    """The next `snapshot` event of an open stream (keepalive comments skipped)."""
    name = ""
    while time.monotonic() < deadline:
        line = resp.fp.readline().decode()
        if not line:
            break
        if line.startswith("event: "):
            name = line[7:].strip()
        elif line.startswith("data: ") and name == "snapshot":
            return json.loads(line[6:])
    raise AssertionError("no snapshot event in time")


def test_admin_certificate_opens_page_and_assets(ui_cluster: ManagerCluster) -> None:
    ctx = admin_tls(ui_cluster)
    status, resp, body = get(ui_cluster, "/", ctx)
    assert status == 200 and b'<main id="cluster"' in body
    assert resp.getheader("Content-Security-Policy", "").startswith("default-src 'self'")
    for path in ("/app.js", "/app.css"):
        assert get(ui_cluster, path, ctx)[0] == 200
    assert get(ui_cluster, "/nope", ctx)[0] == 404
    status, _, body = get(ui_cluster, "/snapshot.json", ctx)
    snap = json.loads(body)
    assert status == 200 and snap["leader"] and snap["manager"] == "m0"
    assert [n["name"] for n in snap["networks"]] == ["ingress"]


def test_without_credentials_401_and_worker_certificate_403(
    ui_cluster: ManagerCluster, tmp_path: Path
) -> None:
    anon = tls(ui_cluster)
    for path in ("/", "/events", "/app.js", "/snapshot.json"):
        status, resp, _ = get(ui_cluster, path, anon)
        assert status == 401, path
        assert resp.getheader("WWW-Authenticate")
    assert get(ui_cluster, "/", anon, {"Cookie": "ovnet_ui=v1.9999999999.x.y"})[0] == 401
    creds = ui_cluster.join()
    (tmp_path / "w.crt").write_bytes(creds.cert_pem)
    (tmp_path / "w.key").write_bytes(creds.key_pem)
    worker = tls(ui_cluster, tmp_path / "w.crt", tmp_path / "w.key")
    assert get(ui_cluster, "/", worker)[0] == 403
    assert get(ui_cluster, "/events", worker)[0] == 403


def test_token_from_ovctl_then_cookie_and_live_events(ui_cluster: ManagerCluster) -> None:
    url = ui_cluster.ovctl("cluster", "ui-url").stdout.strip()
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.port == ui_cluster.ui_port  # type: ignore[attr-defined]
    anon = tls(ui_cluster)
    status, resp, _ = get(ui_cluster, f"/?{parts.query}", anon)
    assert status == 303 and resp.getheader("Location") == "/"
    set_cookie = resp.getheader("Set-Cookie", "")
    assert "HttpOnly" in set_cookie and "Secure" in set_cookie and "SameSite=Strict" in set_cookie
    cookie = {"Cookie": set_cookie.split(";", 1)[0]}
    status, _, body = get(ui_cluster, "/", anon, cookie)
    assert status == 200 and b"app.js" in body
    status, stream, _ = get(ui_cluster, "/events", anon, cookie)
    assert status == 200
    assert stream.getheader("Content-Type", "").startswith("text/event-stream")
    first = next_snapshot(stream, time.monotonic() + 5)
    assert first["services"] == []
    ui_cluster.ovctl("service", "create", "-d", "--name", "web", "--replicas", "2", "--", "true")
    deadline = time.monotonic() + 5
    while True:
        snap = next_snapshot(stream, deadline)
        if snap["services"]:
            break
    assert snap["services"][0]["name"] == "web" and snap["revision"] > first["revision"]
    stream.close()
    # A token is not a certificate: a tampered one is refused.
    tampered = parts.query[:-2] + ("AA" if not parts.query.endswith("AA") else "BB")
    assert get(ui_cluster, f"/?{tampered}", anon)[0] == 401
