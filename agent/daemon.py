"""The agent's I/O loop: assignments in, tasks and kernel state out, task states back.

Every pass is the same: tell the controller what the host knows, ask it what to do
(`Controller.decide`), derive the data plane the surviving sandboxes need, reconcile the kernel
to it, start and stop tasks, and report. Passes run when something changes (new assignments, a
task exiting) and also on a timer, which is what repairs drift (a veth or FDB entry deleted by
hand) and retries anything that failed: nothing depends on having seen an event.

The first pass waits for the first complete assignment set: an agent restarted while its
managers are away must not tear down the sandboxes of tasks that are still running. Every set
is also kept on disk, so such an agent starts from the last one it had and goes on without
managers: endpoints of other hosts come from gossip (`Discovery`), and tasks that exit are
restarted in place by their restart policy.

The daemon decides nothing itself and builds nothing itself: its collaborators (executor, data
plane, discovery, resolver, balancer, health checker, session) are handed to it (agent/wiring.py
builds the real ones; agent/collaborators.py says what it uses of each), and every change to
what it knows of a task goes through the controller (agent/controller.py).

It stays whole: it is the one loop, and every step of a pass (observe, build, serve, act,
announce, report) reads and writes the same per-pass state; its decisions already live in the
controller and the pure planners, so what is left here is the order of the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from agent import services
from agent.collaborators import (
    Balancer,
    DataPlane,
    Discovery,
    HealthChecker,
    Resolver,
    Session,
)
from agent.controller import Controller, Decision, Sandbox
from agent.dataplane.desired import ingress_gw_address
from agent.desiredstate import desired_dataplane, ipsec_keys
from agent.doctor import AgentDoctor
from agent.endpoints import (
    EndpointRecord,
    attachment_records,
    local_records,
    node_record,
    remotes,
)
from agent.executor.api import Executor, ExitInfo, StartError, TaskSpec
from agent.forwarding import Forwarding
from agent.health import CheckConfig
from agent.lb.plan import LbSpec
from agent.logship import LogShipper
from agent.model import INGRESS_SANDBOX, DesiredState, HostConfig
from osutil.files import atomic_write
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

if TYPE_CHECKING:
    from agent.cni.server import CniServer
    from agent.dataplane.kernel import ApplyResult

log = logging.getLogger(__name__)

ASSIGNMENTS_FILE = "assignments.pb"
# At most this long after start, a restarted agent keeps the kernel's load-balancing tables
# while gossip has not synced (see AgentDaemon._view_whole).
VIEW_WARMUP_S = 10.0


def now_ms() -> int:
    return int(time.time() * 1000)


def failed_sandboxes(result: ApplyResult, desired: DesiredState) -> dict[str, str]:
    """Which sandboxes and attachments a reconcile's failures leave unusable, and why: a failed
    op of a task (or attachment) hits that one, one of a network hits every one on it, one of
    the host (gwbridge, nftables) hits every sandbox that needs egress (an attachment has
    none)."""
    owners = {
        tid: (frozenset(e.network_id for e in box.endpoints), box.egress)
        for tid, box in desired.sandboxes.items()
    }
    owners.update(
        {aid: (frozenset({att.network_id}), False) for aid, att in desired.attachments.items()}
    )
    out: dict[str, str] = {}
    for f in result.failures:
        op = f.op
        for owner, (networks, egress) in owners.items():
            if op.task_id:
                hit = op.task_id == owner
            elif op.network_id:
                hit = op.network_id in networks
            else:
                hit = egress
            if hit and owner not in out:
                out[owner] = f"{op.describe()} failed: {f.error}"
    return out


def task_spec(task: pb.Task, netns: str) -> TaskSpec:
    """What the executor needs of an assigned task, in the sandbox `netns`."""
    spec = task.spec
    return TaskSpec(
        task.meta.id,
        tuple(spec.command),
        tuple(spec.env),
        spec.workdir or "/",
        netns,
        image=spec.image,
    )


@dataclass(frozen=True)
class DaemonOptions:
    """The daemon's timings (the command line's --reconcile-interval, --stop-timeout, ...)."""

    # Seconds between passes when nothing happens (the periodic full reconcile).
    reconcile_interval: float = 5.0
    # Seconds between the graceful stop of a task and its forced end.
    stop_timeout: float = 10.0
    # Seconds between two rounds of publishing the tasks' new output.
    log_interval: float = 0.5
    # A task being stopped keeps its address but takes no new connection for this long
    # first, so that every host's balancers and resolvers have dropped it (gossip needs a
    # fraction of a second) before it goes.
    drain_delay: float = 2.0


@dataclass
class _Pass:
    """What one pass has learnt so far (see `step`)."""

    tasks: dict[str, pb.Task]  # assigned now
    known: dict[str, pb.Task]  # assigned now, or still running from an earlier assignment
    autonomous: bool
    policies: dict[str, pb.RestartPolicy]
    ingress: tuple[pb.Network, str] | None
    records: list[EndpointRecord]
    # Whether `records` is the whole view (see AgentDaemon._view_whole).
    whole: bool
    # This node's attachments (CNI containers) to build: assigned, not released here.
    attachments: dict[str, pb.Attachment]


class AgentDaemon:
    def __init__(
        self,
        host: HostConfig,
        session: Session,
        state_dir: Path,
        *,
        executor: Executor,
        dataplane: DataPlane,
        discovery: Discovery,
        dns: Resolver,
        lb: Balancer,
        health: HealthChecker,
        options: DaemonOptions | None = None,
        controller: Controller | None = None,
        clock: Callable[[], int] = now_ms,
        cni: CniServer | None = None,
        conflists: Callable[[dict[str, pb.Network]], None] | None = None,
    ) -> None:
        self.host = host
        self.session = session
        self.state_dir = state_dir
        self.executor = executor
        self.dataplane = dataplane
        self.discovery = discovery
        self.dns = dns
        self.lb = lb
        self.health = health
        self.options = options or DaemonOptions()
        self.controller = controller or Controller()
        # Wall-clock milliseconds (restart delays count in it; tests pass a fake).
        self.clock = clock
        self._wake = asyncio.Event()
        # The daemon's own events: anything its collaborators notice makes another pass.
        discovery.on_change = self._wake.set
        health.on_change = lambda _: self._wake.set()
        session.on_assignments = self._on_assignments
        session.gossip_status = discovery.status
        session.ipsec_status = dataplane.ipsec_status
        # What the last whole, fully applied pass programmed (none yet: nothing reported).
        self._programmed: pb.ProgrammedView | None = None
        session.programmed = lambda: self._programmed
        self._stopping: dict[str, asyncio.Task[None]] = {}
        # One waiter per watched task, for its exit (`Executor.wait`).
        self._waiters: dict[str, asyncio.Task[None]] = {}
        self._assigned = asyncio.Event()
        # Until the view of the records is whole (see `_view_whole`), the load-balancing tables
        # an earlier agent left in the kernel are kept as they are.
        self._started = time.monotonic()
        self._whole = False
        # Tasks found running at start, whose health verdict (the manager's) carries over.
        self._adopted: set[str] = set()
        # Set after the first whole pass: tasks adopted, data plane, resolvers and balancers
        # built. Until then the host is not serving yet (what systemd's READY=1 waits for).
        self.passed = asyncio.Event()
        self.logs = LogShipper(executor, session, self.options.log_interval)
        # Networks of the tasks this host still holds, as last assigned.
        self._networks: dict[str, pb.Network] = {}
        # Tasks announced as taking traffic in the last pass (a stop drains only those).
        self._serving: set[str] = set()
        self._forwarding = Forwarding()  # in the ingress sandbox
        # The CNI plugin's end (None: this host takes no containers of other runtimes), and
        # what writes a conflist per attachable network for those runtimes.
        self.cni = cni
        if cni is not None:
            cni.wake = self._wake.set
        self._conflists = conflists
        # Attachments whose interface this pass built (their DNS, LB and records follow).
        self._attached: dict[str, pb.Attachment] = {}
        # Held by every pass, so that `ovctl doctor` (agent/doctor.py) never looks at a kernel
        # halfway through a change; and the data plane the last pass built, which it checks.
        self.pass_lock = asyncio.Lock()
        self.last_desired: DesiredState | None = None
        # Told the seconds each completed pass took (agent/metrics.py), if set.
        self.on_pass: Callable[[float], None] | None = None
        session.on_doctor = AgentDoctor(self).check

    # ------------------------------------------------------------------ events

    async def _on_assignments(self, _: object) -> None:
        try:
            atomic_write(
                self.state_dir / ASSIGNMENTS_FILE,
                self.session.assignments.snapshot().SerializeToString(),
                mode=0o600,  # it holds the gossip keys
                durable=True,
                mkdir=True,
            )
        except OSError as e:
            log.warning("cannot keep the assignment set on disk: %s", e)
        self._assigned.set()
        self._wake.set()

    def _load_assignments(self) -> None:
        """Start from the set kept on disk (see the module's docstring)."""
        path = self.state_dir / ASSIGNMENTS_FILE
        try:
            data = path.read_bytes()
            msg = dpb.AssignmentsMessage.FromString(data)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:  # protobuf's DecodeError is a ValueError
            log.warning("ignoring the kept assignment set %s: %s", path, e)
            return
        if not data:
            # Nothing was kept (or a torn write): an empty set would stop every adopted task.
            return
        if not self._assigned.is_set():
            self.session.assignments.apply(msg)
            self._assigned.set()
            log.info(
                "resuming from the kept assignment set (%d tasks)",
                len(self.session.assignments.tasks),
            )

    def _on_exit(self, task_id: str, info: ExitInfo) -> None:
        self.controller.exited(task_id, info, self.clock())
        self.logs.poke(task_id)  # its last lines go out within log_interval
        log.info("task %s exited: %s", task_id, info.error or f"exit status {info.exit_code}")
        self._wake.set()

    def _watch_exit(self, task_id: str) -> None:
        """Wait for the task's exit (once per run: a waiter that has not fired is kept)."""
        waiter = self._waiters.get(task_id)
        if waiter is None or waiter.done():
            self._waiters[task_id] = asyncio.create_task(self._await_exit(task_id))

    async def _await_exit(self, task_id: str) -> None:
        try:
            info = await self.executor.wait(task_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("waiting for task %s failed", task_id)
            return
        if info is not None:
            self._on_exit(task_id, info)

    def _adopt(self) -> None:
        """Take over the tasks an earlier agent left running, and learn how the others ended."""
        for task_id, found in self.executor.adopt().items():
            self.controller.adopted(task_id, found.running.pid if found.running else 0)
            if found.running is not None:
                self._adopted.add(task_id)
                self._watch_exit(task_id)
                log.info("adopted running task %s (pid %d)", task_id, found.running.pid)
            elif found.exit is not None:
                self.controller.exited(task_id, found.exit, self.clock())
                log.info("task %s ended while the agent was down: %s", task_id, found.exit.error)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        self._adopt()
        self._load_assignments()
        logs = asyncio.create_task(self.logs.run())
        keeper = asyncio.create_task(self._keep_gossip_state())
        try:
            await self._assigned.wait()
            while True:
                self._wake.clear()
                try:
                    async with self.pass_lock:
                        t0 = time.perf_counter()
                        await self.step()
                        if self.on_pass is not None:
                            self.on_pass(time.perf_counter() - t0)
                    self.passed.set()
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is None or current.cancelling():
                        raise
                    # Something the pass awaited was cancelled under it (a gRPC call whose
                    # channel closed): a bug to fix where it happens, never the agent's end.
                    log.exception("agent pass interrupted by a cancelled call (retrying)")
                    await asyncio.sleep(0.5)
                except Exception:
                    log.exception("agent pass failed (retrying)")
                    await asyncio.sleep(0.5)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.options.reconcile_interval)
        finally:
            logs.cancel()
            keeper.cancel()
            await self.close()

    def status_line(self) -> str:
        """One line for systemd's STATUS= (`systemctl status ovnet-agent`)."""
        gossip = self.discovery.status()
        members = len(gossip.members) if gossip is not None else 0
        manager = "no manager reachable" if self.session.unreachable else "manager connected"
        return (
            f"{len(self.controller.running())} tasks, {len(self._networks)} networks, "
            f"{members} gossip members, {manager}"
        )

    async def close(self) -> None:
        """Let go of everything, leaving the tasks running (a restarted agent adopts them)."""
        for t in [*self._stopping.values(), *self._waiters.values()]:
            t.cancel()
        if self.cni is not None:
            await self.cni.close()
        await self.health.close()
        await self.dns.close()
        await self.lb.close()
        # A host with running tasks does not leave: its tasks keep serving while the agent
        # restarts (live restore), so the others must keep its endpoints.
        await self.discovery.close(leave=not self.controller.running())
        self.executor.close()
        await self.dataplane.close()

    async def _keep_gossip_state(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            self.discovery.save()

    async def step(self) -> None:
        """One pass (see the module's docstring)."""
        p = await self._observe()
        d, desired = await self._build(p)
        # Resolvers and balancers first: a task about to start finds its names resolving.
        await self._serve(p.records, desired, p.known, p.whole)
        await self._act(d, p.tasks)
        self._check_health(p.known, desired)
        if d.start or d.restart:
            # Report RUNNING (with the pid) in this pass rather than the next one.
            d = self._decide(p)
        self._announce(p.known, desired, d.stop, p.ingress)
        await self._report(d.reports)

    async def _observe(self) -> _Pass:
        """Fold the assignment set into the controller; read the networks and records."""
        a = self.session.assignments
        await self.discovery.configure(self.session.node_id, a.gossip.get("gossip"))
        tasks = dict(a.tasks)
        self.controller.assigned(tasks)
        # A task the manager dropped while its process still runs keeps its network until the
        # process is gone: its last known spec says what that network is.
        known = self.controller.known_tasks()
        known.update(tasks)
        used = {att.network_id for t in known.values() for att in t.networks}
        attachments = self._attachments()
        used |= {att.network.network_id for att in attachments.values()}
        if self._conflists is not None:
            self._conflists(a.networks)
        ingress = self._ingress(a.networks)
        if ingress is not None:
            used.add(ingress[0].meta.id)
        self._networks = {k: v for k, v in {**self._networks, **a.networks}.items() if k in used}
        # Judged before the records are read: a sync landing later in this pass must not make
        # records read before it count as whole.
        whole = self._view_whole()
        return _Pass(
            tasks=tasks,
            known=known,
            autonomous=self.session.unreachable,
            policies={sid: svc.spec.restart_policy for sid, svc in a.services.items()},
            ingress=ingress,
            # Every visible record of the networks this host is on, read once per pass: the
            # FDB, resolvers and balancers are all derived from it.
            records=self.discovery.records(self._networks),
            whole=whole,
            attachments=attachments,
        )

    def _attachments(self) -> dict[str, pb.Attachment]:
        """The node's assigned attachments, less those released here (a DEL, or a namespace
        that vanished without one: its runtime died, and it is released as by a DEL)."""
        if self.cni is None:
            return {}
        gone = self.cni.detached()
        out = {}
        for att_id, att in self.session.assignments.attachments.items():
            if att_id in gone:
                continue
            if not os.path.exists(att.netns):
                self.cni.vanished(att)
                continue
            out[att_id] = att
        return out

    def _decide(self, p: _Pass) -> Decision:
        return self.controller.decide(
            p.tasks, self.clock(), autonomous=p.autonomous, policies=p.policies
        )

    async def _build(self, p: _Pass) -> tuple[Decision, DesiredState]:
        """Decide, and make the kernel hold the sandboxes the decision needs. Two rounds: the
        first says which sandboxes are wanted; once the kernel has them, the second starts
        what can start in this same pass."""
        built: set[str] | None = None
        remote_eps = remotes(p.records, self._networks, str(self.host.vtep))
        desired = DesiredState()
        for _ in range(2):
            d = self._decide(p)
            if d.sandboxes == built:
                break  # the kernel already holds exactly these
            desired, problems = desired_dataplane(
                self.host,
                p.known,
                self._networks,
                remote_eps,
                d.sandboxes,
                p.ingress,
                ipsec_keys(self.session.assignments.ipsec.get("ipsec")),
                keep_remotes=not p.whole,
                attachments=p.attachments,
            )
            result = await self.dataplane.reconcile(desired)
            built = d.sandboxes
            for f in result.failures:
                log.warning("data plane: %s", f)
            for text in result.problems:
                log.warning("data plane input: %s", text)
            why = {**failed_sandboxes(result, desired), **result.unbuilt, **problems}
            self._attachments_built(p.attachments, desired, why)
            self.last_desired = desired
            if not self.controller.sandboxes_built(d.sandboxes, desired.sandboxes, why):
                break
        return d, desired

    def _attachments_built(
        self, wanted: dict[str, pb.Attachment], desired: DesiredState, why: dict[str, str]
    ) -> None:
        """Tell the CNI server what this reconcile built (its ADDs and DELs wait on it)."""
        if self.cni is None:
            return
        failed = {
            a: why.get(a, "not built") for a in wanted if a in why or a not in desired.attachments
        }
        self._attached = {a: att for a, att in wanted.items() if a not in failed}
        self.cni.built(set(self._attached), failed)

    async def _act(self, d: Decision, tasks: dict[str, pb.Task]) -> None:
        """Start, restart, stop and forget what the decision says."""
        for task_id in d.restart:
            self.controller.restarting(task_id)
            log.info("restarting task %s in place (no manager reachable)", task_id)
            await self._start(tasks[task_id])
        # Concurrently: a container's start waits for podman to create it (~0.2 s), and a
        # host's starts should not queue behind each other.
        await asyncio.gather(*(self._start(tasks[task_id]) for task_id in d.start))
        for task_id in d.stop:
            if task_id not in self._stopping:
                # Only a task that was taking traffic needs to drain (decided now: this pass's
                # announcement below takes it out of `_serving`).
                drain = task_id in self._serving
                self._stopping[task_id] = asyncio.create_task(self._stop(task_id, drain))
        for task_id in d.forget:
            # Its last lines go to the manager before its directory (and logs) goes; if no
            # manager takes them now, the next pass tries again.
            if await self.logs.send(task_id):
                try:
                    self.executor.remove(task_id)
                except (OSError, RuntimeError) as e:
                    log.warning("cannot remove task %s's directory yet: %s", task_id, e)
                    continue
                self._waiters.pop(task_id, None)
                self.controller.forget(task_id)

    def _ingress(self, networks: dict[str, pb.Network]) -> tuple[pb.Network, str] | None:
        """The ingress network and this node's address on it, if the manager gave it one."""
        node = self.session.assignments.node.get(self.session.node_id)
        if node is None:
            return None
        for att in node.attachments:
            net = networks.get(att.network_id) or self._networks.get(att.network_id)
            if net is not None and net.spec.ingress and att.addresses:
                return net, att.addresses[0]
        return None

    def _announce(
        self,
        tasks: dict[str, pb.Task],
        desired: DesiredState,
        stopping: list[str],
        ingress: tuple[pb.Network, str] | None,
    ) -> None:
        """Tell the other hosts about the endpoints of tasks whose process runs here. A task
        being stopped, or not healthy, stays announced but disabled: nobody sends it a new
        connection, the ones it has go on (its address stays reachable) until it is gone."""
        local = self.controller.local
        running = [
            tasks[tid]
            for tid, lo in local.items()
            if lo.pid and tid in tasks and tid in desired.sandboxes
        ]
        disabled = {
            t.meta.id
            for t in running
            if t.meta.id in stopping
            or t.meta.id in self._stopping
            or local[t.meta.id].health not in (pb.TASK_HEALTH_NONE, pb.TASK_HEALTH_HEALTHY)
        }
        records = local_records(
            running,
            self.session.assignments.services,
            self.session.node_id,
            str(self.host.vtep),
            disabled,
        )
        records.update(
            attachment_records(self._attached.values(), self.session.node_id, str(self.host.vtep))
        )
        if ingress is not None and INGRESS_SANDBOX in desired.sandboxes:
            rec = node_record(
                ingress[0].meta.id, ingress[1], self.session.node_id, str(self.host.vtep)
            )
            records[(rec.network_id, rec.task_id)] = rec
        serving = {t.meta.id for t in running} - disabled
        if serving != self._serving:
            # Our own records feed this host's balancers too: another pass applies them.
            self._wake.set()
        self._serving = serving
        self.discovery.sync(desired.networks, records)

    # ------------------------------------------------------------------ DNS, LB, health

    async def _serve(
        self,
        records: list[EndpointRecord],
        desired: DesiredState,
        tasks: dict[str, pb.Task],
        whole: bool = True,
    ) -> None:
        """Point every sandbox's resolver and balancer, the ingress sandbox's and the host's
        balancers at the records of this pass; only what changed reaches the kernel. Not the
        balancers while the records are not `whole` (see `_view_whole`)."""
        ingress_id = next((n for n, c in desired.networks.items() if c.ingress), "")
        names = {nid: net.spec.name for nid, net in self._networks.items()}
        self.dns.update(records, names)
        ready = {
            tid
            for tid in desired.sandboxes
            if tid != INGRESS_SANDBOX
            and tid in tasks
            and self.controller.get(tid).sandbox is Sandbox.READY
        }
        specs = await self._serve_sandboxes(records, ready, tasks, ingress_id)
        ports = services.published_ports(
            records, self.session.assignments.services.values(), ingress_id
        )
        ingress_gw: str | None = None
        if INGRESS_SANDBOX in desired.sandboxes and ingress_id:
            path = self.dataplane.sandbox_path(INGRESS_SANDBOX)
            try:
                self._forwarding.ensure(path)
                specs[INGRESS_SANDBOX] = (path, services.ingress_spec(ports))
                ingress_gw = str(ingress_gw_address(self.host).ip)
            except OSError as e:
                log.warning("ingress sandbox: cannot enable forwarding: %s", e)
        local = [t for tid, t in tasks.items() if tid in self.controller.local]
        host_ports = services.host_mode_ports(
            local, self.session.assignments.services, self._serving, self.dataplane.gw_addresses
        )
        specs["host"] = (None, services.host_spec(ports, ingress_gw, host_ports))

        if not whole:
            return
        for key in self.lb.keys() - specs.keys():
            # A sandbox's table goes with its namespace (which may be gone already).
            await self.lb.remove(key, self.dataplane.sandbox_path(key), delete_table=False)
        applied = True
        for key, (netns, spec) in specs.items():
            try:
                await self.lb.apply(key, netns, spec)
            except Exception as e:
                applied = False
                log.warning("load balancing in %s: %s", key, e)
        if applied:
            # Resolvers, balancers (and, in `_build`, FDB entries) now hold these records.
            view = services.programmed_view(records, mesh=INGRESS_SANDBOX in specs)
            if view != self._programmed:
                self._programmed = view
                self.session.nudge()

    def _view_whole(self) -> bool:
        """Whether this pass's records are the whole view of the cluster. A restarted agent
        has no records until gossip has synced: its first passes would see every published
        port with no backend and make the host refuse connections (measured: the routing mesh
        refused 1-2 of ~3,000 requests during a rolling upgrade), and drop every other host's
        FDB entries and IPsec SAs. What the previous agent left in the kernel is right, or
        nearly, meanwhile; so the balancers stay as they are and remote entries are only added
        to until gossip has synced, or VIEW_WARMUP_S have passed (no manager, so no gossip: go
        with what is known)."""
        if not self._whole and (
            self.discovery.synced or time.monotonic() - self._started > VIEW_WARMUP_S
        ):
            self._whole = True
            if time.monotonic() - self._started > 1:
                log.info("records view complete after %.1f s", time.monotonic() - self._started)
        return self._whole

    async def _serve_sandboxes(
        self,
        records: list[EndpointRecord],
        ready: set[str],
        tasks: dict[str, pb.Task],
        ingress_id: str,
    ) -> dict[str, tuple[str | None, LbSpec]]:
        """Attach a resolver to every ready task sandbox (and detach the others); the VIP
        balancer spec of each."""
        specs: dict[str, tuple[str | None, LbSpec]] = {}
        # Tasks of one service share their networks: one table per view, not per sandbox.
        by_view: dict[frozenset[str], LbSpec] = {}
        for tid in sorted(ready):
            view = frozenset(a.network_id for a in tasks[tid].networks) - {ingress_id}
            path = self.dataplane.sandbox_path(tid)
            try:
                await self.dns.attach(tid, path, view)
            except OSError as e:
                log.warning("task %s: cannot serve DNS in its sandbox: %s", tid, e)
            if view not in by_view:
                by_view[view] = services.vip_spec(records, view)
            specs[tid] = (path, by_view[view])
        for att_id, att in sorted(self._attached.items()):
            view = frozenset({att.network.network_id})
            try:
                await self.dns.attach(att_id, att.netns, view)
            except OSError as e:
                log.warning("attachment %s: cannot serve DNS in %s: %s", att_id, att.netns, e)
            if view not in by_view:
                by_view[view] = services.vip_spec(records, view)
            specs[att_id] = (att.netns, by_view[view])
        for key in self.dns.attached() - ready - self._attached.keys():
            await self.dns.detach(key)
        return specs

    def _check_health(self, tasks: dict[str, pb.Task], desired: DesiredState) -> None:
        """Watch the running tasks that have a check; tell the controller the verdicts."""
        now_wall, now_mono = self.clock(), time.monotonic()
        watched = set()
        for tid, lo in list(self.controller.local.items()):
            task = tasks.get(tid)
            if tid in self._stopping:
                # Drained and on its way out: a check failing now (its container already
                # gone, say) is no verdict on it, and must not turn its stop into a failure.
                continue
            if not lo.pid or task is None or tid not in desired.sandboxes:
                self.controller.not_checked(tid, now_wall, serving=False)
                continue
            config = CheckConfig.from_proto(task.spec.health_check)
            if config is None:
                self.controller.not_checked(tid, now_wall, serving=True)
                continue
            addr = task.networks[0].addresses[0].split("/")[0] if task.networks else "127.0.0.1"
            since = 0.0
            if tid in self._adopted and tid not in self.health.watched():
                self._adopted.discard(tid)
                known = task.status
                if known.health == pb.TASK_HEALTH_HEALTHY and known.ready_ms:
                    since = now_mono - max(0, now_wall - known.ready_ms) / 1000
            path = self.dataplane.sandbox_path(tid)
            via = self.executor.exec_in(tid, path) if config.command else None
            self.health.watch(tid, config, path, addr, since, via)
            watched.add(tid)
            st = self.health.state(tid)
            if st is None:
                continue
            ready_ms = (
                now_wall - int((now_mono - st.healthy_since) * 1000) if st.healthy_since else 0
            )
            why = self.controller.checked(tid, st.health, ready_ms, st.last_error)
            if why:
                log.warning("task %s is unhealthy (%s): stopping it", tid, why)
                self._wake.set()
        for tid in self.health.watched() - watched:
            self.health.unwatch(tid)

    # ------------------------------------------------------------------ tasks

    async def _start(self, task: pb.Task) -> None:
        task_id = task.meta.id
        try:
            await self.executor.prepare(task_spec(task, self.host.names.sandbox_ns(task_id)))
            running = await self.executor.start(task_id)
        except StartError as e:
            self.controller.start_failed(task_id, str(e))
            log.warning("task %s could not start: %s", task_id, e)
            return
        except Exception as e:  # a host problem (disk, fds): the task fails, the agent goes on
            self.controller.start_failed(task_id, f"the agent could not start the task: {e}")
            log.exception("task %s could not start", task_id)
            return
        self.controller.started(task_id, running.pid)
        self.logs.poke(task_id)  # its first lines go out within log_interval
        self._watch_exit(task_id)
        log.info("started task %s (pid %d)", task_id, running.pid)

    async def _stop(self, task_id: str, drain: bool = False) -> None:
        try:
            if drain and self.options.drain_delay > 0:
                # The pass that made this stop announces the task disabled; wait until every
                # host has dropped it from its balancers and resolvers before it goes.
                self._wake.set()
                await asyncio.sleep(self.options.drain_delay)
            # The service's stop_grace_period, else the agent's --stop-timeout.
            task = self.controller.get(task_id).task
            grace = task.spec.stop_grace_period_ms / 1000 if task is not None else 0
            timeout = grace or self.options.stop_timeout
            if await self.executor.shutdown(task_id, timeout) is not None:
                # The exit is recorded by its waiter: let it be before the next pass.
                waiter = self._waiters.get(task_id)
                if waiter is not None:
                    await asyncio.wait([waiter], timeout=1.0)
        except Exception:
            log.exception("stopping task %s failed", task_id)
        finally:
            self._stopping.pop(task_id, None)
            self._wake.set()

    async def _report(self, reports: dict[str, pb.TaskStatus]) -> None:
        if not reports:
            return
        try:
            await self.session.report(
                [dpb.TaskStatusUpdate(task_id=k, status=v) for k, v in reports.items()]
            )
        except (grpc.aio.AioRpcError, ConnectionError) as e:
            log.info("task states not sent (will resend): %s", e)
            return
        self.controller.reported(reports)
