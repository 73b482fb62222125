"""The daemon's collaborators, as the daemon sees them.

`AgentDaemon` (daemon.py) is handed one of each (agent/wiring.py builds the real ones); these
Protocols say exactly what it uses of them, so a test can hand it fakes instead and run its
passes without root, a kernel, sockets or a manager (tests/unit/test_daemon.py). The executor's
seam is agent/executor/api.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from agent.endpoints import EndpointRecord
from agent.executor.api import Exec
from agent.health import CheckConfig, HealthState
from agent.lb.drift import LbDrift
from agent.lb.plan import LbSpec
from agent.model import DesiredState
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

if TYPE_CHECKING:  # the kernel module loads netlink and nftables code
    from agent.dataplane.kernel import ApplyResult
    from agent.dataplane.observed import Observed
    from agent.dataplane.ops import Op
    from agent.session import Assignments


class Session(Protocol):
    """The manager session (agent/session.py): assignments in, task states and logs out."""

    assignments: Assignments
    node_id: str
    on_assignments: Callable[[Assignments], Awaitable[None]] | None
    gossip_status: Callable[[], pb.GossipStatus | None] | None
    ipsec_status: Callable[[], pb.IpsecStatus | None] | None
    programmed: Callable[[], pb.ProgrammedView | None] | None
    # Answers the manager's DoctorCheck: (drift rows, error) (agent/doctor.py).
    on_doctor: Callable[[dpb.DoctorCheck], Awaitable[tuple[list[pb.DriftRow], str]]] | None

    @property
    def unreachable(self) -> bool: ...

    def nudge(self) -> None: ...

    async def report(self, updates: Sequence[dpb.TaskStatusUpdate]) -> None: ...

    async def publish_logs(self, lines: Sequence[dpb.PublishLogsMessage]) -> None: ...

    async def attach(self, req: dpb.AttachRequest) -> dpb.AttachResponse: ...

    async def detach(self, req: dpb.DetachRequest) -> dpb.DetachResponse: ...


class DataPlane(Protocol):
    """The kernel's sandboxes, bridges and VXLAN devices (agent/dataplane/kernel.py)."""

    gw_addresses: dict[str, str]

    def sandbox_path(self, task_id: str) -> str: ...

    async def reconcile(self, desired: DesiredState) -> ApplyResult: ...

    async def drift(self, desired: DesiredState) -> tuple[Observed, list[Op]]: ...

    def ipsec_status(self) -> pb.IpsecStatus | None: ...

    async def close(self) -> None: ...


class Discovery(Protocol):
    """Gossip of endpoint records among the agents (agent/discovery.py)."""

    on_change: Callable[[], None] | None

    async def configure(self, node_id: str, cfg: dpb.GossipConfig | None) -> None: ...

    @property
    def synced(self) -> bool: ...

    def records(self, networks: Iterable[str]) -> list[EndpointRecord]: ...

    def sync(
        self,
        networks: Iterable[str],
        records: Mapping[tuple[str, str], EndpointRecord],
    ) -> None: ...

    def status(self) -> pb.GossipStatus | None: ...

    def save(self) -> None: ...

    async def close(self, leave: bool = False) -> None: ...


class Resolver(Protocol):
    """The embedded DNS server of every sandbox (agent/dns/server.py)."""

    def update(
        self, records: Iterable[EndpointRecord], network_names: Mapping[str, str]
    ) -> bool: ...

    def attached(self) -> set[str]: ...

    async def attach(self, key: str, netns: str, networks: frozenset[str]) -> None: ...

    async def detach(self, key: str) -> None: ...

    async def close(self) -> None: ...


class Balancer(Protocol):
    """nftables load balancing per sandbox and on the host (agent/lb/balancer.py)."""

    def keys(self) -> set[str]: ...

    async def apply(self, key: str, netns: str | None, spec: LbSpec) -> None: ...

    async def remove(self, key: str, netns: str | None, *, delete_table: bool = True) -> None: ...

    async def drift(self, key: str) -> list[LbDrift]: ...

    def invalidate(self, key: str) -> None: ...

    async def close(self) -> None: ...


class HealthChecker(Protocol):
    """Health checks of running tasks (agent/health.py's HealthMonitor)."""

    on_change: Callable[[str], None]

    def state(self, task_id: str) -> HealthState | None: ...

    def watched(self) -> set[str]: ...

    def watch(
        self,
        task_id: str,
        config: CheckConfig,
        netns: str,
        addr: str,
        healthy_since: float = 0.0,
        via: Exec | None = None,
    ) -> None: ...

    def unwatch(self, task_id: str) -> None: ...

    async def close(self) -> None: ...
