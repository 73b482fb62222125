"""`ovctl stack deploy|ls|ps|services|rm` against a real manager and etcd, with scripted agents
(tests/integration/agents.py): what a compose file becomes, what a redeploy touches, what a
refused deploy leaves (nothing), and that `stack rm` removes everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from proto import control_pb2 as cpb
from proto import objects_pb2 as pb
from tests.integration.agents import AgentPool
from tests.integration.conftest import ManagerCluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

STACK = """\
services:
  web:
    command: ["sleep", "1d"]
    networks:
      front:
        aliases: [www]
    ports:
      - "18380:8080"
      - target: 9090
        published: 18390
        mode: host
    healthcheck:
      test: ["CMD-SHELL", "true"]
      interval: 2s
      retries: 2
    deploy:
      replicas: 2
      placement:
        constraints: [node.hostname!=h3]
        max_replicas_per_node: 1
  api:
    command: sleep 1d
    environment:
      MODE: ${MODE:-prod}
    networks: [front, back]
  db:
    command: [sleep, 1d]
    networks: [back]
    deploy:
      endpoint_mode: dnsrr
networks:
  front: {}
  back:
    driver_opts:
      encrypted: ""
    ipam:
      config:
        - subnet: 10.77.0.0/24
"""


def write(tmp_path: Path, text: str, name: str = "stack.yml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def services(m: ManagerCluster) -> dict[str, pb.Service]:
    resp = m.stub().ListServices(cpb.ListServicesRequest(), timeout=10)
    return {s.spec.name: s for s in resp.services}


def networks(m: ManagerCluster) -> dict[str, pb.Network]:
    resp = m.stub().ListNetworks(cpb.ListNetworksRequest(), timeout=10)
    return {n.spec.name: n for n in resp.networks}


def test_deploy_redeploy_and_remove_a_stack(
    managers: ManagerCluster, agents: AgentPool, tmp_path: Path
) -> None:
    for host in ("h1", "h2", "h3"):
        agents.add(managers.addrs, host)
    file = write(tmp_path, STACK)
    r = managers.ovctl("stack", "deploy", "-d", "-c", file, "app")
    assert "Creating network app_front" in r.stdout and "Creating service app_web" in r.stdout
    # An encrypted network is created, with the manager's warning when no node can encrypt.
    nets = networks(managers)
    assert nets["app_back"].spec.encrypted and nets["app_back"].subnet == "10.77.0.0/24"
    assert nets["app_front"].spec.labels["com.docker.stack.namespace"] == "app"
    svcs = services(managers)
    assert set(svcs) >= {"app_web", "app_api", "app_db"}
    web = svcs["app_web"].spec
    assert [list(a.aliases) for a in web.networks] == [["web", "www"]]
    assert web.placement.max_replicas_per_node == 1
    assert list(web.placement.constraints) == ["node.hostname!=h3"]
    assert list(web.health_check.command) == ["sh", "-c", "true"]
    ports = {(p.published_port, p.publish_mode) for p in web.endpoint.ports}
    assert ports == {(18380, pb.PUBLISH_MODE_INGRESS), (18390, pb.PUBLISH_MODE_HOST)}
    assert list(svcs["app_api"].spec.env) == ["MODE=prod"]
    assert svcs["app_db"].spec.endpoint.mode == pb.ENDPOINT_MODE_DNSRR
    assert [list(a.aliases) for a in svcs["app_api"].spec.networks] == [["api"], ["api"]]

    def all_running() -> bool:
        tasks = managers.ovctl_json("stack", "ps", "app")
        running = [t for t in tasks if t["status"].get("state") == "TASK_STATE_RUNNING"]
        return len(running) == 4

    wait_for("4 running tasks", all_running)
    assert "app" in managers.ovctl("stack", "ls").stdout
    listed = managers.ovctl("stack", "services", "app").stdout
    assert "app_web" in listed and "app_db" in listed

    # Redeploy with one service changed: only that one gets a new spec version.
    before = {n: s.spec_version for n, s in services(managers).items()}
    write(tmp_path, STACK.replace("MODE:-prod", "MODE:-dev"))
    r = managers.ovctl("stack", "deploy", "-d", "-c", file, "app")
    assert "Updating service app_api" in r.stdout
    assert "Service app_web is unchanged" in r.stdout
    after = {n: s.spec_version for n, s in services(managers).items()}
    assert after["app_api"] == before["app_api"] + 1
    assert (after["app_web"], after["app_db"]) == (before["app_web"], before["app_db"])

    # A changed network is refused, and nothing changes.
    write(tmp_path, STACK.replace("10.77.0.0/24", "10.78.0.0/24"))
    keys = managers.dump()
    r = managers.ovctl("stack", "deploy", "-d", "-c", file, "app", check=False)
    assert r.returncode == 1
    assert "network app_back differs from the files" in r.stderr, r.stderr
    assert managers.dump() == keys

    r = managers.ovctl("stack", "rm", "app")
    assert "Removing service app_web" in r.stdout
    assert not [n for n in services(managers) if n.startswith("app_")]
    assert not [n for n in networks(managers) if n.startswith("app_")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "services:\n  web:\n    command: [sleep, 1d]\n    bogus: 1\n",
            "stack.yml:4: services.web.bogus: unknown service key",
        ),
        (
            "services:\n  web:\n    command: [sleep, 1d]\n    deploy:\n      replicas: two\n",
            "stack.yml:5: services.web.deploy.replicas: expected a whole number >= 0, got 'two'",
        ),
        (
            "services:\n  web:\n    command: [sleep, 1d]\n    networks: [nope]\n",
            "services.web.networks: network 'nope' is not defined under the top-level networks",
        ),
        (
            "services:\n  a:\n    command: [sleep, 1d]\n    ports: ['18480:80']\n"
            "  b:\n    command: [sleep, 1d]\n    ports: ['18480:81']\n",
            "stack.yml:7: services.b.ports[0]: port 18480 is already published by service 'a'",
        ),
        (
            "services:\n  web:\n    image: ${IMAGE:?set IMAGE to the image to run}\n",
            "stack.yml:3: services.web.image: required variable IMAGE is missing a value: "
            "set IMAGE to the image to run",
        ),
        ("services:\n  web: [\n", "stack.yml:3:1: YAML syntax error"),
        (
            "services:\n  web:\n    build: .\n    links: [db]\n    extends: base\n",
            "stack.yml:5: services.web.extends: not supported by docker stack deploy nor ovnet",
        ),
        (
            "services:\n  web:\n    environment: {A: b}\n",
            "services.web: a service needs an image or a command",
        ),
    ],
)
def test_bad_compose_input_is_refused_before_anything_is_created(
    managers: ManagerCluster, tmp_path: Path, text: str, message: str
) -> None:
    file = write(tmp_path, text)
    keys = managers.dump()
    r = managers.ovctl("stack", "deploy", "-d", "-c", file, "bad", check=False)
    assert r.returncode == 1, r.stdout
    assert message in r.stderr, r.stderr
    assert managers.dump() == keys


def test_two_files_merge_and_a_conflict_between_them_names_both(
    managers: ManagerCluster, agents: AgentPool, tmp_path: Path
) -> None:
    agents.add(managers.addrs, "h1")
    base = write(tmp_path, "services:\n  web:\n    command: [sleep, 1d]\n    ports: ['18580:80']\n")
    more = write(tmp_path, "services:\n  web:\n    deploy:\n      replicas: 3\n", "more.yml")
    managers.ovctl("stack", "deploy", "-d", "-c", base, "-c", more, "two")
    web = services(managers)["two_web"]
    assert web.spec.replicated.replicas == 3 and web.endpoint.ports[0].published_port == 18580
    bad = write(tmp_path, "services:\n  web:\n    ports: '18581:80'\n", "bad.yml")
    r = managers.ovctl("stack", "deploy", "-d", "-c", base, "-c", bad, "two", check=False)
    assert r.returncode == 1
    assert "bad.yml:3" in r.stderr and "stack.yml:4" in r.stderr, r.stderr
    # Ignored keys are named once, and the deploy goes on.
    ign = write(
        tmp_path,
        "services:\n  web:\n    command: [sleep, 1d]\n    build: .\n    restart: always\n",
        "ign.yml",
    )
    r = managers.ovctl("stack", "deploy", "-d", "-c", ign, "three")
    assert r.stderr.count("Ignoring unsupported options: build, restart") == 1
    managers.ovctl("stack", "rm", "two", "three")


def test_an_encrypted_network_no_node_can_carry_is_refused_before_anything_is_created(
    managers: ManagerCluster, agents: AgentPool, tmp_path: Path
) -> None:
    for host in ("h1", "h2"):
        agents.add(managers.addrs, host, unavailable={"ipsec": "no ESP support"})
    file = write(tmp_path, STACK)
    keys = managers.dump()
    r = managers.ovctl("stack", "deploy", "-d", "-c", file, "enc", check=False)
    assert r.returncode == 1, r.stdout
    assert (
        "Error: network enc_back is encrypted (driver_opts: encrypted) but no Ready node can "
        "encrypt (h1: no ESP support; h2: no ESP support)"
    ) in r.stderr, r.stderr
    assert "(nothing was created)" in r.stderr
    assert managers.dump() == keys
    # The same file without `encrypted` deploys.
    plain = write(tmp_path, STACK.replace('    driver_opts:\n      encrypted: ""\n', ""), "p.yml")
    r = managers.ovctl("stack", "deploy", "-d", "-c", plain, "enc")
    assert "Creating network enc_back" in r.stdout
    assert not networks(managers)["enc_back"].spec.encrypted
    managers.ovctl("stack", "rm", "enc")
