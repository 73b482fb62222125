"""F12's web view in a real browser: Debian's headless chromium, driven over its DevTools
protocol, opens `ovctl cluster ui-url` on a 3-host dev cluster running 2 services; the DOM
shows every host and every task in its state, scaling a service changes the page within 2 s
without a reload, and a screenshot is kept (under $OVNET_ARTIFACTS or /tmp/ovnet-artifacts).

Chromium is given --ignore-certificate-errors: the manager's certificate is for the name
`ovnet-manager` and signed by the cluster's own CA, which chromium cannot be told to trust
without a profile NSS database. The test checks that certificate against the CA itself
(`test_ui_certificate_and_refusals`) instead.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.overlay import Overlay
from tests.support.cluster import E2ECluster
from tests.support.wait import wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium"),
]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(1e9)"]
ARTIFACTS = Path(os.environ.get("OVNET_ARTIFACTS", "/tmp/ovnet-artifacts"))


@pytest.fixture(scope="module")
def ov() -> Iterator[Overlay]:
    dev = E2ECluster(
        name_prefix=f"ovw{os.getpid() % 100000}-",
        hosts=3,
        subnet="198.51.100.192/27",
        manager_args=["--heartbeat-period", "0.5", "--heartbeat-grace", "3"],
        die_with_parent=True,
    )
    try:
        dev.up()
        ov = Overlay(dev)
        ov.ovctl("network", "create", "--subnet", "10.83.0.0/24", "webnet")
        ov.ovctl("service", "create", "--name", "web", "--replicas", "3", "--network",
                 "webnet", "--publish", "19180:8080", "--", *SLEEPER)  # fmt: skip
        ov.ovctl("service", "create", "--name", "api", "--replicas", "2", "--", *SLEEPER)
        yield ov
    finally:
        dev.down()


class DevTools:
    """The least of Chrome's DevTools protocol: commands on one page, answers by id."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=10)
        self.ids = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.ids:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def eval(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browser() -> Iterator[DevTools]:
    """A headless chromium (stopped by PID, even when the test fails) and its first page."""
    profile = Path(tempfile.mkdtemp(prefix="ovnet-chromium-"))
    proc = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-proxy-server", "--ignore-certificate-errors",
         "--window-size=1400,900", f"--user-data-dir={profile}",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    tools: DevTools | None = None
    try:
        port_file = profile / "DevToolsActivePort"
        wait_for("chromium's DevTools port", lambda: port_file.exists() and port_file.read_text())
        port = int(port_file.read_text().split()[0])
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def page_ws() -> str | None:
            with direct.open(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        tools = DevTools(wait_for("a chromium page", page_ws))
        yield tools
    finally:
        if tools is not None:
            tools.close()
        # SIGTERM first, so chromium reaps its own helpers; then whatever is left of its group.
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


DOM_STATE = """JSON.stringify({
  connected: document.getElementById("status")?.dataset.connected === "true",
  hostnames: [...document.querySelectorAll("[data-node-hostname]")]
    .map((e) => e.dataset.nodeHostname).filter((h) => h),
  tasks: Object.fromEntries([...document.querySelectorAll("[data-task-id]")]
    .map((e) => [e.dataset.taskId, e.dataset.state])),
  current: Object.fromEntries(["web", "api"].map((s) => [s, document.querySelectorAll(
    `.task:not(.finished)[data-service="${s}"]`).length])),
  services: [...document.querySelectorAll("[data-service-name]")].map((e) => e.textContent),
  marker: window.__ovnetMarker || 0,
})"""


def dom(tools: DevTools) -> dict[str, Any]:
    return dict(json.loads(tools.eval(DOM_STATE)))


def ovctl_tasks(ov: Overlay) -> dict[str, str]:
    out: dict[str, str] = {}
    for svc in ("web", "api"):
        for t in ov.json("service", "ps", svc):
            out[t["meta"]["id"]] = t["status"]["state"].removeprefix("TASK_STATE_").lower()
    return out


def test_ui_certificate_and_refusals(ov: Overlay) -> None:
    """The listener's certificate verifies against the cluster CA; without a token, 401 on the
    page and its event stream; with one, a redirect that sets the cookie."""
    parts = urlsplit(ov.ovctl("cluster", "ui-url").stdout.strip())
    ctx = ssl.create_default_context(cafile=str(ov.dev.files.admin_dir / "ca.pem"))
    ctx.check_hostname = False  # the certificate names `ovnet-manager`, not the address
    for target, status in (("/", 401), ("/events", 401), (f"/?{parts.query}", 303)):
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, context=ctx, timeout=10
        )
        try:
            conn.request("GET", target)
            resp = conn.getresponse()
            assert resp.status == status, target
            if status == 303:
                assert "HttpOnly" in resp.getheader("Set-Cookie", "")
        finally:
            conn.close()


def test_browser_shows_hosts_tasks_and_follows_scaling(ov: Overlay, browser: DevTools) -> None:
    hostnames = sorted(ov.nodes())
    assert len(hostnames) == 3
    url = ov.ovctl("cluster", "ui-url").stdout.strip()
    browser.call("Page.enable")
    browser.call("Page.navigate", url=url)

    def shown() -> dict[str, Any] | None:
        d = dom(browser)
        want = ovctl_tasks(ov)
        ok = d["connected"] and sorted(d["hostnames"]) == hostnames and d["tasks"] == want
        return d if ok and d["current"] == {"web": 3, "api": 2} else None

    d = wait_for("the page showing every host and task", shown, timeout=20)
    assert len(d["services"]) == 2 and any("19180:8080/tcp" in s for s in d["services"])
    # The page is the manager's own: no token left in the address bar, nothing external.
    assert "token=" not in browser.eval("location.href")
    browser.eval("window.__ovnetMarker = 42")

    # Timed from before the command (its process start included), given 2 s after it returns.
    t0 = time.monotonic()
    ov.ovctl("service", "scale", "-d", "web=5")
    returned = time.monotonic() - t0
    wait_for(
        "the page showing 5 web tasks",
        lambda: dom(browser)["current"]["web"] == 5,
        timeout=2.0,
        every=0.05,
    )
    took = time.monotonic() - t0
    assert dom(browser)["marker"] == 42, "the page reloaded"
    print(f"\nscale: ovctl returned after {returned:.2f}s, the page changed by {took:.2f}s")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    wait_for("web tasks running", lambda: ov.running("web", 5, timeout=20))
    time.sleep(0.5)
    shot = browser.call("Page.captureScreenshot", format="png")
    path = ARTIFACTS / f"webview-{time.strftime('%Y%m%d-%H%M%S')}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {path}")
