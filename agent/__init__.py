"""ovnet agent: the per-host daemon.

Owns everything that happens on one host: the session with the managers (`session`), the task
loop and its pure state machine (`daemon`, `controller`), the runtime behind the executor seam
(`executor`), the kernel data plane (`dataplane`: namespaces, bridges, VXLAN, FDB/neighbour
entries, over hand-packed rtnetlink), gossip of endpoint records among agents (`gossip`,
`discovery`, `endpoints`), the embedded resolver (`dns`), nftables load balancing and the
routing mesh (`lb`, `services`) and health checks (`health`). `wiring` builds the daemon with
the real collaborators; tests hand it fakes.
Layering: agent imports proto, security and osutil, never manager (tests/unit/test_layers.py).
"""
