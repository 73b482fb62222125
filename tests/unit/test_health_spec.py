"""Health check specs: what the manager accepts, and the message when it does not."""

from __future__ import annotations

import pytest

from manager.errors import InvalidArgument
from manager.servicespec import task_spec_of
from manager.validation import check_health_check, check_service_spec, has_health_check
from proto import objects_pb2 as pb


@pytest.mark.parametrize(
    "hc",
    [
        pb.HealthCheck(),
        pb.HealthCheck(command=["sh", "-c", "true"]),
        pb.HealthCheck(tcp_port=1),
        pb.HealthCheck(tcp_port=65535, interval_ms=500, timeout_ms=500, retries=100),
        # Either duration left at 0 means the default, so no comparison is made.
        pb.HealthCheck(command=["true"], timeout_ms=30_000),
        pb.HealthCheck(command=["true"], interval_ms=10, start_period_ms=60_000),
    ],
)
def test_accepted(hc: pb.HealthCheck) -> None:
    check_health_check(hc)


@pytest.mark.parametrize(
    ("hc", "fragment"),
    [
        (pb.HealthCheck(command=["true"], tcp_port=80), "not both"),
        (pb.HealthCheck(command=[""]), "command is empty"),
        (pb.HealthCheck(tcp_port=65536), "65536 is out of range 1-65535"),
        (pb.HealthCheck(interval_ms=1000), "add --health-cmd CMD or --health-tcp PORT"),
        (pb.HealthCheck(retries=2), "need something to check"),
        (
            pb.HealthCheck(tcp_port=80, interval_ms=1000, timeout_ms=1001),
            "timeout 1001 ms exceeds its interval 1000 ms",
        ),
        (pb.HealthCheck(tcp_port=80, retries=101), "retries 101 is out of range: at most 100"),
    ],
)
def test_refused(hc: pb.HealthCheck, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        check_health_check(hc)


def test_service_spec_checks_its_health_check() -> None:
    spec = pb.ServiceSpec(name="web", command=["x"], health_check=pb.HealthCheck(tcp_port=70000))
    with pytest.raises(InvalidArgument, match="out of range"):
        check_service_spec(spec)


def test_has_health_check() -> None:
    assert not has_health_check(pb.HealthCheck())
    assert not has_health_check(pb.HealthCheck(interval_ms=5))
    assert has_health_check(pb.HealthCheck(tcp_port=80))
    assert has_health_check(pb.HealthCheck(command=["true"]))


def test_health_check_and_ingress_publishing_are_task_spec_changes() -> None:
    base = pb.ServiceSpec(name="web", command=["x"])
    checked = pb.ServiceSpec()
    checked.CopyFrom(base)
    checked.health_check.tcp_port = 80
    assert task_spec_of(checked) != task_spec_of(base)
    retimed = pb.ServiceSpec()
    retimed.CopyFrom(checked)
    retimed.health_check.retries = 5
    assert task_spec_of(retimed) != task_spec_of(checked)
    # Publishing through the mesh adds an attachment to every task; a host-mode port does not,
    # and a second mesh port changes nothing the tasks are made from.
    mesh = pb.ServiceSpec()
    mesh.CopyFrom(base)
    mesh.endpoint.ports.add(target_port=80)
    assert task_spec_of(mesh) != task_spec_of(base)
    two = pb.ServiceSpec()
    two.CopyFrom(mesh)
    two.endpoint.ports.add(target_port=81, published_port=8081)
    assert task_spec_of(two) == task_spec_of(mesh)
    host = pb.ServiceSpec()
    host.CopyFrom(base)
    host.endpoint.ports.add(target_port=80, publish_mode=pb.PUBLISH_MODE_HOST)
    assert task_spec_of(host) == task_spec_of(base)


def test_the_stop_grace_period_is_copied_into_tasks_and_cannot_be_negative() -> None:
    base = pb.ServiceSpec(name="web", command=["x"])
    graced = pb.ServiceSpec()
    graced.CopyFrom(base)
    graced.stop_grace_period_ms = 30_000
    # The task carries it (its agent needs nothing else): a change replaces the tasks.
    assert task_spec_of(graced) != task_spec_of(base)
    graced.stop_grace_period_ms = -1
    with pytest.raises(InvalidArgument, match="stop grace period -1 ms is negative"):
        check_service_spec(graced)
