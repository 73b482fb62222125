"""`ovctl dev`: a local multi-host ovnet cluster in network namespaces (see cluster.py), and the
process and etcd launchers it shares with the tests."""

from ovctl.devcluster.cluster import (
    DEFAULT_HOSTS,
    DEFAULT_PREFIX,
    DEFAULT_SUBNET,
    ClientNs,
    DevCluster,
    DevClusterError,
    HostPlan,
    Plan,
    Teardown,
    make_plan,
)

__all__ = [
    "DEFAULT_HOSTS",
    "DEFAULT_PREFIX",
    "DEFAULT_SUBNET",
    "ClientNs",
    "DevCluster",
    "DevClusterError",
    "HostPlan",
    "Plan",
    "Teardown",
    "make_plan",
]
