"""The ports programs listen on in this host's namespace, for the manager to refuse as mappings.

`ovctl run -p 8081:80` DNATs the node's port 8081 to a task. If a program on the node already
listens there (sshd, a web server, the agent's own gossip port), the mapping would silently
steal its traffic. The agent reports the host's listening sockets with its heartbeats (when
they change, and every REPORT_S), and the manager refuses such a mapping naming the program.

`parse_proc_net` is pure (the text of /proc/net/{tcp,udp}[6]); `listening_ports` reads them
and names each socket's holder by scanning /proc/*/fd, which costs a few ms, so it is done only
when the set of ports changed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from proto import objects_pb2 as pb

# TCP_LISTEN in /proc/net/tcp; an unconnected UDP socket shows TCP_CLOSE (07).
_LISTEN = {"tcp": "0A", "udp": "07"}
_PROTOS = {"tcp": pb.PROTOCOL_TCP, "udp": pb.PROTOCOL_UDP}
_SOURCES = (("tcp", "tcp"), ("tcp", "tcp6"), ("udp", "udp"), ("udp", "udp6"))


def parse_proc_net(text: str, proto: str) -> dict[int, set[int]]:
    """Listening port -> socket inodes, from one /proc/net/{tcp,udp}[6] table: TCP sockets in
    LISTEN, UDP sockets bound and unconnected (remote port 0)."""
    out: dict[int, set[int]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN[proto]:
            continue
        local, remote = fields[1], fields[2]
        if proto == "udp" and not remote.endswith(":0000"):
            continue
        try:
            port = int(local.rsplit(":", 1)[1], 16)
            inode = int(fields[9])
        except (IndexError, ValueError):
            continue
        if port:
            out.setdefault(port, set()).add(inode)
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def socket_holders(inodes: Iterable[int], proc: str = "/proc") -> dict[int, str]:
    """Socket inode -> "NAME (pid N)" of a process holding it (the first found)."""
    wanted = {f"socket:[{i}]": i for i in inodes}
    found: dict[int, str] = {}
    if not wanted:
        return found
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            inode = wanted.get(target)
            if inode is not None and inode not in found:
                name = _read(f"{proc}/{pid}/comm").strip() or "?"
                found[inode] = f"{name} (pid {pid})"
        if len(found) == len(wanted):
            break
    return found


class ListeningWatch:
    """The host's listening ports as a report. `report` is called on every heartbeat: the
    tables are read at most every `every` s (a busy host's /proc/net/tcp lists every
    connection: ~8 ms here), and holders looked up again only when the set of ports changed."""

    def __init__(self, proc: str = "/proc", every: float = 2.0) -> None:
        self.proc = proc
        self.every = every
        self._last: tuple[frozenset[tuple[str, int]], pb.ListeningPorts] | None = None
        self._read_at = -every

    def report(self) -> pb.ListeningPorts:
        now = time.monotonic()
        if self._last is not None and now - self._read_at < self.every:
            return self._last[1]
        self._read_at = now
        ports: dict[tuple[str, int], set[int]] = {}
        for proto, table in _SOURCES:
            text = _read(f"{self.proc}/net/{table}")
            for port, inodes in parse_proc_net(text, proto).items():
                ports.setdefault((proto, port), set()).update(inodes)
        key = frozenset(ports)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        holders = socket_holders({i for s in ports.values() for i in s}, self.proc)
        msg = pb.ListeningPorts()
        for (proto, port), inodes in sorted(ports.items()):
            holder = next((holders[i] for i in sorted(inodes) if i in holders), "")
            msg.ports.add(protocol=_PROTOS[proto], port=port, holder=holder)
        self._last = (key, msg)
        return msg
