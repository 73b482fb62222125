"""Compose to ovnet specs (ovctl/stack/convert.py) on files in tmp_path: the honoured keys as
the API has them, and what is refused or ignored, with its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovctl.stack.convert import STACK_LABEL, Stack, convert
from ovctl.stack.load import ComposeError, load
from proto import objects_pb2 as pb


def stack(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Stack:
    f = tmp_path / "stack.yml"
    f.write_text(text)
    return convert(load([f], env or {}), "st", env or {})


def test_services_get_their_stack_name_label_default_network_and_alias(tmp_path: Path) -> None:
    s = stack(tmp_path, "services:\n  web:\n    image: localhost/web:1\n")
    assert list(s.services) == ["st_web"]
    web = s.services["st_web"]
    assert web.image == "localhost/web:1" and web.labels[STACK_LABEL] == "st"
    assert [(a.target, list(a.aliases)) for a in web.networks] == [("st_default", ["web"])]
    assert s.networks["st_default"].labels[STACK_LABEL] == "st"


def test_healthcheck_ports_env_file_and_interpolated_numbers(tmp_path: Path) -> None:
    (tmp_path / "web.env").write_text("# comment\nA=1\nB=2\n")
    s = stack(
        tmp_path,
        "services:\n  web:\n    command: serve --port 80\n    env_file: web.env\n"
        "    environment: [B=3, FROM_SHELL, UNSET]\n"
        "    healthcheck:\n      test: [CMD, wget, -q, http://127.0.0.1/]\n"
        "      interval: 1s\n      start_period: 500ms\n"
        "    ports:\n      - 8080:80/udp\n      - {target: 90, published: 9090, mode: host}\n"
        "    deploy:\n      replicas: ${N}\n      restart_policy: {condition: on-failure}\n",
        {"N": "3", "FROM_SHELL": "x"},
    )
    web = s.services["st_web"]
    assert list(web.command) == ["serve", "--port", "80"]
    assert list(web.env) == ["A=1", "B=3", "FROM_SHELL=x"]
    assert list(web.health_check.command) == ["wget", "-q", "http://127.0.0.1/"]
    assert (web.health_check.interval_ms, web.health_check.start_period_ms) == (1000, 500)
    ports = [(p.published_port, p.target_port, p.protocol, p.publish_mode)
             for p in web.endpoint.ports]  # fmt: skip
    assert ports == [
        (8080, 80, pb.PROTOCOL_UDP, pb.PUBLISH_MODE_INGRESS),
        (9090, 90, pb.PROTOCOL_TCP, pb.PUBLISH_MODE_HOST),
    ]
    assert web.replicated.replicas == 3
    assert web.restart_policy.condition == pb.RESTART_CONDITION_ON_FAILURE


def test_stop_grace_period(tmp_path: Path) -> None:
    s = stack(tmp_path, "services:\n  web:\n    image: a\n    stop_grace_period: 1m30s\n")
    assert s.services["st_web"].stop_grace_period_ms == 90_000
    with pytest.raises(ComposeError, match=r"stack.yml:4: services.web.stop_grace_period: .*ms, s"):
        stack(tmp_path, "services:\n  web:\n    image: a\n    stop_grace_period: soon\n")


def test_update_and_rollback_config(tmp_path: Path) -> None:
    s = stack(
        tmp_path,
        "services:\n  web:\n    image: a\n    deploy:\n"
        "      update_config: {parallelism: 2, delay: 3s, order: start-first,\n"
        "                      failure_action: rollback, monitor: 10s, max_failure_ratio: 0.3}\n"
        "      rollback_config: {parallelism: 1, failure_action: continue, monitor: 0s}\n",
    )
    spec = s.services["st_web"]
    u, r = spec.update_config, spec.rollback_config
    assert (u.parallelism, u.delay_ms, u.order, u.failure_action, u.monitor_ms) == (
        2, 3000, pb.UPDATE_ORDER_START_FIRST, pb.UPDATE_FAILURE_ACTION_ROLLBACK, 10_000,
    )  # fmt: skip
    assert abs(u.max_failure_ratio - 0.3) < 1e-6
    assert (r.parallelism, r.failure_action, r.monitor_ms) == (
        1, pb.UPDATE_FAILURE_ACTION_CONTINUE, 0,
    )  # fmt: skip
    assert r.HasField("monitor_ms") and not spec.HasField("health_check")


def test_external_networks_and_ipam(tmp_path: Path) -> None:
    s = stack(
        tmp_path,
        "services:\n  web:\n    command: [x]\n    networks: [shared, mine]\n"
        "networks:\n  shared: {external: true, name: corp}\n"
        "  mine:\n    attachable: true\n    ipam:\n      config:\n"
        "        - {subnet: 10.9.0.0/24, gateway: 10.9.0.254, ip_range: 10.9.0.128/25}\n",
    )
    assert s.external == {"shared": "corp"}
    mine = s.networks["st_mine"]
    assert (mine.subnet, mine.gateway, mine.ip_range, mine.attachable) == (
        "10.9.0.0/24", "10.9.0.254", "10.9.0.128/25", True,
    )  # fmt: skip
    targets = [a.target for a in s.services["st_web"].networks]
    assert targets == ["corp", "st_mine"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services:\n  web:\n    image: a\n    volumes: [x:/y]\n",
         "stack.yml:4: services.web.volumes: not supported by ovnet yet"),
        ("services:\n  web:\n    image: a\n    deploy:\n      rollback_config:\n"
         "        failure_action: rollback\n",
         "stack.yml:6: services.web.deploy.rollback_config.failure_action: a rollback cannot "
         "roll back"),
        ("services:\n  web:\n    image: a\n    deploy:\n      update_config:\n"
         "        order: sideways\n",
         "stack.yml:6: services.web.deploy.update_config.order: invalid order 'sideways': "
         "expected one of stop-first, start-first"),
        ("services:\n  web:\n    image: a\n    deploy:\n      update_config:\n"
         "        max_failure_ratio: 2\n",
         "update_config.max_failure_ratio: invalid max failure ratio '2': expected a number "
         "between 0 and 1"),
        ("services:\n  web:\n    image: a\n    entrypoint: [sh]\n",
         "stack.yml:4: services.web.entrypoint: not supported by ovnet yet with an image"),
        ("services:\n  web:\n    image: a\n    ports: ['127.0.0.1:80:80']\n",
         "services.web.ports[0]: '127.0.0.1:80:80': a service port cannot name a host address"),
        ("services:\n  web:\n    image: a\nnetworks:\n  n: {driver: bridge}\n",
         "stack.yml:5: networks.n.driver: driver 'bridge': ovnet networks are overlays"),
        ("services: {}\n", "the file defines no service"),
    ],
)  # fmt: skip
def test_what_ovnet_cannot_honour_is_refused_with_its_place(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ComposeError) as e:
        stack(tmp_path, text)
    assert message in str(e.value)


def test_ignored_keys_are_collected_once(tmp_path: Path) -> None:
    s = stack(
        tmp_path,
        "services:\n  a:\n    image: x\n    restart: always\n    build: .\n"
        "  b:\n    image: x\n    build: .\n",
    )
    assert s.ignored == ["build", "restart"]
