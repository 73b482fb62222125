"""ovnet manager: the gRPC server and its control loops over etcd.

Owns the desired state: networks, services, nodes, tasks, allocations and keys, written by the
elected leader only (`election`) through `store`, the only module that talks to etcd. One control
loop per module, each a pure core with its I/O at the edge: `controlapi` (what ovctl calls),
`allocator` (IPAM, VNIs, ports), `orchestrator` and `scheduler` (services -> tasks -> nodes, run
by `reconciler`), `dispatcher` (agent sessions), `keymanager` (key rotation), `ca` (certificates
and join tokens, server side); `server` and `rpcedge` put them behind gRPC with mutual TLS.
Layering: manager imports proto, security and osutil, never agent (tests/unit/test_layers.py).
"""
