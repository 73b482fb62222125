"""Standalone tasks (`ovctl run`) without a cluster: what the manager makes of their spec, the
allocator's per-node ports, ovctl's parsing and its `ps` table."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.allocator import Allocator
from manager.errors import FailedPrecondition, InvalidArgument, NotFound
from manager.standalone import prepare_standalone
from manager.state import ClusterState
from ovctl import render, specs
from proto import objects_pb2 as pb

HOST = pb.PUBLISH_MODE_HOST


def node(node_id: str, hostname: str, **unavailable: str) -> pb.Node:
    return pb.Node(
        meta=pb.Meta(id=node_id),
        description=pb.NodeDescription(hostname=hostname, unavailable=unavailable),
        status=pb.NodeStatus(state=pb.NODE_STATE_READY),
    )


def running_task(task_id: str, node_id: str) -> pb.Task:
    return pb.Task(
        meta=pb.Meta(id=task_id),
        service_id="other",
        node_id=node_id,
        desired_state=pb.TASK_STATE_RUNNING,
        status=pb.TaskStatus(state=pb.TASK_STATE_RUNNING),
    )


def cluster(*objs: tuple[str, object]) -> ClusterState:
    state = ClusterState()
    for kind, obj in objs:
        state._put(kind, obj)
    return state


def standalone(name: str = "web1", node_ref: str = "", **kw: object) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name=name, command=["x"], **kw)  # type: ignore[arg-type]
    spec.standalone.SetInParent()
    spec.standalone.node_id = node_ref
    return spec


def test_a_standalone_task_is_pinned_to_the_node_asked_for_by_hostname() -> None:
    state = cluster(("nodes", node("n1", "h1")), ("nodes", node("n2", "h2")))
    spec = standalone(node_ref="h2")
    prepare_standalone(spec, state)
    assert spec.standalone.node_id == "n2"
    assert list(spec.placement.constraints) == ["node.id==n2"]
    assert spec.replicated.replicas == 1
    assert spec.endpoint.mode == pb.ENDPOINT_MODE_DNSRR  # its name is its address
    assert spec.restart_policy.condition == pb.RESTART_CONDITION_NONE  # docker run's default
    with pytest.raises(NotFound, match="node 'h9' not found"):
        prepare_standalone(standalone(node_ref="h9"), state)


def test_without_a_node_the_least_loaded_that_can_run_it() -> None:
    state = cluster(
        ("nodes", node("n1", "h1")),
        ("nodes", node("n2", "h2")),
        ("nodes", node("n3", "h3", containers="podman not found")),
        ("tasks", running_task("t1", "n1")),
    )
    spec = standalone()
    prepare_standalone(spec, state)
    assert spec.standalone.node_id == "n2"
    # An image task avoids the node without podman even when it is the least loaded.
    state._put("tasks", running_task("t2", "n2"))
    image = standalone(image="localhost/web:1")
    prepare_standalone(image, state)
    assert image.standalone.node_id in ("n1", "n2")
    down = cluster(("nodes", pb.Node(meta=pb.Meta(id="n1"), status=pb.NodeStatus())))
    with pytest.raises(FailedPrecondition, match="no node for the task"):
        prepare_standalone(standalone(), down)


def test_only_attachable_networks_and_host_mode_ports() -> None:
    net = pb.Network(meta=pb.Meta(id="net1"), spec=pb.NetworkSpec(name="backend"))
    state = cluster(("nodes", node("n1", "h1")), ("networks", net))
    spec = standalone()
    spec.networks.add(target="net1")
    with pytest.raises(
        FailedPrecondition, match="network backend is not attachable; create it with --attachable"
    ):
        prepare_standalone(spec, state)
    net.spec.attachable = True
    prepare_standalone(spec, state)
    mesh = standalone()
    mesh.endpoint.ports.add(target_port=80, published_port=8080)
    with pytest.raises(InvalidArgument, match="asks for the routing mesh"):
        prepare_standalone(mesh, state)
    with pytest.raises(InvalidArgument, match="replicas must be 1"):
        prepare_standalone(standalone(replicated=pb.ReplicatedService(replicas=2)), state)


def _run_spec(name: str, node_id: str, *ports: pb.PortConfig) -> pb.ServiceSpec:
    spec = standalone(name, node_id)
    spec.endpoint.ports.extend(ports)
    return spec


def test_host_ports_of_standalone_tasks_are_their_nodes() -> None:
    names = {"n1": "h1", "n2": "h2"}
    alloc = Allocator(node_name=lambda n: names.get(n, n))
    p8081 = pb.PortConfig(target_port=80, published_port=8081, publish_mode=HOST)
    alloc.allocate_service("s1", _run_spec("web1", "n1", p8081), [])
    # The same port on another node is free; on the same node it names the holder.
    alloc.allocate_service("s2", _run_spec("web2", "n2", p8081), [])
    with pytest.raises(
        FailedPrecondition, match=r"port 8081/tcp on node h1 is already taken by 'web1' \(s1\)"
    ):
        alloc.allocate_service("s3", _run_spec("web3", "n1", p8081), [])
    # A cluster-wide port (the routing mesh) cannot take a port a node maps, nor the reverse.
    mesh = pb.ServiceSpec(name="pub")
    mesh.endpoint.ports.add(target_port=80, published_port=8081)
    with pytest.raises(FailedPrecondition, match="8081/tcp on node h1 is already taken by 'web1'"):
        alloc.allocate_service("s4", mesh, [])
    mesh.endpoint.ports[0].published_port = 9000
    alloc.allocate_service("s4", mesh, [])
    p9000 = pb.PortConfig(target_port=80, published_port=9000, publish_mode=HOST)
    with pytest.raises(FailedPrecondition, match="9000/tcp is already published by service 'pub'"):
        alloc.allocate_service("s5", _run_spec("web5", "n1", p9000), [])
    # `-p 80`: a free port of the node from the host range; released with the task.
    auto = pb.PortConfig(target_port=80, publish_mode=HOST)
    got = alloc.allocate_service("s6", _run_spec("web6", "n1", auto), [])
    assert got.ports[0].published_port == 32768
    svc = pb.Service(meta=pb.Meta(id="s6"), spec=_run_spec("web6", "n1", auto), endpoint=got)
    alloc.release_service(svc)
    again = alloc.allocate_service("s7", _run_spec("web7", "n1", auto), [])
    assert again.ports[0].published_port == 32768


def test_restore_keeps_node_ports_per_node() -> None:
    p = pb.PortConfig(target_port=80, published_port=8081, publish_mode=HOST)
    stored = pb.Service(
        meta=pb.Meta(id="s1"),
        spec=_run_spec("web1", "n1", p),
        endpoint=pb.Endpoint(ports=[p]),
    )
    alloc = Allocator()
    alloc.restore([], [stored], [])
    alloc.allocate_service("s2", _run_spec("web2", "n2", p), [])
    with pytest.raises(FailedPrecondition, match="on node n1 is already taken by 'web1'"):
        alloc.allocate_service("s3", _run_spec("web3", "n1", p), [])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("70000:80", "invalid host port 70000: must be between 1 and 65535"),
        ("abc", "invalid container port 'abc'"),
        ("8081:80/sctp", "invalid protocol 'sctp'"),
        ("1:2:3:4", "invalid port mapping '1:2:3:4'"),
        ("localhost:8081:80", "invalid host address 'localhost'"),
    ],
)
def test_bad_port_mappings_are_refused_naming_them(text: str, message: str) -> None:
    with pytest.raises(specs.SpecError, match=message.replace("(", r"\(")):
        specs.parse_mapping(text)


def test_run_spec_and_the_ps_table() -> None:
    spec = specs.run_spec(
        specs.RunOptions(
            name="web1",
            command=[],
            image="localhost/web:1",
            node="h1",
            ports=[specs.parse_mapping("8081:80"), specs.parse_mapping("53/udp")],
        )
    )
    assert spec.HasField("standalone") and spec.standalone.node_id == "h1"
    assert [(p.published_port, p.target_port, p.publish_mode) for p in spec.endpoint.ports] == [
        (8081, 80, HOST),
        (0, 53, HOST),
    ]
    with pytest.raises(specs.SpecError, match="needs an image"):
        specs.run_spec(specs.RunOptions(name="x", command=[]))
    bound = specs.parse_mapping("127.0.0.1:8082:80")
    assert (bound.published_ip, bound.published_port, bound.target_port) == ("127.0.0.1", 8082, 80)
    assert specs.parse_mapping("0.0.0.0:8082:80").published_ip == ""
    assert render.mapped_port_text(bound) == "127.0.0.1:8082->80/tcp"
    svc = pb.Service(meta=pb.Meta(id="abcdef1234567890"), spec=spec)
    svc.spec.standalone.node_id = "n1"
    task = pb.Task(status=pb.TaskStatus(state=pb.TASK_STATE_RUNNING, timestamp_ms=1000))
    lines = render.standalone_table([svc], {svc.meta.id: task}, {"n1": "h1"}, 6000).splitlines()
    assert lines[0].split() == ["ID", "NAME", "IMAGE", "COMMAND", "NODE", "STATUS", "PORTS"]
    assert "web1" in lines[1] and " h1 " in lines[1] and "Running 5 seconds ago" in lines[1]
    assert lines[1].endswith("0.0.0.0:8081->80/tcp, 0.0.0.0:?->53/udp")


# ---------------------------------------------------------------- programs listening on a node

TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 333 1
"""
UDP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 444 2
   1: 0100007F:D431 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 555 2
"""


def test_listening_sockets_are_read_from_proc_net() -> None:
    from agent.hostports import parse_proc_net

    assert parse_proc_net(TCP_TABLE, "tcp") == {22: {111}, 8080: {222}}
    assert parse_proc_net(UDP_TABLE, "udp") == {5353: {444}}  # a connected one is no listener


def test_the_watch_names_each_port_and_its_holder(tmp_path: Path) -> None:
    from agent.hostports import ListeningWatch

    proc = tmp_path
    (proc / "net").mkdir()
    (proc / "net/tcp").write_text(TCP_TABLE)
    (proc / "net/udp").write_text(UDP_TABLE)
    for pid, comm, inode in (("612", "sshd", 111), ("700", "avahi-daemon", 444)):
        (proc / pid / "fd").mkdir(parents=True)
        (proc / pid / "comm").write_text(comm + "\n")
        (proc / pid / "fd" / "3").symlink_to(f"socket:[{inode}]")
    report = ListeningWatch(str(proc)).report()
    got = {(p.protocol, p.port): p.holder for p in report.ports}
    assert got == {
        (pb.PROTOCOL_TCP, 22): "sshd (pid 612)",
        (pb.PROTOCOL_TCP, 8080): "",
        (pb.PROTOCOL_UDP, 5353): "avahi-daemon (pid 700)",
    }


def test_a_real_listening_socket_of_this_process_is_found() -> None:
    import os
    import socket

    from agent.hostports import ListeningWatch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        report = ListeningWatch().report()
    mine = [p for p in report.ports if p.port == port and p.protocol == pb.PROTOCOL_TCP]
    assert len(mine) == 1 and mine[0].holder.endswith(f"(pid {os.getpid()})")


def test_a_mapping_onto_a_listening_program_is_refused_naming_it() -> None:
    from manager.standalone import listeners

    held = listeners(pb.ListeningPorts(ports=[pb.ListeningPort(port=22, holder="sshd (pid 612)")]))
    alloc = Allocator(node_name=lambda n: {"n1": "h1"}.get(n, n))
    p22 = pb.PortConfig(target_port=80, published_port=22, publish_mode=HOST)
    with pytest.raises(
        FailedPrecondition, match=r"port 22/tcp on node h1 is already taken by sshd \(pid 612\)"
    ):
        alloc.allocate_service("s1", _run_spec("web1", "n1", p22), [], held_on_node=held)
    # A picked port skips what programs hold.
    held[(pb.PROTOCOL_TCP, 32768)] = "x (pid 1)"
    auto = pb.PortConfig(target_port=80, publish_mode=HOST)
    got = alloc.allocate_service("s2", _run_spec("web2", "n1", auto), [], held_on_node=held)
    assert got.ports[0].published_port == 32769
    assert listeners(None) == {}


def test_a_bound_address_is_for_host_mode_ports_and_ipv4() -> None:
    from manager.validation import check_service_spec

    spec = pb.ServiceSpec(name="web", command=["x"])
    port = spec.endpoint.ports.add(target_port=80, published_port=8081, published_ip="127.0.0.1")
    with pytest.raises(InvalidArgument, match="only a host-mode port opens on one address"):
        check_service_spec(spec)
    port.publish_mode = HOST
    check_service_spec(spec)
    for bad in ("::1", "0.0.0.0", "h1"):
        port.published_ip = bad
        with pytest.raises(InvalidArgument, match=f"invalid host address '{bad}'"):
            check_service_spec(spec)


def test_an_update_keeps_a_standalone_tasks_picked_port() -> None:
    alloc = Allocator()
    auto = pb.PortConfig(target_port=80, publish_mode=HOST)
    spec = _run_spec("web1", "n1", auto)
    got = alloc.allocate_service("s1", spec, [])
    svc = pb.Service(meta=pb.Meta(id="s1"), spec=spec, endpoint=got)
    changed = pb.ServiceSpec()
    changed.CopyFrom(spec)
    changed.env.append("A=1")
    again = alloc.reallocate_service(svc, changed, [])
    assert again.ports[0].published_port == got.ports[0].published_port == 32768
