"""The leader's in-memory view of the store.

The leader is the only writer, so after loading a snapshot it keeps this view current by applying
its own committed batches; reads never go to etcd. Indexes (names, tasks by service and by node,
attachments by node and by (node, container ID, interface name)) are derived here and nowhere
else.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, cast

from manager.errors import InvalidArgument, NotFound
from manager.store import KINDS, Batch, Snapshot
from proto import objects_pb2 as pb

SINGULAR = {
    "networks": "network",
    "services": "service",
    "tasks": "task",
    "nodes": "node",
    "attachments": "attachment",
}
# What identifies an attachment besides its ID: (node ID, container ID, interface name), the
# key a repeated CNI ADD finds its attachment by.
AttachmentKey = tuple[str, str, str]


class ClusterState:
    def __init__(self) -> None:
        self.revision = 0
        self.objects: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self.names: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        self.tasks_by_service: dict[str, set[str]] = defaultdict(set)
        self.tasks_by_node: dict[str, set[str]] = defaultdict(set)
        self.attachments_by_node: dict[str, set[str]] = defaultdict(set)
        self.attachment_ids: dict[AttachmentKey, str] = {}

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> ClusterState:
        state = cls()
        state.revision = snap.revision
        for kind, objs in snap.objects.items():
            for obj in objs.values():
                state._put(kind, obj)
        # Names are rebuilt from the objects, the source of truth; the name keys only serve as
        # the uniqueness guard inside transactions.
        return state

    # ---------------------------------------------------------------- typed access

    @property
    def networks(self) -> dict[str, pb.Network]:
        return cast(dict[str, pb.Network], self.objects["networks"])

    @property
    def services(self) -> dict[str, pb.Service]:
        return cast(dict[str, pb.Service], self.objects["services"])

    @property
    def tasks(self) -> dict[str, pb.Task]:
        return cast(dict[str, pb.Task], self.objects["tasks"])

    @property
    def nodes(self) -> dict[str, pb.Node]:
        return cast(dict[str, pb.Node], self.objects["nodes"])

    @property
    def attachments(self) -> dict[str, pb.Attachment]:
        return cast(dict[str, pb.Attachment], self.objects["attachments"])

    def service_tasks(self, service_id: str) -> list[pb.Task]:
        return [self.tasks[t] for t in sorted(self.tasks_by_service.get(service_id, ()))]

    def node_tasks(self, node_id: str) -> list[pb.Task]:
        return [self.tasks[t] for t in sorted(self.tasks_by_node.get(node_id, ()))]

    def hostname(self, node_id: str) -> str:
        """A node's hostname, for messages and listings (its ID once it is gone)."""
        node = self.nodes.get(node_id)
        return node.description.hostname if node is not None else node_id

    def node_attachments(self, node_id: str) -> list[pb.Attachment]:
        ids = sorted(self.attachments_by_node.get(node_id, ()))
        return [self.attachments[a] for a in ids]

    def attachment_of(self, node_id: str, container_id: str, ifname: str) -> pb.Attachment | None:
        """The attachment a container's interface on a node holds, if any."""
        att_id = self.attachment_ids.get((node_id, container_id, ifname))
        return self.attachments[att_id] if att_id is not None else None

    # ---------------------------------------------------------------- lookups

    def resolve(self, kind: str, ref: str) -> Any:
        """An object by full ID, exact name, or unique ID prefix (the docker CLI's rules)."""
        what = SINGULAR[kind]
        if not ref:
            raise InvalidArgument(f"a {what} name or ID is required")
        objs = self.objects[kind]
        if ref in objs:
            return objs[ref]
        by_name = self.names[kind].get(ref)
        if by_name is not None:
            return objs[by_name]
        matches = [i for i in objs if i.startswith(ref)]
        if len(matches) == 1:
            return objs[matches[0]]
        if len(matches) > 1:
            raise InvalidArgument(
                f"{what} ID prefix {ref!r} is ambiguous: it matches {len(matches)} {kind}"
            )
        raise NotFound(f"{what} {ref!r} not found")

    # ---------------------------------------------------------------- mutation

    def apply(self, batch: Batch, revision: int) -> None:
        """Mirror a batch that etcd has committed."""
        for kind, obj_id in batch.deletes:
            self._delete(kind, obj_id)
        for kind, obj in batch.puts:
            self._put(kind, obj)
        self.revision = revision

    def _put(self, kind: str, obj: Any) -> None:
        old = self.objects[kind].get(obj.meta.id)
        if old is not None:
            self._unindex(kind, old)
        self.objects[kind][obj.meta.id] = obj
        name = _name_of(kind, obj)
        if name:
            self.names[kind][name] = obj.meta.id
        if kind == "tasks":
            self.tasks_by_service[obj.service_id].add(obj.meta.id)
            if obj.node_id:
                self.tasks_by_node[obj.node_id].add(obj.meta.id)
        elif kind == "attachments":
            self.attachments_by_node[obj.node_id].add(obj.meta.id)
            self.attachment_ids[_attachment_key(obj)] = obj.meta.id

    def _delete(self, kind: str, obj_id: str) -> None:
        old = self.objects[kind].pop(obj_id, None)
        if old is not None:
            self._unindex(kind, old)

    def _unindex(self, kind: str, obj: Any) -> None:
        name = _name_of(kind, obj)
        if name and self.names[kind].get(name) == obj.meta.id:
            del self.names[kind][name]
        if kind == "tasks":
            _discard(self.tasks_by_service, obj.service_id, obj.meta.id)
            if obj.node_id:
                _discard(self.tasks_by_node, obj.node_id, obj.meta.id)
        elif kind == "attachments":
            _discard(self.attachments_by_node, obj.node_id, obj.meta.id)
            key = _attachment_key(obj)
            if self.attachment_ids.get(key) == obj.meta.id:
                del self.attachment_ids[key]


def _discard(index: dict[str, set[str]], key: str, value: str) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(value)
        if not members:
            del index[key]


def _attachment_key(att: pb.Attachment) -> AttachmentKey:
    return (att.node_id, att.container_id, att.ifname)


def task_name(task: pb.Task) -> str:
    """SERVICE.SLOT.ID (SERVICE.NODE.ID for a global service's task), as swarmkit names a
    task's container: what logs and `network inspect` call it."""
    return f"{task.service_name}.{task.slot or task.node_id}.{task.meta.id}"


def _name_of(kind: str, obj: Any) -> str:
    """The unique name of an object, if its kind has one (nodes are named by hostname, which
    need not be unique: a name index entry is kept only while it is)."""
    if kind in ("networks", "services"):
        return str(obj.spec.name)
    if kind == "nodes":
        return str(obj.description.hostname)
    return ""
