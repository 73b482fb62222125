"""The data plane this host's assignments ask for: protobuf objects in, `DesiredState` out.

`desired_dataplane` derives what a set of sandboxes needs (the networks they are on, their veths
and addresses, the endpoints on other hosts), with the ingress sandbox and the host's
attachments (containers of other runtimes, agent/cni) beside them. Pure: the controller says
which sandboxes, the daemon reconciles the kernel to the result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from agent.controller import task_hostname
from agent.model import (
    INGRESS_SANDBOX,
    AttachmentConfig,
    DesiredState,
    HostConfig,
    IpsecKey,
    LocalEndpoint,
    NetworkConfig,
    RemoteEndpoint,
    SandboxConfig,
)
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb


def desired_dataplane(
    host: HostConfig,
    tasks: Mapping[str, pb.Task],
    networks: Mapping[str, pb.Network],
    endpoints: Mapping[str, Iterable[RemoteEndpoint]],
    sandboxes: Iterable[str],
    ingress: tuple[pb.Network, str] | None = None,
    ipsec_keys: tuple[IpsecKey, ...] = (),
    keep_remotes: bool = False,
    attachments: Mapping[str, pb.Attachment] | None = None,
) -> tuple[DesiredState, dict[str, str]]:
    """The data plane for `sandboxes` (task IDs), and for each task that cannot have one, why.
    `endpoints` holds, per network, the endpoints other hosts announced (through gossip);
    `keep_remotes`: it may be incomplete (see DesiredState).
    `ingress` (the ingress network and this node's address on it) adds the host's ingress
    sandbox, the routing mesh's end here, built whether or not a local task publishes.
    `attachments` (containers of other runtimes, by attachment ID) each need their network,
    like a task; one that cannot have it is in the problems too.

    Networks are built only when a local sandbox is on them (lazily, as Docker does), and
    removed when the last one goes: that falls out of deriving everything from the sandboxes.
    """
    nets: dict[str, NetworkConfig] = {}
    problems: dict[str, str] = {}
    boxes = _task_sandboxes(host, tasks, networks, sandboxes, nets, problems)
    if ingress is not None:
        net, addr = ingress
        config = network_config(net)
        nets[config.id] = config
        boxes[INGRESS_SANDBOX] = SandboxConfig(
            task_id=INGRESS_SANDBOX,
            endpoints=(
                LocalEndpoint(
                    task_id=INGRESS_SANDBOX,
                    network_id=config.id,
                    index=0,
                    address=ipaddress.IPv4Interface(addr),
                ),
            ),
            egress=True,
        )
    atts = _attachment_configs(host, attachments or {}, networks, nets, problems)
    # An address a local task holds is never sent away, even if a stale record elsewhere
    # (a dead host's, until it is reaped) still claims it.
    local_addrs = {(e.network_id, e.address.ip) for b in boxes.values() for e in b.endpoints}
    local_addrs |= {(a.network_id, a.address.ip) for a in atts.values()}
    remotes = {
        net_id: frozenset(
            r
            for r in endpoints.get(net_id, ())
            if r.vtep != host.vtep and (net_id, r.address) not in local_addrs
        )
        for net_id in nets
    }
    desired = DesiredState(
        networks=nets,
        sandboxes=boxes,
        attachments=atts,
        remotes=remotes,
        ipsec_keys=ipsec_keys,
        keep_remotes=keep_remotes,
    )
    return desired, problems


def _task_sandboxes(
    host: HostConfig,
    tasks: Mapping[str, pb.Task],
    networks: Mapping[str, pb.Network],
    sandboxes: Iterable[str],
    nets: dict[str, NetworkConfig],
    problems: dict[str, str],
) -> dict[str, SandboxConfig]:
    """The tasks' sandboxes that can be built, adding their networks to `nets` and saying in
    `problems` why the others cannot."""
    boxes: dict[str, SandboxConfig] = {}
    for task_id in sorted(sandboxes):
        task = tasks.get(task_id)
        if task is None:
            continue
        legs: list[LocalEndpoint] = []
        configs: list[NetworkConfig] = []
        for index, att in enumerate(task.networks):
            config = _leg_network(host, networks, f"task {task_id}", att)
            if isinstance(config, str):
                problems[task_id] = config
                break
            configs.append(config)
            legs.append(
                LocalEndpoint(
                    task_id=task_id,
                    network_id=config.id,
                    index=index,
                    address=ipaddress.IPv4Interface(att.addresses[0]),
                )
            )
        else:
            for config in configs:
                nets[config.id] = config
            boxes[task_id] = SandboxConfig(
                task_id=task_id,
                endpoints=tuple(legs),
                # Internal networks have no way out; one non-internal network gives the
                # sandbox the gwbridge leg (a task on no network at all gets egress too, as a
                # container on no network would have its bridge).
                egress=not configs or any(not c.internal for c in configs),
                hostname=task_hostname(task),
            )
    return boxes


def _leg_network(
    host: HostConfig, networks: Mapping[str, pb.Network], owner: str, att: pb.NetworkAttachment
) -> NetworkConfig | str:
    """The network one leg of `owner` (a task, an attachment) is on, or why it cannot be."""
    net = networks.get(att.network_id)
    if net is None:
        return f"network {att.network_id} of {owner} was not sent with it"
    if not att.addresses:
        return f"{owner} has no address on network {net.spec.name}"
    config = network_config(net)
    if config.encrypted and host.ipsec_unavailable:
        # Never in clear: the task fails here, saying why (`ovctl service ps`).
        return f"{host.ipsec_unavailable}: network {net.spec.name} needs IPsec"
    return config


def _attachment_configs(
    host: HostConfig,
    attachments: Mapping[str, pb.Attachment],
    networks: Mapping[str, pb.Network],
    nets: dict[str, NetworkConfig],
    problems: dict[str, str],
) -> dict[str, AttachmentConfig]:
    """The attachments that can be built, adding their networks to `nets` and saying in
    `problems` why the others cannot."""
    out: dict[str, AttachmentConfig] = {}
    for att_id, att in sorted(attachments.items()):
        config = _leg_network(host, networks, f"attachment {att_id}", att.network)
        if isinstance(config, str):
            problems[att_id] = config
            continue
        nets[config.id] = config
        out[att_id] = AttachmentConfig(
            id=att_id,
            network_id=config.id,
            netns=att.netns,
            ifname=att.ifname,
            address=ipaddress.IPv4Interface(att.network.addresses[0]),
        )
    return out


def ipsec_keys(cfg: dpb.IpsecConfig | None) -> tuple[IpsecKey, ...]:
    """The ring the manager sent (primary first); none before the first session."""
    if cfg is None:
        return ()
    return tuple(IpsecKey(tag=k.lamport_time, key=k.key) for k in cfg.keys)


def network_config(net: pb.Network) -> NetworkConfig:
    return NetworkConfig(
        id=net.meta.id,
        name=net.spec.name,
        vni=net.vni,
        subnet=ipaddress.IPv4Network(net.subnet),
        gateway=ipaddress.IPv4Address(net.gateway),
        internal=net.spec.internal,
        encrypted=net.spec.encrypted,
        ingress=net.spec.ingress,
    )
