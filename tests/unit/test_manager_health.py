"""The manager's gRPC health statuses (manager/health.py): what each one says in each standing,
and how the reporter publishes them (changes only, at once when kicked, NOT_SERVING for good
on shutdown). tests/integration/test_manager_health.py checks them on real managers."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from grpc_health.v1 import health_pb2

from manager import health
from manager.health import (
    CONTROL,
    DISPATCHER,
    NODE_CA,
    NOT_SERVING,
    OVERALL,
    SERVING,
    HealthReporter,
    Standing,
    statuses,
)
from manager.rpcedge import SERVICES
from tests.support.wait import await_for

ALL = (OVERALL, CONTROL, DISPATCHER, NODE_CA)


def test_names_are_the_generated_services() -> None:
    assert (CONTROL, DISPATCHER, NODE_CA) == (
        "ovnet.v1.Control",
        "ovnet.v1.Dispatcher",
        "ovnet.v1.NodeCA",
    )
    # Every service the manager serves has a status, and reflection lists it.
    for name, module in SERVICES:
        full = module.DESCRIPTOR.services_by_name[name].full_name
        assert full in statuses(Standing(etcd_ok=True, leading=True))
        assert full in health.reflected_services()


def test_the_leader_serves_everything() -> None:
    assert statuses(Standing(etcd_ok=True, leading=True)) == dict.fromkeys(ALL, SERVING)


def test_a_follower_that_knows_the_leader_serves_what_it_forwards() -> None:
    s = statuses(Standing(etcd_ok=True, leading=False, forward_to="10.1.0.1:4242"))
    assert s == {OVERALL: SERVING, CONTROL: SERVING, DISPATCHER: NOT_SERVING, NODE_CA: SERVING}


def test_without_a_known_leader_only_the_ca_serves() -> None:
    s = statuses(Standing(etcd_ok=True, leading=False))
    assert s == {
        OVERALL: NOT_SERVING,
        CONTROL: NOT_SERVING,
        DISPATCHER: NOT_SERVING,
        NODE_CA: SERVING,
    }


@pytest.mark.parametrize("leading", [True, False])
def test_nothing_serves_without_etcd(leading: bool) -> None:
    s = statuses(Standing(etcd_ok=False, leading=leading, forward_to="10.1.0.1:4242"))
    assert s == dict.fromkeys(ALL, NOT_SERVING)


class Fake:
    """What the reporter samples: etcd's answer and this manager's role."""

    def __init__(self) -> None:
        self.etcd_error = ""
        self.leading = False
        self.forward_to = ""
        self.probes = 0

    async def probe(self) -> str:
        self.probes += 1
        return self.etcd_error

    def role(self) -> tuple[bool, str]:
        return self.leading, self.forward_to


async def status_of(reporter: HealthReporter, service: str = "") -> int:
    req = health_pb2.HealthCheckRequest(service=service)
    return int((await reporter.servicer.Check(req, None)).status)


def test_refresh_publishes_what_it_samples() -> None:
    async def go() -> None:
        fake = Fake()
        reporter = HealthReporter(fake.probe, fake.role)
        # The servicer's own default is SERVING; the first refresh replaces it.
        await reporter.refresh()
        assert await status_of(reporter) == NOT_SERVING
        assert await status_of(reporter, NODE_CA) == SERVING
        fake.leading = True
        await reporter.refresh()
        assert [await status_of(reporter, s) for s in ALL] == [SERVING] * 4
        fake.etcd_error = "etcd at 127.0.0.1:2379 is not usable: connection refused"
        await reporter.refresh()
        assert [await status_of(reporter, s) for s in ALL] == [NOT_SERVING] * 4

    asyncio.run(go())


def test_publish_sets_only_what_changed() -> None:
    async def go() -> None:
        fake = Fake()
        reporter = HealthReporter(fake.probe, fake.role)
        calls: list[tuple[str, int]] = []
        real_set = reporter.servicer.set

        async def counting_set(service: str, status: int) -> None:
            calls.append((service, status))
            await real_set(service, status)

        reporter.servicer.set = counting_set  # type: ignore[method-assign]
        await reporter.refresh()
        assert len(calls) == 4
        await reporter.refresh()
        assert len(calls) == 4  # nothing changed: a Watch stream sees nothing
        fake.forward_to = "10.1.0.1:4242"
        await reporter.refresh()
        assert calls[4:] == [(OVERALL, SERVING), (CONTROL, SERVING)]

    asyncio.run(go())


def test_a_kick_refreshes_at_once() -> None:
    async def go() -> None:
        fake = Fake()
        reporter = HealthReporter(fake.probe, fake.role, interval=3600.0)
        task = asyncio.create_task(reporter.run())
        try:
            await await_for("the first refresh", lambda: fake.probes == 1)
            fake.leading = True
            reporter.kick()
            await await_for("SERVING", lambda: reporter.current.get(OVERALL) == SERVING)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(go())


def test_shutdown_is_not_serving_for_good() -> None:
    async def go() -> None:
        fake = Fake()
        fake.leading = True
        reporter = HealthReporter(fake.probe, fake.role)
        await reporter.refresh()
        await reporter.shutdown()
        await reporter.refresh()
        assert [await status_of(reporter, s) for s in ALL] == [NOT_SERVING] * 4

    asyncio.run(go())
