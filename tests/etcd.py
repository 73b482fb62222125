"""Re-export of `ovctl.devcluster.etcd`, where the etcd launcher moved so `ovctl dev` can use it;
existing imports from ``tests.etcd`` keep working."""

from ovctl.devcluster.etcd import (
    ETCD_BINARY,
    ETCDCTL_BINARY,
    EtcdHandle,
    EtcdServer,
    etcd_argv,
    etcd_available,
    key_prefix,
    stale_workdirs,
)

__all__ = [
    "ETCDCTL_BINARY",
    "ETCD_BINARY",
    "EtcdHandle",
    "EtcdServer",
    "etcd_argv",
    "etcd_available",
    "key_prefix",
    "stale_workdirs",
]
