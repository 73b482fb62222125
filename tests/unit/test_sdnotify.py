"""osutil.sdnotify against a real unix datagram socket standing in for systemd's."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from osutil.sdnotify import Notifier


def _received(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


@pytest.mark.parametrize("abstract", [False, True])
def test_ready_once_then_status_only_when_it_changes(tmp_path: Path, abstract: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"ovnet-test-{tmp_path.name}"
            sock.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / "notify")
            sock.bind(address)
        n = Notifier(address)
        assert n.enabled
        n.ready("leader, 0 of 0 nodes ready")
        n.ready("leader, 1 of 1 nodes ready")  # READY=1 is not repeated
        n.status("leader, 1 of 1 nodes ready")  # unchanged: not sent
        n.status("leader, 1 of 2 nodes ready")
        n.stopping()
        assert _received(sock) == [
            "READY=1\nSTATUS=leader, 0 of 0 nodes ready",
            "STATUS=leader, 1 of 1 nodes ready",
            "STATUS=leader, 1 of 2 nodes ready",
            "STOPPING=1",
        ]


def test_outside_systemd_nothing_is_sent_and_nothing_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    n.ready("x")
    # A socket that is gone: logged, the daemon goes on.
    gone = Notifier(str(tmp_path / "missing"))
    gone.ready("x")
    assert "cannot notify systemd" in caplog.text
