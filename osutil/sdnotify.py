"""systemd's readiness protocol (sd_notify): tell the service manager "READY=1" once a daemon
serves, and keep a one-line "STATUS=" that `systemctl status` shows.

Why hand-written: the protocol is one datagram of NAME=VALUE lines to the unix socket named by
$NOTIFY_SOCKET (a leading "@" means the abstract namespace). Debian's python3-systemd is not
in a venv, and the PyPI `systemd-python` builds against libsystemd's headers (a compiler and
libsystemd-dev on every host) to send that one datagram.

Outside systemd (no $NOTIFY_SOCKET: a terminal, the tests, `ovctl dev up`) every call does
nothing, so the daemons call it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """One daemon's link to systemd. `status` sends only when the text changed, so a loop may
    call it every pass."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._status = ""
        self._ready = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def ready(self, status: str = "") -> None:
        """READY=1 (once: systemd ignores repeats, so they are not sent), with a status."""
        if self._ready:
            self.status(status)
            return
        self._ready = True
        lines = ["READY=1"]
        if status:
            self._status = status
            lines.append(f"STATUS={status}")
        self._send("\n".join(lines))

    def status(self, text: str) -> None:
        """STATUS=text, when it differs from the last one sent."""
        if text and text != self._status:
            self._status = text
            self._send(f"STATUS={text}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def _send(self, message: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as e:
            # systemd gone or the socket not ours: the daemon goes on serving all the same.
            log.warning("cannot notify systemd (%s): %s", self._address.lstrip("\0"), e)
