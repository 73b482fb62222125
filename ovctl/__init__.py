"""ovctl: the command-line client, and `ovctl dev`, a local multi-host cluster.

Owns what a person types and reads: parsing (`cli`, `specs`), calls to any manager with
failover (`client`), tables and pretty views (`render`), and the dev cluster (`devcluster`),
which runs etcd, a manager and agents as processes in network namespaces.
Layering: ovctl imports proto, security and osutil only; it reaches the manager and the agent
through gRPC and processes, never by import (tests/unit/test_layers.py).
"""
