"""`ovctl doctor`: ask every agent for its drift and gather the answers.

Drift (a kernel object that differs from what the agent should have programmed) is only visible
on the host, so the leader asks each agent through its session stream (a SessionMessage with a
DoctorCheck) and the agent answers with Dispatcher.ReportDoctor. The request waits for every
asked agent or the timeout; nodes that were not asked (no session, down) or did not answer in
time are listed as such, never left out: a host that cannot be checked is not a healthy host.
Everything is kept in memory: a check lives as long as the Control call that asked for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from manager.cluster import new_id
from manager.dispatcher import Dispatcher
from manager.errors import NotFound
from manager.state import ClusterState
from proto import control_pb2 as cpb
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

DEFAULT_TIMEOUT_MS = 10_000


@dataclass
class _Check:
    """One doctor request in flight: the report of each asked node, once it comes."""

    asked: dict[str, asyncio.Future[dpb.ReportDoctorRequest]] = field(default_factory=dict)


def merge(
    nodes: Iterable[pb.Node],
    reports: Mapping[str, dpb.ReportDoctorRequest],
    unasked: Mapping[str, str],
    network_names: Mapping[str, str] | None = None,
) -> cpb.DoctorResponse:
    """The response: every report's rows under its node's hostname, and one DoctorHost per
    node (`unasked`: node ID -> why it was not asked; a node neither asked nor reported was
    asked and did not answer in time). A row naming its network by ID (the agent names only
    the networks it has been assigned) gets the network's name from `network_names`."""
    names = network_names or {}
    resp = cpb.DoctorResponse()
    rows: list[pb.DriftRow] = []
    for node in sorted(nodes, key=lambda n: (n.description.hostname, n.meta.id)):
        host = node.description.hostname or node.meta.id
        report = reports.get(node.meta.id)
        if report is None:
            why = unasked.get(node.meta.id, "no answer in time")
            resp.hosts.add(node_id=node.meta.id, hostname=host, answered=False, error=why)
            continue
        resp.hosts.add(node_id=node.meta.id, hostname=host, answered=True, error=report.error)
        for r in report.rows:
            row = pb.DriftRow()
            row.CopyFrom(r)
            row.host = host
            row.network = names.get(row.network, row.network)
            rows.append(row)
    rows.sort(key=lambda r: (r.host, r.network, r.kind, r.object))
    resp.rows.extend(rows)
    return resp


def not_asked(node: pb.Node, has_session: bool) -> str | None:
    """Why a node is not asked (None: it is)."""
    if node.status.state == pb.NODE_STATE_DOWN:
        return "node is down"
    if not has_session:
        return "no session with the leader"
    return None


class Doctor:
    """The Control call Doctor and the Dispatcher call ReportDoctor (the leader's only)."""

    def __init__(self, state: ClusterState, dispatcher: Dispatcher) -> None:
        self.state = state
        self.dispatcher = dispatcher
        self._checks: dict[str, _Check] = {}

    async def doctor(self, req: cpb.DoctorRequest) -> cpb.DoctorResponse:
        network_ids = [self._network_id(ref) for ref in req.network_refs]
        timeout = (req.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000
        if req.repair:
            timeout *= 2  # a repair is a check, a whole pass, and a check again
        nodes = list(self.state.nodes.values())
        request_id = new_id()
        check = _Check()
        unasked: dict[str, str] = {}
        loop = asyncio.get_running_loop()
        for node in nodes:
            sess = self.dispatcher.sessions.get(node.meta.id)
            why = not_asked(node, sess is not None)
            if why is not None or sess is None:
                unasked[node.meta.id] = why or "no session with the leader"
                continue
            check.asked[node.meta.id] = loop.create_future()
            order = dpb.DoctorCheck(
                request_id=request_id, network_ids=network_ids, repair=req.repair
            )
            sess.queue.put_nowait(
                dpb.SessionMessage(session_id=sess.session_id, node_id=node.meta.id, doctor=order)
            )
        self._checks[request_id] = check
        try:
            if check.asked:
                await asyncio.wait(check.asked.values(), timeout=timeout)
        finally:
            del self._checks[request_id]
        reports = {n: f.result() for n, f in check.asked.items() if f.done()}
        names = {nid: net.spec.name for nid, net in self.state.networks.items()}
        return merge(nodes, reports, unasked, names)

    async def report_doctor(self, req: dpb.ReportDoctorRequest) -> dpb.ReportDoctorResponse:
        """An agent's answer; one for a check that is over (timed out) is dropped."""
        sess = self.dispatcher.sessions.get(req.node_id)
        if sess is None or sess.session_id != req.session_id:
            raise NotFound("session expired or unknown: open a new session")
        check = self._checks.get(req.request_id)
        fut = check.asked.get(req.node_id) if check is not None else None
        if fut is not None and not fut.done():
            fut.set_result(req)
        return dpb.ReportDoctorResponse()

    def _network_id(self, ref: str) -> str:
        """NOT_FOUND naming the ref (ClusterState.resolve's words)."""
        net: pb.Network = self.state.resolve("networks", ref)
        return net.meta.id
