"""The manager's IPAM: subnets, gateways, VNIs, addresses, VIPs and published ports."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from manager import intervals
from manager.allocator import Allocator, NetworkAllocation
from manager.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OvnetError,
    ResourceExhausted,
)
from manager.ingress import node_attachment_changes
from proto import objects_pb2 as pb

TCP, UDP = pb.PROTOCOL_TCP, pb.PROTOCOL_UDP
T = TypeVar("T")


def add_network(alloc: Allocator, net_id: str, subnet: str = "", gateway: str = "",
                ip_range: str = "", name: str = "") -> pb.Network:
    spec = pb.NetworkSpec(name=name, subnet=subnet, gateway=gateway, ip_range=ip_range)
    got = alloc.allocate_network(net_id, spec)
    return pb.Network(meta=pb.Meta(id=net_id), spec=spec, subnet=got.subnet,
                      gateway=got.gateway, vni=got.vni)


def port(target: int, published: int = 0, proto: pb.Protocol = TCP,
         mode: pb.PublishMode = pb.PUBLISH_MODE_INGRESS) -> pb.PortConfig:
    return pb.PortConfig(protocol=proto, target_port=target, published_port=published,
                         publish_mode=mode)


def service_spec(*ports: pb.PortConfig,
                 mode: pb.EndpointMode = pb.ENDPOINT_MODE_VIP) -> pb.ServiceSpec:
    return pb.ServiceSpec(name="web", endpoint=pb.EndpointSpec(mode=mode, ports=ports))


def service(svc_id: str, spec: pb.ServiceSpec, endpoint: pb.Endpoint) -> pb.Service:
    return pb.Service(meta=pb.Meta(id=svc_id), spec=spec, endpoint=endpoint)


def task(network_ids: Sequence[str], addresses: Sequence[str]) -> pb.Task:
    return pb.Task(networks=[pb.NetworkAttachment(network_id=n, addresses=[a])
                             for n, a in zip(network_ids, addresses, strict=True)])


def published(endpoint: pb.Endpoint) -> list[int]:
    return [p.published_port for p in endpoint.ports]


def vips(endpoint: pb.Endpoint) -> dict[str, str]:
    return {v.network_id: v.addr for v in endpoint.virtual_ips}


def fails_unchanged(alloc: Allocator, error: type[OvnetError], match: str,
                    call: Callable[..., object], *args: object) -> None:
    """The call raises `error` and leaves every allocation and cursor as it was."""
    before = alloc._snapshot()
    with pytest.raises(error, match=match):
        call(*args)
    assert alloc._snapshot() == before


# ---------------------------------------------------------------- subnets


def test_auto_subnets_are_consecutive_blocks_with_first_address_as_gateway() -> None:
    alloc = Allocator()
    assert alloc.allocate_network("n1", pb.NetworkSpec()) == NetworkAllocation(
        "10.0.0.0/24", "10.0.0.1", 4096)
    assert alloc.allocate_network("n2", pb.NetworkSpec()) == NetworkAllocation(
        "10.0.1.0/24", "10.0.1.1", 4097)


def test_auto_subnet_skips_explicit_subnets_and_reuses_a_released_block() -> None:
    alloc = Allocator(subnet_size=24)
    add_network(alloc, "a", "10.0.0.0/23")
    add_network(alloc, "b", "10.0.2.128/25")
    auto = add_network(alloc, "c")
    assert auto.subnet == "10.0.3.0/24"
    alloc.release_network(pb.Network(meta=pb.Meta(id="a")))
    assert add_network(alloc, "d").subnet == "10.0.0.0/24"


def test_explicit_subnet_may_lie_outside_the_pools() -> None:
    alloc = Allocator(pools=["10.0.0.0/16"])
    assert add_network(alloc, "n", "192.168.7.0/24").subnet == "192.168.7.0/24"


@pytest.mark.parametrize(("subnet", "message"), [
    ("10.0.0.1/24", "invalid subnet '10.0.0.1/24': has host bits set (did you mean 10.0.0.0/24?)"),
    ("10.0.0.0/30", "invalid subnet '10.0.0.0/30': prefix length must be between /8 and /29"),
    ("10.0.0.0/7", "invalid subnet '10.0.0.0/7': prefix length must be between /8 and /29"),
    ("fd00::/64", "invalid subnet 'fd00::/64': only IPv4 is supported"),
    ("banana/24", "invalid subnet 'banana/24': expected CIDR notation such as 10.0.3.0/24"),
    ("10.0.0.0", "invalid subnet '10.0.0.0': expected CIDR notation such as 10.0.3.0/24"),
])
def test_invalid_explicit_subnet(subnet: str, message: str) -> None:
    fails_unchanged(Allocator(), InvalidArgument, re.escape(message),
                    Allocator().allocate_network, "n", pb.NetworkSpec(subnet=subnet))


@pytest.mark.parametrize(("subnet", "message"), [
    ("10.0.0.0/16", "subnet 10.0.0.0/16 overlaps subnet 10.0.0.0/24 of network n0: "),
    ("10.0.3.0/24", "subnet 10.0.3.0/24 overlaps subnet 10.0.3.0/24 of network 'backend' "
                    "(net-3): "),
    ("10.0.3.64/26", "subnet 10.0.3.64/26 overlaps subnet 10.0.3.0/24 of network 'backend' "
                     "(net-3): "),
])
def test_overlapping_explicit_subnet_names_the_network_it_overlaps(subnet: str,
                                                                   message: str) -> None:
    alloc = Allocator()
    add_network(alloc, "n0")
    add_network(alloc, "net-3", "10.0.3.0/24", name="backend")
    fails_unchanged(alloc, FailedPrecondition, re.escape(message),
                    alloc.allocate_network, "n", pb.NetworkSpec(subnet=subnet))


def test_invalid_input_is_reported_before_an_overlap() -> None:
    alloc = Allocator()
    add_network(alloc, "n", "10.1.0.0/24")
    fails_unchanged(alloc, InvalidArgument, "gateway 10.2.0.1 is outside subnet 10.1.0.0/24",
                    alloc.allocate_network, "m",
                    pb.NetworkSpec(subnet="10.1.0.0/24", gateway="10.2.0.1"))


def test_pool_exhaustion_names_the_pools_and_changes_nothing() -> None:
    alloc = Allocator(pools=["10.0.0.0/23", "10.9.0.0/24"], subnet_size=24)
    assert [add_network(alloc, f"n{i}").subnet for i in range(3)] == [
        "10.0.0.0/24", "10.0.1.0/24", "10.9.0.0/24"]
    fails_unchanged(alloc, ResourceExhausted,
                    re.escape("no free /24 subnet left in address pool(s) 10.0.0.0/23, "
                              "10.9.0.0/24"),
                    alloc.allocate_network, "n3", pb.NetworkSpec())


def test_same_network_id_twice_is_refused() -> None:
    alloc = Allocator()
    add_network(alloc, "n")
    fails_unchanged(alloc, AlreadyExists, "network n already has an allocation",
                    alloc.allocate_network, "n", pb.NetworkSpec())


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the allocator's looks at taken space: the work a subnet search does, counted
    rather than timed, so the check means the same on a loaded machine (the speed itself is
    bench.manager_create's to measure)."""
    count = [0]
    look = intervals.IntervalSet.last_run_touching

    def counted(self: intervals.IntervalSet, lo: int, hi: int) -> tuple[int, int] | None:
        count[0] += 1
        return look(self, lo, hi)

    monkeypatch.setattr(intervals.IntervalSet, "last_run_touching", counted)
    return count


def test_auto_allocation_jumps_over_a_large_taken_range(probes: list[int]) -> None:
    alloc = Allocator(pools=["10.0.0.0/8"], subnet_size=24)
    add_network(alloc, "big", "10.0.0.0/9")  # 32,768 /24 blocks a naive scan would try
    probes[0] = 0
    subnets = [add_network(alloc, f"a{i}").subnet for i in range(2000)]
    # One look finds the taken run (the big network and the subnets handed out before), the
    # next finds the block after it free: two per allocation, not 32,768.
    assert probes[0] <= 2 * 2000
    assert subnets[0] == "10.128.0.0/24"
    assert subnets[-1] == "10.135.207.0/24"


def test_thousands_of_networks_are_allocated_quickly_and_never_overlap(probes: list[int]) -> None:
    alloc = Allocator(pools=["10.0.0.0/12"], subnet_size=24)
    # Small explicit holes scattered through the pool must be jumped over, not probed.
    holes = len(range(0, 4096, 97))
    for i in range(0, 4096, 97):
        add_network(alloc, f"x{i}", f"10.{i // 256}.{i % 256}.8/29")
    probes[0] = 0
    n = 4096 - holes
    subnets = [add_network(alloc, f"a{i}").subnet for i in range(n)]
    assert len(set(subnets)) == len(subnets)
    with pytest.raises(ResourceExhausted):
        alloc.allocate_network("one-too-many", pb.NetworkSpec())
    # Each search looks once per taken run before the free block (at most the holes plus the
    # run of subnets handed out), never once per /24 block (~n*n/2 = 8 million looks).
    assert probes[0] <= (n + 1) * (holes + 2)


# ---------------------------------------------------------------- gateway, ip_range, VNI


def test_explicit_gateway_is_kept_and_never_handed_out() -> None:
    alloc = Allocator()
    net = add_network(alloc, "n", "10.1.0.0/29", gateway="10.1.0.4")
    assert net.gateway == "10.1.0.4"
    got = [alloc.allocate_task(["n"])[0] for _ in range(5)]
    assert got == ["10.1.0.1/29", "10.1.0.2/29", "10.1.0.3/29", "10.1.0.5/29", "10.1.0.6/29"]
    with pytest.raises(ResourceExhausted):
        alloc.allocate_task(["n"])


@pytest.mark.parametrize(("gateway", "message"), [
    ("10.2.0.1", "gateway 10.2.0.1 is outside subnet 10.1.0.0/24"),
    ("10.1.0.0", "gateway 10.1.0.0 is the network address of subnet 10.1.0.0/24: use an "
                 "address from 10.1.0.1 to 10.1.0.254"),
    ("10.1.0.255", "gateway 10.1.0.255 is the broadcast address of subnet 10.1.0.0/24"),
    ("10.1.0.1/24", "invalid gateway '10.1.0.1/24': expected an IPv4 address such as "
                    "10.1.0.1, without a prefix length"),
    ("fd00::1", "invalid gateway 'fd00::1': only IPv4 is supported"),
])
def test_invalid_gateway(gateway: str, message: str) -> None:
    alloc = Allocator()
    fails_unchanged(alloc, InvalidArgument, re.escape(message), alloc.allocate_network, "n",
                    pb.NetworkSpec(subnet="10.1.0.0/24", gateway=gateway))


@pytest.mark.parametrize("spec", [pb.NetworkSpec(gateway="10.0.0.1"),
                                  pb.NetworkSpec(ip_range="10.0.0.0/28")])
def test_gateway_or_ip_range_without_subnet_is_refused(spec: pb.NetworkSpec) -> None:
    alloc = Allocator()
    fails_unchanged(alloc, InvalidArgument, "needs an explicit subnet",
                    alloc.allocate_network, "n", spec)


def test_ip_range_bounds_task_addresses_and_vips() -> None:
    alloc = Allocator()
    add_network(alloc, "n", "10.1.0.0/24", ip_range="10.1.0.128/30")
    endpoint = alloc.allocate_service("s", service_spec(), ["n"])
    assert vips(endpoint) == {"n": "10.1.0.128/24"}
    assert alloc.allocate_task(["n"]) == ["10.1.0.129/24"]
    assert alloc.allocate_task(["n"]) == ["10.1.0.130/24"]
    assert alloc.allocate_task(["n"]) == ["10.1.0.131/24"]
    fails_unchanged(alloc, ResourceExhausted,
                    re.escape("network n has no free address left in 10.1.0.128-10.1.0.131"),
                    alloc.allocate_task, ["n"])


@pytest.mark.parametrize(("ip_range", "message"), [
    ("10.2.0.0/28", "ip_range 10.2.0.0/28 is not inside subnet 10.1.0.0/24"),
    ("10.0.0.0/8", "ip_range 10.0.0.0/8 is not inside subnet 10.1.0.0/24"),
    ("10.1.0.1/28", "invalid ip_range '10.1.0.1/28': has host bits set"),
    ("10.1.0.1/32", "ip_range 10.1.0.1/32 leaves no address for tasks"),
    ("10.1.0.255/32", "ip_range 10.1.0.255/32 leaves no address for tasks"),
])
def test_invalid_ip_range(ip_range: str, message: str) -> None:
    alloc = Allocator()
    fails_unchanged(alloc, InvalidArgument, re.escape(message), alloc.allocate_network, "n",
                    pb.NetworkSpec(subnet="10.1.0.0/24", ip_range=ip_range))


def test_vnis_are_unique_and_a_released_one_is_not_reused_at_once() -> None:
    alloc = Allocator(vni_range=(4096, 4098))
    first = add_network(alloc, "a")
    assert [first.vni, add_network(alloc, "b").vni] == [4096, 4097]
    alloc.release_network(first)
    assert add_network(alloc, "c").vni == 4098
    assert add_network(alloc, "d").vni == 4096
    fails_unchanged(alloc, ResourceExhausted,
                    re.escape("no free VXLAN VNI left in 4096-4098"),
                    alloc.allocate_network, "e", pb.NetworkSpec())


def test_vni_exhaustion_does_not_keep_the_subnet() -> None:
    alloc = Allocator(vni_range=(4096, 4096))
    add_network(alloc, "a")
    with pytest.raises(ResourceExhausted):
        alloc.allocate_network("b", pb.NetworkSpec(subnet="10.5.0.0/24"))
    alloc.release_network(pb.Network(meta=pb.Meta(id="a")))
    assert add_network(alloc, "b", "10.5.0.0/24").vni == 4096


# ---------------------------------------------------------------- task addresses


def test_task_gets_one_address_per_network_in_order() -> None:
    alloc = Allocator()
    add_network(alloc, "a")
    add_network(alloc, "b")
    assert alloc.allocate_task(["b", "a"]) == ["10.0.1.2/24", "10.0.0.2/24"]
    assert alloc.allocate_task([]) == []


def test_released_address_comes_back_only_after_the_rest_of_the_range() -> None:
    alloc = Allocator()
    add_network(alloc, "n", "10.1.0.0/29")  # hosts .1-.6, gateway .1
    first = alloc.allocate_task(["n"])
    second = alloc.allocate_task(["n"])
    assert (first, second) == (["10.1.0.2/29"], ["10.1.0.3/29"])
    alloc.release_task(task(["n"], first))
    assert [alloc.allocate_task(["n"])[0] for _ in range(3)] == [
        "10.1.0.4/29", "10.1.0.5/29", "10.1.0.6/29"]
    assert alloc.allocate_task(["n"]) == ["10.1.0.2/29"]  # wrapped around
    fails_unchanged(alloc, ResourceExhausted,
                    re.escape("network n has no free address left in 10.1.0.1-10.1.0.6"),
                    alloc.allocate_task, ["n"])


def test_failed_task_allocation_on_second_network_releases_the_first() -> None:
    alloc = Allocator()
    add_network(alloc, "big", "10.1.0.0/24")
    add_network(alloc, "tiny", "10.2.0.0/29", ip_range="10.2.0.2/32", name="db")
    alloc.allocate_task(["tiny"])
    fails_unchanged(alloc, ResourceExhausted, "network 'db' \\(tiny\\) has no free address",
                    alloc.allocate_task, ["big", "tiny"])
    assert alloc.allocate_task(["big"]) == ["10.1.0.2/24"]


def test_task_on_unknown_or_repeated_network() -> None:
    alloc = Allocator()
    add_network(alloc, "n")
    fails_unchanged(alloc, NotFound, "network nope not found", alloc.allocate_task, ["n", "nope"])
    fails_unchanged(alloc, InvalidArgument, "network n is attached more than once",
                    alloc.allocate_task, ["n", "n"])


def test_releasing_foreign_or_malformed_addresses_changes_nothing() -> None:
    alloc = Allocator()
    add_network(alloc, "n")
    alloc.allocate_task(["n"])
    before = alloc._snapshot()
    alloc.release_task(pb.Task(networks=[
        pb.NetworkAttachment(network_id="gone", addresses=["10.0.0.2/24"]),
        pb.NetworkAttachment(network_id="n", addresses=["junk", "10.0.0.1/24", "10.7.0.2/24"]),
    ]))
    assert alloc._snapshot() == before


# ---------------------------------------------------------------- services


def test_vip_endpoint_with_auto_and_explicit_ports() -> None:
    alloc = Allocator()
    add_network(alloc, "a")
    add_network(alloc, "b")
    spec = service_spec(port(80), port(53, proto=UDP), port(443, 8443))
    endpoint = alloc.allocate_service("s", spec, ["a", "b"])
    assert endpoint.spec == spec.endpoint
    assert [(p.protocol, p.target_port, p.published_port) for p in endpoint.ports] == [
        (TCP, 80, 30000), (UDP, 53, 30000), (TCP, 443, 8443)]
    assert vips(endpoint) == {"a": "10.0.0.2/24", "b": "10.0.1.2/24"}
    assert alloc.allocate_task(["a"]) == ["10.0.0.3/24"]  # VIPs and tasks share the space


def test_dnsrr_endpoint_has_no_vips() -> None:
    alloc = Allocator()
    add_network(alloc, "a")
    endpoint = alloc.allocate_service(
        "s", service_spec(port(80, mode=pb.PUBLISH_MODE_HOST), mode=pb.ENDPOINT_MODE_DNSRR),
        ["a"])
    assert not endpoint.virtual_ips
    assert published(endpoint) == [30000]


def test_published_port_conflicts_across_services_and_publish_modes() -> None:
    alloc = Allocator()
    alloc.allocate_service("s1", service_spec(port(80, 8080)), [])
    fails_unchanged(alloc, FailedPrecondition,
                    "port 8080/tcp is already published by service 'web' \\(s1\\)",
                    alloc.allocate_service, "s2",
                    service_spec(port(81, 8080, mode=pb.PUBLISH_MODE_HOST)), [])
    # Another protocol is another port.
    assert published(alloc.allocate_service("s2", service_spec(port(80, 8080, UDP)), [])) == [
        8080]


@pytest.mark.parametrize(("ports", "message"), [
    ((port(80, 8080), port(81, 8080)), "port 8080/tcp is published more than once"),
    ((port(0),), "target port 0/tcp is out of range 1-65535"),
    ((port(70000),), "target port 70000/tcp is out of range 1-65535"),
    ((port(80, 65536, UDP),), "published port 65536/udp is out of range 1-65535 (leave it at 0 "
                              "to get a free one from 30000-32767)"),
    ((pb.PortConfig(protocol=cast(pb.Protocol, 7), target_port=80),), "unknown protocol 7"),
])
def test_invalid_ports(ports: tuple[pb.PortConfig, ...], message: str) -> None:
    alloc = Allocator()
    fails_unchanged(alloc, InvalidArgument, re.escape(message), alloc.allocate_service, "s",
                    service_spec(*ports), [])


def test_auto_ports_skip_taken_ones_and_run_out_cleanly() -> None:
    alloc = Allocator(port_range=(30000, 30002))
    alloc.allocate_service("s1", service_spec(port(80, 30001)), [])
    # The explicit port is claimed before the automatic one is chosen.
    endpoint = alloc.allocate_service("s2", service_spec(port(80), port(81, 30000)), [])
    assert published(endpoint) == [30002, 30000]
    fails_unchanged(alloc, ResourceExhausted,
                    re.escape("no free tcp port left to publish in 30000-30002"),
                    alloc.allocate_service, "s3", service_spec(port(80)), [])


def test_service_on_unknown_network_and_vip_exhaustion() -> None:
    alloc = Allocator(port_range=(30000, 30010))
    add_network(alloc, "a")
    add_network(alloc, "tiny", "10.9.0.0/29", ip_range="10.9.0.2/32")
    alloc.allocate_task(["tiny"])
    fails_unchanged(alloc, NotFound, "network nope not found", alloc.allocate_service, "s",
                    service_spec(), ["a", "nope"])
    # The automatic port and the first VIP are given back when the second VIP fails.
    fails_unchanged(alloc, ResourceExhausted, "network tiny has no free address",
                    alloc.allocate_service, "s", service_spec(port(80)), ["a", "tiny"])


def test_release_endpoint_frees_only_what_the_service_owns() -> None:
    alloc = Allocator()
    add_network(alloc, "a")
    spec = service_spec(port(80, 8080))
    mine = alloc.allocate_service("s1", spec, ["a"])
    alloc.release_endpoint("somebody-else", mine)  # ports owned by s1 stay taken
    with pytest.raises(FailedPrecondition):
        alloc.allocate_service("s2", spec, [])
    alloc.release_service(service("s1", spec, mine))
    assert published(alloc.allocate_service("s2", spec, [])) == [8080]


def test_reallocate_keeps_vips_and_ports_still_asked_for() -> None:
    alloc = Allocator()
    add_network(alloc, "a", "10.9.0.0/29")  # hosts .1-.6, gateway .1
    add_network(alloc, "b", "10.8.0.0/29")
    add_network(alloc, "c")
    old_spec = service_spec(port(80), port(443, 8443), port(53, proto=UDP))
    old = service("s", old_spec, alloc.allocate_service("s", old_spec, ["a", "b"]))
    assert published(old.endpoint) == [30000, 8443, 30000]

    new_spec = service_spec(port(53, proto=UDP), port(80), port(22))
    new = alloc.reallocate_service(old, new_spec, ["b", "c"])
    assert published(new) == [30000, 30000, 30001]  # udp/53 and tcp/80 keep their ports
    assert vips(new) == {"b": "10.8.0.2/29", "c": "10.0.0.2/24"}
    # What the new endpoint dropped is free again: 8443 and the VIP on a (after a wrap).
    assert published(alloc.allocate_service("t", service_spec(port(1, 8443)), [])) == [8443]
    assert [alloc.allocate_task(["a"])[0] for _ in range(5)] == [
        "10.9.0.3/29", "10.9.0.4/29", "10.9.0.5/29", "10.9.0.6/29", "10.9.0.2/29"]
    # What it kept is still taken.
    with pytest.raises(FailedPrecondition, match="port 30000/udp is already published by "
                                                 "service 'web' \\(s\\)"):
        alloc.allocate_service("u", service_spec(port(1, 30000, UDP)), [])
    assert [alloc.allocate_task(["b"])[0] for _ in range(4)] == [
        "10.8.0.3/29", "10.8.0.4/29", "10.8.0.5/29", "10.8.0.6/29"]
    with pytest.raises(ResourceExhausted):
        alloc.allocate_task(["b"])


def test_reallocate_moves_an_auto_port_to_an_explicit_one_and_to_dnsrr() -> None:
    alloc = Allocator()
    add_network(alloc, "a")
    old_spec = service_spec(port(80))
    old = service("s", old_spec, alloc.allocate_service("s", old_spec, ["a"]))
    new_spec = service_spec(port(80, 30000), mode=pb.ENDPOINT_MODE_DNSRR)
    new = alloc.reallocate_service(old, new_spec, ["a"])
    assert published(new) == [30000]
    assert not new.virtual_ips
    assert alloc.allocate_task(["a"]) == ["10.0.0.3/24"]  # .2 was the VIP, not reused at once


def test_failed_reallocate_changes_nothing() -> None:
    alloc = Allocator(port_range=(30000, 30001))
    add_network(alloc, "a")
    add_network(alloc, "b")
    alloc.allocate_service("other", service_spec(port(80, 9000)), [])
    old_spec = service_spec(port(80), port(81, 8080))
    old = service("s", old_spec, alloc.allocate_service("s", old_spec, ["a"]))
    fails_unchanged(alloc, FailedPrecondition, "port 9000/tcp is already published by service "
                    "'web' \\(other\\)", alloc.reallocate_service, old,
                    service_spec(port(80, 9000)), ["a"])
    # Fails after keeping 8080 and the automatic port: both must stay with the service.
    fails_unchanged(alloc, ResourceExhausted, "no free tcp port", alloc.reallocate_service, old,
                    service_spec(port(81, 8080), port(80), port(82), port(83)), ["a", "b"])
    fails_unchanged(alloc, NotFound, "network nope not found", alloc.reallocate_service, old,
                    old_spec, ["nope"])


def test_reallocate_does_not_take_back_an_auto_port_another_service_now_holds() -> None:
    alloc = Allocator()
    spec = service_spec(port(80))
    stale = service("s", spec, alloc.allocate_service("s", spec, []))
    alloc.release_service(stale)
    alloc.allocate_service("t", service_spec(port(80, 30000)), [])
    assert published(alloc.reallocate_service(stale, spec, [])) == [30001]


def test_failed_commit_of_a_reallocation_is_undone_with_release_and_restore() -> None:
    alloc = Allocator()
    add_network(alloc, "a")
    add_network(alloc, "b")
    old_spec = service_spec(port(80), port(81, 8081))
    old = service("s", old_spec, alloc.allocate_service("s", old_spec, ["a"]))
    before = alloc._in_use()
    new = alloc.reallocate_service(old, service_spec(port(82)), ["b"])
    alloc.release_endpoint("s", new)
    alloc.restore([], [old], [])
    assert alloc._in_use() == before


# ---------------------------------------------------------------- restore


def test_restore_rebuilds_allocations_and_resumes_cursors() -> None:
    live = Allocator()
    gone_net = add_network(live, "z", "10.200.0.0/24")  # VNI 4096, released below
    nets = [add_network(live, "a", name="front"), add_network(live, "b", "10.7.0.0/16")]
    live.release_network(gone_net)
    spec = service_spec(port(80), port(81, 8081))
    services = [service("s", spec, live.allocate_service("s", spec, ["a", "b"]))]
    live.release_endpoint("gone", live.allocate_service("gone", service_spec(port(1)), []))
    auto_spec = service_spec(port(1))
    services.append(service("s3", auto_spec, live.allocate_service("s3", auto_spec, [])))
    assert published(services[1].endpoint) == [30002]
    tasks = [task(["a", "b"], live.allocate_task(["a", "b"])) for _ in range(3)]
    live.release_task(tasks.pop(0))

    restored = Allocator()
    restored.restore(reversed(nets), reversed(services), tasks)  # order does not matter
    assert restored._in_use() == live._in_use()
    # Each pool resumes just past the highest value in use, as the live one does.
    assert restored.allocate_task(["a"]) == live.allocate_task(["a"]) == ["10.0.0.6/24"]
    assert add_network(restored, "c").vni == add_network(live, "c").vni == 4099
    assert published(restored.allocate_service("t", service_spec(port(1)), [])) == [30003]
    with pytest.raises(FailedPrecondition, match="port 8081/tcp is already published by "
                                                 "service 'web' \\(s\\)"):
        restored.allocate_service("t2", service_spec(port(1, 8081)), [])
    with pytest.raises(FailedPrecondition, match=re.escape(
            "overlaps subnet 10.0.0.0/24 of network 'front' (a)")):
        restored.allocate_network("d", pb.NetworkSpec(subnet="10.0.0.0/23"))


def test_restore_cursor_ignores_a_high_gateway_and_skips_unknown_networks() -> None:
    alloc = Allocator()
    net = add_network(alloc, "n", "10.1.0.0/24", gateway="10.1.0.254")
    alloc.restore([net], [], [task(["n", "gone"], ["10.1.0.9/24", "10.2.0.9/24"])])
    assert alloc.allocate_task(["n"]) == ["10.1.0.1/24"]  # net was already known: cursor kept

    fresh = Allocator()
    fresh.restore([net], [], [task(["n", "gone"], ["10.1.0.9/24", "10.2.0.9/24"])])
    assert fresh.allocate_task(["n"]) == ["10.1.0.10/24"]


# ---------------------------------------------------------------- ingress: nodes and tasks


def ingress_net(alloc: Allocator, net_id: str = "ing", subnet: str = "10.0.0.0/24") -> pb.Network:
    net = add_network(alloc, net_id, subnet, name="ingress")
    net.spec.ingress = True
    return net


def bare_node(node_id: str, *attachments: pb.NetworkAttachment) -> pb.Node:
    return pb.Node(meta=pb.Meta(id=node_id, version=3), attachments=attachments)


def test_every_node_gets_one_ingress_address_and_stale_ones_are_dropped() -> None:
    alloc = Allocator()
    ing = ingress_net(alloc)
    keeps = bare_node("keeps", pb.NetworkAttachment(network_id="ing", addresses=["10.0.0.9/24"]))
    alloc.restore([], [], [], [keeps])
    stale = bare_node("stale", pb.NetworkAttachment(network_id="old", addresses=["10.9.0.2/24"]))
    nodes = [bare_node("a"), keeps, stale, bare_node("b")]
    allocated, cleaned = node_attachment_changes(nodes, ing, alloc)
    assert cleaned == []
    got = {n.meta.id: [(a.network_id, list(a.addresses)) for a in n.attachments]
           for n in allocated}
    # Fresh cluster cursor: the gateway is .1, so nodes get .2, .3, ... and skip the held .9.
    assert got == {"a": [("ing", ["10.0.0.2/24"])], "stale": [("ing", ["10.0.0.3/24"])],
                   "b": [("ing", ["10.0.0.4/24"])]}
    assert nodes[0].attachments == []  # the stored objects are not touched
    assert all(n.meta.version == 3 for n in allocated)  # updates quote the version read
    # Once stored, nothing more to do.
    assert node_attachment_changes([*allocated, keeps], ing, alloc) == ([], [])
    # Without an ingress network, every attachment goes and nothing is allocated.
    before = alloc._snapshot()
    allocated2, cleaned2 = node_attachment_changes([*allocated, keeps, bare_node("c")], None, alloc)
    assert allocated2 == [] and [n.meta.id for n in cleaned2] == ["a", "stale", "b", "keeps"]
    assert all(not n.attachments for n in cleaned2)
    assert alloc._snapshot() == before


def test_node_ingress_addresses_are_released_and_restored() -> None:
    live = Allocator()
    ing = ingress_net(live, subnet="10.0.5.0/29")  # 6 usable: gateway + 5
    nodes, _ = node_attachment_changes([bare_node(f"n{i}") for i in range(4)], ing, live)
    tasks = [task(["ing"], live.allocate_task(["ing"]))]
    live.release_attachments(nodes.pop(1).attachments)  # node n1 removed
    restored = Allocator()
    restored.restore([ing], [], tasks, nodes)
    assert restored._in_use() == live._in_use()
    # x gets n1's old address (the cursor wrapped); then the network is full and y goes
    # without, for a later pass to retry, rather than failing the whole pass.
    more, _ = node_attachment_changes([bare_node("x"), bare_node("y")], ing, restored)
    assert [n.meta.id for n in more] == ["x"]
    assert list(more[0].attachments[0].addresses) == ["10.0.5.3/29"]


def test_default_ingress_network_takes_the_first_pool_subnet() -> None:
    alloc = Allocator()
    got = alloc.allocate_network("ing", pb.NetworkSpec(name="ingress", ingress=True))
    assert got == NetworkAllocation("10.0.0.0/24", "10.0.0.1", 4096)
    assert add_network(alloc, "user").subnet == "10.0.1.0/24"


# ---------------------------------------------------------------- property tests

POOL = ipaddress.IPv4Network("10.0.0.0/24")
AUTO_SIZE = 28
VNI_RANGE = (100, 107)
PORT_RANGE = (30000, 30002)


def new_allocator() -> Allocator:
    return Allocator(pools=[str(POOL)], subnet_size=AUTO_SIZE, vni_range=VNI_RANGE,
                     port_range=PORT_RANGE)


@dataclass
class ModelNet:
    """What the allocator should do for one network, computed the slow obvious way."""

    stored: pb.Network
    subnet: ipaddress.IPv4Network
    gateway: int
    lo: int
    hi: int
    cursor: int
    used: set[int] = field(default_factory=set)

    def expected_next(self) -> int | None:
        size = self.hi - self.lo + 1
        for i in range(size):
            candidate = self.lo + (self.cursor - self.lo + i) % size
            if candidate not in self.used and candidate != self.gateway:
                return candidate
        return None

    def take(self, text: str) -> None:
        value = int(ipaddress.ip_interface(text).ip)
        assert value == self.expected_next()
        self.used.add(value)
        self.cursor = value + 1 if value < self.hi else self.lo


def model_net(stored: pb.Network) -> ModelNet:
    subnet = ipaddress.IPv4Network(stored.subnet)
    lo, hi = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
    if stored.spec.ip_range:
        ip_range = ipaddress.IPv4Network(stored.spec.ip_range)
        lo = max(lo, int(ip_range.network_address))
        hi = min(hi, int(ip_range.broadcast_address))
    return ModelNet(stored, subnet, int(ipaddress.IPv4Address(stored.gateway)), lo, hi, lo)


# Half inside the automatic pool, half beside it.
explicit_subnets = st.integers(26, 29).flatmap(
    lambda p: st.integers(0, 2 ** (p - 23) - 1).map(
        lambda k: ipaddress.IPv4Network((int(POOL.network_address) + k * 2 ** (32 - p), p))))


class AllocatorMachine(RuleBasedStateMachine):
    """Random create/remove/allocate/release sequences against a model of the expected result."""

    @initialize()
    def start(self) -> None:
        self.alloc = new_allocator()
        self.nets: dict[str, ModelNet] = {}
        self.tasks: dict[int, pb.Task] = {}
        self.services: dict[str, pb.Service] = {}
        self.counter = 0

    def next_id(self) -> str:
        self.counter += 1
        return f"id{self.counter}"

    def attempt(self, expected_error: type[OvnetError] | None, call: Callable[..., T],
                *args: object) -> T | None:
        """Run an allocator call that the model predicts fails with `expected_error` (or
        succeeds when None); a failure must leave the allocator exactly as it was."""
        before = self.alloc._snapshot()
        try:
            result = call(*args)
        except OvnetError as exc:
            assert type(exc) is expected_error, exc
            assert self.alloc._snapshot() == before
            return None
        assert expected_error is None
        return result

    def overlaps(self, subnet: ipaddress.IPv4Network) -> bool:
        return any(n.subnet.overlaps(subnet) for n in self.nets.values())

    def store(self, net_id: str, spec: pb.NetworkSpec, got: NetworkAllocation) -> None:
        stored = pb.Network(meta=pb.Meta(id=net_id), spec=spec, subnet=got.subnet,
                            gateway=got.gateway, vni=got.vni)
        self.nets[net_id] = model_net(stored)

    @rule(subnet=explicit_subnets, gateway_at=st.none() | st.integers(1, 6),
          range_prefix=st.none() | st.integers(27, 32), range_at=st.integers(0, 255))
    def create_explicit(self, subnet: ipaddress.IPv4Network, gateway_at: int | None,
                        range_prefix: int | None, range_at: int) -> None:
        spec = pb.NetworkSpec(subnet=str(subnet))
        expected: type[OvnetError] | None = None
        first, last = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
        gateway = first if gateway_at is None else first + gateway_at - 1
        if gateway_at is not None:
            spec.gateway = str(ipaddress.IPv4Address(gateway))
        if range_prefix is not None and range_prefix >= subnet.prefixlen:
            blocks = 2 ** (range_prefix - subnet.prefixlen)
            ip_range = ipaddress.IPv4Network(
                (int(subnet.network_address) + (range_at % blocks) * 2 ** (32 - range_prefix),
                 range_prefix))
            spec.ip_range = str(ip_range)
            lo = max(first, int(ip_range.network_address))
            hi = min(last, int(ip_range.broadcast_address))
            if hi < lo or lo == hi == gateway:
                expected = InvalidArgument
        if expected is None and self.overlaps(subnet):
            expected = FailedPrecondition
        elif expected is None and len(self.nets) == VNI_RANGE[1] - VNI_RANGE[0] + 1:
            expected = ResourceExhausted
        net_id = self.next_id()
        got = self.attempt(expected, self.alloc.allocate_network, net_id, spec)
        if got is not None:
            assert got.subnet == str(subnet)
            assert got.gateway == str(ipaddress.IPv4Address(gateway))
            self.store(net_id, spec, got)

    @rule()
    def create_auto(self) -> None:
        free = [block for block in POOL.subnets(new_prefix=AUTO_SIZE) if not self.overlaps(block)]
        expected: type[OvnetError] | None = None
        if not free or len(self.nets) == VNI_RANGE[1] - VNI_RANGE[0] + 1:
            expected = ResourceExhausted
        net_id = self.next_id()
        spec = pb.NetworkSpec()
        got = self.attempt(expected, self.alloc.allocate_network, net_id, spec)
        if got is not None:
            assert got.subnet == str(free[0])  # first fit
            self.store(net_id, spec, got)

    @rule(data=st.data())
    def remove_network(self, data: st.DataObject) -> None:
        in_use = {a.network_id for t in self.tasks.values() for a in t.networks}
        in_use |= {v.network_id for s in self.services.values() for v in s.endpoint.virtual_ips}
        idle = sorted(set(self.nets) - in_use)
        if idle:
            net_id = data.draw(st.sampled_from(idle))
            self.alloc.release_network(self.nets.pop(net_id).stored)

    @rule(data=st.data(), repeat=st.integers(1, 6))
    def allocate_tasks(self, data: st.DataObject, repeat: int) -> None:
        if not self.nets:
            return
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.nets)), min_size=1, max_size=2,
                                    unique=True))
        for _ in range(repeat):
            full = any(self.nets[n].expected_next() is None for n in chosen)
            got = self.attempt(ResourceExhausted if full else None, self.alloc.allocate_task,
                               chosen)
            if got is None:
                return
            for net_id, addr in zip(chosen, got, strict=True):
                self.nets[net_id].take(addr)
            self.counter += 1
            self.tasks[self.counter] = task(chosen, got)

    @rule(data=st.data())
    def release_task(self, data: st.DataObject) -> None:
        if self.tasks:
            key = data.draw(st.sampled_from(sorted(self.tasks)))
            gone = self.tasks.pop(key)
            self.alloc.release_task(gone)
            for att in gone.networks:
                self.nets[att.network_id].used.discard(int(ipaddress.ip_interface(
                    att.addresses[0]).ip))

    @rule(data=st.data(), explicit=st.sets(st.tuples(st.sampled_from([TCP, UDP]),
                                                     st.sampled_from([80, 81]))),
          auto=st.lists(st.sampled_from([TCP, UDP]), max_size=2))
    def allocate_service(self, data: st.DataObject, explicit: set[tuple[pb.Protocol, int]],
                         auto: list[pb.Protocol]) -> None:
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.nets)), max_size=2, unique=True)
                           if self.nets else st.just([]))
        taken = {(p.protocol, p.published_port) for s in self.services.values()
                 for p in s.endpoint.ports}
        expected: type[OvnetError] | None = None
        if explicit & taken:
            expected = FailedPrecondition
        elif (any(auto.count(proto) > sum(1 for p in range(PORT_RANGE[0], PORT_RANGE[1] + 1)
                                          if (proto, p) not in taken) for proto in (TCP, UDP))
              or any(self.nets[n].expected_next() is None for n in chosen)):
            expected = ResourceExhausted
        spec = service_spec(*[port(8000, p, proto) for proto, p in sorted(explicit)],
                            *[port(9000, 0, proto) for proto in auto])
        svc_id = self.next_id()
        endpoint = self.attempt(expected, self.alloc.allocate_service, svc_id, spec, chosen)
        if endpoint is not None:
            assert [v.network_id for v in endpoint.virtual_ips] == chosen
            for vip in endpoint.virtual_ips:
                self.nets[vip.network_id].take(vip.addr)
            for p in endpoint.ports:
                assert p.published_port in (range(PORT_RANGE[0], PORT_RANGE[1] + 1)
                                            if p.target_port == 9000 else [80, 81])
            self.services[svc_id] = service(svc_id, spec, endpoint)

    @rule(data=st.data())
    def release_service(self, data: st.DataObject) -> None:
        if self.services:
            svc_id = data.draw(st.sampled_from(sorted(self.services)))
            gone = self.services.pop(svc_id)
            self.alloc.release_service(gone)
            for vip in gone.endpoint.virtual_ips:
                self.nets[vip.network_id].used.discard(int(ipaddress.ip_interface(vip.addr).ip))

    @rule(data=st.data())
    def restore_gives_the_same_allocations(self, data: st.DataObject) -> None:
        rebuilt = new_allocator()
        rebuilt.restore(data.draw(st.permutations([n.stored for n in self.nets.values()])),
                        data.draw(st.permutations(list(self.services.values()))),
                        data.draw(st.permutations(list(self.tasks.values()))))
        assert rebuilt._in_use() == self.alloc._in_use()

    @invariant()
    def networks_never_overlap_and_vnis_are_unique(self) -> None:
        nets = list(self.nets.values())
        for i, a in enumerate(nets):
            assert not any(a.subnet.overlaps(b.subnet) for b in nets[i + 1:])
        vnis = [n.stored.vni for n in nets]
        assert len(set(vnis)) == len(vnis)
        assert all(VNI_RANGE[0] <= v <= VNI_RANGE[1] for v in vnis)

    @invariant()
    def live_addresses_are_unique_and_usable(self) -> None:
        live = [(v.network_id, v.addr) for s in self.services.values()
                for v in s.endpoint.virtual_ips]
        live += [(a.network_id, a.addresses[0]) for t in self.tasks.values() for a in t.networks]
        assert len(set(live)) == len(live)
        for net_id, addr in live:
            net = self.nets[net_id]
            iface = ipaddress.IPv4Interface(addr)
            assert iface.network == net.subnet
            assert iface.ip not in (net.subnet.network_address, net.subnet.broadcast_address)
            assert int(iface.ip) != net.gateway
            assert net.lo <= int(iface.ip) <= net.hi

    @invariant()
    def published_ports_are_unique(self) -> None:
        ports = [(p.protocol, p.published_port) for s in self.services.values()
                 for p in s.endpoint.ports]
        assert len(set(ports)) == len(ports)


AllocatorMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_allocator_against_model = AllocatorMachine.TestCase
