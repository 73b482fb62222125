"""The embedded resolver every sandbox gets at 127.0.0.11: names from the gossip tables
(names.py, pure) served from the agent's own event loop (server.py); names that are not ours
forwarded to the host's resolvers (upstream.py)."""

from agent.dns.names import NameTable, Resolution
from agent.dns.server import DnsServer

__all__ = ["DnsServer", "NameTable", "Resolution"]
