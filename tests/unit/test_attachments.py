"""Attachments (containers joined through the CNI plugin) on the manager's side, without etcd:
the state's indexes, the allocator's restore, Dispatcher.Attach/Detach over the real Cluster
(its lock, allocator and commits) on a store without etcd, the assignment set, the reaper's
decision and its commits, the control API's refusals and removals, the network's endpoint list
and how ovctl prints it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

import pytest

from manager import attachments
from manager.allocator import Allocator
from manager.cluster import Cluster, ManagerConfig
from manager.controlapi import ControlAPI
from manager.dispatcher import Dispatcher, _Session
from manager.endpoints import network_endpoints, state_word
from manager.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from manager.logbroker import LogBroker
from manager.main import parse_args
from manager.state import ClusterState
from manager.store import Batch, Store
from ovctl import render
from proto import control_pb2 as cpb
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb
from tests.unit.test_dispatcher import KEY1, FakeKeys, node

NOW = 10_000_000
HOUR_MS = 3600 * 1000


def network(
    net_id: str, subnet: str, *, attachable: bool = True, ingress: bool = False
) -> pb.Network:
    return pb.Network(
        meta=pb.Meta(id=net_id),
        spec=pb.NetworkSpec(name=net_id, attachable=attachable, ingress=ingress),
        subnet=subnet,
        gateway=subnet.replace(".0/24", ".1"),
        vni=4096 + int(subnet.split(".")[1]),
    )


class FakeStore:
    """The store's commit without etcd: versions stamped as etcd's revisions would be, every
    batch kept, and a switch to make commits fail (as a lost leadership would)."""

    def __init__(self) -> None:
        self.revision = 1
        self.commits: list[Batch] = []
        self.fail = False

    async def commit(self, batch: Batch) -> int:
        if self.fail:
            raise Unavailable("this manager is no longer the leader; retry")
        assert len(batch) <= Store.MAX_OPS
        self.revision += 1
        for _, obj in batch.puts:
            obj.meta.version = self.revision  # type: ignore[attr-defined]
        self.commits.append(batch)
        return self.revision


def store_of(c: Cluster) -> FakeStore:
    return cast(FakeStore, c.store)


def cluster(*objs: tuple[str, Any]) -> Cluster:
    """Nodes h1, h2 and networks "open" (attachable), "closed" and "ingress", plus `objs`."""
    state = ClusterState()
    b = Batch()
    for kind, obj in (
        ("nodes", node("h1", 1)),
        ("nodes", node("h2", 2)),
        ("networks", network("open", "10.1.0.0/24")),
        ("networks", network("other", "10.2.0.0/24")),
        ("networks", network("closed", "10.3.0.0/24", attachable=False)),
        ("networks", network("ingress", "10.4.0.0/24", attachable=True, ingress=True)),
        *objs,
    ):
        b.create(kind, obj)
    state.apply(b, 1)
    return Cluster(cast(Store, FakeStore()), state, ManagerConfig(attachment_grace=60))


def attach_req(
    node_id: str = "h1", net: str = "open", cid: str = "c" * 64, **kw: Any
) -> dpb.AttachRequest:
    return dpb.AttachRequest(node_id=node_id, network=net, container_id=cid, ifname="eth0", **kw)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def stored(att_id: str, node_id: str, net_id: str, addr: str, cid: str = "") -> pb.Attachment:
    return pb.Attachment(
        meta=pb.Meta(id=att_id),
        node_id=node_id,
        container_id=cid or att_id,
        ifname="eth0",
        name=att_id,
        network=pb.NetworkAttachment(network_id=net_id, addresses=[addr]),
    )


# ---------------------------------------------------------------- state and allocator


def test_state_indexes_attachments_by_node_and_by_container_interface() -> None:
    state = ClusterState()
    a = stored("a1", "h1", "open", "10.1.0.2/24", cid="x")
    state.apply(
        Batch()
        .create("attachments", a)
        .create("attachments", stored("a2", "h2", "open", "10.1.0.3/24")),
        1,
    )
    assert [x.meta.id for x in state.node_attachments("h1")] == ["a1"]
    assert state.attachment_of("h1", "x", "eth0") == a
    assert state.attachment_of("h2", "x", "eth0") is None
    assert state.attachment_of("h1", "x", "eth1") is None
    state.apply(Batch().delete("attachments", "a1"), 2)
    assert state.node_attachments("h1") == [] and state.attachment_of("h1", "x", "eth0") is None
    assert "h1" not in state.attachments_by_node


def test_restore_marks_attachment_addresses_used() -> None:
    live = Allocator()
    net = network("open", "10.1.0.0/24")
    live.restore([net], [], [])
    (first,) = live.allocate_task(["open"])
    (second,) = live.allocate_task(["open"])
    live.release_attachments([pb.NetworkAttachment(network_id="open", addresses=[first])])
    held = [stored("a", "h1", "open", second)]
    restored = Allocator()
    restored.restore([net], [], [], attachments=held)
    assert restored._in_use() == live._in_use()
    # The restored pool resumes past the attachment's address: no address twice.
    assert restored.allocate_task(["open"]) == live.allocate_task(["open"]) == ["10.1.0.4/24"]


# ---------------------------------------------------------------- attach


def test_attach_allocates_once_and_a_repeat_gets_the_same_attachment() -> None:
    c = cluster()
    resp = run(attachments.attach(c, attach_req(aliases=["db"], netns="/proc/1/ns/net")))
    att = resp.attachment
    assert (att.node_id, att.ifname, att.netns, att.name) == (
        "h1",
        "eth0",
        "/proc/1/ns/net",
        "c" * 12,
    )
    assert list(att.network.addresses) == ["10.1.0.2/24"] and list(att.network.aliases) == ["db"]
    assert resp.network.meta.id == "open"
    assert c.state.attachments[att.meta.id] == att
    again = run(attachments.attach(c, attach_req(name="renamed")))
    assert again.attachment == att and len(store_of(c).commits) == 1
    # The same container ID on another node, or another interface: another attachment.
    other = run(attachments.attach(c, attach_req(node_id="h2"))).attachment
    eth1 = attach_req(name="web")
    eth1.ifname = "eth1"
    second = run(attachments.attach(c, eth1))
    assert other.meta.id != att.meta.id and second.attachment.name == "web"
    assert {x.network.addresses[0] for x in c.state.attachments.values()} == {
        "10.1.0.2/24",
        "10.1.0.3/24",
        "10.1.0.4/24",
    }


BAD_ATTACH: list[tuple[dpb.AttachRequest, type[Exception], str]] = [
    (attach_req(node_id="ghost"), NotFound, "node 'ghost' is not registered"),
    (attach_req(node_id=""), InvalidArgument, "node_id is required"),
    (attach_req(cid=""), InvalidArgument, "container_id is required"),
    (
        dpb.AttachRequest(node_id="h1", network="open", container_id="c"),
        InvalidArgument,
        "ifname is required",
    ),
    (
        dpb.AttachRequest(node_id="h1", network="open", container_id="c", ifname="x" * 16),
        InvalidArgument,
        "invalid ifname",
    ),
    (attach_req(name="bad name"), InvalidArgument, "invalid attachment name 'bad name'"),
    (attach_req(aliases=["a.b"]), InvalidArgument, "invalid alias name 'a.b'"),
    (attach_req(net=""), InvalidArgument, "a network name or ID is required"),
    (attach_req(net="nosuch"), NotFound, "network 'nosuch' not found"),
    (
        attach_req(net="closed"),
        FailedPrecondition,
        "network 'closed' is not attachable: only service tasks can join it; create one with "
        "`ovctl network create --attachable NAME`",
    ),
    (attach_req(net="ingress"), FailedPrecondition, "network 'ingress' is the ingress network"),
]


@pytest.mark.parametrize(
    ("req", "error", "message"), BAD_ATTACH, ids=[m[:30] for _, _, m in BAD_ATTACH]
)
def test_a_refused_attach_names_the_reason_and_leaves_nothing(
    req: dpb.AttachRequest, error: type[Exception], message: str
) -> None:
    c = cluster()
    before = c.allocator._snapshot()
    with pytest.raises(error) as info:
        run(attachments.attach(c, req))
    assert message in str(info.value)
    assert store_of(c).commits == [] and c.allocator._snapshot() == before


def test_the_same_interface_on_another_network_is_refused_naming_both() -> None:
    c = cluster()
    run(attachments.attach(c, attach_req()))
    with pytest.raises(FailedPrecondition, match="already attached to network 'open', not 'other'"):
        run(attachments.attach(c, attach_req(net="other")))
    assert len(c.state.attachments) == 1


def test_a_failed_commit_gives_the_address_back() -> None:
    c = cluster()
    before = c.allocator._in_use()
    store_of(c).fail = True
    with pytest.raises(Unavailable):
        run(attachments.attach(c, attach_req()))
    assert c.allocator._in_use() == before and c.state.attachments == {}


# ---------------------------------------------------------------- detach


def test_detach_by_container_or_id_only_the_callers_own_and_idempotent() -> None:
    c = cluster()
    a1 = run(attachments.attach(c, attach_req())).attachment
    a2 = run(attachments.attach(c, attach_req(cid="d" * 64))).attachment
    held = c.allocator._in_use()
    # Another node cannot release it, by ID or by container: not found, nothing released.
    with pytest.raises(NotFound, match=f"attachment {a1.meta.id} is not one of node h2's"):
        run(attachments.detach(c, dpb.DetachRequest(node_id="h2", attachment_id=a1.meta.id)))
    by_cid = dpb.DetachRequest(node_id="h2", container_id="c" * 64, ifname="eth0")
    assert run(attachments.detach(c, by_cid)).released is False
    assert c.allocator._in_use() == held and len(c.state.attachments) == 2
    with pytest.raises(InvalidArgument, match="node_id is required"):
        run(attachments.detach(c, dpb.DetachRequest(attachment_id=a1.meta.id)))
    with pytest.raises(InvalidArgument, match="say which attachment to release"):
        run(attachments.detach(c, dpb.DetachRequest(node_id="h1", container_id="c" * 64)))
    # Its own node releases it, and a repeat is no error.
    req = dpb.DetachRequest(node_id="h1", container_id="c" * 64, ifname="eth0")
    assert run(attachments.detach(c, req)).released is True
    assert run(attachments.detach(c, req)).released is False
    by_id = dpb.DetachRequest(node_id="h1", attachment_id=a2.meta.id)
    assert run(attachments.detach(c, by_id)).released is True
    assert run(attachments.detach(c, by_id)).released is False
    assert c.state.attachments == {}
    # Both addresses are free again: the pool holds only the gateway.
    fresh = cluster()
    assert c.allocator._in_use() == fresh.allocator._in_use()


# ---------------------------------------------------------------- assignment set, since_ms


def dispatcher(c: Cluster) -> Dispatcher:
    return Dispatcher(c, LogBroker(), lambda _s: None, lambda: [], FakeKeys([KEY1]))  # type: ignore[arg-type]


def keys_of(items: dict[tuple[str, str], Any], kind: str) -> set[str]:
    return {i for k, i in items if k == kind}


def test_every_node_gets_every_attachable_network_and_its_own_attachments() -> None:
    c = cluster()
    d = dispatcher(c)
    att = run(d.attach(attach_req())).attachment
    h1 = d.assignment_set("h1")
    assert keys_of(h1, "attachments") == {att.meta.id}
    assert h1[("attachments", att.meta.id)] == att
    # Attachable networks, not the others and not the ingress network (no ingress address).
    assert keys_of(h1, "networks") == {"open", "other"}
    h2 = d.assignment_set("h2")
    assert keys_of(h2, "attachments") == set() and keys_of(h2, "networks") == {"open", "other"}
    # A session is sent the attachment when it comes, and its removal (an ID-only stub).
    sess = _Session(session_id="s", node_id="h1")
    d._diff(sess, complete=True)
    run(d.attach(attach_req(cid="e" * 64)))
    assert d._dirty.is_set()  # the commit woke the push loop
    msg = d._diff(sess, complete=False)
    assert msg is not None
    assert [(ch.WhichOneof("item"), ch.action) for ch in msg.assignments.changes] == [
        ("attachment", dpb.ASSIGNMENT_ACTION_UPDATE)
    ]
    run(d.detach(dpb.DetachRequest(node_id="h1", attachment_id=att.meta.id)))
    msg = d._diff(sess, complete=False)
    assert msg is not None
    (change,) = msg.assignments.changes
    assert change.action == dpb.ASSIGNMENT_ACTION_REMOVE
    assert change.attachment == pb.Attachment(meta=pb.Meta(id=att.meta.id))


def test_node_state_changes_record_since_when() -> None:
    c = cluster()
    d = dispatcher(c)
    reg = run(
        d.register(dpb.RegisterRequest(node_id="h3", description=pb.NodeDescription(hostname="h3")))
    )
    registered = c.state.nodes[reg.node_id].status
    assert registered.state == pb.NODE_STATE_UNKNOWN and registered.since_ms > 0

    async def open_session() -> None:
        gen = cast(
            AsyncGenerator[dpb.SessionMessage, None], d.session(dpb.SessionRequest(node_id="h3"))
        )
        await gen.__anext__()
        await gen.aclose()

    run(open_session())
    ready = c.state.nodes["h3"].status
    assert ready.state == pb.NODE_STATE_READY and ready.since_ms >= registered.since_ms
    # A new session of a node that is READY already keeps the time it became so.
    again = pb.Node()
    again.CopyFrom(c.state.nodes["h3"])
    again.status.since_ms = 5
    run(c.commit(Batch().update("nodes", again)))
    run(open_session())
    assert c.state.nodes["h3"].status.since_ms == 5


# ---------------------------------------------------------------- the reaper


def down_node(node_id: str, since_ms: int) -> pb.Node:
    n = node(node_id, state=pb.NODE_STATE_DOWN)
    n.status.since_ms = since_ms
    return n


def test_reaper_releases_what_no_node_will() -> None:
    nodes = {
        "up": node("up"),
        "brief": down_node("brief", NOW - 59_000),
        "long": down_node("long", NOW - 61_000),
        "unknown": down_node("unknown", 0),
    }
    networks = {"open": network("open", "10.1.0.0/24")}
    atts = [
        stored("a-up", "up", "open", "10.1.0.2/24"),
        stored("a-brief", "brief", "open", "10.1.0.3/24"),
        stored("a-long", "long", "open", "10.1.0.4/24"),
        stored("a-unknown", "unknown", "open", "10.1.0.5/24"),
        stored("a-gone", "removed", "open", "10.1.0.6/24"),
        stored("a-nonet", "up", "deleted", "10.9.0.2/24"),
    ]
    got = attachments.to_release(reversed(atts), nodes, networks, NOW, 60)
    assert [(a.meta.id, why) for a, why in got] == [
        ("a-gone", "its node is no longer in the cluster"),
        ("a-long", "node long has been down for 61 s (grace 60 s)"),
        ("a-nonet", "its network no longer exists"),
    ]
    assert attachments.to_release(atts[:4], nodes, networks, NOW, 3600) == []


def test_reap_commits_in_bounded_batches_and_releases_the_addresses() -> None:
    gone = [stored(f"a{i:03d}", "removed", "open", f"10.1.0.{i + 2}/24") for i in range(130)]
    keep = stored("kept", "h1", "open", "10.1.0.200/24")
    c = cluster(*(("attachments", a) for a in [*gone, keep]))
    assert run(attachments.reap(c)) == 130
    assert [len(b.deletes) for b in store_of(c).commits] == [Store.MAX_OPS, 130 - Store.MAX_OPS]
    assert list(c.state.attachments) == ["kept"]
    restored = Allocator()
    restored.restore(c.state.networks.values(), [], [], attachments=c.state.attachments.values())
    assert c.allocator._in_use() == restored._in_use()


# ---------------------------------------------------------------- control API


def control(c: Cluster) -> ControlAPI:
    return ControlAPI(c, LogBroker(), lambda _s: None)


def test_network_removal_is_refused_while_containers_are_attached() -> None:
    c = cluster(
        ("attachments", stored("a1", "h1", "open", "10.1.0.2/24")),
        ("attachments", stored("a2", "h2", "open", "10.1.0.3/24")),
    )
    with pytest.raises(FailedPrecondition) as info:
        run(control(c).remove_network(cpb.RemoveNetworkRequest(network_ref="open")))
    assert str(info.value) == (
        "network 'open' has 2 container attachment(s) on node(s) h1, h2: remove the "
        "containers (podman rm / CNI DEL) first"
    )
    assert store_of(c).commits == []
    run(control(c).remove_network(cpb.RemoveNetworkRequest(network_ref="other")))


def test_node_removal_takes_its_attachments_in_the_same_transaction() -> None:
    c = cluster(
        ("attachments", stored("a1", "h1", "open", "10.1.0.2/24")),
        ("attachments", stored("a2", "h1", "other", "10.2.0.2/24")),
        ("attachments", stored("b1", "h2", "open", "10.1.0.3/24")),
    )
    down = pb.Node()
    down.CopyFrom(c.state.nodes["h1"])
    down.status.state = pb.NODE_STATE_DOWN
    c.state.apply(Batch().update("nodes", down), 2)
    run(control(c).remove_node(cpb.RemoveNodeRequest(node_ref="h1")))
    (batch,) = store_of(c).commits
    assert sorted(batch.deletes) == [("attachments", "a1"), ("attachments", "a2"), ("nodes", "h1")]
    assert list(c.state.attachments) == ["b1"]
    restored = Allocator()
    restored.restore(c.state.networks.values(), [], [], attachments=c.state.attachments.values())
    assert c.allocator._in_use() == restored._in_use()


# ---------------------------------------------------------------- endpoints


def task(
    task_id: str,
    service_id: str,
    slot: int,
    node_id: str,
    state: int,
    addrs: Sequence[tuple[str, str]],
) -> pb.Task:
    return pb.Task(
        meta=pb.Meta(id=task_id),
        service_id=service_id,
        service_name=service_id,
        slot=slot,
        node_id=node_id,
        status=pb.TaskStatus(state=state),  # type: ignore[arg-type]
        networks=[pb.NetworkAttachment(network_id=n, addresses=[a]) for n, a in addrs],
    )


def test_network_endpoints_list_tasks_standalone_tasks_attachments_and_nodes() -> None:
    solo = pb.Service(
        meta=pb.Meta(id="solo"),
        spec=pb.ServiceSpec(name="solo", standalone=pb.Standalone(node_id="h2")),
    )
    h1 = node("h1", 1)
    h1.attachments.append(pb.NetworkAttachment(network_id="open", addresses=["10.1.0.9/24"]))
    c = cluster(
        ("services", pb.Service(meta=pb.Meta(id="web"), spec=pb.ServiceSpec(name="web"))),
        ("services", solo),
        (
            "tasks",
            task(
                "t1",
                "web",
                1,
                "h2",
                pb.TASK_STATE_RUNNING,
                [("open", "10.1.0.2/24"), ("other", "10.2.0.2/24")],
            ),
        ),
        ("tasks", task("t2", "web", 2, "", pb.TASK_STATE_PENDING, [("open", "10.1.0.3/24")])),
        ("tasks", task("t0", "web", 1, "h2", pb.TASK_STATE_FAILED, [("open", "10.1.0.4/24")])),
        ("tasks", task("t3", "solo", 1, "h2", pb.TASK_STATE_STARTING, [("open", "10.1.0.5/24")])),
        ("attachments", stored("a1", "h1", "open", "10.1.0.6/24")),
    )
    c.state.apply(Batch().update("nodes", h1, check_version=False), 2)
    got = network_endpoints(c.state.networks["open"], c.state)
    assert [(e.node, e.kind, e.name, e.address, e.state) for e in got] == [
        ("", "task", "web.2.t2", "10.1.0.3/24", "pending"),
        ("h1", "attachment", "a1", "10.1.0.6/24", ""),
        ("h1", "node", "h1", "10.1.0.9/24", ""),
        ("h2", "standalone", "solo", "10.1.0.5/24", "starting"),
        ("h2", "task", "web.1.t1", "10.1.0.2/24", "running"),
    ]
    assert [(e.id, e.node_id) for e in got][1] == ("a1", "h1")
    assert state_word(pb.TASK_STATE_PREPARING) == "preparing" and state_word(99) == "99"
    resp = run(control(c).get_network(cpb.GetNetworkRequest(network_ref="open")))
    assert list(resp.endpoints) == got


def test_network_inspect_prints_the_endpoints() -> None:
    resp = cpb.GetNetworkResponse(
        network=pb.Network(spec=pb.NetworkSpec(name="open", attachable=True)),
        endpoints=[
            cpb.NetworkEndpoint(
                kind="task", name="web.2.t2", address="10.1.0.3/24", state="pending"
            ),
            cpb.NetworkEndpoint(kind="attachment", name="db", node="h1", address="10.1.0.6/24"),
        ],
    )
    text = render.network_pretty(resp)
    assert text.endswith(
        "Endpoints:\n"
        "  NODE   KIND         NAME       ADDRESS       STATE\n"
        "  -      task         web.2.t2   10.1.0.3/24   pending\n"
        "  h1     attachment   db         10.1.0.6/24   -"
    )
    assert render.network_inspect_dict(resp)["endpoints"][1]["name"] == "db"
    assert "Endpoints:  -" in render.network_pretty(cpb.GetNetworkResponse())
    assert render.network_inspect_dict(cpb.GetNetworkResponse())["endpoints"] == []


def test_attachment_grace_flag() -> None:
    assert parse_args([]).attachment_grace == 3600.0
    assert parse_args(["--attachment-grace", "2.5"]).attachment_grace == 2.5
