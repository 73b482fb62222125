"""F11 end to end: a compose stack on a 3-host dev cluster (real agents, VXLAN, nftables, DNS).

Three services on two networks (scripts/whoami.py and a sleeper as process tasks): web is
published through the routing mesh with a health check, api has an alias and a host-mode
port, db is dnsrr, placed off h1 at most one per node. The published port answers on every
host, services reach each other by short name, and `stack rm` leaves no service, network,
namespace, FDB entry or nft rule behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.overlay import Overlay, TaskView, run, wait_for
from tests.e2e.test_mesh import WHOAMI, client_argv, dns
from tests.support.cluster import E2ECluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

WEB_PORT = 18680
API_PORT = 18690
CHECK = "import socket; socket.create_connection(('127.0.0.1', 8080), 1)"


def compose(tmp: Path) -> Path:
    whoami = json.dumps(WHOAMI)
    text = f"""\
services:
  web:
    command: {whoami}
    networks: [front]
    ports: ["{WEB_PORT}:8080"]
    healthcheck:
      test: ["CMD", "{sys.executable}", "-c", "{CHECK}"]
      interval: 300ms
      retries: 2
    deploy:
      replicas: 2
  api:
    command: {whoami}
    networks:
      front:
        aliases: [gateway]
      back: {{}}
    ports:
      - {{target: 8080, published: {API_PORT}, mode: host}}
    environment:
      ROLE: ${{ROLE:-api}}
  db:
    command: {whoami}
    networks: [back]
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      placement:
        constraints: [node.hostname!=h1]
        max_replicas_per_node: 1
    build: .
networks:
  front:
    ipam:
      config:
        - subnet: 10.96.0.0/24
  back:
    internal: true
"""
    path = tmp / "stack.yml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def ov(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overlay]:
    dev = E2ECluster(
        name_prefix=f"ovs{os.getpid() % 100000}-",
        hosts=3,
        # Shared with test_mesh and others: modules of one run go one after another.
        subnet="198.51.100.192/27",
        manager_args=["--heartbeat-period", "0.5", "--heartbeat-grace", "3"],
        die_with_parent=True,
    )
    dev.agent_args = ["--reconcile-interval", "1", "--stop-timeout", "2", "--drain-delay", "1"]
    try:
        dev.up()
        ov = Overlay(dev)
        r = ov.ovctl("stack", "deploy", "-c", str(compose(tmp_path_factory.mktemp("st"))), "app")
        assert r.stderr.count("Ignoring unsupported options: build") == 1, r.stderr
        # It waited until every service was real on every host.
        for svc in ("web", "api", "db"):
            assert f"app_{svc} verify: Service converged" in r.stdout, r.stdout
        yield ov
    finally:
        dev.down()


def task_on(ov: Overlay, service: str, count: int) -> list[TaskView]:
    return ov.running(service, count, timeout=60)


def get(where: list[str], url: str) -> str:
    code = (
        "import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode(), end='')"
    )
    return run([*where, sys.executable, "-c", code, url], check=False)


def test_an_encrypted_network_this_kernel_cannot_carry_is_refused(
    ov: Overlay, tmp_path: Path
) -> None:
    """The same file with its back network encrypted: these hosts' kernel has no ESP, which
    each agent said at registration; the deploy says so and creates nothing (the fixture
    deployed the file without `encrypted`)."""
    file = compose(tmp_path)
    file.write_text(file.read_text().replace("    internal: true\n", "    internal: true\n"
                                             "    driver_opts: {encrypted: ''}\n"))  # fmt: skip
    before = {n["spec"]["name"] for n in ov.json("network", "ls")}
    r = ov.dev.ovctl("stack", "deploy", "-c", str(file), "enc")
    assert r.returncode == 1, r.stdout
    assert (
        "Error: network enc_back is encrypted (driver_opts: encrypted) but no Ready node "
        "can encrypt (h1: this host's kernel cannot encrypt (no ESP support);" in r.stderr
    ), r.stderr
    assert {n["spec"]["name"] for n in ov.json("network", "ls")} == before
    assert not [s for s in ov.json("service", "ls") if s["spec"]["name"].startswith("enc_")]


def test_the_stack_runs_as_its_file_says(ov: Overlay) -> None:
    db = task_on(ov, "app_db", 2)
    assert {t.host for t in db} == {"h2", "h3"}
    task_on(ov, "app_web", 2)
    task_on(ov, "app_api", 1)
    names = {s["spec"]["name"] for s in ov.json("stack", "services", "app")}
    assert names == {"app_web", "app_api", "app_db"}


def test_the_published_port_answers_on_every_host(ov: Overlay) -> None:
    task_on(ov, "app_web", 2)
    where = client_argv(ov, "outside")
    for host in ("h1", "h2", "h3"):
        url = f"http://{ov.dev.host_addr(host)}:{WEB_PORT}/"

        def answers(u: str = url) -> str:
            return get(where, u)

        wait_for(f"web through the mesh on {host}", answers, timeout=30)
    # The host-mode port, on api's host only, keeps the client's address.
    api = task_on(ov, "app_api", 1)[0]
    url = f"http://{ov.dev.host_addr(api.host)}:{API_PORT}/"
    answer = wait_for("api's host-mode port", lambda: get(where, url), timeout=30)
    assert answer.split()[1] == ov.dev.clients["outside"].addr, answer


def test_services_reach_each_other_by_short_name(ov: Overlay) -> None:
    api = task_on(ov, "app_api", 1)[0]
    db = task_on(ov, "app_db", 2)
    back = ov.network_id("app_back")
    rcode, answers = dns(ov, api, "db")
    assert rcode == "NOERROR" and set(answers) == {t.ips[back] for t in db}
    code = (
        "import urllib.request\n"
        "print(urllib.request.urlopen('http://web:8080/', timeout=5).read().decode())"
    )
    r = ov.in_sandbox(api, code)
    assert r.returncode == 0, r.stderr
    # The alias of api on front resolves from web's side.
    web = task_on(ov, "app_web", 2)[0]
    rcode, answers = dns(ov, web, "gateway")
    assert rcode == "NOERROR" and answers, answers


def test_stack_rm_leaves_nothing_behind(ov: Overlay) -> None:
    task_on(ov, "app_web", 2)
    ov.ovctl("stack", "rm", "app")
    assert not [s for s in ov.json("service", "ls") if s["spec"]["name"].startswith("app_")]
    assert not [n for n in ov.json("network", "ls") if n["spec"]["name"].startswith("app_")]

    def clean() -> bool:
        for host in ("h1", "h2", "h3"):
            if ov.task_namespaces(host):
                return False
            rules = subprocess.run(
                ov.dev.nsenter_argv(host, ["nft", "list", "ruleset"]),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            if str(WEB_PORT) in rules or str(API_PORT) in rules:
                return False
        return True

    wait_for("no namespace, FDB entry or nft rule of the stack on any host", clean, timeout=30)
