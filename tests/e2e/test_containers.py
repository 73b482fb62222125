"""F9 end to end: services of a locally built image on a dev cluster of four netns hosts.

A real etcd, manager and four agents (E2ECluster); every agent uses the tests' private podman
(bench/images.py: its own configuration and store) except h4's, which is told podman lives
where there is none, as on a host without podman. The image's own command serves, from
busybox httpd, "CONTAINER-HOSTNAME CLIENT-ADDRESS" at / (so tests/e2e/loadclient.py counts
answers per container), the page that exists only in the image at /page.html, and its
release (1 or 2: two tags of the image) at /release.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agent.executor.container import OWNER_LABEL
from bench import images
from tests.e2e.overlay import Overlay, run, wait_for
from tests.e2e.test_mesh import SLEEPER, Loop, client_argv, dns, load, sandbox_argv, task_ips, vip
from tests.support.beds import require
from tests.support.cluster import E2ECluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and podman"),
]

PORT = images.PORT
PUBLISHED = 18280
CHECK = ["--health-cmd", f"wget -qO- http://127.0.0.1:{PORT}/page.html", "--health-interval",
         "0.3s", "--health-retries", "2"]  # fmt: skip
GET = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode(), end='')"
)


class Bed:
    def __init__(self, ov: Overlay, podman: images.Podman, tags: tuple[str, str]) -> None:
        self.ov, self.podman, self.tags = ov, podman, tags

    def containers(self, host: str) -> dict[str, str]:
        """Container ID -> start time of the host's agent's containers, from podman itself."""
        owner = f"label={OWNER_LABEL}={self.ov.names(host).prefix}"
        out = self.podman.run(
            "ps", "--filter", owner, "--format", "{{.ID}} {{.StartedAt}}", "--no-trunc"
        ).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


@contextmanager
def podman_cluster(prefix: str, hosts: int, grace_s: float, **agent: list[str]) -> Iterator[Bed]:
    """A dev cluster whose agents run the tests' podman (bench/images.py) with both test
    image tags ready; `agent` adds arguments to one host's agent (h4=[...]). Afterwards no
    container of it is left in podman's store (`ovctl dev down` removes them)."""
    require(images.available(), "podman cannot run here")
    podman = images.Podman()
    tags = (images.ensure_image(podman, 1), images.ensure_image(podman, 2))
    dev = E2ECluster(
        name_prefix=f"{prefix}{os.getpid() % 100000}-",
        hosts=hosts,
        # Shared with test_mesh and others: modules of one run go one after another.
        subnet="198.51.100.192/27",
        manager_args=["--heartbeat-period", "0.5", "--heartbeat-grace", str(grace_s)],
        die_with_parent=True,
        host_agent_args=agent,
    )
    dev.agent_args = [
        "--reconcile-interval", "1", "--stop-timeout", "5", "--drain-delay", "2",
        *podman.agent_args(),
    ]  # fmt: skip
    try:
        dev.up()
        yield Bed(Overlay(dev), podman, tags)
    finally:
        teardown = dev.down()
        left = podman.run(
            "ps", "-a", "--filter", f"name=^{dev.name_prefix}", "--format", "{{.Names}}"
        ).stdout.split()
        assert not left, f"containers left after ovctl dev down: {left}"
        assert not teardown.problems, teardown.problems


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    # A killed agent's node must not be declared down (and its tasks moved) before the agent
    # is back: what is tested here is adoption, on a loaded CI machine too.
    with podman_cluster("ovc", 4, 15, h4=["--podman", "/nonexistent/podman"]) as b:
        ov = b.ov
        ov.ovctl("network", "create", "--subnet", "10.91.0.0/24", "imgnet")
        yield b


def web(bed: Bed) -> list[Any]:
    """img: 3 replicas of the image's own command on imgnet, published at 18280."""
    ov = bed.ov
    if ov.ovctl("service", "inspect", "img", check=False).returncode != 0:
        ov.ovctl(
            "service", "create", "-d", "--name", "img", "--image", bed.tags[0], "--replicas", "3",
            "--network", "imgnet", "--publish", f"{PUBLISHED}:{PORT}", *CHECK,
        )  # fmt: skip
    return ov.running("img", 3, timeout=90)


def get(where: list[str], url: str) -> str:
    return run([*where, sys.executable, "-c", GET, url], check=False)


def task_error(ov: Overlay, service: str) -> str:
    """The error of the service's newest task that has one ("" while none has)."""
    tasks = ov.json("service", "ps", service)
    errs = [t["status"].get("err", "") for t in tasks if t["status"].get("err")]
    return str(errs[0]) if errs else ""


# ---------------------------------------------------------------- tests


def test_image_service_answers_through_the_mesh_on_every_host(bed: Bed) -> None:
    ov = bed.ov
    t0 = time.monotonic()
    tasks = web(bed)
    print(f"\n3 image replicas running after {time.monotonic() - t0:.1f} s")
    # h4 has no podman: its agent said so, and the scheduler placed nothing there.
    assert sorted(t.host for t in tasks) == ["h1", "h2", "h3"]
    h4 = ov.nodes()["h4"]["description"]["unavailable"]
    assert "podman not found" in h4["containers"]
    where = client_argv(ov, "outside")
    hostnames: set[str] = set()
    for host in ov.dev.hosts:
        addr = ov.dev.host_addr(host)
        wait_for(
            f"published port on {host}",
            lambda a=addr: load(ov, where, a, PUBLISHED, 3)["failures"] == 0,  # type: ignore[misc]
        )
        got = load(ov, where, addr, PUBLISHED, 60)
        assert got["failures"] == 0, got["errors"]
        assert len(got["answers"]) == 3, f"every replica answers via {host}: {got['answers']}"
        hostnames |= set(got["answers"])
        # The page that exists only in the image, through the mesh.
        assert get(where, f"http://{addr}:{PUBLISHED}/page.html") == images.PAGE
        # On the host itself, at 127.0.0.1.
        local = load(ov, ov.dev.nsenter_argv(host, []), "127.0.0.1", PUBLISHED, 30)
        assert local["failures"] == 0, (host, local["errors"])
        assert len(local["answers"]) == 3, (host, local["answers"])
    assert len(hostnames) == 3, "three containers, the same three from every host"
    # The containers podman runs are the tasks' (one per host, named with the agent's prefix).
    for host in ("h1", "h2", "h3"):
        assert len(bed.containers(host)) == 1, host
    table = ov.ovctl("service", "ls").stdout
    assert bed.tags[0] in table
    pretty = ov.ovctl("service", "inspect", "--pretty", "img").stdout
    assert f"Image:            {bed.tags[0]}" in pretty


def test_vip_and_task_names_from_a_task_on_another_host(bed: Bed) -> None:
    ov = bed.ov
    web(bed)
    ov.ovctl(
        "service", "create", "-d", "--name", "cli", "--network", "imgnet",
        "--constraint", "node.hostname==h4", "--", *SLEEPER,
    )  # fmt: skip
    cli = ov.running("cli", 1)[0]
    assert cli.host == "h4", "a process task runs on the host without podman"
    want = task_ips(ov, "img", "imgnet")
    wait_for("tasks.img", lambda: dns(ov, cli, "tasks.img") == ["NOERROR", sorted(want)])
    the_vip = vip(ov, "img", "imgnet")
    assert dns(ov, cli, "img") == ["NOERROR", [the_vip]]
    wait_for("VIP", lambda: load(ov, sandbox_argv(ov, cli), the_vip, PORT, 3)["failures"] == 0)
    got = load(ov, sandbox_argv(ov, cli), the_vip, PORT, 60)
    assert got["failures"] == 0 and len(got["answers"]) == 3, got
    # No SNAT inside the overlay: the containers see the client task's own address.
    assert set(got["peers"]) == {cli.ips[ov.network_id("imgnet")]}


def test_rolling_to_a_second_tag_fails_no_request(bed: Bed) -> None:
    ov = bed.ov
    web(bed)
    where = client_argv(ov, "outside")
    before = set(load(ov, where, ov.dev.host_addr("h2"), PUBLISHED, 30)["answers"])
    assert get(where, f"http://{ov.dev.host_addr('h1')}:{PUBLISHED}/release") == "1\n"
    cli = ov.running("cli", 1)[0] if ov.tasks("cli") else None
    loops = [Loop(where, ov.dev.host_addr("h1"), PUBLISHED)]
    if cli is not None:
        loops.append(Loop(sandbox_argv(ov, cli), vip(ov, "img", "imgnet"), PORT))
    t0 = time.monotonic()
    try:
        ov.ovctl(
            "service", "update", "-d", "--image", bed.tags[1], "--update-parallelism", "1",
            "--update-delay", "0.5s", "img",
        )  # fmt: skip

        def rolled() -> bool:
            ts = [t for t in ov.json("service", "ps", "img")
                  if t["desired_state"] == "TASK_STATE_RUNNING"]  # fmt: skip
            version = ov.json("service", "inspect", "img")[0]["spec_version"]
            return len(ts) == 3 and all(
                t["status"]["state"] == "TASK_STATE_RUNNING"
                and t["spec_version"] == version
                and t["spec"]["image"] == bed.tags[1]
                for t in ts
            )

        # Polled once a second: each poll is two ovctl processes (~0.3 s of CPU each), CPU
        # the replicas and podman need during the roll on a 2-CPU machine (CI once saw one
        # request of 142 time out in a roll on a slow pass).
        wait_for("the rolling update", rolled, timeout=120, every=1.0)
        rolled_s = time.monotonic() - t0
        time.sleep(2)
    finally:
        tallies = [loop.finish() for loop in loops]
    print(f"\nrolled 3 image replicas in {rolled_s:.1f} s; request loops: {tallies}")
    for tally in tallies:
        assert tally["requests"] > 50
        assert tally["failures"] == 0, tally["errors"]
    after = load(ov, where, ov.dev.host_addr("h2"), PUBLISHED, 30)
    assert after["failures"] == 0 and len(after["answers"]) == 3
    assert not set(after["answers"]) & before, "new containers"
    assert get(where, f"http://{ov.dev.host_addr('h3')}:{PUBLISHED}/release") == "2\n"


def test_a_killed_agent_adopts_its_containers(bed: Bed) -> None:
    ov = bed.ov
    web(bed)

    def one_container() -> dict[str, str] | None:
        found = bed.containers("h2")
        return found if len(found) == 1 else None

    # A replica replaced by the roll before drains (5 s), then goes.
    before = wait_for("h2's replaced container gone", one_container, timeout=30)
    tasks_before = {t.id for t in ov.running("img", 3)}
    ov.dev.kill_agent("h2")
    assert bed.containers("h2") == before, "the containers live on without their agent"
    ov.dev.start_agent("h2")
    time.sleep(3)  # a few reconcile passes of the new agent
    assert bed.containers("h2") == before, "same container IDs, started once"
    assert {t.id for t in ov.running("img", 3)} == tasks_before
    where = client_argv(ov, "outside")
    got = load(ov, where, ov.dev.host_addr("h2"), PUBLISHED, 30)
    assert got["failures"] == 0 and len(got["answers"]) == 3, got


def test_a_host_without_podman_fails_the_task_saying_so(bed: Bed) -> None:
    ov = bed.ov
    ov.ovctl(
        "service", "create", "-d", "--name", "nopod", "--image", bed.tags[0],
        "--constraint", "node.hostname==h4", "--restart-condition", "none",
    )  # fmt: skip
    err = wait_for("the task's error", lambda: task_error(ov, "nopod"), timeout=30)
    assert "podman not found" in err, err
    ov.ovctl("service", "rm", "nopod")


def test_an_unknown_image_fails_the_task_with_podmans_message(bed: Bed) -> None:
    ov = bed.ov
    ov.ovctl(
        "service", "create", "-d", "--name", "ghost", "--image", "localhost/ovnet-nope:1",
        "--restart-condition", "none",
    )  # fmt: skip
    err = wait_for("the task's error", lambda: task_error(ov, "ghost"), timeout=30)
    assert err == "podman: localhost/ovnet-nope:1: image not known", err
    ov.ovctl("service", "rm", "ghost")
    bad = ov.ovctl(
        "service", "create", "-d", "--name", "bad", "--image", "Not/An:Image:Ref", check=False
    )
    assert bad.returncode != 0
    assert "invalid image reference 'Not/An:Image:Ref'" in bad.stderr, bad.stderr
    assert ov.ovctl("service", "inspect", "bad", check=False).returncode != 0
