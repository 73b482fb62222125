"""Task placement: which node runs each pending task.

A pure core: the leading manager hands it the pending tasks, the nodes, the tasks already placed
and the services, and commits the assignments it returns. Nothing here reads a clock or a store,
so a placement can be replayed and tested exactly.

Placement spreads each service over its eligible nodes (fewest tasks of that service first, then
fewest tasks overall, then node id, so equal inputs always give equal answers), as Docker Swarm's
spread strategy does. A task that fits nowhere stays pending with a message saying why, in the
shape Docker users know: "no suitable node (1 node not available; 2 nodes not satisfying
constraints)".

A node whose agent said it cannot provide something a service needs (NodeDescription's
`unavailable`, e.g. "ipsec" for a service on an encrypted network) is passed over while any
other node can take the task. Only when none can does the task go to such a node anyway: its
agent then fails it with the precise reason ("this host's kernel cannot encrypt ...: network
NET needs IPsec", shown by `service ps`), which says more than a pending task would.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from manager.errors import InvalidArgument
from proto import objects_pb2 as pb

_ACCEPTED_FORM = (
    "expected KEY==VALUE or KEY!=VALUE with KEY one of node.id, node.hostname, "
    "node.role, node.labels.<label>"
)
_LABEL_PREFIX = "node.labels."
_PLAIN_KEYS = frozenset({"node.id", "node.hostname", "node.role"})
_ROLES = {"manager": pb.NODE_ROLE_MANAGER, "worker": pb.NODE_ROLE_WORKER}
# The key cannot hold an operator character, so "a=b==c" is rejected rather than read as the key
# "a=b"; the value is checked separately so that its error can name the value.
_EXPRESSION = re.compile(r"^\s*([^=!\s]+)\s*(==|!=)\s*(.*?)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Constraint:
    """One placement constraint, already validated.

    Values compare case-insensitively (hostnames and labels typed by people differ in case more
    often than on purpose, and Docker compares them the same way). A node without the label never
    equals a value, so `node.labels.zone!=a` also admits nodes with no `zone` label at all.
    """

    key: str
    op: str
    value: str

    def matches(self, node: pb.Node) -> bool:
        actual = self._actual(node)
        equal = actual is not None and actual.casefold() == self.value.casefold()
        return equal if self.op == "==" else not equal

    def _actual(self, node: pb.Node) -> str | None:
        if self.key == "node.id":
            return node.meta.id
        if self.key == "node.hostname":
            return node.description.hostname
        if self.key == "node.role":
            return "manager" if node.spec.role == pb.NODE_ROLE_MANAGER else "worker"
        return node.spec.labels.get(self.key[len(_LABEL_PREFIX) :])


def _parse_one(expr: str) -> Constraint:
    def bad(reason: str) -> InvalidArgument:
        return InvalidArgument(f"invalid constraint '{expr}': {reason}")

    m = _EXPRESSION.match(expr)
    if m is None:
        raise bad(_ACCEPTED_FORM)
    raw_key, op, value = m.groups()
    key = raw_key.lower()
    if key.startswith(_LABEL_PREFIX):
        label = raw_key[len(_LABEL_PREFIX) :]
        if not label:
            raise bad(f"the label name is empty; {_ACCEPTED_FORM}")
        # Label names are matched as written: node labels are case-sensitive map keys.
        key = _LABEL_PREFIX + label
    elif key not in _PLAIN_KEYS:
        raise bad(f"unknown key '{raw_key}'; {_ACCEPTED_FORM}")
    if not value:
        raise bad(f"the value is empty; {_ACCEPTED_FORM}")
    if "=" in value or "!" in value:
        raise bad(f"the value '{value}' contains '=' or '!'; {_ACCEPTED_FORM}")
    if key == "node.role":
        if value.lower() not in _ROLES:
            raise bad(f"node.role is 'manager' or 'worker', not '{value}'")
        value = value.lower()
    return Constraint(key, op, value)


def parse_constraints(exprs: Sequence[str]) -> list[Constraint]:
    """Validate placement expressions; the first bad one is reported by name with the accepted
    form, so the user can fix it without reading documentation."""
    return [_parse_one(e) for e in exprs]


def node_is_eligible(node: pb.Node, constraints: Sequence[Constraint]) -> bool:
    """Whether a new task of a service with these constraints may go to this node now."""
    return (
        node.status.state == pb.NODE_STATE_READY
        and node.spec.availability == pb.NODE_AVAILABILITY_ACTIVE
        and all(c.matches(node) for c in constraints)
    )


@dataclass
class SchedulingResult:
    assignments: dict[str, str] = field(default_factory=dict)
    unschedulable: dict[str, str] = field(default_factory=dict)


def _nodes(n: int) -> str:
    return "1 node" if n == 1 else f"{n} nodes"


@dataclass
class _Pool:
    """The eligible nodes of one service, as a heap keyed by (tasks of the service, tasks
    overall, node id).

    Overall counts also grow when other services place tasks, so an entry's key may be stale;
    counts only ever grow within a call, so a stale key is too small, never too large, and is
    fixed when it reaches the top (lazy re-keying). That keeps each placement O(log nodes)
    instead of a scan over every node.
    """

    heap: list[tuple[int, int, str]]
    limit: int
    not_available: int
    not_matching: int
    full: int

    def take(self, overall: Counter[str], mine: Counter[str]) -> str | None:
        heap = self.heap
        while heap:
            _, total, node_id = heap[0]
            if total != overall[node_id]:
                heapq.heapreplace(heap, (mine[node_id], overall[node_id], node_id))
                continue
            mine[node_id] += 1
            overall[node_id] += 1
            if self.limit and mine[node_id] >= self.limit:
                heapq.heappop(heap)
                self.full += 1
            else:
                heapq.heapreplace(heap, (mine[node_id], overall[node_id], node_id))
            return node_id
        return None

    def reason(self) -> str:
        parts = []
        if self.not_available:
            parts.append(f"{_nodes(self.not_available)} not available")
        if self.not_matching:
            parts.append(f"{_nodes(self.not_matching)} not satisfying constraints")
        if self.full:
            verb = "runs" if self.full == 1 else "run"
            parts.append(
                f"{_nodes(self.full)} already {verb} the maximum of {self.limit} "
                "tasks of this service per node"
            )
        return f"no suitable node ({'; '.join(parts) or 'the cluster has no nodes'})"


def _pool(
    service: pb.Service,
    nodes: Sequence[pb.Node],
    overall: Counter[str],
    mine: Counter[str],
    needs: frozenset[str],
) -> _Pool | str:
    placement = service.spec.placement
    try:
        constraints = parse_constraints(list(placement.constraints))
    except InvalidArgument as e:
        return e.message
    limit = placement.max_replicas_per_node
    pool = _Pool([], limit, 0, 0, 0)
    lacking: list[tuple[int, int, str]] = []
    for node in nodes:
        node_id = node.meta.id
        if (
            node.status.state != pb.NODE_STATE_READY
            or node.spec.availability != pb.NODE_AVAILABILITY_ACTIVE
        ):
            pool.not_available += 1
        elif not all(c.matches(node) for c in constraints):
            pool.not_matching += 1
        elif limit and mine[node_id] >= limit:
            pool.full += 1
        elif needs.intersection(node.description.unavailable):
            lacking.append((mine[node_id], overall[node_id], node_id))
        else:
            pool.heap.append((mine[node_id], overall[node_id], node_id))
    if not pool.heap:
        pool.heap = lacking
    heapq.heapify(pool.heap)
    return pool


def schedule(
    pending: Sequence[pb.Task],
    nodes: Sequence[pb.Node],
    running: Sequence[pb.Task],
    services: Mapping[str, pb.Service],
    needs: Mapping[str, frozenset[str]] | None = None,
) -> SchedulingResult:
    """Place `pending` tasks (in the order given) on `nodes`.

    `needs`: per service id, what its tasks need of a node, by the names nodes use in
    `unavailable` (`service_needs`); nodes lacking it are used only when no other can be.

    `running` are the tasks already placed and not finished: they count towards spreading and
    max_replicas_per_node. Each service's constraints are parsed once per call; a service whose
    constraints do not parse leaves its tasks unschedulable with the parse error, rather than
    failing the whole pass for every other service.
    """
    overall: Counter[str] = Counter()
    per_service: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for task in running:
        if task.node_id:
            overall[task.node_id] += 1
            per_service[task.service_id][task.node_id] += 1
    result = SchedulingResult()
    pools: dict[str, _Pool | str] = {}
    for task in pending:
        service_id = task.service_id
        pool = pools.get(service_id)
        if pool is None:
            service = services.get(service_id)
            if service is None:
                pool = f"service {service_id} no longer exists"
            else:
                wants = (needs or {}).get(service_id, frozenset())
                pool = _pool(service, nodes, overall, per_service[service_id], wants)
            pools[service_id] = pool
        if isinstance(pool, str):
            result.unschedulable[task.meta.id] = pool
            continue
        node_id = pool.take(overall, per_service[service_id])
        if node_id is None:
            result.unschedulable[task.meta.id] = pool.reason()
        else:
            result.assignments[task.meta.id] = node_id
    return result


def service_needs(service: pb.Service, networks: Mapping[str, pb.Network]) -> frozenset[str]:
    """What the service's tasks need of a node, named as NodeDescription.unavailable names it:
    "ipsec" when one of its networks is encrypted, "containers" when it runs an image."""
    encrypted = any(
        (net := networks.get(att.target)) is not None and net.spec.encrypted
        for att in service.spec.networks
    )
    needs = {"ipsec"} if encrypted else set()
    if service.spec.image:
        needs.add("containers")
    return frozenset(needs)
