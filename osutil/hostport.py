"""HOST:PORT, parsed and formatted one way everywhere.

IPv6 hosts are written in brackets ("[::1]:4242"); parsing strips them. Errors are ValueError
with the text quoted, so a caller can put the message in front of a user as it is.
"""

from __future__ import annotations


def split_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``(host, port)`` from "HOST:PORT", "[V6]:PORT", or, when ``default_port`` is given,
    "HOST", "V6" or "[V6]" alone."""
    a = text.strip()
    if not a:
        raise ValueError("empty address: expected HOST:PORT")
    if a.startswith("["):
        host, sep, rest = a[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"{text!r} is not HOST:PORT (unclosed '[')")
        if not rest:
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError(f"{text!r} is not HOST:PORT")
    elif a.count(":") > 1:  # a bare IPv6 address has no port
        host, port_text = a, None
    else:
        host, sep, port_text_ = a.partition(":")
        port_text = port_text_ if sep else None
        if not host:
            raise ValueError(f"{text!r} is not HOST:PORT (no host)")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r} is not HOST:PORT (no port)")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (port {port_text!r} is not 1-65535)")
    return host, int(port_text)


def join_hostport(host: str, port: int) -> str:
    """"HOST:PORT", with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalize_hostport(text: str, default_port: int | None = None) -> str:
    """The canonical "HOST:PORT" spelling of ``text``."""
    return join_hostport(*split_hostport(text, default_port))


def next_port(addr: str) -> str:
    """The same host at the next port (a manager's join listener sits at its port + 1)."""
    host, port = split_hostport(addr)
    if port >= 65535:
        raise ValueError(f"{addr!r} has no next port")
    return join_hostport(host, port + 1)
