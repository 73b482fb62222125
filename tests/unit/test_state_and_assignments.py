"""Pure parts of the manager's state view and the agent's assignment set."""

from __future__ import annotations

import pytest

from agent.session import Assignments, SequenceGap
from manager.errors import InvalidArgument, NotFound
from manager.state import ClusterState
from manager.store import Batch
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb


def network(obj_id: str, name: str) -> pb.Network:
    return pb.Network(meta=pb.Meta(id=obj_id), spec=pb.NetworkSpec(name=name))


def test_resolve_by_id_name_and_unique_prefix() -> None:
    state = ClusterState()
    state.apply(
        Batch()
        .create("networks", network("abc123", "front"))
        .create("networks", network("abd456", "abc")),
        7,
    )
    assert state.revision == 7
    assert state.resolve("networks", "abc123").spec.name == "front"
    # An exact name wins over being an ID prefix of another object.
    assert state.resolve("networks", "abc").meta.id == "abd456"
    assert state.resolve("networks", "abd").meta.id == "abd456"
    with pytest.raises(InvalidArgument, match="ambiguous"):
        state.resolve("networks", "ab")
    with pytest.raises(NotFound, match="network 'zzz' not found"):
        state.resolve("networks", "zzz")
    with pytest.raises(InvalidArgument, match="required"):
        state.resolve("networks", "")


def test_task_indexes_follow_moves_and_deletes() -> None:
    state = ClusterState()
    t = pb.Task(meta=pb.Meta(id="t1"), service_id="s1", node_id="n1")
    state.apply(Batch().create("tasks", t), 1)
    moved = pb.Task()
    moved.CopyFrom(t)
    moved.node_id = "n2"
    state.apply(Batch().update("tasks", moved), 2)
    assert [x.meta.id for x in state.node_tasks("n2")] == ["t1"]
    assert state.node_tasks("n1") == []
    state.apply(Batch().delete("tasks", "t1"), 3)
    assert state.service_tasks("s1") == [] and "s1" not in state.tasks_by_service


def test_renamed_object_frees_its_old_name() -> None:
    state = ClusterState()
    state.apply(
        Batch().create(
            "nodes", pb.Node(meta=pb.Meta(id="n1"), description=pb.NodeDescription(hostname="a"))
        ),
        1,
    )
    renamed = pb.Node(meta=pb.Meta(id="n1"), description=pb.NodeDescription(hostname="b"))
    state.apply(Batch().update("nodes", renamed), 2)
    assert state.names["nodes"] == {"b": "n1"}


def _msg(
    kind: dpb.AssignmentsType, applies_to: int, *changes: dpb.Assignment
) -> dpb.AssignmentsMessage:
    return dpb.AssignmentsMessage(
        type=kind, changes=list(changes), applies_to=applies_to, results_in=applies_to + 1
    )


def _task(
    task_id: str, action: dpb.AssignmentAction = dpb.ASSIGNMENT_ACTION_UPDATE
) -> dpb.Assignment:
    return dpb.Assignment(action=action, task=pb.Task(meta=pb.Meta(id=task_id)))


def test_assignments_complete_then_incremental() -> None:
    a = Assignments()
    a.apply(_msg(dpb.ASSIGNMENTS_TYPE_COMPLETE, 0, _task("t1"), _task("t2")))
    a.apply(
        _msg(
            dpb.ASSIGNMENTS_TYPE_INCREMENTAL,
            1,
            _task("t1", dpb.ASSIGNMENT_ACTION_REMOVE),
            _task("t3"),
        )
    )
    assert set(a.tasks) == {"t2", "t3"} and a.seq == 2
    # A complete set replaces everything, whatever came before.
    a.apply(_msg(dpb.ASSIGNMENTS_TYPE_COMPLETE, 0, _task("t9")))
    assert set(a.tasks) == {"t9"}


def test_assignments_detect_a_gap() -> None:
    a = Assignments()
    a.apply(_msg(dpb.ASSIGNMENTS_TYPE_COMPLETE, 0, _task("t1")))
    with pytest.raises(SequenceGap):
        a.apply(_msg(dpb.ASSIGNMENTS_TYPE_INCREMENTAL, 5, _task("t2")))
    assert set(a.tasks) == {"t1"}
