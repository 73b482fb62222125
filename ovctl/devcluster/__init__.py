"""`ovctl dev`: a local multi-host ovnet cluster in network namespaces, and the process and etcd
launchers it shares with the tests.

Modules: plan (the pure names, addresses and command lines), shell (ip and /proc), state (the
state file and the daemons' records), cluster (the lifecycle: `DevCluster`), procs and etcd
(starting daemons and a real etcd). Test-only controls live in tests/support/, never here.
"""

from ovctl.devcluster.cluster import DevCluster
from ovctl.devcluster.plan import (
    DEFAULT_HOSTS,
    DEFAULT_PREFIX,
    DEFAULT_SUBNET,
    ClientNs,
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
