"""F9 end to end: standalone tasks (`ovctl run`, `ps`, `rm`, `logs`) on three netns hosts.

Seed 000 first: three containers on h1, each serving port 80 from its own container, mapped to
h1's ports 8081, 8082 and 8083 and reached from a client namespace on the underlay; a fourth
mapping of 8081 on h1 is refused naming its holder and creates nothing. Then what `docker run`
users expect around it: the same port on another node, a port picked for `-p 80`, names on an
attachable network, the refusals, attached runs with their exit status and output.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bench import images
from tests.e2e.overlay import Overlay, TaskView, wait_for
from tests.e2e.test_containers import Bed, podman_cluster
from tests.e2e.test_mesh import SLEEPER, client_argv, dns, load

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and podman"),
]

# The image's httpd on port 80 instead of its own command's 8080 (a command given after --
# replaces the image's), ending on SIGTERM.
ON_80 = ["/bin/sh", "-c", "httpd -f -p 0.0.0.0:80 -h /who & trap 'kill $!; exit 0' TERM; wait"]


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    with podman_cluster("ovr", 3, 3) as b:
        yield b


def run_d(bed: Bed, name: str, *args: str, cmd: list[str] = ON_80) -> str:
    """`ovctl run -d` of the test image; the ID it printed."""
    out = bed.ov.ovctl("run", "-d", "--name", name, "--image", bed.tags[0], *args, "--", *cmd)
    return out.stdout.strip()


def ps(ov: Overlay, *args: str) -> dict[str, list[str]]:
    """`ovctl ps` rows by name (the table's columns split on runs of 2+ spaces)."""
    lines = ov.ovctl("ps", *args).stdout.splitlines()
    rows = [[c.strip() for c in line.split("  ") if c.strip()] for line in lines[1:]]
    return {r[1]: r for r in rows}


def running(ov: Overlay, name: str) -> TaskView:
    return ov.running(name, 1, timeout=60)[0]


def test_seed_000_three_containers_on_one_host_each_behind_its_own_port(bed: Bed) -> None:
    ov = bed.ov
    ids = [run_d(bed, f"web{n}", "--node", "h1", "-p", f"808{n}:80") for n in (1, 2, 3)]
    assert all(len(i) == 25 for i in ids), ids
    for n in (1, 2, 3):
        assert running(ov, f"web{n}").host == "h1"
    where = client_argv(ov, "outside")
    me = ov.dev.clients["outside"].addr
    h1 = ov.dev.host_addr("h1")
    answered: dict[int, str] = {}
    for n in (1, 2, 3):
        port = 8080 + n
        wait_for(f"{h1}:{port}", lambda p=port: load(ov, where, h1, p, 1)["failures"] == 0)  # type: ignore[misc]
        got = load(ov, where, h1, port, 20)
        assert got["failures"] == 0, got["errors"]
        assert len(got["answers"]) == 1, f"port {port} reaches one container: {got['answers']}"
        assert set(got["peers"]) == {me}, "the client's own address reaches the container"
        answered[port] = next(iter(got["answers"]))
        # On h1 itself, at 127.0.0.1 too.
        local = load(ov, ov.dev.nsenter_argv("h1", []), "127.0.0.1", port, 5)
        assert local["failures"] == 0 and set(local["answers"]) == {answered[port]}, local
    assert len(set(answered.values())) == 3, f"each port its own container: {answered}"
    assert len(bed.containers("h1")) == 3
    # A fourth mapping of 8081 on h1: refused, naming the holder; nothing was created.
    before = ov.ovctl("ps", "-a", "-q").stdout.split()
    r = ov.ovctl(
        "run", "-d", "--node", "h1", "--name", "web4", "-p", "8081:80", "--image", bed.tags[0],
        "--", *ON_80, check=False,
    )  # fmt: skip
    assert r.returncode != 0
    assert "port 8081/tcp on node h1 is already taken by 'web1'" in r.stderr, r.stderr
    assert ov.ovctl("ps", "-a", "-q").stdout.split() == before
    assert ov.ovctl("service", "inspect", "web4", check=False).returncode != 0
    time.sleep(1.5)
    assert len(bed.containers("h1")) == 3
    rows = ps(ov)
    assert rows["web1"][4] == "h1" and rows["web1"][-1] == "0.0.0.0:8081->80/tcp"
    assert "web1" not in ov.ovctl("service", "ls").stdout, "standalone tasks are ovctl ps's"
    # Bound to one address of h1: 127.0.0.1 on h1 answers, h1's underlay address refuses.
    run_d(bed, "web7", "--node", "h1", "-p", "127.0.0.1:8087:80")
    running(ov, "web7")
    on_h1 = ov.dev.nsenter_argv("h1", [])
    wait_for("127.0.0.1:8087", lambda: load(ov, on_h1, "127.0.0.1", 8087, 1)["failures"] == 0)
    assert load(ov, where, h1, 8087, 1)["failures"] == 1
    assert ps(ov)["web7"][-1] == "127.0.0.1:8087->80/tcp"
    ov.ovctl("rm", "-f", "web7")


def test_the_same_port_on_another_node_and_a_picked_port(bed: Bed) -> None:
    ov = bed.ov
    run_d(bed, "web5", "--node", "h2", "-p", "8081:80")
    run_d(bed, "web6", "--node", "h2", "-p", "80")
    running(ov, "web5")
    running(ov, "web6")
    rows = ps(ov)
    assert rows["web6"][-1].startswith("0.0.0.0:") and rows["web6"][-1].endswith("->80/tcp")
    picked = int(rows["web6"][-1].split(":")[1].split("-")[0])
    assert 32768 <= picked <= 60999
    where = client_argv(ov, "outside")
    h2 = ov.dev.host_addr("h2")
    for port in (8081, picked):
        wait_for(f"{h2}:{port}", lambda p=port: load(ov, where, h2, p, 1)["failures"] == 0)  # type: ignore[misc]
    assert load(ov, where, h2, 8081, 10)["failures"] == 0


def test_a_port_a_program_listens_on_is_refused_naming_it(bed: Bed) -> None:
    """A program listening in h2's namespace: its agent reports the port (heartbeats, at most
    every 2 s), and a mapping onto it is refused naming the program."""
    ov = bed.ov
    server = ov.dev.popen(
        "h2", [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8090"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def refused() -> str:
            r = ov.ovctl("run", "-d", "--name", "clash", "--node", "h2", "-p", "8090:80",
                         "--", *SLEEPER, check=False)  # fmt: skip
            if r.returncode == 0:  # before the agent's report reached the manager
                ov.ovctl("rm", "-f", "clash")
                return ""
            return r.stderr

        err = wait_for("the refusal", refused, timeout=30)
        assert "port 8090/tcp on node h2 is already taken by python" in err, err
        assert f"(pid {server.pid}), listening there" in err, err
    finally:
        server.kill()
        server.wait()


def test_names_on_an_attachable_network_both_ways(bed: Bed) -> None:
    ov = bed.ov
    ov.ovctl("network", "create", "--attachable", "--subnet", "10.93.0.0/24", "shared")
    ov.ovctl("network", "create", "--subnet", "10.94.0.0/24", "closed")
    run_d(bed, "db", "--node", "h3", "--network", "shared", cmd=[])  # the image's own command
    ov.ovctl("run", "-d", "--name", "cli", "--node", "h1", "--network", "shared", "--", *SLEEPER)
    db, cli = running(ov, "db"), running(ov, "cli")
    shared = ov.network_id("shared")
    wait_for("db from cli", lambda: dns(ov, cli, "db") == ["NOERROR", [db.ips[shared]]])
    wait_for("cli from db", lambda: dns(ov, db, "cli") == ["NOERROR", [cli.ips[shared]]])
    got = load(ov, ["ip", "netns", "exec", ov.sandbox(cli)], db.ips[shared], images.PORT, 5)
    assert got["failures"] == 0 and set(got["peers"]) == {cli.ips[shared]}, got
    r = ov.ovctl("run", "-d", "--name", "x", "--network", "closed", "--", *SLEEPER, check=False)
    assert r.returncode != 0
    assert "network closed is not attachable; create it with --attachable" in r.stderr, r.stderr


def test_attached_runs_logs_and_removal(bed: Bed) -> None:
    ov = bed.ov
    r = ov.ovctl(
        "run", "--name", "once", "--node", "h2", "--image", bed.tags[0], "--",
        "sh", "-c", "echo hello from the image; echo to stderr >&2; exit 3", check=False,
    )  # fmt: skip
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert r.stdout == "hello from the image\n" and "to stderr" in r.stderr
    logs = ov.ovctl("logs", "once")
    assert logs.stdout == "hello from the image\n" and "to stderr" in logs.stderr
    assert "once" not in ps(ov) and "once" in ps(ov, "-a")
    ov.ovctl("rm", "once")  # ended: no -f needed
    ghost = ov.ovctl(
        "run", "--name", "ghost", "--image", "localhost/ovnet-nope:1", "--", "true", check=False
    )
    assert ghost.returncode == 125, (ghost.stdout, ghost.stderr)
    assert "podman: localhost/ovnet-nope:1: image not known" in ghost.stderr
    ov.ovctl("rm", "ghost")
    refused = ov.ovctl("rm", "web2", check=False)
    assert refused.returncode == 1 and "web2 is running: stop and remove it with ovctl rm -f" in (
        refused.stderr
    )
    gone = ov.ovctl("rm", "nope", check=False)
    assert gone.returncode == 1 and "no task 'nope'" in gone.stderr, gone.stderr
    ov.ovctl("rm", "-f", "web1", "web2", "web3")
    wait_for("web1-3 gone from h1", lambda: len(bed.containers("h1")) == 0, timeout=60)
    for bad, message in (
        ("70000:80", "invalid host port 70000"),
        ("abc", "invalid container port 'abc'"),
    ):
        r = ov.ovctl("run", "-d", "-p", bad, "--", *SLEEPER, check=False)
        assert r.returncode == 2 and message in r.stderr, r.stderr


def _stamped(text: str) -> list[tuple[float, str]]:
    """(Unix time, text) of each line `ovctl logs -t` printed."""
    out = []
    for line in text.splitlines():
        stamp, _, rest = line.partition(" ")
        assert len(stamp) == 30 and stamp.endswith("Z"), line
        out.append((dt.datetime.fromisoformat(stamp).timestamp(), rest))
    return out


@pytest.mark.parametrize("image", [True, False], ids=["container", "process"])
def test_logs_have_a_time_per_line_and_since_cuts_between_lines(bed: Bed, image: bool) -> None:
    """The shim stamps each line as it reads it, for containers (podman hands the container
    the shim's pipes) and processes alike: two lines written a second apart by one task show
    a second apart, the stderr line after them, and --since between them prints the later."""
    ov = bed.ov
    name = f"stamps-{'c' if image else 'p'}"
    where = ["--image", bed.tags[0]] if image else []
    script = "echo a; sleep 1; echo b; echo c >&2"
    run = ov.ovctl("run", "--name", name, "--node", "h3", *where, "--", "sh", "-c", script)
    assert (run.stdout, run.stderr) == ("a\nb\n", "c\n")
    got = ov.ovctl("logs", "-t", name)
    (a, b), (c,) = _stamped(got.stdout), _stamped(got.stderr)
    assert (a[1], b[1], c[1]) == ("a", "b", "c")
    assert b[0] - a[0] >= 0.9, f"a and b were written a second apart: {got.stdout}"
    assert c[0] >= b[0]
    assert abs(a[0] - time.time()) < 120
    between = a[0] + 0.5
    utc = dt.datetime.fromtimestamp(between, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for since in (utc, f"{between:.3f}"):
        cut = ov.ovctl("logs", "--since", since, name)
        assert (cut.stdout, cut.stderr) == ("b\n", "c\n"), since
    late = ov.ovctl("logs", "-t", "--since", f"{c[0] + 1:.3f}", name)
    assert (late.stdout, late.stderr) == ("", "")
    ov.ovctl("rm", name)
