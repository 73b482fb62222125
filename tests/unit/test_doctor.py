"""`ovctl doctor`'s pure parts: ops as rows, balancer chain drift, the manager's merge, the
agent's check and repair over fakes, and ovctl's rendering, exit status and parsing."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from agent.dataplane import ops
from agent.dataplane.observed import Link, NetworkNs, Observed, SandboxNs, VxlanParams
from agent.doctor import RowContext, after_repair, op_row, wanted
from agent.lb.drift import LbDrift, chain_drift, listed_chains, rendered_chains
from agent.lb.plan import LbSpec, PortTarget, render_full
from agent.model import Names
from manager.doctor import merge, not_asked
from ovctl import cli, doctor, render
from proto import control_pb2 as cpb
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb
from tests.support.agent_fakes import Fakes, FakeSession

NAMES = Names("t-")
NS = NAMES.network_ns("n1")
SB = NAMES.sandbox_ns("t1")
OBSERVED = Observed(
    networks={
        NS: NetworkNs(
            links={
                NAMES.bridge: Link(
                    "bridge", 1450, addresses=frozenset({IPv4Interface("10.0.1.1/24")})
                )
            }
        )
    },
    sandboxes={SB: SandboxNs(links={"eth0": Link("veth", 1500, up=False)}, default_gateway=None)},
    files={SB: ("", "")},
)
CTX = RowContext(OBSERVED, NAMES, {"n1": "front"})
ADDR = IPv4Interface("10.0.1.1/24")

# One op of every kind, and the (kind, words in the object, expected, found) its row must have.
CASES: list[tuple[ops.Op, tuple[str, str, str, str]]] = [
    (ops.AddFdb(ns=NS, mac="02:42:0a:00:01:05", dst="198.51.100.3", network_id="n1"),
     ("fdb", "fdb 02:42:0a:00:01:05 dst 198.51.100.3 dev ovvx0", "present", "missing")),
    (ops.DelFdb(ns=NS, mac="02:42:0a:00:01:06", dst="198.51.100.4", network_id="n1"),
     ("fdb", "02:42:0a:00:01:06", "absent", "present")),
    (ops.AddNeigh(ns=NS, ip="10.0.1.5", mac="02:42:0a:00:01:05", network_id="n1"),
     ("neighbour", "neighbour 10.0.1.5 lladdr 02:42:0a:00:01:05", "present", "missing")),
    (ops.DelNeigh(ns=NS, ip="10.0.1.6", mac="02:42:0a:00:01:06", network_id="n1"),
     ("neighbour", "10.0.1.6", "absent", "present")),
    (ops.CreateNetns(ns=NS, network_id="n1"), ("netns", NS, "present", "missing")),
    (ops.DeleteNetns(ns="t-n-old"), ("netns", "t-n-old", "absent", "present")),
    (ops.CreateBridge(ns=NS, name="br9", mtu=1450, address=ADDR, mac="02:00:00:00:00:01",
                      network_id="n1"),
     ("link", "br9", "bridge mtu 1450 mac 02:00:00:00:00:01 10.0.1.1/24 up", "missing")),
    (ops.CreateVxlan(ns=NS, name="ovvx0", staging="ovx4096", mtu=1450, master="ovbr0",
                     params=VxlanParams(4096, 4789, IPv4Address("198.51.100.1")), network_id="n1"),
     ("link", "ovvx0", "vxlan id 4096 dstport 4789 local 198.51.100.1 mtu 1450 master ovbr0",
      "missing")),
    (ops.CreateVeth(ns=NS, name="ovv1", master="ovbr0", mtu=1450, peer_ns=SB, peer_name="eth0",
                    task_id="t1", network_id="n1"),
     ("link", "ovv1", "veth mtu 1450 master ovbr0, peer eth0 in " + SB, "missing")),
    (ops.SetLink(ns=SB, name="eth0", mtu=1450, task_id="t1"),
     ("link", "eth0", "mtu 1450 up", "veth mtu 1500 down")),
    (ops.DeleteLink(ns=SB, name="eth0", task_id="t1"),
     ("link", "[task t1]", "absent", "veth mtu 1500 down")),
    (ops.SetAddresses(ns=NS, name=NAMES.bridge, addresses=frozenset({IPv4Interface("10.0.1.2/24")}),
                      network_id="n1"),
     ("address", "addresses of", "10.0.1.2/24", "10.0.1.1/24")),
    (ops.SetDefaultRoute(ns=SB, gateway=IPv4Address("172.18.0.1"), task_id="t1"),
     ("route", "default route", "via 172.18.0.1", "none")),
    (ops.SetLoUp(ns=SB, task_id="t1"), ("link", "lo", "up", "down")),
    (ops.WriteSandboxFiles(ns=SB, resolv="x", hosts="y", task_id="t1"),
     ("file", "resolv.conf", "as rendered", "differs")),
    (ops.RemoveSandboxFiles(ns="t-s-old"), ("file", "t-s-old", "absent", "present")),
    (ops.EnsureNft(table="ovnet", gwbridge="ovgw0", subnet=IPv4Network("172.18.0.0/16")),
     ("nft", "table ip ovnet", "masquerade 172.18.0.0/16 out of ovgw0, from_loopback, forward",
      "missing or incomplete")),
    (ops.DeleteNft(table="ovnet"), ("nft", "table ip ovnet", "absent", "present")),
    (ops.SetIpForward(), ("sysctl", "net.ipv4.ip_forward", "1", "0")),
    (ops.SetRouteLocalnet(bridge="ovgw0"),
     ("sysctl", "net.ipv4.conf.ovgw0.route_localnet", "1", "0")),
]  # fmt: skip


@pytest.mark.parametrize(("op", "want"), CASES, ids=[type(o).__name__ for o, _ in CASES])
def test_every_op_kind_becomes_a_row_in_words(op: ops.Op, want: tuple[str, str, str, str]) -> None:
    row = op_row(op, CTX)
    kind, words, expected, found = want
    assert (row.kind, row.expected, row.found) == (kind, expected, found)
    assert words in row.object
    assert row.network == ("front" if op.network_id == "n1" else "")
    assert not row.host and not row.repaired  # the manager fills the host in


def test_every_op_class_has_a_case() -> None:
    """A new op kind gets its words here too (else it shows as `describe()`)."""
    classes = {c for c in vars(ops).values() if isinstance(c, type) and issubclass(c, ops.Op)}
    assert classes - {ops.Op} == {type(o) for o, _ in CASES}


def test_filter_by_network() -> None:
    op = ops.AddFdb(ns=NS, mac="m", dst="d", network_id="n1")
    assert wanted(op, frozenset()) and wanted(op, frozenset({"n1"}))
    assert not wanted(op, frozenset({"n2"}))
    assert not wanted(ops.SetIpForward(), frozenset({"n1"}))


def test_after_repair_marks_what_the_pass_fixed() -> None:
    a = pb.DriftRow(
        network="front", kind="fdb", object="fdb a", expected="present", found="missing"
    )
    b = pb.DriftRow(kind="nft", object="chain p", expected="1 rules", found="0 rules")
    rows = after_repair([a, b], [b])
    assert [(r.object, r.repaired) for r in rows] == [("fdb a", True), ("chain p", False)]
    assert not a.repaired  # the input rows are left alone


# ---------------------------------------------------------------------- balancer tables

SPEC = LbSpec(
    vips={"10.0.0.2": ("10.0.0.3", "10.0.0.4")},
    ports={("tcp", 8080): PortTarget(80, ("10.0.0.5",))},
    hooks=frozenset({"prerouting"}),
    local_only=True,
)
LISTING = """table ip ovnet-lb {
\tmap vips {
\t\ttype ipv4_addr : verdict
\t\telements = { 10.0.0.2 : goto v_10_0_0_2 }
\t}
\tchain v_10_0_0_2 {
\t\tdnat to numgen random mod 2 map @v_10_0_0_2
\t}
\tchain p_tcp_8080 {
\t}
\tchain nat_prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr vmap @vips
\t\tip daddr . meta l4proto . th dport vmap @bound_ports
\t\tfib daddr type local meta l4proto . th dport vmap @ports
\t}
\tchain filter_prerouting {
\t\ttype filter hook prerouting priority dstnat - 10; policy accept;
\t\tct state new ip daddr @dead_vips reject with tcp reset
\t\tct state new ip daddr @dead_vips reject
\t\tct state new ip daddr . meta l4proto . th dport @dead_bound reject with tcp reset
\t\tct state new ip daddr . meta l4proto . th dport @dead_bound reject
\t\tct state new fib daddr type local meta l4proto . th dport @dead_ports reject with tcp reset
\t\tct state new fib daddr type local meta l4proto . th dport @dead_ports reject
\t}
}
"""


def test_rendered_and_listed_chains_count_rules_alike() -> None:
    script, _ = render_full("ovnet-lb", SPEC)
    want = rendered_chains(script)
    assert want == {
        "v_10_0_0_2": 1,
        "p_tcp_8080": 1,
        "nat_prerouting": 3,
        "filter_prerouting": 6,
    }
    have = listed_chains(LISTING)
    assert have == {**want, "p_tcp_8080": 0}


def test_chain_drift_names_the_chain_that_lost_a_rule() -> None:
    script, _ = render_full("ovnet-lb", SPEC)
    assert chain_drift("ovnet-lb", "host", script, LISTING) == [
        LbDrift("table ip ovnet-lb in host chain p_tcp_8080", "1 rules", "0 rules")
    ]
    assert chain_drift("ovnet-lb", "host", script, None) == [
        LbDrift("table ip ovnet-lb in host", "4 chains", "missing")
    ]
    extra = LISTING.replace("\tchain p_tcp_8080 {\n\t}\n", "\tchain p_tcp_8080 {\n\t\tx\n\t}\n")
    extra = extra.replace("}\n}\n", "}\n\tchain odd {\n\t\ty\n\t}\n}\n")
    assert chain_drift("ovnet-lb", "host", script, extra) == [
        LbDrift("table ip ovnet-lb in host chain odd", "absent", "1 rules")
    ]


# ---------------------------------------------------------------------- agent check over fakes


def test_check_reports_drift_and_repair_fixes_it(tmp_path: Path) -> None:
    async def go() -> None:
        fakes = Fakes()
        session = FakeSession()
        d = fakes.daemon(session, tmp_path)
        assert session.on_doctor is not None
        rows, error = await session.on_doctor(dpb.DoctorCheck(request_id="r"))
        assert rows == [] and "not built" in error
        await d.step()
        fakes.dataplane.drifted = [ops.AddFdb(ns=NS, mac="m1", dst="198.51.100.3")]
        fakes.lb.specs["host"] = LbSpec()
        fakes.lb.drifted["host"] = [
            LbDrift("table ip ovnet-lb in host chain p", "1 rules", "0 rules")
        ]
        rows, error = await session.on_doctor(dpb.DoctorCheck(request_id="r"))
        assert error == "" and sorted(r.kind for r in rows) == ["fdb", "nft"]
        assert not any(r.repaired for r in rows)
        # A network filter leaves out the host's balancer tables and other networks' entries.
        rows, _ = await session.on_doctor(dpb.DoctorCheck(request_id="r", network_ids=["n9"]))
        assert rows == []
        rows, error = await session.on_doctor(dpb.DoctorCheck(request_id="r", repair=True))
        assert error == "" and len(rows) == 2 and all(r.repaired for r in rows), rows
        assert fakes.lb.invalid == set()  # the pass replaced the table it was told to
        rows, _ = await session.on_doctor(dpb.DoctorCheck(request_id="r"))
        assert rows == []

    asyncio.run(go())


# ---------------------------------------------------------------------- manager


def _node(node_id: str, host: str, state: int = pb.NODE_STATE_READY) -> pb.Node:
    return pb.Node(
        meta=pb.Meta(id=node_id),
        description=pb.NodeDescription(hostname=host),
        status=pb.NodeStatus(state=state),  # type: ignore[arg-type]
    )


def test_merge_names_hosts_and_lists_the_silent_ones() -> None:
    nodes = [
        _node("b", "h2"),
        _node("a", "h1"),
        _node("c", "h3", pb.NODE_STATE_DOWN),
        _node("d", "h4"),
    ]
    reports = {
        "a": dpb.ReportDoctorRequest(
            node_id="a",
            rows=[
                pb.DriftRow(kind="fdb", object="z"),
                pb.DriftRow(network="n1", kind="fdb", object="y"),
            ],
        ),
        "b": dpb.ReportDoctorRequest(node_id="b", error="the check failed: boom"),
    }
    resp = merge(nodes, reports, {"c": "node is down"}, {"n1": "front"})
    assert [(r.host, r.network, r.object) for r in resp.rows] == [
        ("h1", "", "z"),
        ("h1", "front", "y"),
    ]
    hosts = [(h.hostname, h.answered, h.error) for h in resp.hosts]
    assert hosts == [
        ("h1", True, ""),
        ("h2", True, "the check failed: boom"),
        ("h3", False, "node is down"),
        ("h4", False, "no answer in time"),
    ]


def test_who_is_asked() -> None:
    assert not_asked(_node("a", "h1"), True) is None
    assert not_asked(_node("a", "h1"), False) == "no session with the leader"
    assert not_asked(_node("a", "h1", pb.NODE_STATE_DOWN), True) == "node is down"


# ---------------------------------------------------------------------- ovctl

ROWS = [
    pb.DriftRow(host="h1", network="front", kind="fdb", object="fdb m dst d", expected="present",
                found="missing"),
    pb.DriftRow(host="h1", kind="nft", object="table ip ovnet-lb in host chain p",
                expected="1 rules", found="0 rules"),
]  # fmt: skip
HOSTS = [
    cpb.DoctorHost(node_id="a", hostname="h1", answered=True),
    cpb.DoctorHost(node_id="b", hostname="h2", answered=True),
]


def test_table_and_exit_status() -> None:
    resp = cpb.DoctorResponse(rows=ROWS, hosts=HOSTS)
    text = doctor.doctor_text(resp, repair=False)
    lines = text.splitlines()
    assert lines[0].split() == ["HOST", "NETWORK", "KIND", "OBJECT", "EXPECTED", "FOUND"]
    assert lines[1].split()[:3] == ["h1", "front", "fdb"] and lines[2].split()[:3] == [
        "h1",
        "-",
        "nft",
    ]
    assert lines[-1] == "2 of 2 hosts checked, 2 drifted"
    assert doctor.exit_status(resp) == 1
    assert doctor.exit_status(cpb.DoctorResponse(hosts=HOSTS)) == 0
    assert doctor.doctor_text(cpb.DoctorResponse(hosts=HOSTS), False) == (
        "2 of 2 hosts checked, 0 drifted"
    )


def test_repair_table_and_exit_status() -> None:
    fixed = [pb.DriftRow(), pb.DriftRow()]
    for f, r in zip(fixed, ROWS, strict=True):
        f.CopyFrom(r)
        f.repaired = True
    resp = cpb.DoctorResponse(rows=fixed, hosts=HOSTS)
    text = doctor.doctor_text(resp, repair=True)
    assert text.splitlines()[0].split()[-1] == "REPAIRED"
    assert text.splitlines()[1].split()[-1] == "yes"
    assert text.splitlines()[-1] == "2 of 2 hosts checked, 0 drifted, 2 repaired"
    assert doctor.exit_status(resp) == 0
    still = cpb.DoctorResponse(rows=[fixed[0], ROWS[1]], hosts=HOSTS)
    assert doctor.exit_status(still) == 1


def test_a_host_that_did_not_answer_is_listed_and_fails_the_check() -> None:
    silent = cpb.DoctorHost(node_id="c", hostname="h3", answered=False, error="node is down")
    broken = cpb.DoctorHost(node_id="d", hostname="h4", answered=True, error="boom")
    resp = cpb.DoctorResponse(hosts=[*HOSTS, silent, broken])
    text = doctor.doctor_text(resp, repair=False)
    assert "h3: did not answer (node is down)" in text
    assert "h4: could not check: boom" in text
    assert text.splitlines()[-1] == "2 of 4 hosts checked, 0 drifted"
    assert doctor.exit_status(resp) == 1


def test_json_is_the_response() -> None:
    resp = cpb.DoctorResponse(rows=ROWS, hosts=HOSTS)
    out = json.loads(render.to_json(resp))
    assert out["rows"][0]["kind"] == "fdb" and out["rows"][0]["repaired"] is False
    assert out["hosts"][0]["answered"] is True


def test_cli_parsing_and_wait() -> None:
    args = cli.parse_args(["doctor"])
    assert args.handler is doctor.doctor
    assert (args.networks, args.repair, args.format) == ([], False, "table")
    args = cli.parse_args(["doctor", "front", "back", "--repair", "--format", "json"])
    assert (args.networks, args.repair, args.format) == (["front", "back"], True, "json")
    assert doctor.wait_ms(30.0, False) == 10_000
    assert doctor.wait_ms(30.0, True) == 10_000
    assert doctor.wait_ms(6.0, True) == 2_000


class _Stub:
    def __init__(self, resp: cpb.DoctorResponse) -> None:
        self.resp = resp
        self.req: cpb.DoctorRequest | None = None

    def Doctor(self, req: cpb.DoctorRequest) -> cpb.DoctorResponse:
        self.req = req
        return self.resp


def test_command_sends_the_request_and_returns_the_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stub = _Stub(cpb.DoctorResponse(rows=ROWS, hosts=HOSTS))
    args = cli.parse_args(["--timeout", "9", "doctor", "front", "--repair"])
    assert doctor.doctor(stub, args) == 1
    assert stub.req == cpb.DoctorRequest(network_refs=["front"], repair=True, timeout_ms=3000)
    assert "REPAIRED" in capsys.readouterr().out
