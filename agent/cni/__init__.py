"""Containers started by someone else (podman, containerd, Kubernetes) on ovnet networks.

`plugin` is the `ovnet-cni` executable a CNI runtime runs (ADD, DEL, CHECK, VERSION); it does
nothing itself but ask the local agent over a unix socket (`protocol` says what travels on
it). `server` is the agent's end: it attaches through the manager, lets the daemon build the
veth into the container's namespace, and queues releases while no manager is reachable.
`conflists` writes one CNI network configuration per attachable network, so that a runtime
lists ovnet networks as its own.
"""
