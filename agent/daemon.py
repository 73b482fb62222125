"""The agent's I/O loop: assignments in, processes and kernel state out, task states back.

Every pass is the same: fold what the host knows into `controller.decide`, derive the data
plane the surviving sandboxes need, reconcile the kernel to it, start and stop processes, and
report. Passes run when something changes (new assignments, a process exiting) and also on a
timer, which is what repairs drift (a veth or FDB entry deleted by hand) and retries anything
that failed: nothing depends on having seen an event.

The first pass waits for the first complete assignment set: an agent restarted while its
managers are away must not tear down the sandboxes of tasks that are still running. Every set
is also kept on disk, so such an agent starts from the last one it had and goes on without
managers: endpoints of other hosts come from gossip (`Discovery`), and tasks that exit are
restarted in place by their restart policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import grpc

from agent import services
from agent.controller import Local, Sandbox, decide, desired_dataplane
from agent.dataplane.kernel import ApplyResult, DataPlane
from agent.dataplane.plan import ingress_gw_address
from agent.discovery import DEFAULT_GOSSIP_PORT, Discovery, write_private
from agent.dns.server import DnsServer
from agent.endpoints import EndpointRecord, local_records, node_record, remotes
from agent.executor import ExitInfo, LogTailer, Runner, StartError
from agent.gossip import GossipConfig
from agent.health import CheckConfig, HealthMonitor
from agent.lb.balancer import LoadBalancer
from agent.lb.plan import LbSpec
from agent.model import INGRESS_SANDBOX, DesiredState, HostConfig
from agent.netns import run_in_netns
from agent.session import AgentSession
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

ASSIGNMENTS_FILE = "assignments.pb"


def now_ms() -> int:
    return int(time.time() * 1000)


def failed_sandboxes(result: ApplyResult, desired: DesiredState) -> dict[str, str]:
    """Which sandboxes a reconcile's failures leave unusable, and why: a failed op of a task
    hits that task, one of a network hits every sandbox on it, one of the host (gwbridge,
    nftables) hits every sandbox that needs egress."""
    out: dict[str, str] = {}
    for f in result.failures:
        op = f.op
        for task_id, box in desired.sandboxes.items():
            if op.task_id:
                hit = op.task_id == task_id
            elif op.network_id:
                hit = any(e.network_id == op.network_id for e in box.endpoints)
            else:
                hit = box.egress
            if hit and task_id not in out:
                out[task_id] = f"{op.describe()} failed: {f.error}"
    return out


class AgentDaemon:
    def __init__(
        self,
        host: HostConfig,
        session: AgentSession,
        state_dir: Path,
        *,
        reconcile_interval: float = 5.0,
        stop_timeout: float = 10.0,
        log_interval: float = 0.5,
        gossip_port: int = DEFAULT_GOSSIP_PORT,
        gossip_config: GossipConfig | None = None,
        drain_delay: float = 2.0,
        dns_upstreams: list[tuple[str, int]] | None = None,
        dns_ttl: int = 2,
    ) -> None:
        self.host = host
        self.session = session
        self.reconcile_interval = reconcile_interval
        self.stop_timeout = stop_timeout
        self.log_interval = log_interval
        self.dataplane = DataPlane(host)
        self.runner = Runner(state_dir, self._on_exit)
        self.logs = LogTailer(state_dir)
        self.state_dir = state_dir
        self.local: dict[str, Local] = {}
        self._wake = asyncio.Event()
        self.discovery = Discovery(
            str(host.vtep), gossip_port, state_dir, gossip_config, on_change=self._wake.set
        )
        session.gossip_status = self.discovery.status
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._assigned = asyncio.Event()
        self._log_lock = asyncio.Lock()
        # Networks of the tasks this host still holds, as last assigned.
        self._networks: dict[str, pb.Network] = {}
        session.on_assignments = self._on_assignments
        # A task being stopped keeps its address but takes no new connection for this long
        # first, so that every host's balancers and resolvers have dropped it (gossip needs a
        # fraction of a second) before its process goes.
        self.drain_delay = drain_delay
        self.dns = DnsServer(
            DnsServer.host_upstreams() if dns_upstreams is None else dns_upstreams, ttl=dns_ttl
        )
        self.lb = LoadBalancer(host.names.lb_table)
        self.health = HealthMonitor(lambda _: self._wake.set())
        # Tasks announced as taking traffic in the last pass (a stop drains only those).
        self._serving: set[str] = set()

    # ------------------------------------------------------------------ events

    async def _on_assignments(self, _: object) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_private(
                self.state_dir / ASSIGNMENTS_FILE,
                self.session.assignments.snapshot().SerializeToString(),
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
        self._record_exit(task_id, info)
        log.info("task %s exited: %s", task_id, info.error or f"exit status {info.exit_code}")
        self._wake.set()

    def _record_exit(self, task_id: str, info: ExitInfo) -> None:
        lo = self.local.setdefault(task_id, Local())
        lo.pid = 0
        if info.start_failed:
            # The command never ran (ip netns exec could not exec it): a start failure.
            lo.start_error = info.error
            return
        lo.exited = True
        lo.exit_code = info.exit_code
        lo.exit_error = info.error
        lo.exited_ms = now_ms()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        for task_id, proc in self.runner.adopt().items():
            lo = self.local.setdefault(task_id, Local())
            if proc.running and proc.pid:
                lo.pid = proc.pid
                log.info("adopted running task %s (pid %d)", task_id, proc.pid)
            elif proc.exit is not None:
                self._record_exit(task_id, proc.exit)
                log.info("task %s ended while the agent was down: %s", task_id, proc.exit.error)
        self._load_assignments()
        logs = asyncio.create_task(self._publish_logs())
        keeper = asyncio.create_task(self._keep_gossip_state())
        try:
            await self._assigned.wait()
            while True:
                self._wake.clear()
                try:
                    await self.step()
                except Exception:
                    log.exception("agent pass failed (retrying)")
                    await asyncio.sleep(0.5)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.reconcile_interval)
        finally:
            logs.cancel()
            keeper.cancel()
            for t in self._stopping.values():
                t.cancel()
            await self.health.close()
            await self.dns.close()
            await self.lb.close()
            # A host with running tasks does not leave: its tasks keep serving while the agent
            # restarts (live restore), so the others must keep its endpoints.
            await self.discovery.close(leave=not any(lo.pid for lo in self.local.values()))
            self.runner.close()
            await self.dataplane.close()

    async def _keep_gossip_state(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            self.discovery.save()

    async def step(self) -> None:
        a = self.session.assignments
        await self.discovery.configure(self.session.node_id, a.gossip.get("gossip"))
        autonomous = self.session.unreachable
        policies = {sid: svc.spec.restart_policy for sid, svc in a.services.items()}
        tasks = dict(a.tasks)
        for task_id, task in tasks.items():
            lo = self.local.setdefault(task_id, Local())
            lo.reported = max(lo.reported, task.status.state)
            lo.task = task
        # A task the manager dropped while its process still runs keeps its network until the
        # process is gone: its last known spec says what that network is.
        known = {tid: lo.task for tid, lo in self.local.items() if lo.task is not None}
        known.update(tasks)
        used = {att.network_id for t in known.values() for att in t.networks}
        ingress = self._ingress(a.networks)
        if ingress is not None:
            used.add(ingress[0].meta.id)
        self._networks = {k: v for k, v in {**self._networks, **a.networks}.items() if k in used}

        # Two rounds: the first says which sandboxes are wanted; once the kernel has them,
        # the second starts what can start in this same pass.
        built: set[str] | None = None
        # Every visible record of the networks this host is on, read once per pass: the FDB,
        # resolvers and balancers are all derived from it.
        records = self.discovery.records(self._networks)
        remote_eps = remotes(records, self._networks, str(self.host.vtep))
        desired = DesiredState()
        for _ in range(2):
            d = decide(tasks, self.local, now_ms(), autonomous=autonomous, policies=policies)
            if d.sandboxes == built:
                break  # the kernel already holds exactly these
            desired, problems = desired_dataplane(
                self.host, known, self._networks, remote_eps, d.sandboxes, ingress
            )
            result = await self.dataplane.reconcile(desired)
            built = d.sandboxes
            failed = failed_sandboxes(result, desired)
            for f in result.failures:
                log.warning("data plane: %s", f)
            for text in result.problems:
                log.warning("data plane input: %s", text)
            changed = False
            for task_id, lo in self.local.items():
                why = problems.get(task_id) or failed.get(task_id, "")
                if task_id not in d.sandboxes:
                    new = Sandbox.ABSENT
                elif why:
                    new = Sandbox.FAILED
                else:
                    new = Sandbox.READY if task_id in desired.sandboxes else Sandbox.ABSENT
                if new is not lo.sandbox:
                    changed = changed or task_id in d.sandboxes
                    lo.sandbox, lo.sandbox_error = new, why
            if not changed:
                break

        # Resolvers and balancers first: a task about to start finds its names resolving.
        await self._serve(records, desired, known)

        for task_id in d.restart:
            lo = self.local[task_id]
            lo.exited, lo.exit_code, lo.exit_error = False, None, ""
            lo.unhealthy = ""
            lo.local_restarts += 1
            log.info("restarting task %s in place (no manager reachable)", task_id)
            await self._start(tasks[task_id])
        for task_id in d.start:
            await self._start(tasks[task_id])
        for task_id in d.stop:
            if task_id not in self._stopping:
                # Only a task that was taking traffic needs to drain (decided now: this pass's
                # announcement below takes it out of `_serving`).
                drain = task_id in self._serving
                self._stopping[task_id] = asyncio.create_task(self._stop(task_id, drain))
        for task_id in d.forget:
            # Its last lines go to the manager before its directory (and logs) goes; if no
            # manager takes them now, the next pass tries again.
            if await self._send_logs(task_id):
                try:
                    self.runner.remove(task_id)
                except (OSError, RuntimeError) as e:
                    log.warning("cannot remove task %s's directory yet: %s", task_id, e)
                    continue
                self.logs.forget(task_id)
                self.local.pop(task_id, None)
        self._check_health(known, desired)
        if d.start or d.restart:
            # Report RUNNING (with the pid) in this pass rather than the next one.
            d = decide(tasks, self.local, now_ms(), autonomous=autonomous, policies=policies)
        self._announce(known, desired, d.stop, ingress)
        await self._report(d.reports)

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
        running = [
            tasks[tid]
            for tid, lo in self.local.items()
            if lo.pid and tid in tasks and tid in desired.sandboxes
        ]
        disabled = {
            t.meta.id
            for t in running
            if t.meta.id in stopping
            or t.meta.id in self._stopping
            or self.local[t.meta.id].health not in (pb.TASK_HEALTH_NONE, pb.TASK_HEALTH_HEALTHY)
        }
        records = local_records(
            running,
            self.session.assignments.services,
            self.session.node_id,
            str(self.host.vtep),
            disabled,
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
        self, records: list[EndpointRecord], desired: DesiredState, tasks: dict[str, pb.Task]
    ) -> None:
        """Point every sandbox's resolver and balancer, the ingress sandbox's and the host's
        balancers at the records of this pass; only what changed reaches the kernel."""
        ingress_id = next((n for n, c in desired.networks.items() if c.ingress), "")
        names = {nid: net.spec.name for nid, net in self._networks.items()}
        self.dns.update(records, names)
        ready = {
            tid
            for tid in desired.sandboxes
            if tid != INGRESS_SANDBOX
            and tid in tasks
            and self.local.get(tid, Local()).sandbox is Sandbox.READY
        }
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
        for key in self.dns.attached() - ready:
            await self.dns.detach(key)

        ports = services.published_ports(
            records, self.session.assignments.services.values(), ingress_id
        )
        ingress_gw: str | None = None
        if INGRESS_SANDBOX in desired.sandboxes and ingress_id:
            path = self.dataplane.sandbox_path(INGRESS_SANDBOX)
            try:
                # Checked on every pass: a sandbox made again (after drift) starts with it off.
                if run_in_netns(path, _enable_forwarding):
                    log.info("ingress sandbox: IP forwarding switched on")
                specs[INGRESS_SANDBOX] = (path, services.ingress_spec(ports))
                ingress_gw = str(ingress_gw_address(self.host).ip)
            except OSError as e:
                log.warning("ingress sandbox: cannot enable forwarding: %s", e)
        host_ports = services.host_mode_ports(
            records, self.session.node_id, self.dataplane.gw_addresses
        )
        specs["host"] = (None, services.host_spec(ports, ingress_gw, host_ports))

        for key in self.lb.keys() - specs.keys():
            # A sandbox's table goes with its namespace (which may be gone already).
            await self.lb.remove(key, self.dataplane.sandbox_path(key), delete_table=False)
        for key, (netns, spec) in specs.items():
            try:
                await self.lb.apply(key, netns, spec)
            except Exception as e:
                log.warning("load balancing in %s: %s", key, e)

    def _check_health(self, tasks: dict[str, pb.Task], desired: DesiredState) -> None:
        """Watch the running tasks that have a check; fold the verdicts into `Local`."""
        now_wall, now_mono = now_ms(), time.monotonic()
        watched = set()
        for tid, lo in self.local.items():
            task = tasks.get(tid)
            if not lo.pid or task is None or tid not in desired.sandboxes:
                lo.health, lo.ready_ms = pb.TASK_HEALTH_NONE, 0
                continue
            config = CheckConfig.from_proto(task.spec.health_check)
            if config is None:
                lo.health = pb.TASK_HEALTH_NONE
                lo.ready_ms = lo.ready_ms or now_wall
                continue
            addr = task.networks[0].addresses[0].split("/")[0] if task.networks else "127.0.0.1"
            self.health.watch(tid, config, self.dataplane.sandbox_path(tid), addr)
            watched.add(tid)
            st = self.health.state(tid)
            if st is None:
                continue
            lo.health = st.health
            lo.ready_ms = (
                now_wall - int((now_mono - st.healthy_since) * 1000) if st.healthy_since else 0
            )
            if st.health == pb.TASK_HEALTH_UNHEALTHY and not lo.unhealthy:
                lo.unhealthy = st.last_error or "the health check failed"
                log.warning("task %s is unhealthy (%s): stopping it", tid, lo.unhealthy)
                self._wake.set()
        for tid in self.health.watched() - watched:
            self.health.unwatch(tid)

    async def _start(self, task: pb.Task) -> None:
        lo = self.local[task.meta.id]
        try:
            lo.pid = await self.runner.start(
                task.meta.id,
                list(task.spec.command),
                list(task.spec.env),
                task.spec.workdir or "/",
                self.host.names.sandbox_ns(task.meta.id),
            )
            log.info("started task %s (pid %d)", task.meta.id, lo.pid)
        except StartError as e:
            lo.start_error = str(e)
            log.warning("task %s could not start: %s", task.meta.id, e)
        except Exception as e:  # a host problem (disk, fds): the task fails, the agent goes on
            lo.start_error = f"the agent could not start the task: {e}"
            log.exception("task %s could not start", task.meta.id)

    async def _stop(self, task_id: str, drain: bool = False) -> None:
        try:
            if drain and self.drain_delay > 0:
                # The pass that made this stop announces the task disabled; wait until every
                # host has dropped it from its balancers and resolvers before it goes.
                self._wake.set()
                await asyncio.sleep(self.drain_delay)
            await self.runner.stop(task_id, self.stop_timeout)
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
        for task_id, status in reports.items():
            lo = self.local.get(task_id)
            if lo is not None:
                lo.reported = max(lo.reported, status.state)
                if status.state == pb.TASK_STATE_RUNNING:
                    lo.reported_health = (status.health, status.ready_ms)

    async def _publish_logs(self) -> None:
        """Send new log lines of every task to the manager; a line is marked sent only once the
        manager took it, so lines written while it was unreachable are sent later."""
        while True:
            await asyncio.sleep(self.log_interval)
            try:
                for task_id in self.runner.task_ids():
                    if not await self._send_logs(task_id):
                        break
            except OSError:
                log.exception("reading task logs failed (retrying)")

    async def _send_logs(self, task_id: str) -> bool:
        """Send what the task wrote since the last accepted batch; False if no manager took it.
        One sender at a time, or the timer and a task's removal would send the same lines."""
        async with self._log_lock:
            return await self._send_logs_locked(task_id)

    async def _send_logs_locked(self, task_id: str) -> bool:
        while chunks := self.logs.read_new(task_id):
            try:
                await self.session.publish_logs(
                    [
                        dpb.PublishLogsMessage(
                            task_id=c.task_id,
                            stream=c.stream,
                            timestamp_ms=c.timestamp_ms,
                            data=c.data,
                        )
                        for c in chunks
                    ]
                )
            except (grpc.aio.AioRpcError, ConnectionError):
                return False
            self.logs.commit(task_id)
        return True


def _enable_forwarding() -> bool:
    """Run inside the ingress sandbox, which routes between the gwbridge and the ingress
    network; True if forwarding was off."""
    path = "/proc/sys/net/ipv4/ip_forward"
    with open(path) as f:
        if f.read().strip() == "1":
            return False
    with open(path, "w") as f:
        f.write("1")
    return True
