"""The agent's side of the Dispatcher: register, hold a session, heartbeat, report.

`Assignments` is the pure part: it folds the session's COMPLETE and INCREMENTAL messages into
the set of tasks, networks and services this node must run, detecting sequence gaps. The
`AgentSession` is the I/O around it: it keeps trying the managers it knows (moving to the leader
a follower names, with backoff) over mutual TLS with the node's certificate, and hands every new
assignment set to a callback.

The node ID is the certificate's CN (given when the node joined). The session renews the
certificate at a random 50-80 % of its life over its own channel, saves the new one and
reconnects with it. Managers refuse a bad certificate in the TLS handshake, which the client
sees only as UNAVAILABLE; the session then says what is wrong locally
(`security.credentials.diagnose`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from osutil.backoff import Backoff
from osutil.failover import Rotation
from osutil.files import atomic_write
from proto import dispatcher_pb2 as dpb
from proto import dispatcher_pb2_grpc
from proto import objects_pb2 as pb
from security import certinfo
from security.credentials import MANAGER_CHANNEL_OPTIONS, NodeCredentials, diagnose
from security.join import NO_ANSWER, renew, renew_anywhere

log = logging.getLogger(__name__)

_LEADER_HINT = re.compile(r"the leader is at (\S+)")
_REMOVED = re.compile(r"\bremoved\b")
# How soon to try the leader a follower named (it is probably up: the follower just saw it).
LEADER_REDIRECT_S = 0.05
# A heartbeat carries each report (gossip view, IPsec) at least this often (see `_Report`).
REPORT_S = 10.0
# The least time between two nudged heartbeats: a rolling update changes what a host has
# programmed many times a second, and each beat costs the agent and the manager ~1 ms.
NUDGE_MIN_S = 0.05
# Heartbeat periods at the start of a session with two beats each (see `_heartbeat`).
WARMUP_PERIODS = 10


# Renews a node's credentials, asking the managers given in order (see AgentSession).
M = TypeVar("M", bound=Message)
T = TypeVar("T")
Renewer = Callable[[NodeCredentials, list[str]], Awaitable[NodeCredentials]]


class SequenceGap(Exception):
    """An incremental message does not follow the last one: the session must restart."""


@dataclass
class Assignments:
    tasks: dict[str, pb.Task] = field(default_factory=dict)
    networks: dict[str, pb.Network] = field(default_factory=dict)
    services: dict[str, pb.Service] = field(default_factory=dict)
    # One item, ID "gossip": the gossip keyring and seed peers.
    gossip: dict[str, dpb.GossipConfig] = field(default_factory=dict)
    # One item: this node itself (its ingress address is in its attachments).
    node: dict[str, pb.Node] = field(default_factory=dict)
    # One item, ID "ipsec": the keyring of encrypted networks' data path.
    ipsec: dict[str, dpb.IpsecConfig] = field(default_factory=dict)
    # This node's endpoints on attachable networks (containers joined through the CNI plugin).
    attachments: dict[str, pb.Attachment] = field(default_factory=dict)
    seq: int = 0

    def snapshot(self) -> dpb.AssignmentsMessage:
        """The whole set as one COMPLETE message: what the agent keeps on disk so that, restarted
        while no manager answers, it still knows what it runs (as swarmkit's worker keeps its
        task database)."""
        msg = dpb.AssignmentsMessage(type=dpb.ASSIGNMENTS_TYPE_COMPLETE, results_in=self.seq)
        for kind, table in self._tables().items():
            for obj in table.values():
                msg.changes.add(**{kind: obj})
        return msg

    def _tables(self) -> dict[str, dict[str, Any]]:
        return {
            "task": self.tasks,
            "network": self.networks,
            "service": self.services,
            "gossip": self.gossip,
            "node": self.node,
            "ipsec": self.ipsec,
            "attachment": self.attachments,
        }

    def apply(self, msg: dpb.AssignmentsMessage) -> None:
        tables = self._tables()
        if msg.type == dpb.ASSIGNMENTS_TYPE_COMPLETE:
            for t in tables.values():
                t.clear()
        elif msg.applies_to != self.seq:
            raise SequenceGap(f"got changes for sequence {msg.applies_to}, have {self.seq}")
        for change in msg.changes:
            kind = change.WhichOneof("item")
            if kind is None:
                continue
            obj = getattr(change, kind)
            table = tables[kind]
            if change.action == dpb.ASSIGNMENT_ACTION_REMOVE:
                table.pop(obj.meta.id, None)
            else:
                table[obj.meta.id] = obj
        self.seq = msg.results_in


OnAssignments = Callable[[Assignments], Awaitable[None]]


class AgentSession:
    def __init__(
        self,
        managers: Sequence[str],
        description: pb.NodeDescription,
        spec: pb.NodeSpec | None = None,
        *,
        credentials: NodeCredentials,
        creds_dir: Path | None = None,
        state_dir: Path | None = None,
        on_assignments: OnAssignments | None = None,
        backoff_max: float = 5.0,
        renew_rng: random.Random | None = None,
        renewer: Renewer | None = None,
    ) -> None:
        """`creds_dir`: where renewed credentials are saved (None: kept in memory only).
        `state_dir`: where the node ID is written for the rest of the agent and operators.
        `renewer`: renews the certificate given the managers to ask, in order (None: in this
        process, over the session's channel when it is up)."""
        self.rotation = Rotation(managers)
        self.description = description
        self.spec = spec or pb.NodeSpec()
        self.credentials = credentials
        self.creds_dir = creds_dir
        self.state_dir = state_dir
        self.on_assignments = on_assignments
        self.backoff_max = backoff_max
        self.renew_rng = renew_rng
        self.renewer = renewer
        self.node_id = credentials.node_id
        self._save_node_id()
        self.session_id = ""
        self.assignments = Assignments()
        self.connected = asyncio.Event()
        # Session attempts in a row that no manager answered at all.
        self.failed_attempts = 0
        # Certificates renewed since start (for tests and logs).
        self.renewals = 0
        # What the heartbeat carries about this host's gossip view (for `ovctl node inspect`).
        self.gossip_status: Callable[[], pb.GossipStatus | None] | None = None
        self.ipsec_status: Callable[[], pb.IpsecStatus | None] | None = None
        self.listening_ports: Callable[[], pb.ListeningPorts | None] | None = None
        # What this host has programmed (the daemon's view after each pass); `nudge` sends a
        # changed one at once rather than a period later: `ovctl service create` waits on it.
        self.programmed: Callable[[], pb.ProgrammedView | None] | None = None
        # Answers `ovctl doctor` (agent/doctor.py: the daemon sets it): (drift rows, error).
        self.on_doctor: (
            Callable[[dpb.DoctorCheck], Awaitable[tuple[list[pb.DriftRow], str]]] | None
        ) = None
        self._doctoring: set[asyncio.Task[None]] = set()
        self._nudged = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._stub: dispatcher_pb2_grpc.DispatcherStub | None = None
        self._call: Any = None
        self._last_diagnosis = ""
        self._told_removed = False

    def _save_node_id(self) -> None:
        """Keep <state-dir>/node_id equal to the certificate's CN."""
        if self.state_dir is None:
            return
        path = self.state_dir / "node_id"
        if path.exists() and path.read_text().strip() == self.node_id:
            return
        atomic_write(path, self.node_id + "\n", mkdir=True)

    async def run(self) -> None:
        """Stay connected to the leading manager forever (until cancelled), renewing this
        node's certificate on the way."""
        renewer = asyncio.create_task(self._renew_loop())
        try:
            await self._connect_loop()
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    @property
    def managers(self) -> list[str]:
        """The managers this session knows, as given and as the managers list them."""
        return self.rotation.addrs

    async def _connect_loop(self) -> None:
        backoff = Backoff(initial=0.1, maximum=self.backoff_max, jitter=0.5)
        while True:
            addr = self.rotation.current
            redirect = False
            try:
                await self._session(addr)
                backoff.reset()
            except grpc.aio.AioRpcError as e:
                redirect = self._session_failed(addr, e, backoff)
            except SequenceGap as e:
                log.warning("restarting session: %s", e)
            finally:
                self.connected.clear()
                await self._close()
            if _task_cancelled():
                # Cancelled while grpc was closing the channel, which may swallow the
                # CancelledError: without this check the loop would go on forever.
                raise asyncio.CancelledError
            # Named the leader: go there at once, and back off from the start if it fails.
            await asyncio.sleep(LEADER_REDIRECT_S if redirect else backoff.next())

    def _session_failed(self, addr: str, e: grpc.aio.AioRpcError, backoff: Backoff) -> bool:
        """Account for a session that ended in `e` and choose the next manager; True when a
        follower named the leader (`rotation` now points at it)."""
        details = e.details() or ""
        hint = _LEADER_HINT.search(details)
        if hint:
            self.rotation.prefer(hint.group(1))
            backoff.reset()
        else:
            self.rotation.advance()
        why = ""
        if not hint and e.code() in NO_ANSWER:
            self.failed_attempts += 1
            # A refused TLS handshake looks like any unreachable manager: say what is
            # wrong with this node's certificate, if anything.
            why = self._diagnose()
        else:
            self.failed_attempts = 0  # a manager answered (even a refusal)
        removed = e.code() == grpc.StatusCode.PERMISSION_DENIED and _REMOVED.search(details)
        if removed:
            if not self._told_removed:
                log.error(
                    "%s: this node (%s) must join again: stop the agent, delete %s and "
                    "start it with --join-token",
                    details,
                    self.node_id,
                    self.creds_dir or "its tls directory",
                )
            self._told_removed = True
            backoff.stall()  # nothing will change soon: do not hammer
        log.info(
            "session with %s ended: %s %s%s",
            addr,
            e.code().name,
            details,
            f" ({why})" if why else "",
        )
        return bool(hint) and not removed

    def _diagnose(self) -> str:
        """Log (once per new finding) why the managers may refuse this node's certificate."""
        why = diagnose(self.credentials, certinfo.utcnow())
        if why and why != self._last_diagnosis:
            log.error("the managers may refuse this node's TLS handshake: %s", why)
        self._last_diagnosis = why
        return why

    @property
    def unreachable(self) -> bool:
        """No session, and every known manager was tried without an answer: nobody but this
        agent can act for its tasks now (a manager that answers, even to refuse or to name
        the leader, is not unreachable)."""
        return not self.connected.is_set() and self.failed_attempts >= len(self.managers)

    async def _close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None

    async def _session(self, addr: str) -> None:
        creds = self.credentials
        self._channel = grpc.aio.secure_channel(
            addr, creds.channel_credentials(), options=MANAGER_CHANNEL_OPTIONS
        )
        self._stub = stub = dispatcher_pb2_grpc.DispatcherStub(self._channel)
        reg = await stub.Register(
            dpb.RegisterRequest(node_id=self.node_id, description=self.description, spec=self.spec),
            timeout=10,
        )
        if reg.node_id != self.node_id:
            log.warning("the manager registered this node as %r, not %r", reg.node_id, self.node_id)
        if self.credentials is not creds:
            return  # renewed meanwhile: reconnect with the new certificate
        call = stub.Session(dpb.SessionRequest(node_id=self.node_id, description=self.description))
        self._call = call
        self._last_diagnosis = ""
        self._told_removed = False
        heartbeat: asyncio.Task[None] | None = None
        try:
            async for msg in call:
                if msg.managers:
                    self.rotation.update([addr, *msg.managers, *self.managers])
                if msg.session_id != self.session_id or heartbeat is None:
                    self.session_id = msg.session_id
                    if heartbeat is not None:
                        heartbeat.cancel()
                    heartbeat = asyncio.create_task(self._heartbeat(msg.heartbeat_period_ms))
                if msg.HasField("doctor"):
                    # Answered aside: the check may wait for a pass, the stream must not.
                    task = asyncio.create_task(self._doctor(msg.doctor))
                    self._doctoring.add(task)
                    task.add_done_callback(self._doctoring.discard)
                    continue
                self.assignments.apply(msg.assignments)
                self.connected.set()
                self.failed_attempts = 0
                if self.on_assignments is not None:
                    await self.on_assignments(self.assignments)
        except asyncio.CancelledError:
            # `_renew_once` cancelled the call (not this task): end the session quietly.
            if self.credentials is creds or _task_cancelled():
                raise
            log.info("reconnecting to %s with the renewed certificate", addr)
        finally:
            self._call = None
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await heartbeat
            call.cancel()

    async def _renew_loop(self) -> None:
        """Renew the certificate at a random 50-80 % of its life, retrying until it works."""
        while True:
            creds = self.credentials
            at = certinfo.renew_at(creds.info, self.renew_rng)
            log.info(
                "certificate of %s valid until %s, renewal at %s",
                self.node_id,
                creds.not_after.isoformat(),
                at.isoformat(),
            )
            await asyncio.sleep(max(0.0, (at - certinfo.utcnow()).total_seconds()))
            backoff = Backoff(initial=0.5, maximum=self.backoff_max, jitter=0.5)
            while self.credentials is creds:
                try:
                    await self._renew_once(creds)
                except asyncio.CancelledError:
                    if _task_cancelled():
                        raise
                    log.warning("certificate renewal interrupted (the session closed); retrying")
                except (grpc.aio.AioRpcError, certinfo.CertError, ConnectionError) as e:
                    detail = (
                        f"{e.code().name} {e.details()}"
                        if isinstance(e, grpc.aio.AioRpcError)
                        else str(e)
                    )
                    log.warning("certificate renewal failed: %s (retrying)", detail)
                    if isinstance(e, grpc.aio.AioRpcError) and e.code() in NO_ANSWER:
                        self._diagnose()
                except Exception:
                    # Keep renewing whatever went wrong: a node whose certificate lapses is out.
                    log.exception("certificate renewal failed (retrying)")
                if self.credentials is creds:
                    await asyncio.sleep(backoff.next())

    async def _renew_once(self, creds: NodeCredentials) -> None:
        channel = self._channel if self.connected.is_set() else None
        if self.renewer is not None:
            # Making a key and CSR and checking the answer needs `cryptography`, which the
            # agent leaves to a helper process (agent/main.py `--renew-only`).
            new = await self.renewer(creds, list(self.rotation.order()))
        elif channel is not None:
            new = await renew(channel, creds)
        else:
            # No session (yet): renewal must not wait for one, or a certificate can lapse while
            # the session is down, and then no session can ever be opened with it. Any manager
            # renews, so ask each in turn over a channel of the renewal's own.
            new = await renew_anywhere(list(self.rotation.order()), creds)
        if self.creds_dir is not None:
            try:
                new.save(self.creds_dir)
            except OSError as e:
                # Still use it: the old certificate on disk serves a restart until it expires.
                log.error("cannot save the renewed certificate in %s: %s", self.creds_dir, e)
        self.credentials = new
        self.renewals += 1
        log.info(
            "renewed the certificate of %s (serial %x), valid until %s",
            new.node_id,
            new.info.serial,
            new.not_after.isoformat(),
        )
        if self._call is not None:
            self._call.cancel()  # `_session` sees the new credentials and ends quietly

    async def _heartbeat(self, period_ms: int) -> None:
        """One heartbeat per period once the session has settled, as Swarm's agents beat: the
        manager marks a node down after `heartbeat_grace` (3) periods without one. For its
        first WARMUP_PERIODS periods a session beats twice per period: that is when a
        (re)started agent builds its sandboxes, resolvers and balancers, passes that can hold
        the event loop for a while, and a node just back must not lose its READY at a short
        period (measured: a restarted node under CI load missed 3 beats at 300 ms). Each beat
        is a gRPC call costing the agent ~1 ms of CPU or more (bench.footprint: twice per
        period was two thirds of an idle agent's CPU at a 1 s period), so it carries the
        gossip view and the IPsec report only when they changed (`_Report`). What the host has
        programmed is sent at once when it changes (`nudge`), at most every NUDGE_MIN_S."""
        reports = {
            "gossip": gossip_report(),
            "ipsec": ipsec_report(),
            "listening": whole_report(),
            "programmed": whole_report(),
        }
        beats = 0
        while True:
            warm = beats >= 2 * WARMUP_PERIODS
            wait = period_ms / 1000 / (1 if warm else 2)
            start = time.monotonic()
            if await self._nudge_or_sleep(wait):
                # A nudged beat: what changed goes now (at most one every NUDGE_MIN_S).
                await asyncio.sleep(NUDGE_MIN_S)
            elif (late := time.monotonic() - start - wait) > period_ms / 1000:
                # The manager may already have judged this node; say why it went quiet.
                log.warning("heartbeat %.2f s late: the agent's event loop was blocked", late)
            beats += 1
            stub = self._stub
            if stub is None:
                return
            try:
                req = dpb.HeartbeatRequest(node_id=self.node_id, session_id=self.session_id)
                views = {
                    "gossip": self.gossip_status() if self.gossip_status is not None else None,
                    "ipsec": self.ipsec_status() if self.ipsec_status is not None else None,
                    "listening": self.listening_ports() if self.listening_ports else None,
                    "programmed": self.programmed() if self.programmed else None,
                }
                now = time.monotonic()
                for field_name, view in views.items():
                    if view is not None and reports[field_name].due(view, now):
                        getattr(req, field_name).CopyFrom(view)
                resp = await stub.Heartbeat(req, timeout=period_ms / 1000)
                period_ms = resp.period_ms or period_ms
            except grpc.aio.AioRpcError as e:
                log.warning("heartbeat failed: %s %s", e.code().name, e.details())
                for r in reports.values():
                    r.sent = None  # it may not have arrived: send the next one whole

    def nudge(self) -> None:
        """Send a heartbeat now (a report changed): see `programmed`."""
        self._nudged.set()

    async def _nudge_or_sleep(self, wait: float) -> bool:
        """Sleep `wait` seconds, or less if nudged meanwhile; whether it was nudged."""
        try:
            await asyncio.wait_for(self._nudged.wait(), wait)
        except TimeoutError:
            return False
        self._nudged.clear()
        return True

    async def report(self, updates: Sequence[dpb.TaskStatusUpdate]) -> None:
        """Send task states; raises grpc.aio.AioRpcError or ConnectionError when no session is
        up (the caller keeps the states and sends them again once `connected` is set)."""
        stub = self._session_stub()
        await _unless_closed(
            stub.UpdateTaskStatus(
                dpb.UpdateTaskStatusRequest(
                    node_id=self.node_id, session_id=self.session_id, updates=list(updates)
                ),
                timeout=10,
            )
        )

    async def publish_logs(self, lines: Sequence[dpb.PublishLogsMessage]) -> None:
        """Send task output; raises as `report` does."""
        stub = self._session_stub()
        msgs = []
        for line in lines:
            m = dpb.PublishLogsMessage()
            m.CopyFrom(line)
            m.node_id, m.session_id = self.node_id, self.session_id
            msgs.append(m)
        await _unless_closed(stub.PublishLogs(iter(msgs), timeout=10))

    async def attach(self, req: dpb.AttachRequest) -> dpb.AttachResponse:
        """Ask the manager for an endpoint of this node on an attachable network (the CNI
        plugin's ADD); raises as `report` does, and with the manager's refusal."""
        stub = self._session_stub()
        return await _unless_closed(stub.Attach(_as_node(req, self.node_id), timeout=10))

    async def detach(self, req: dpb.DetachRequest) -> dpb.DetachResponse:
        """Release one (the CNI plugin's DEL, or a release queued while no manager answered)."""
        stub = self._session_stub()
        return await _unless_closed(stub.Detach(_as_node(req, self.node_id), timeout=10))

    async def _doctor(self, order: dpb.DoctorCheck) -> None:
        """Check (agent/doctor.py) and send the report: `ovctl doctor` waits for it."""
        rows: list[pb.DriftRow] = []
        if self.on_doctor is None:
            error = "this agent cannot check its data plane"
        else:
            rows, error = await self.on_doctor(order)
        req = dpb.ReportDoctorRequest(
            node_id=self.node_id,
            session_id=self.session_id,
            request_id=order.request_id,
            rows=rows,
            error=error,
        )
        try:
            await _unless_closed(self._session_stub().ReportDoctor(req, timeout=10))
        except (grpc.aio.AioRpcError, ConnectionError) as e:
            log.info("doctor report not sent: %s", e)

    def _session_stub(self) -> dispatcher_pb2_grpc.DispatcherStub:
        if self._stub is None:
            raise ConnectionError("no session with a manager")
        return self._stub


class _Report:
    """When a heartbeat carries one of this host's reports (the manager keeps the last one it
    got, for `ovctl node inspect`): when its shape changed, else every REPORT_S (a gossip
    view's counters and time move on every packet; sending them each beat would cost the
    manager and the agent for a view people read now and then)."""

    def __init__(self, shape: Callable[[Any], Message]) -> None:
        self.shape = shape
        self.sent: tuple[bytes, float] | None = None

    def due(self, st: Message, now: float) -> bool:
        shape = self.shape(st).SerializeToString(deterministic=True)
        if self.sent is not None and self.sent[0] == shape and now - self.sent[1] < REPORT_S:
            return False
        self.sent = (shape, now)
        return True


def gossip_report() -> _Report:
    """The gossip view's shape: its members and networks."""
    return _Report(lambda st: pb.GossipStatus(members=st.members, networks=st.networks))


def ipsec_report() -> _Report:
    """An IPsec report changes only on transitions: all of it is its shape."""
    return whole_report()


def whole_report() -> _Report:
    """A report all of whose content is its shape (IPsec transitions, listening ports)."""
    return _Report(lambda st: st)


def _as_node(req: M, node_id: str) -> M:
    """A copy of `req` from this node (its `node_id` set)."""
    out = type(req)()
    out.CopyFrom(req)
    out.node_id = node_id  # type: ignore[attr-defined]
    return out


async def _unless_closed(call: Awaitable[T]) -> T:
    """Await a call made for another task (the daemon's reports, its logs) on the session's
    channel. When the session closes that channel (its manager went away) grpc cancels the
    call, and the caller sees asyncio.CancelledError as if it had been cancelled itself: left
    so, it would end the daemon's loop. It is a lost connection, and is said so."""
    try:
        return await call
    except asyncio.CancelledError:
        if _task_cancelled():
            raise
        raise ConnectionError("the session with the manager closed during the call") from None


def _task_cancelled() -> bool:
    """Whether the running task itself is being cancelled (as opposed to a gRPC call it awaits
    having been cancelled, which raises the same CancelledError)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
