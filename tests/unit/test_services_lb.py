"""What each namespace's load-balancing table holds, from endpoint records (agent/services.py)."""

from __future__ import annotations

from agent.endpoints import EndpointRecord, PortRecord, node_record
from agent.lb.plan import PortTarget
from agent.services import (
    INGRESS_IF,
    host_mode_ports,
    host_spec,
    ingress_spec,
    programmed_view,
    published_ports,
    vip_spec,
)
from proto import objects_pb2 as pb

APP, OTHER, INGRESS = "net-app", "net-other", "net-ingress"
WEB_PORTS = (PortRecord("http", "tcp", 8080, 18080, "ingress"),)


def rec(
    net: str,
    ip: str,
    task: str,
    *,
    vip: str = "",
    enabled: bool = True,
    node: str = "n1",
    ports: tuple[PortRecord, ...] = (),
    service: str = "web",
) -> EndpointRecord:
    return EndpointRecord(
        network_id=net, addr=f"{ip}/24", mac="02:42:00:00:00:00", vtep="198.51.100.2",
        node_id=node, task_id=task, task_name=f"{service}.1.{task}", service_id=f"s-{service}",
        service_name=service, slot=1, vip=vip, enabled=enabled, ports=ports,
    )  # fmt: skip


def test_vip_backends_are_the_enabled_tasks_of_the_networks_in_view() -> None:
    records = [
        rec(APP, "10.1.0.3", "t1", vip="10.1.0.2"),
        rec(APP, "10.1.0.4", "t2", vip="10.1.0.2"),
        rec(APP, "10.1.0.5", "t3", vip="10.1.0.2", enabled=False),  # draining
        rec(OTHER, "10.2.0.3", "t4", vip="10.2.0.2", service="db"),
        rec(APP, "10.1.0.9", "t5", service="rr"),  # dnsrr: no VIP
        node_record(APP, "10.1.0.200/24", "n2", "198.51.100.3"),
    ]
    spec = vip_spec(records, frozenset({APP}))
    assert spec.vips == {"10.1.0.2": ("10.1.0.3", "10.1.0.4")}
    assert spec.hooks == frozenset({"output"})
    both = vip_spec(records, frozenset({APP, OTHER}))
    assert both.vips["10.2.0.2"] == ("10.2.0.3",)


def test_a_vip_whose_tasks_are_all_disabled_stays_with_no_backend() -> None:
    records = [rec(APP, "10.1.0.3", "t1", vip="10.1.0.2", enabled=False)]
    assert vip_spec(records, frozenset({APP})).vips == {"10.1.0.2": ()}


def test_published_ports_go_to_enabled_tasks_on_the_ingress_network_only() -> None:
    records = [
        rec(INGRESS, "10.0.0.3", "t1", ports=WEB_PORTS, node="n1"),
        rec(INGRESS, "10.0.0.4", "t2", ports=WEB_PORTS, node="n2"),
        rec(INGRESS, "10.0.0.5", "t3", ports=WEB_PORTS, enabled=False),
        rec(APP, "10.1.0.3", "t1", ports=WEB_PORTS, vip="10.1.0.2"),  # not the ingress leg
        rec(INGRESS, "10.0.0.6", "t6", ports=(PortRecord("", "tcp", 80, 9090, "host"),)),
        node_record(INGRESS, "10.0.0.250/24", "n3", "198.51.100.4"),
    ]
    ports = published_ports(records, [], INGRESS)
    assert ports == {("tcp", 18080): PortTarget(8080, ("10.0.0.3", "10.0.0.4"))}
    spec = ingress_spec(ports)
    assert spec.masquerade_oif == INGRESS_IF and spec.hooks == frozenset({"prerouting"})


def test_a_published_port_with_no_task_yet_comes_from_the_service() -> None:
    svc = pb.Service()
    svc.spec.endpoint.mode = pb.ENDPOINT_MODE_VIP
    svc.endpoint.ports.add(
        protocol=pb.PROTOCOL_UDP, target_port=53, published_port=5353,
        publish_mode=pb.PUBLISH_MODE_INGRESS,
    )  # fmt: skip
    svc.endpoint.ports.add(target_port=80, published_port=8081, publish_mode=pb.PUBLISH_MODE_HOST)
    assert published_ports([], [svc], INGRESS) == {("udp", 5353): PortTarget(53, ())}


def test_host_sends_ingress_ports_to_the_ingress_sandbox_and_host_ports_to_local_tasks() -> None:
    svc = pb.Service(meta=pb.Meta(id="s-web"))
    svc.endpoint.ports.add(
        target_port=8080, published_port=19090, publish_mode=pb.PUBLISH_MODE_HOST
    )
    svc.endpoint.ports.add(target_port=80, published_port=18080)  # the mesh's, not here
    tasks = [pb.Task(meta=pb.Meta(id=t), service_id="s-web") for t in ("t1", "t2", "t3")]
    tasks.append(pb.Task(meta=pb.Meta(id="t4"), service_id="gone"))
    # t1 serves; t2 is draining (not serving); t3 has no gwbridge leg (internal networks only).
    gw = {"t1": "172.18.0.5", "t2": "172.18.0.6", "t4": "172.18.0.8"}
    hm = host_mode_ports(tasks, {"s-web": svc}, {"t1", "t3", "t4"}, gw)
    assert hm == {("tcp", 19090): PortTarget(8080, ("172.18.0.5",))}
    # `ovctl run -p 127.0.0.1:8081:80`: the port opens on that address only.
    svc.endpoint.ports.add(
        target_port=80, published_port=8081, publish_mode=pb.PUBLISH_MODE_HOST,
        published_ip="127.0.0.1",
    )  # fmt: skip
    bound = host_mode_ports(tasks[:1], {"s-web": svc}, {"t1"}, gw)
    assert bound[("tcp", 8081)] == PortTarget(80, ("172.18.0.5",), "127.0.0.1")
    del svc.endpoint.ports[-1]
    # A port whose tasks all stopped serving stays, with no backend (refused, not hanging).
    assert host_mode_ports(tasks[1:2], {"s-web": svc}, set(), gw) == {
        ("tcp", 19090): PortTarget(8080, ())
    }
    spec = host_spec([("tcp", 18080)], "172.18.0.2", hm)
    assert spec.ports == {
        ("tcp", 18080): PortTarget(18080, ("172.18.0.2",)),
        ("tcp", 19090): PortTarget(8080, ("172.18.0.5",)),
    }
    assert spec.local_only and spec.hooks == frozenset({"prerouting", "output"})
    # No ingress sandbox (yet): ingress ports are not opened on the host at all.
    assert set(host_spec([("tcp", 18080)], None, {}).ports) == set()


def test_the_programmed_view_lists_each_services_enabled_tasks_across_networks() -> None:
    records = [
        rec(APP, "10.1.0.5", "t2"),
        rec(OTHER, "10.2.0.5", "t2"),
        rec(APP, "10.1.0.4", "t1"),
        rec(APP, "10.1.0.6", "t3", enabled=False),  # draining: not a backend any more
        rec(APP, "10.1.0.9", "d1", service="db", enabled=False),
        node_record(INGRESS, "10.0.0.2/24", "n1", "198.51.100.2"),  # FDB only
    ]
    view = programmed_view(records, mesh=True)
    assert view == pb.ProgrammedView(
        services=[
            pb.ProgrammedService(service_id="s-db", task_ids=[]),
            pb.ProgrammedService(service_id="s-web", task_ids=["t1", "t2"]),
        ],
        mesh=True,
    )
