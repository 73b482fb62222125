"""ovnet agent: the per-host daemon (session with the manager; executor and data plane in F2)."""
