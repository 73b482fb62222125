"""The hand-built rtnetlink requests are byte for byte what pyroute2 0.9's AsyncIPRoute sent
for the same calls (captured with strace from the kernel.py that used it), so replacing
pyroute2 changed nothing the kernel sees; and the dump parsers read back what the builders
write."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import pytest

from agent.dataplane import nl, nlmsg

ACK, NEW, REPLACE = 0x5, 0x605, 0x505

# (request, type, flags, body as pyroute2 sent it)
CAPTURED = [
    (
        nlmsg.link_add("br0", "bridge", 1450),
        16,
        NEW,
        "00000000000000000000000000000000080003006272300008000400aa050000100012000b000100"
        "6272696467650000",
    ),
    (nlmsg.link_get("ovx1"), 18, ACK, "00000000000000000000000000000000090003006f76783100000000"),
    (
        nlmsg.addr(True, 2, IPv4Interface("10.1.0.1/24")),
        20,
        NEW,
        "0218000002000000080001000a010001080002000a010001",
    ),
    (
        nlmsg.addr(False, 3, IPv4Interface("10.2.0.3/16")),
        21,
        ACK,
        "0210000003000000080001000a020003080002000a020003",
    ),
    (nlmsg.link_set(2, up=True), 16, ACK, "00000000020000000100000001000000"),
    (
        nlmsg.link_add(
            "ovx1",
            "vxlan",
            1450,
            nlmsg.vxlan_data(4097, IPv4Address("198.51.100.9"), 4789, False, True),
        ),
        16,
        NEW,
        "00000000000000000000000000000000090003006f7678310000000008000400aa0500003c001200"
        "0a00010076786c616e0000002c000200080001000110000008000400c633640906000f0012b50000"
        "050007000000000005000b0001000000",
    ),
    (nlmsg.link_set(3, netns_fd=8), 16, ACK, "0000000003000000000000000000000008001c0008000000"),
    (nlmsg.link_set(3, name="vx0"), 16, ACK, "000000000300000000000000000000000800030076783000"),
    (
        nlmsg.link_set(3, master=2, up=True),
        16,
        ACK,
        "0000000003000000010000000100000008000a0002000000",
    ),
    (
        nlmsg.link_add("ve0", "veth", 1450, nlmsg.veth_peer("eth0", 1450, "02:42:0a:01:00:05", 8)),
        16,
        NEW,
        "00000000000000000000000000000000080003007665300008000400aa05000050001200090001007665"
        "746800000000400002003c000100000000000000000000000000000000000900030065746830000000"
        "0008000400aa0500000a00010002420a010005000008001c0008000000",
    ),
    (
        nlmsg.link_set(4, mtu=1400, master=2, mac="02:00:00:00:00:01"),
        16,
        ACK,
        "00000000040000000000000000000000080004007805000008000a00020000000a0001000200000000010000",
    ),
    (
        nlmsg.default_route(IPv4Address("10.1.0.1")),
        24,
        REPLACE,
        "02000000fe04000100000000080005000a010001",
    ),
    (nlmsg.default_route(None), 25, ACK, "02000000fe00000000000000"),
    (nlmsg.link_del("ve0"), 17, ACK, "000000000000000000000000000000000800030076653000"),
    (nlmsg.link_del(index=2), 17, ACK, "00000000020000000000000000000000"),
]


@pytest.mark.parametrize(("req", "mtype", "flags", "body"), CAPTURED)
def test_requests_are_what_pyroute2_sent(
    req: nlmsg.Request, mtype: int, flags: int, body: str
) -> None:
    assert (req.mtype, req.flags, req.body.hex()) == (mtype, flags, body)


def test_frame_puts_length_type_flags_and_seq_in_the_header() -> None:
    req = nlmsg.link_set(2, up=True)
    raw = nlmsg.frame(req, 77)
    assert nlmsg.HDR.unpack_from(raw) == (len(raw), 16, ACK, 77, 0)
    assert raw[16:] == req.body


def test_a_vxlan_without_local_address_leaves_the_attribute_out() -> None:
    data = nlmsg.vxlan_data(5, None, 4789, False, True)
    assert [k for k, _ in nlmsg.attrs(data, 0, len(data))] == [1, 15, 7, 11]


def test_parse_link_reads_what_link_add_writes() -> None:
    vx = nlmsg.vxlan_data(4097, IPv4Address("198.51.100.9"), 4789, False, True)
    body = nlmsg.link_add("ovx1", "vxlan", 1450, vx).body
    link = nlmsg.parse_link(body, 0, len(body))
    assert (link.name, link.kind, link.mtu, link.up) == ("ovx1", "vxlan", 1450, False)
    assert link.vxlan == (4097, 4789, IPv4Address("198.51.100.9"), False, True)
    on = nlmsg.link_set(7, master=3, mac="02:00:00:00:00:01", up=True).body
    link = nlmsg.parse_link(on, 0, len(on))
    assert (link.index, link.master, link.mac, link.up) == (7, 3, "02:00:00:00:00:01", True)


def test_parse_addr_and_default_gateway() -> None:
    body = nlmsg.addr(True, 5, IPv4Interface("10.1.0.5/24")).body
    assert nlmsg.parse_addr(body, 0, len(body)) == (5, IPv4Interface("10.1.0.5/24"))
    route = nlmsg.default_route(IPv4Address("10.1.0.1")).body
    assert nlmsg.parse_default_gateway(route, 0, len(route)) == IPv4Address("10.1.0.1")


def test_parse_neigh_reads_what_neigh_msg_writes() -> None:
    raw = nlmsg.neigh_msg(
        nlmsg.RTM_NEWNEIGH, 1, nlmsg.AF_BRIDGE, 9, "02:00:0a:00:00:02", "198.51.100.3", 1
    )
    idx, state, ntf, mac, dst = nlmsg.parse_neigh(raw, 16, len(raw))
    assert (idx, mac, dst) == (9, "02:00:0a:00:00:02", "198.51.100.3")
    assert state & nlmsg.NUD_PERMANENT and ntf & nlmsg.NTF_SELF


def test_netlink_error_is_an_oserror_named_by_its_errno() -> None:
    e = nl.NetlinkError(17)
    assert isinstance(e, OSError) and e.errno == 17 and e.code == 17
    assert str(e) == "EEXIST: File exists"
