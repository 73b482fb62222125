from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from manager.errors import InvalidArgument
from manager.scheduler import (
    Constraint,
    node_is_eligible,
    parse_constraints,
    schedule,
    service_needs,
)
from proto import objects_pb2 as pb


def node(node_id: str, *, state: int = pb.NODE_STATE_READY,
         availability: int = pb.NODE_AVAILABILITY_ACTIVE, role: int = pb.NODE_ROLE_WORKER,
         hostname: str = "", labels: dict[str, str] | None = None) -> pb.Node:
    return pb.Node(
        meta=pb.Meta(id=node_id),
        spec=pb.NodeSpec(role=role, availability=availability, labels=labels or {}),  # type: ignore[arg-type]
        description=pb.NodeDescription(hostname=hostname or f"host-{node_id}"),
        status=pb.NodeStatus(state=state),  # type: ignore[arg-type]
    )


def service(service_id: str, *constraints: str, max_per_node: int = 0) -> pb.Service:
    return pb.Service(
        meta=pb.Meta(id=service_id),
        spec=pb.ServiceSpec(
            name=service_id, replicated=pb.ReplicatedService(replicas=1),
            placement=pb.Placement(constraints=constraints, max_replicas_per_node=max_per_node)),
    )


def task(task_id: str, service_id: str, node_id: str = "") -> pb.Task:
    state = pb.TASK_STATE_RUNNING if node_id else pb.TASK_STATE_PENDING
    return pb.Task(meta=pb.Meta(id=task_id), service_id=service_id, node_id=node_id,
                   desired_state=pb.TASK_STATE_RUNNING,
                   status=pb.TaskStatus(state=state))  # type: ignore[arg-type]


def pending(service_id: str, count: int, prefix: str = "") -> list[pb.Task]:
    return [task(f"{prefix or service_id}-t{i:04d}", service_id) for i in range(count)]


# ------------------------------------------------------------------ constraints: parsing


@pytest.mark.parametrize(("expr", "expected"), [
    ("node.hostname==h1", Constraint("node.hostname", "==", "h1")),
    ("  node.hostname  ==  h1 ", Constraint("node.hostname", "==", "h1")),
    ("node.id!=abc", Constraint("node.id", "!=", "abc")),
    ("Node.Role==MANAGER", Constraint("node.role", "==", "manager")),
    ("node.role != worker", Constraint("node.role", "!=", "worker")),
    ("node.labels.Zone==eu-west", Constraint("node.labels.Zone", "==", "eu-west")),
    ("NODE.LABELS.rack==r 1", Constraint("node.labels.rack", "==", "r 1")),
])
def test_parse_accepts(expr: str, expected: Constraint) -> None:
    assert parse_constraints([expr]) == [expected]


def test_parse_empty_list_is_no_constraints() -> None:
    assert parse_constraints([]) == []


_FORM = ("expected KEY==VALUE or KEY!=VALUE with KEY one of node.id, node.hostname, node.role, "
         "node.labels.<label>")


@pytest.mark.parametrize(("expr", "message"), [
    ("node.zone=a", f"invalid constraint 'node.zone=a': {_FORM}"),
    ("node.hostname", f"invalid constraint 'node.hostname': {_FORM}"),
    ("", f"invalid constraint '': {_FORM}"),
    ("==a", f"invalid constraint '==a': {_FORM}"),
    ("node.hostname=~a", f"invalid constraint 'node.hostname=~a': {_FORM}"),
    ("node.hostname <> a", f"invalid constraint 'node.hostname <> a': {_FORM}"),
    ("node.hostname==", f"invalid constraint 'node.hostname==': the value is empty; {_FORM}"),
    ("node.id !=   ", f"invalid constraint 'node.id !=   ': the value is empty; {_FORM}"),
    ("node.zone==a", f"invalid constraint 'node.zone==a': unknown key 'node.zone'; {_FORM}"),
    ("engine.labels.x==a",
     f"invalid constraint 'engine.labels.x==a': unknown key 'engine.labels.x'; {_FORM}"),
    ("node.labels.==a", f"invalid constraint 'node.labels.==a': the label name is empty; {_FORM}"),
    ("node.hostname==a==b",
     f"invalid constraint 'node.hostname==a==b': the value 'a==b' contains '=' or '!'; {_FORM}"),
    ("node.hostname!==a",
     f"invalid constraint 'node.hostname!==a': the value '=a' contains '=' or '!'; {_FORM}"),
    ("node.role==boss",
     "invalid constraint 'node.role==boss': node.role is 'manager' or 'worker', not 'boss'"),
])
def test_parse_rejects_with_actionable_message(expr: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_constraints(["node.role==manager", expr])
    assert err.value.message == message


# ------------------------------------------------------------------ constraints: matching


def test_hostname_and_id_match_case_insensitively() -> None:
    n = node("NodeA", hostname="Web-1")
    assert Constraint("node.hostname", "==", "web-1").matches(n)
    assert not Constraint("node.hostname", "!=", "WEB-1").matches(n)
    assert Constraint("node.hostname", "!=", "web-2").matches(n)
    assert Constraint("node.id", "==", "nodea").matches(n)
    assert not Constraint("node.id", "==", "nodeb").matches(n)


def test_role_matches() -> None:
    manager = node("m", role=pb.NODE_ROLE_MANAGER)
    worker = node("w")
    [is_manager] = parse_constraints(["node.role==Manager"])
    [not_manager] = parse_constraints(["node.role!=manager"])
    assert is_manager.matches(manager) and not is_manager.matches(worker)
    assert not_manager.matches(worker) and not not_manager.matches(manager)


def test_label_matches_and_missing_label() -> None:
    labelled = node("a", labels={"zone": "eu", "ssd": "true"})
    bare = node("b")
    [eq] = parse_constraints(["node.labels.zone==EU"])
    [ne] = parse_constraints(["node.labels.zone!=eu"])
    assert eq.matches(labelled) and not eq.matches(bare)
    assert not ne.matches(labelled)
    # A node without the label is "not equal" to any value, as in Docker.
    assert ne.matches(bare)
    # Label names are case-sensitive map keys.
    assert not parse_constraints(["node.labels.Zone==eu"])[0].matches(labelled)


def test_node_is_eligible_needs_ready_active_and_constraints() -> None:
    cs = parse_constraints(["node.labels.zone==a"])
    assert node_is_eligible(node("n", labels={"zone": "a"}), cs)
    assert not node_is_eligible(node("n", labels={"zone": "b"}), cs)
    assert not node_is_eligible(node("n", labels={"zone": "a"}, state=pb.NODE_STATE_DOWN), cs)
    assert not node_is_eligible(
        node("n", labels={"zone": "a"}, state=pb.NODE_STATE_DISCONNECTED), cs)
    for availability in (pb.NODE_AVAILABILITY_PAUSE, pb.NODE_AVAILABILITY_DRAIN):
        assert not node_is_eligible(node("n", labels={"zone": "a"}, availability=availability), cs)
    assert node_is_eligible(node("n"), [])


# ------------------------------------------------------------------ spread


def test_spread_evenly_over_nodes() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    result = schedule(pending("web", 7), nodes, [], {"web": service("web")})
    assert result.unschedulable == {}
    counts = Counter(result.assignments.values())
    assert sorted(counts.values()) == [2, 2, 3]
    # Ties go by node id: the node that gets the 7th task is the first in id order.
    assert counts["n1"] == 3


def test_spread_counts_tasks_already_placed() -> None:
    nodes = [node("n1"), node("n2")]
    running = [task("r1", "web", "n1"), task("r2", "web", "n1")]
    result = schedule(pending("web", 2), nodes, running, {"web": service("web")})
    assert list(result.assignments.values()) == ["n2", "n2"]


def test_same_service_count_first_then_total_tasks() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    # n1 is busy with another service; n2 already has one "web" task.
    running = [task("o1", "other", "n1"), task("o2", "other", "n1"), task("w1", "web", "n2")]
    services = {"web": service("web"), "other": service("other")}
    result = schedule(pending("web", 2), nodes, running, services)
    # First: n1 and n3 both have 0 web tasks; n3 has fewer tasks overall.
    # Second: n1 (0 web) beats n2 and n3 (1 web each).
    assert list(result.assignments.values()) == ["n3", "n1"]


def test_placements_of_other_services_in_the_same_call_count() -> None:
    nodes = [node("n1"), node("n2")]
    services = {"a": service("a"), "b": service("b")}
    result = schedule(pending("a", 1) + pending("b", 1), nodes, [], services)
    assert result.assignments == {"a-t0000": "n1", "b-t0000": "n2"}


def test_interleaved_services_see_each_others_placements() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    services = {"a": service("a"), "b": service("b")}
    tasks = [task("a1", "a"), task("b1", "b"), task("a2", "a")]
    result = schedule(tasks, nodes, [], services)
    # a2 could go to n2 or n3 as far as "a" is concerned; b1 made n2 busier.
    assert result.assignments == {"a1": "n1", "b1": "n2", "a2": "n3"}


def test_result_does_not_depend_on_node_order() -> None:
    nodes = [node(f"n{i}") for i in range(10)]
    running = [task(f"r{i}", "web", f"n{i % 3}") for i in range(5)]
    services = {"web": service("web")}
    expected = schedule(pending("web", 23), nodes, running, services)
    shuffled = nodes[:]
    random.Random(7).shuffle(shuffled)
    assert schedule(pending("web", 23), shuffled, running, services) == expected


# ------------------------------------------------------------------ constraints, limits, messages


def test_constraints_restrict_placement() -> None:
    nodes = [node("n1", labels={"zone": "a"}), node("n2", labels={"zone": "b"}),
             node("n3", hostname="edge", labels={"zone": "a"}),
             node("n4", role=pb.NODE_ROLE_MANAGER, labels={"zone": "a"})]
    svc = service("web", "node.labels.zone==a", "node.hostname!=edge", "node.role==worker")
    result = schedule(pending("web", 3), nodes, [], {"web": svc})
    assert set(result.assignments.values()) == {"n1"}


def test_nodes_lacking_what_a_service_needs_are_used_only_when_no_other_can_be() -> None:
    no_esp = {"ipsec": "this host's kernel cannot encrypt (no ESP support)"}
    nodes = [node("n1"), node("n2"), node("n3")]
    nodes[1].description.unavailable.update(no_esp)
    services = {"sec": service("sec"), "plain": service("plain")}
    needs = {"sec": frozenset({"ipsec"}), "plain": frozenset[str]()}
    result = schedule(pending("sec", 4) + pending("plain", 3), nodes, [], services, needs)
    placed = Counter((t.split("-")[0], n) for t, n in result.assignments.items())
    assert placed == {("sec", "n1"): 2, ("sec", "n3"): 2,
                      ("plain", "n1"): 1, ("plain", "n2"): 1, ("plain", "n3"): 1}
    # No node can encrypt: the tasks go anyway, and their agents fail them saying why.
    for n in nodes:
        n.description.unavailable.update(no_esp)
    result = schedule(pending("sec", 3), nodes, [], services, needs)
    assert sorted(result.assignments.values()) == ["n1", "n2", "n3"]


def test_a_service_on_an_encrypted_network_needs_ipsec() -> None:
    nets = {
        "n-sec": pb.Network(meta=pb.Meta(id="n-sec"), spec=pb.NetworkSpec(encrypted=True)),
        "n-plain": pb.Network(meta=pb.Meta(id="n-plain"), spec=pb.NetworkSpec()),
    }
    svc = service("web")
    svc.spec.networks.add(target="n-plain")
    assert service_needs(svc, nets) == frozenset()
    svc.spec.networks.add(target="n-sec")
    assert service_needs(svc, nets) == {"ipsec"}


def test_max_replicas_per_node() -> None:
    nodes = [node("n1"), node("n2")]
    running = [task("r1", "web", "n1")]
    result = schedule(pending("web", 4), nodes, running, {"web": service("web", max_per_node=2)})
    assert Counter(result.assignments.values()) == {"n1": 1, "n2": 2}
    assert result.unschedulable == {
        "web-t0003": "no suitable node (2 nodes already run the maximum of 2 tasks of this "
                     "service per node)"}


def test_unschedulable_message_counts_each_reason() -> None:
    nodes = [node("n1", state=pb.NODE_STATE_DOWN),
             node("n2", labels={"zone": "b"}),
             node("n3", labels={"zone": "c"}),
             node("n4", availability=pb.NODE_AVAILABILITY_DRAIN, labels={"zone": "a"})]
    result = schedule(pending("web", 2), nodes, [],
                      {"web": service("web", "node.labels.zone==a")})
    assert result.assignments == {}
    message = "no suitable node (2 nodes not available; 2 nodes not satisfying constraints)"
    assert result.unschedulable == {"web-t0000": message, "web-t0001": message}


def test_unschedulable_singular_and_limit_reason() -> None:
    nodes = [node("n1", availability=pb.NODE_AVAILABILITY_PAUSE), node("n2"),
             node("n3", hostname="x")]
    running = [task("r1", "web", "n2")]
    svc = service("web", "node.hostname!=x", max_per_node=1)
    result = schedule(pending("web", 1), nodes, running, {"web": svc})
    assert result.unschedulable == {"web-t0000": (
        "no suitable node (1 node not available; 1 node not satisfying constraints; "
        "1 node already runs the maximum of 1 tasks of this service per node)")}


def test_no_nodes_at_all() -> None:
    result = schedule(pending("web", 1), [], [], {"web": service("web")})
    assert result.unschedulable == {"web-t0000": "no suitable node (the cluster has no nodes)"}


def test_bad_constraints_only_affect_their_service() -> None:
    nodes = [node("n1")]
    services = {"bad": service("bad", "node.zone=a"), "good": service("good")}
    result = schedule(pending("bad", 2) + pending("good", 1), nodes, [], services)
    assert result.assignments == {"good-t0000": "n1"}
    assert result.unschedulable == {t: f"invalid constraint 'node.zone=a': {_FORM}"
                                    for t in ("bad-t0000", "bad-t0001")}


def test_task_of_unknown_service_is_unschedulable() -> None:
    result = schedule(pending("gone", 1), [node("n1")], [], {})
    assert result.unschedulable == {"gone-t0000": "service gone no longer exists"}


# ------------------------------------------------------------------ speed


def test_thousand_tasks_on_hundred_nodes_is_fast() -> None:
    nodes = [node(f"n{i:03d}", labels={"zone": "a" if i % 2 else "b"}) for i in range(100)]
    services = {f"s{i}": service(f"s{i}", *(["node.labels.zone==a"] if i % 2 else []))
                for i in range(10)}
    running = [task(f"r{i}", f"s{i % 10}", f"n{i % 100:03d}") for i in range(500)]
    tasks = [t for i in range(10) for t in pending(f"s{i}", 100)]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        result = schedule(tasks, nodes, running, services)
        best = min(best, time.perf_counter() - start)
    assert len(result.assignments) == 1000
    assert best < 0.1, f"scheduling took {best * 1000:.1f} ms"
    # Spread held up: a node got new tasks of a service only while it had no more than one task
    # of that service above the least loaded eligible node.
    for i in range(10):
        svc = f"s{i}"
        eligible = [n.meta.id for n in nodes if not i % 2 or n.spec.labels["zone"] == "a"]
        final = Counter({n: 0 for n in eligible})
        final.update(r.node_id for r in running if r.service_id == svc)
        chosen = {result.assignments[t.meta.id] for t in pending(svc, 100)}
        final.update(result.assignments[t.meta.id] for t in pending(svc, 100))
        assert chosen <= set(eligible)
        assert max(final[n] for n in chosen) <= min(final.values()) + 1
