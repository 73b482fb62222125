"""Attachments (containers joined to attachable networks through the CNI plugin) against a real
manager and a real etcd. The nodes asking are bare Dispatcher clients with worker certificates
(tests/integration/bare_agent.py): what the manager sees of an agent relaying the plugin's ADD
and DEL. The agent's side (the plugin, the interfaces) is tested in tests/unit and tests/e2e.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from proto import control_pb2 as cpb
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb
from tests.integration.agents import AgentPool
from tests.integration.bare_agent import BareAgent
from tests.integration.conftest import ManagerCluster
from tests.integration.test_crash_and_failover import assert_consistent
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

_hosts = iter(range(40, 250))


def bare(m: ManagerCluster, agents: list[BareAgent], hostname: str) -> BareAgent:
    """A node with a session (registered, READY), kept until the test ends."""
    node = BareAgent(m.addrs, m.join(), hostname, f"198.51.100.{next(_hosts)}")
    agents.append(node)
    wait_for(f"{hostname} in session", lambda: bool(node.session_id))
    return node


def attach(node: BareAgent, net: str, cid: str, **kw: Any) -> pb.Attachment:
    kw.setdefault("ifname", "eth0")
    req = dpb.AttachRequest(node_id=node.node_id, network=net, container_id=cid, **kw)
    resp: dpb.AttachResponse = node.call("Attach", req)
    assert resp.network.spec.name == net or resp.network.meta.id == net
    return resp.attachment


def detach(node: BareAgent, **kw: Any) -> bool:
    kw.setdefault("ifname", "eth0" if "container_id" in kw else "")
    resp: dpb.DetachResponse = node.call("Detach", dpb.DetachRequest(node_id=node.node_id, **kw))
    return resp.released


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def address(att: pb.Attachment) -> str:
    (addr,) = att.network.addresses
    return addr


def stored_attachments(m: ManagerCluster) -> dict[str, pb.Attachment]:
    out = {}
    for key, (_, value) in m.dump().items():
        if b"/objects/attachments/" in key:
            att = pb.Attachment()
            att.ParseFromString(value)
            out[att.meta.id] = att
    return out


def test_attach_is_idempotent_detach_frees_the_address_and_refusals_write_nothing(
    managers: ManagerCluster, bare_agents: list[BareAgent]
) -> None:
    # Two addresses to hand out (.1 is the gateway): a freed one is the only one left.
    managers.ovctl("network", "create", "--attachable", "--subnet", "10.61.0.0/24",
                   "--ip-range", "10.61.0.0/30", "open")  # fmt: skip
    managers.ovctl("network", "create", "--subnet", "10.62.0.0/24", "closed")
    h1, h2 = bare(managers, bare_agents, "h1"), bare(managers, bare_agents, "h2")
    a = attach(h1, "open", "c1" * 32, name="db", aliases=["database"])
    assert (a.node_id, a.container_id, a.name, address(a)) == (
        h1.node_id,
        "c1" * 32,
        "db",
        "10.61.0.2/24",
    )
    assert list(a.network.aliases) == ["database"]
    assert attach(h1, "open", "c1" * 32) == a, "a repeated ADD gets the same attachment"
    assert list(stored_attachments(managers)) == [a.meta.id]
    assert address(attach(h2, "open", "c2")) == "10.61.0.3/24"
    assert address(attach(h1, "open", "c1" * 32)) == "10.61.0.2/24"

    before = managers.dump()
    cases: list[tuple[dpb.AttachRequest, grpc.StatusCode, str]] = [
        (
            dpb.AttachRequest(network="closed", container_id="c3", ifname="eth0"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "network 'closed' is not attachable: only service tasks can join it; create one "
            "with `ovctl network create --attachable NAME`",
        ),
        (
            dpb.AttachRequest(network="nosuch", container_id="c3", ifname="eth0"),
            grpc.StatusCode.NOT_FOUND,
            "network 'nosuch' not found",
        ),
        (
            dpb.AttachRequest(network="open", ifname="eth0"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "container_id is required",
        ),
        (
            dpb.AttachRequest(network="ingress", container_id="c3", ifname="eth0"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "network 'ingress' is the ingress network",
        ),
        (
            dpb.AttachRequest(network="open", container_id="c3", ifname="eth0"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "no free address left in 10.61.0.1-10.61.0.3",
        ),
    ]
    for req, code, message in cases:
        req.node_id = h1.node_id
        with pytest.raises(grpc.RpcError) as info:
            h1.call("Attach", req)
        err = info.value
        assert err.code() == code and message in (err.details() or ""), err.details()
    # A node speaks for itself only: another node's ID is refused at the door.
    other = dpb.AttachRequest(node_id=h2.node_id, network="open", container_id="x", ifname="eth0")
    assert refused(lambda: h1.call("Attach", other)).code() == grpc.StatusCode.PERMISSION_DENIED
    # ... and it cannot release another node's attachment either.
    err = refused(lambda: detach(h2, attachment_id=a.meta.id))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "not one of node" in (err.details() or "")
    assert managers.dump() == before, "refused requests wrote nothing"

    assert detach(h1, container_id="c1" * 32) is True
    assert detach(h1, container_id="c1" * 32) is False, "a repeated DEL is no error"
    assert detach(h1, attachment_id=a.meta.id) is False
    # The freed address is the only one left, and the next container gets it.
    c3 = attach(h1, "open", "c3")
    assert address(c3) == "10.61.0.2/24" and c3.meta.id != a.meta.id
    assert detach(h1, attachment_id=c3.meta.id) is True
    assert a.meta.id not in stored_attachments(managers)


def test_network_rm_is_refused_while_containers_are_attached(
    managers: ManagerCluster, bare_agents: list[BareAgent]
) -> None:
    managers.ovctl("network", "create", "--attachable", "open")
    h1, h2 = bare(managers, bare_agents, "h1"), bare(managers, bare_agents, "h2")
    attach(h1, "open", "c1")
    attach(h2, "open", "c2")
    res = managers.ovctl("network", "rm", "open", check=False)
    assert res.returncode == 1
    assert (
        "network 'open' has 2 container attachment(s) on node(s) h1, h2: remove the containers "
        "(podman rm / CNI DEL) first"
    ) in res.stderr, res.stderr
    assert managers.ovctl_json("network", "inspect", "open")[0]["spec"]["name"] == "open"
    assert detach(h1, container_id="c1") and detach(h2, container_id="c2")
    managers.ovctl("network", "rm", "open")


def test_removing_a_down_node_releases_its_attachments(
    managers: ManagerCluster, bare_agents: list[BareAgent]
) -> None:
    managers.ovctl("network", "create", "--attachable", "--subnet", "10.63.0.0/24",
                   "--ip-range", "10.63.0.0/30", "open")  # fmt: skip
    h1, h2 = bare(managers, bare_agents, "h1"), bare(managers, bare_agents, "h2")
    held = {address(attach(h1, "open", "c1")), address(attach(h1, "open", "c2"))}
    err = refused(lambda: attach(h2, "open", "c3"))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    h1.close()  # the host dies
    wait_for("h1 down", lambda: node_state(managers, "h1") == pb.NODE_STATE_DOWN)
    managers.ovctl("node", "rm", "--force", "h1")
    assert stored_attachments(managers) == {}
    # Its addresses are free: h2's container gets one of them.
    assert address(attach(h2, "open", "c3")) in held


def node_state(m: ManagerCluster, ref: str) -> int:
    node = m.stub().GetNode(cpb.GetNodeRequest(node_ref=ref), timeout=10).node
    return int(node.status.state)


def test_the_attachments_of_a_node_down_longer_than_the_grace_are_released(
    etcd: Any, spawn_process: Any, bare_agents: list[BareAgent]
) -> None:
    m = ManagerCluster(etcd, spawn_process, **{"attachment-grace": "1"})
    m.add()
    m.wait_leader()
    try:
        m.ovctl("network", "create", "--attachable", "open")
        h1, h2 = bare(m, bare_agents, "h1"), bare(m, bare_agents, "h2")
        gone = attach(h1, "open", "c1")
        kept = attach(h2, "open", "c2")
        h1.close()
        wait_for("h1 down", lambda: node_state(m, "h1") == pb.NODE_STATE_DOWN)
        node = m.stub().GetNode(cpb.GetNodeRequest(node_ref="h1"), timeout=10).node
        assert node.status.since_ms > 0, "the time it went down is recorded"
        wait_for(
            "h1's attachment released",
            lambda: gone.meta.id not in stored_attachments(m),
            timeout=20,
        )
        assert list(stored_attachments(m)) == [kept.meta.id], "a live node keeps its own"
        assert node_state(m, "h1") == pb.NODE_STATE_DOWN, "the node itself stays"
    finally:
        m.close()


def test_a_restarted_manager_restores_attachment_addresses(
    managers: ManagerCluster, bare_agents: list[BareAgent]
) -> None:
    managers.ovctl("network", "create", "--attachable", "--subnet", "10.64.0.0/24", "open")
    h1 = bare(managers, bare_agents, "h1")
    before = [attach(h1, "open", f"c{i}") for i in range(3)]
    assert detach(h1, container_id="c1")
    kept = [before[0], before[2]]
    managers.procs[0].kill()
    managers.procs[0].start()
    managers.wait_leader()
    # The same container gets the same attachment; a new one gets an address nobody holds.
    assert attach(h1, "open", "c0") == kept[0]
    new = attach(h1, "open", "c9")
    assert address(new) not in {address(a) for a in kept}
    s = assert_consistent(managers)
    assert sorted(s["attachments"]) == sorted([kept[0].meta.id, kept[1].meta.id, new.meta.id])


def test_sessions_carry_the_attachments_their_networks_and_every_attachable_network(
    managers: ManagerCluster, bare_agents: list[BareAgent]
) -> None:
    ids = {}
    for name, flags in (("open", ["--attachable"]), ("spare", ["--attachable"]), ("closed", [])):
        managers.ovctl("network", "create", *flags, name)
        ids[name] = managers.ovctl_json("network", "inspect", name)[0]["meta"]["id"]
    h1, h2 = bare(managers, bare_agents, "h1"), bare(managers, bare_agents, "h2")
    att = attach(h1, "open", "c1")
    wait_for("h1's attachment in its session", lambda: h1.ids("attachment") == {att.meta.id})
    assert h1.items[("attachment", att.meta.id)] == att
    for node in (h1, h2):
        nets = node.ids("network")
        assert {ids["open"], ids["spare"]} <= nets and ids["closed"] not in nets, node.items
    assert h2.ids("attachment") == set(), "a node gets its own attachments only"
    # A network made attachable later reaches every node; a detach removes the attachment.
    managers.ovctl("network", "create", "--attachable", "late")
    late = managers.ovctl_json("network", "inspect", "late")[0]["meta"]["id"]
    wait_for("the new network everywhere", lambda: all(late in n.ids("network") for n in (h1, h2)))
    assert detach(h1, container_id="c1")
    wait_for("the attachment removed", lambda: h1.ids("attachment") == set())


def test_network_inspect_lists_tasks_standalone_tasks_attachments_and_nodes(
    managers: ManagerCluster, agents: AgentPool, bare_agents: list[BareAgent]
) -> None:
    managers.ovctl("network", "create", "--attachable", "--subnet", "10.65.0.0/24", "open")
    w1 = agents.add(managers.addrs, "w1")
    # h1 (a bare client) runs no tasks: they go to w1.
    h1 = bare(managers, bare_agents, "h1")
    managers.ovctl("service", "create", "-d", "--name", "web", "--network", "open",
                   "--constraint", "node.hostname==w1", "--", "sleep", "1d")  # fmt: skip
    managers.ovctl("run", "-d", "--node", "w1", "--name", "solo", "--network", "open", "--", "x")
    att = attach(h1, "open", "f" * 64, name="db")
    stub = managers.stub()

    def endpoints(net: str) -> list[cpb.NetworkEndpoint]:
        resp = stub.GetNetwork(cpb.GetNetworkRequest(network_ref=net), timeout=10)
        return list(resp.endpoints)

    def all_running() -> bool:
        states = {
            e.name.split(".")[0]: e.state for e in endpoints("open") if e.kind != "attachment"
        }
        return states == {"web": "running", "solo": "running"}

    wait_for("web and solo running", all_running, timeout=30)
    got = endpoints("open")
    web = next(e for e in got if e.kind == "task")
    assert web.name == f"web.1.{web.id}" and web.node == "w1" and web.node_id == w1.node_id
    assert [(e.node, e.kind, e.name.split(".")[0], e.state) for e in got] == [
        ("h1", "attachment", "db", ""),
        ("w1", "standalone", "solo", "running"),
        ("w1", "task", "web", "running"),
    ]
    assert got[0].id == att.meta.id and got[0].address == address(att)
    for e in got:
        assert ipaddress.ip_interface(e.address).ip in ipaddress.ip_network("10.65.0.0/24")
    # Nodes' own addresses are on the ingress network.
    wait_for(
        "both nodes on the ingress network",
        lambda: (
            {(e.kind, e.node) for e in endpoints("ingress")} >= {("node", "w1"), ("node", "h1")}
        ),
    )
    # ovctl shows them: JSON and --pretty.
    doc = managers.ovctl_json("network", "inspect", "open")[0]
    assert [(e["kind"], e["node"]) for e in doc["endpoints"]] == [
        ("attachment", "h1"),
        ("standalone", "w1"),
        ("task", "w1"),
    ]
    pretty = managers.ovctl("network", "inspect", "--pretty", "open").stdout
    lines = pretty[pretty.index("Endpoints:") :].splitlines()
    assert lines[1].split() == ["NODE", "KIND", "NAME", "ADDRESS", "STATE"]
    assert lines[2].split() == ["h1", "attachment", "db", address(att), "-"]
    assert lines[3].split()[:3] == ["w1", "standalone", "solo"]
    assert lines[4].split()[:3] == ["w1", "task", web.name]
