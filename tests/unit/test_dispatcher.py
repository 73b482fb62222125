"""The dispatcher's gossip item: seed choice, the digest that versions it, incremental resends,
and the gossip reports heartbeats carry (kept in the leader's memory, served by GetNode)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from manager.cluster import ManagerConfig
from manager.controlapi import ControlAPI, ipsec_links
from manager.dispatcher import (
    GOSSIP_KEY,
    IPSEC_KEY,
    SEED_COUNT,
    Dispatcher,
    SeedRing,
    _Session,
    gossip_addr,
    gossip_config,
)
from manager.keymanager import KEY_BYTES, keyring_problem, new_keyring, parse_keyring
from manager.logbroker import LogBroker
from manager.state import ClusterState
from manager.store import Batch
from proto import control_pb2 as cpb
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

RUNNING, ASSIGNED = pb.TASK_STATE_RUNNING, pb.TASK_STATE_ASSIGNED
KEY1 = bytes(range(32))
KEY2 = bytes(range(1, 33))


def node(
    nid: str,
    i: int = 1,
    state: int = pb.NODE_STATE_READY,
    port: int = 7946,
    addr: str | None = None,
) -> pb.Node:
    return pb.Node(
        meta=pb.Meta(id=nid),
        description=pb.NodeDescription(
            hostname=nid, addr=f"198.51.100.{i}" if addr is None else addr, gossip_port=port
        ),
        status=pb.NodeStatus(state=state),  # type: ignore[arg-type]
    )


def seed_ids(ring: SeedRing, nid: str) -> list[str]:
    return [p.node_id for p in ring.seeds(nid)]


# ---------------------------------------------------------------- seed choice


def test_seeds_leave_out_self_down_nodes_and_nodes_that_do_not_gossip() -> None:
    nodes = [
        node("me", 1),
        node("a", 2),
        node("b", 3, state=pb.NODE_STATE_UNKNOWN),
        node("down", 4, state=pb.NODE_STATE_DOWN),
        node("noport", 5, port=0),
        node("noaddr", 6, addr=""),
    ]
    ring = SeedRing.build(nodes)
    seeds = ring.seeds("me")
    assert sorted(p.node_id for p in seeds) == ["a", "b"]
    assert {p.node_id: p.addr for p in seeds} == {
        "a": "198.51.100.2:7946",
        "b": "198.51.100.3:7946",
    }
    # A node that is not in the ring (not gossiping yet) still gets seeds.
    assert sorted(seed_ids(ring, "noport")) == ["a", "b", "me"]
    assert SeedRing.build([node("me")]).seeds("me") == []
    assert SeedRing.build([]).seeds("me") == []


def test_seeds_are_deterministic_bounded_and_spread() -> None:
    nodes = [node(f"n{i:02d}", i) for i in range(1, 41)]
    ring = SeedRing.build(nodes)
    # Input order does not matter: the same cluster state gives the same seeds.
    assert SeedRing.build(reversed(nodes)) == ring
    counts: dict[str, int] = {n.meta.id: 0 for n in nodes}
    for n in nodes:
        seeds = seed_ids(ring, n.meta.id)
        assert len(seeds) == SEED_COUNT == len(set(seeds))
        assert n.meta.id not in seeds
        for s in seeds:
            counts[s] += 1
    # Ring successors: every node is a seed of exactly SEED_COUNT others, nobody is a hot spot.
    assert set(counts.values()) == {SEED_COUNT}


def test_seed_graph_is_connected() -> None:
    nodes = [node(f"x{i}", i) for i in range(1, 31)]
    ring = SeedRing.build(nodes)
    start = nodes[0].meta.id
    seen, todo = {start}, [start]
    while todo:
        for s in seed_ids(ring, todo.pop()):
            if s not in seen:
                seen.add(s)
                todo.append(s)
    assert seen == {n.meta.id for n in nodes}


def test_seeds_barely_change_when_a_node_comes_or_goes() -> None:
    nodes = [node(f"s{i}", i) for i in range(1, 31)]
    before = SeedRing.build(nodes)
    after_join = SeedRing.build([*nodes, node("newcomer", 40)])
    changed = [
        n.meta.id for n in nodes if seed_ids(before, n.meta.id) != seed_ids(after_join, n.meta.id)
    ]
    # Only the SEED_COUNT nodes just before the newcomer on the ring see it, one seed each.
    assert len(changed) == SEED_COUNT
    for nid in changed:
        assert len(set(seed_ids(before, nid)) - set(seed_ids(after_join, nid))) == 1
    down = [
        node(n.meta.id, i, state=pb.NODE_STATE_DOWN) if i == 7 else n
        for i, n in enumerate(nodes, 1)
    ]
    after_down = SeedRing.build(down)
    changed = [
        n.meta.id for n in nodes if seed_ids(before, n.meta.id) != seed_ids(after_down, n.meta.id)
    ]
    assert "s7" not in {s for n in nodes for s in seed_ids(after_down, n.meta.id)}
    assert len(changed) == SEED_COUNT


def test_gossip_addr_brackets_ipv6() -> None:
    assert gossip_addr(node("a", addr="198.51.100.9", port=1)) == "198.51.100.9:1"
    assert gossip_addr(node("a", addr="2001:db8::1", port=7946)) == "[2001:db8::1]:7946"


def test_gossip_config_version_is_a_digest_of_its_content() -> None:
    seeds = [dpb.GossipPeer(node_id="a", addr="198.51.100.2:7946")]
    cfg = gossip_config([KEY1], seeds)
    assert cfg.meta.id == "gossip" and list(cfg.keys) == [KEY1] and cfg.meta.version > 0
    assert gossip_config([KEY1], list(seeds)).meta.version == cfg.meta.version
    assert gossip_config([KEY2], seeds).meta.version != cfg.meta.version
    assert gossip_config([KEY1, KEY2], seeds).meta.version != cfg.meta.version
    assert gossip_config([KEY1], []).meta.version != cfg.meta.version


# ---------------------------------------------------------------- sessions


class FakeKeys:
    """The KeyManager's interface to the dispatcher, without etcd."""

    def __init__(self, keys: list[bytes]) -> None:
        self.ring = keys
        self.listeners: list[Callable[[], None]] = []

    def keys(self, subsystem: str = "gossip") -> list[bytes]:
        assert subsystem == "gossip"
        return list(self.ring)

    def keyring(self, subsystem: str) -> pb.Keyring:
        assert subsystem == "ipsec"
        return pb.Keyring(
            keys=[
                pb.EncryptionKey(key=k, lamport_time=len(self.ring) - i)
                for i, k in enumerate(self.ring)
            ]
        )

    def subscribe(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)

    def rotate(self, keys: list[bytes]) -> None:
        self.ring = keys
        for listener in self.listeners:
            listener()


def make_dispatcher(*nodes: pb.Node) -> tuple[Dispatcher, ClusterState, FakeKeys]:
    state = ClusterState()
    b = Batch()
    for n in nodes:
        b.create("nodes", n)
    state.apply(b, 1)
    listeners: list[Any] = []
    cluster: Any = SimpleNamespace(state=state, config=ManagerConfig(), subscribe=listeners.append)
    keys = FakeKeys([KEY1])
    d = Dispatcher(cluster, LogBroker(), lambda _s: None, lambda: ["m:1"], keys)  # type: ignore[arg-type]
    return d, state, keys


def gossip_changes(msg: dpb.SessionMessage | None) -> list[dpb.Assignment]:
    assert msg is not None
    return [c for c in msg.assignments.changes if c.WhichOneof("item") == "gossip"]


def test_session_gets_one_gossip_item_then_only_changes() -> None:
    d, state, _ = make_dispatcher(node("me", 1), node("a", 2), node("b", 3))
    sess = _Session(session_id="s", node_id="me")
    first = d._diff(sess, complete=True)
    (item,) = gossip_changes(first)
    assert item.action == dpb.ASSIGNMENT_ACTION_UPDATE
    assert list(item.gossip.keys) == [KEY1]
    assert sorted(p.node_id for p in item.gossip.seeds) == ["a", "b"]
    assert GOSSIP_KEY in sess.sent
    # Nothing changed: nothing is sent.
    assert d._diff(sess, complete=False) is None
    # Another node changes in a way seeds do not depend on: nothing is resent.
    busy = pb.Node()
    busy.CopyFrom(state.nodes["a"])
    busy.status.last_heartbeat_ms = 12345
    state.apply(Batch().update("nodes", busy), 2)
    assert d._diff(sess, complete=False) is None
    # A new gossiping node: only the gossip item, with the new seed.
    state.apply(Batch().create("nodes", node("c", 4)), 3)
    msg = d._diff(sess, complete=False)
    (item,) = gossip_changes(msg)
    assert msg is not None and len(msg.assignments.changes) == 1
    assert msg.assignments.type == dpb.ASSIGNMENTS_TYPE_INCREMENTAL
    assert sorted(p.node_id for p in item.gossip.seeds) == ["a", "b", "c"]
    # A seed goes down: it is dropped.
    gone = node("b", 3, state=pb.NODE_STATE_DOWN)
    gone.meta.version = 3
    state.apply(Batch().update("nodes", gone), 4)
    (item,) = gossip_changes(d._diff(sess, complete=False))
    assert sorted(p.node_id for p in item.gossip.seeds) == ["a", "c"]


def test_a_new_keyring_is_pushed_to_every_session() -> None:
    d, _, keys = make_dispatcher(node("me", 1), node("a", 2))
    sessions = [_Session(session_id="s1", node_id="me"), _Session(session_id="s2", node_id="a")]
    for s in sessions:
        d._diff(s, complete=True)
    d._dirty.clear()
    keys.rotate([KEY2, KEY1])
    assert d._dirty.is_set()  # the dispatcher's loop wakes up for it
    for s in sessions:
        (item,) = gossip_changes(d._diff(s, complete=False))
        assert list(item.gossip.keys) == [KEY2, KEY1]


def test_the_ipsec_keyring_goes_to_every_session_with_its_tags() -> None:
    d, _, keys = make_dispatcher(node("me", 1), node("a", 2))
    sess = _Session(session_id="s", node_id="me")
    first = d._diff(sess, complete=True)
    assert first is not None
    (item,) = [c.ipsec for c in first.assignments.changes if c.WhichOneof("item") == "ipsec"]
    assert item.meta.id == "ipsec" and [(k.key, k.lamport_time) for k in item.keys] == [(KEY1, 1)]
    assert d._diff(sess, complete=False) is None
    keys.rotate([KEY2, KEY1])
    msg = d._diff(sess, complete=False)
    assert msg is not None
    (item,) = [c.ipsec for c in msg.assignments.changes if c.WhichOneof("item") == "ipsec"]
    assert [(k.key, k.lamport_time) for k in item.keys] == [(KEY2, 2), (KEY1, 1)]


def test_heartbeat_gossip_report_is_kept_and_served_by_get_node() -> None:
    d, state, _ = make_dispatcher(node("me", 1), node("a", 2))
    d.sessions["me"] = _Session(session_id="s", node_id="me")
    report = pb.GossipStatus(
        updated_ms=1000,
        members=[pb.GossipMember(node_id="a", addr="198.51.100.2:7946", state="alive")],
        dropped={"auth": 2},
    )
    asyncio.run(d.heartbeat(dpb.HeartbeatRequest(node_id="me", session_id="s", gossip=report)))
    # A heartbeat without a report is no news: the last report stays.
    asyncio.run(d.heartbeat(dpb.HeartbeatRequest(node_id="me", session_id="s")))
    assert d.gossip_status("me") == report
    api = ControlAPI(d.cluster, d.logs, lambda _s: None, gossip_status=d.gossip_status)
    resp = asyncio.run(api.get_node(cpb.GetNodeRequest(node_ref="me")))
    assert resp.node.meta.id == "me" and resp.gossip == report
    resp = asyncio.run(api.get_node(cpb.GetNodeRequest(node_ref="a")))
    assert not resp.HasField("gossip")
    # A removed node's report goes with it.
    batch = Batch().delete("nodes", "me")
    state.apply(batch, 5)
    d._on_commit(batch)
    assert d.gossip_status("me") is None


# ---------------------------------------------------------------- liveness


def _monitored(period_ms: int) -> tuple[Dispatcher, list[Batch]]:
    """A dispatcher whose commits are recorded and applied, at a short heartbeat period."""
    d, _, _ = make_dispatcher(node("me", 1))
    commits: list[Batch] = []

    async def commit(batch: Batch) -> None:
        commits.append(batch)
        d.state.apply(batch, len(commits) + 1)

    cluster: Any = d.cluster  # the SimpleNamespace make_dispatcher built
    cluster.config = ManagerConfig(heartbeat_period_ms=period_ms)
    cluster.lock = asyncio.Lock()
    cluster.commit = commit
    d.period_ms = period_ms
    d.sessions["me"] = _Session(session_id="s", node_id="me")
    return d, commits


def _downed(commits: list[Batch]) -> list[str]:
    return [
        n.meta.id
        for b in commits
        for _kind, n in b.puts
        if isinstance(n, pb.Node) and n.status.state == pb.NODE_STATE_DOWN
    ]


def test_a_silent_node_is_marked_down_after_the_grace() -> None:
    d, commits = _monitored(100)  # grace: 3 x 100 ms

    async def scenario() -> None:
        monitor = asyncio.create_task(d._monitor())
        await asyncio.sleep(0.6)
        monitor.cancel()

    asyncio.run(scenario())
    assert _downed(commits) == ["me"]
    assert "me" not in d.sessions


def test_the_managers_own_stall_is_not_held_against_a_node() -> None:
    """The node beats every 50 ms; the manager's loop then stands still for 1 s (ten times the
    grace), so its monitor wakes up before it has read the heartbeats that came meanwhile."""
    d, commits = _monitored(100)
    beat = dpb.HeartbeatRequest(node_id="me", session_id="s")

    async def scenario() -> None:
        monitor = asyncio.create_task(d._monitor())
        for _ in range(4):
            await d.heartbeat(beat)
            await asyncio.sleep(0.05)
        time.sleep(1.0)  # the loop is blocked
        await asyncio.sleep(0)  # the monitor runs before the heartbeat that waited
        for _ in range(8):
            await d.heartbeat(beat)
            await asyncio.sleep(0.05)
        monitor.cancel()

    asyncio.run(scenario())
    assert _downed(commits) == []
    assert "me" in d.sessions


# ---------------------------------------------------------------- keyrings


def test_new_keyring_holds_one_key_from_the_entropy_source() -> None:
    ring = new_keyring(lambda n: b"\x07" * n, created_at_ms=5)
    assert [k.key for k in ring.keys] == [b"\x07" * KEY_BYTES]
    assert ring.keys[0].lamport_time == 1 and ring.keys[0].created_at_ms == 5
    with pytest.raises(ValueError, match="entropy"):
        new_keyring(lambda n: b"short")


def test_stored_keyring_problems_are_named() -> None:
    good = new_keyring()
    assert parse_keyring(good.SerializeToString()) == (good, "")
    assert "does not parse" in parse_keyring(b"\xff\xff\xff")[1]
    assert keyring_problem(pb.Keyring()) == "it holds no key"
    bad = pb.Keyring(keys=[pb.EncryptionKey(key=b"x" * 32), pb.EncryptionKey(key=b"x" * 7)])
    assert keyring_problem(bad) == "key 1 is 7 bytes (AES needs 16, 24 or 32)"


# ---------------------------------------------------------------- routing mesh, node item


def ingress(nid: str = "ing") -> pb.Network:
    return pb.Network(
        meta=pb.Meta(id=nid),
        spec=pb.NetworkSpec(name="ingress", ingress=True),
        subnet="10.0.0.0/24",
    )


def mesh_service(sid: str, mode: int = pb.PUBLISH_MODE_INGRESS) -> pb.Service:
    port = pb.PortConfig(target_port=80, published_port=8080, publish_mode=mode)  # type: ignore[arg-type]
    return pb.Service(
        meta=pb.Meta(id=sid), spec=pb.ServiceSpec(name=sid, endpoint=pb.EndpointSpec(ports=[port]))
    )


def with_ingress_address(n: pb.Node, addr: str, net_id: str = "ing") -> pb.Node:
    n.attachments.append(pb.NetworkAttachment(network_id=net_id, addresses=[addr]))
    return n


def kinds(msg: dpb.SessionMessage | None) -> dict[tuple[str, int], str]:
    """(item kind, action) -> object ID of each change."""
    assert msg is not None
    out: dict[tuple[str, int], str] = {}
    for c in msg.assignments.changes:
        kind = c.WhichOneof("item")
        assert kind is not None
        out[(kind, int(c.action))] = getattr(c, kind).meta.id
    return out


def test_assignment_set_has_the_node_the_ingress_network_and_every_publishing_service() -> None:
    me = with_ingress_address(node("me", 1), "10.0.0.2/24")
    d, state, _ = make_dispatcher(me, node("bare", 2))
    b = Batch().create("networks", ingress()).create("services", mesh_service("web"))
    b.create("services", mesh_service("hostonly", pb.PUBLISH_MODE_HOST))
    b.create("services", pb.Service(meta=pb.Meta(id="quiet"), spec=pb.ServiceSpec(name="quiet")))
    state.apply(b, 2)
    items = d.assignment_set("me")
    assert set(items) == {
        GOSSIP_KEY,
        IPSEC_KEY,
        ("nodes", "me"),
        ("networks", "ing"),
        ("services", "web"),
    }
    assert list(items[("nodes", "me")].attachments[0].addresses) == ["10.0.0.2/24"]  # type: ignore[attr-defined]
    # A node without an ingress address gets only itself (and gossip): no mesh to build.
    assert set(d.assignment_set("bare")) == {GOSSIP_KEY, IPSEC_KEY, ("nodes", "bare")}
    # An unknown node (registration racing removal) gets no node item.
    assert set(d.assignment_set("ghost")) == {GOSSIP_KEY, IPSEC_KEY}


def test_node_item_is_resent_on_change_and_mesh_items_removed_with_the_address() -> None:
    me = with_ingress_address(node("me", 1), "10.0.0.2/24")
    d, state, _ = make_dispatcher(me)
    state.apply(Batch().create("networks", ingress()).create("services", mesh_service("web")), 2)
    sess = _Session(session_id="s", node_id="me")
    first = kinds(d._diff(sess, complete=True))
    assert first[("node", dpb.ASSIGNMENT_ACTION_UPDATE)] == "me"
    assert first[("network", dpb.ASSIGNMENT_ACTION_UPDATE)] == "ing"
    assert first[("service", dpb.ASSIGNMENT_ACTION_UPDATE)] == "web"
    assert d._diff(sess, complete=False) is None
    # A second publishing service reaches this node although no task of it runs here.
    state.apply(Batch().create("services", mesh_service("api")), 3)
    assert kinds(d._diff(sess, complete=False)) == {
        ("service", dpb.ASSIGNMENT_ACTION_UPDATE): "api"
    }
    # The node loses its ingress address (the network was removed): the node is resent, the
    # network and the services it only had for the mesh are removed (ID-only stubs).
    bare = pb.Node()
    bare.CopyFrom(state.nodes["me"])
    del bare.attachments[:]
    bare.meta.version = 4  # as the store stamps it
    b = Batch().update("nodes", bare).delete("networks", "ing")
    state.apply(b, 4)
    msg = d._diff(sess, complete=False)
    assert msg is not None
    changes = {(c.WhichOneof("item"), c.action) for c in msg.assignments.changes}
    assert changes == {
        ("node", dpb.ASSIGNMENT_ACTION_UPDATE),
        ("network", dpb.ASSIGNMENT_ACTION_REMOVE),
        ("service", dpb.ASSIGNMENT_ACTION_REMOVE),
    }
    removed = [c.service for c in msg.assignments.changes if c.WhichOneof("item") == "service"]
    assert sorted(s.meta.id for s in removed) == ["api", "web"]
    assert all(s.spec.name == "" for s in removed)


class FakeCluster:
    """Commits go straight into the state (the store's role is not under test here)."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.config = ManagerConfig()
        self.lock = asyncio.Lock()
        self.listeners: list[Any] = []
        self.commits: list[Batch] = []

    def subscribe(self, listener: Any) -> None:
        self.listeners.append(listener)

    async def commit(self, batch: Batch) -> int:
        rev = self.state.revision + 1
        for _, obj in batch.puts:
            obj.meta.version = rev  # type: ignore[attr-defined]
        self.state.apply(batch, rev)
        self.commits.append(batch)
        return rev


def test_same_state_reports_carry_health_and_ready_time() -> None:
    state = ClusterState()
    t = pb.Task(
        meta=pb.Meta(id="t1"),
        service_id="svc",
        node_id="me",
        status=pb.TaskStatus(state=pb.TASK_STATE_RUNNING, timestamp_ms=500),
    )
    state.apply(Batch().create("nodes", node("me")).create("tasks", t), 1)
    cluster = FakeCluster(state)
    kicked: list[str | None] = []
    d = Dispatcher(cluster, LogBroker(), kicked.append, lambda: [], FakeKeys([KEY1]))  # type: ignore[arg-type]
    d.sessions["me"] = _Session(session_id="s", node_id="me")

    def report(**status: Any) -> None:
        upd = dpb.TaskStatusUpdate(task_id="t1", status=pb.TaskStatus(**status))
        req = dpb.UpdateTaskStatusRequest(node_id="me", session_id="s", updates=[upd])
        asyncio.run(d.update_task_status(req))

    report(state=pb.TASK_STATE_RUNNING, health=pb.TASK_HEALTH_STARTING, timestamp_ms=600)
    assert state.tasks["t1"].status.health == pb.TASK_HEALTH_STARTING
    report(
        state=pb.TASK_STATE_RUNNING, health=pb.TASK_HEALTH_HEALTHY, ready_ms=700, timestamp_ms=700
    )
    stored = state.tasks["t1"].status
    assert (stored.health, stored.ready_ms, stored.timestamp_ms) == (
        pb.TASK_HEALTH_HEALTHY,
        700,
        700,
    )
    assert kicked == ["svc", "svc"]  # each verdict lets the update go on (or holds it)
    # A resend without a timestamp that says nothing new is not written again.
    n = len(cluster.commits)
    report(state=pb.TASK_STATE_RUNNING, health=pb.TASK_HEALTH_HEALTHY, ready_ms=700)
    assert len(cluster.commits) == n
    # ... but a new verdict without a timestamp is, stamped by the manager.
    report(state=pb.TASK_STATE_RUNNING, health=pb.TASK_HEALTH_UNHEALTHY)
    stored = state.tasks["t1"].status
    assert stored.health == pb.TASK_HEALTH_UNHEALTHY and stored.timestamp_ms > 700
    assert stored.ready_ms == 0
    # States still never move backwards, whatever else the report says.
    report(state=pb.TASK_STATE_FAILED, err="unhealthy: 3 checks failed", timestamp_ms=900)
    report(state=pb.TASK_STATE_RUNNING, health=pb.TASK_HEALTH_HEALTHY, timestamp_ms=950)
    stored = state.tasks["t1"].status
    assert stored.state == pb.TASK_STATE_FAILED and stored.err.startswith("unhealthy")


def test_network_inspect_shows_each_hosts_view_of_esp_from_the_others() -> None:
    d, state, _ = make_dispatcher(node("a", 1), node("b", 2), node("c", 3))
    sec = pb.Network(meta=pb.Meta(id="sec"), spec=pb.NetworkSpec(name="sec", encrypted=True))
    plain = pb.Network(meta=pb.Meta(id="plain"), spec=pb.NetworkSpec(name="plain"))
    b = Batch().create("networks", sec).create("networks", plain)
    for tid, nid, st in (("t1", "a", RUNNING), ("t2", "b", RUNNING), ("t3", "c", ASSIGNED)):
        b.create(
            "tasks",
            pb.Task(
                meta=pb.Meta(id=tid),
                node_id=nid,
                status=pb.TaskStatus(state=st),
                networks=[pb.NetworkAttachment(network_id="sec")],
            ),
        )
    state.apply(b, 2)
    d.sessions["a"] = _Session(session_id="s", node_id="a")
    d.sessions["b"] = _Session(session_id="s", node_id="b")
    now = 100_000
    reports = {
        "a": pb.IpsecStatus(peers=[pb.IpsecPeer(addr="198.51.100.2")]),
        "b": pb.IpsecStatus(
            peers=[pb.IpsecPeer(addr="198.51.100.1", silent_since_ms=now - 12_400)],
            cleartext_dropped_in=3,
        ),
    }
    for nid, rep in reports.items():
        asyncio.run(d.heartbeat(dpb.HeartbeatRequest(node_id=nid, session_id="s", ipsec=rep)))
    links = ipsec_links(sec, state, d.ipsec_status, now)
    assert [(x.node, x.peer, x.state) for x in links] == [
        ("a", "b", "ok"),
        ("b", "a", "no ESP from a for 12 s"),
    ]
    assert ipsec_links(plain, state, d.ipsec_status, now) == []
    # c (its task not running) is left out; a host with no word yet says so.
    del d.ipsec["a"]
    assert ipsec_links(sec, state, d.ipsec_status, now)[0].state == "no report"
    api = ControlAPI(d.cluster, d.logs, lambda _s: None, ipsec_status=d.ipsec_status)
    resp = asyncio.run(api.get_node(cpb.GetNodeRequest(node_ref="b")))
    assert resp.ipsec.cleartext_dropped_in == 3
