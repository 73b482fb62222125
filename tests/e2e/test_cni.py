"""F10 end to end: containers of podman (its CNI backend) on an ovnet network, 3 netns hosts.

A real etcd, manager and three agents (E2ECluster). The service `web` (scripts/whoami.py) runs
on h2 and h3 on the attachable network appnet. On h1, podman runs inside h1's namespace with a
private CONTAINERS_CONF whose CNI network_config_dir is the directory where h1's agent writes
its conflists and whose plugin dir holds the `ovnet-cni` console script of this venv: so
`podman run --network appnet` goes podman -> ovnet-cni -> h1's agent (unix socket) -> the
manager (the address) -> h1's agent again (the veth into podman's namespace, the resolver at
127.0.0.11 there, the endpoint gossiped to h2 and h3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.executor.container import Podman as AgentPodman
from bench import images
from tests.e2e.overlay import Overlay, TaskView, wait_for
from tests.e2e.test_mesh import WHOAMI, dns
from tests.support.beds import require
from tests.support.cluster import E2ECluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and podman"),
]

SUBNET = "10.94.0.0/24"
PLUGIN_DIR = Path(sys.executable).parent  # this venv's bin: ovnet-cni is there


class Bed:
    def __init__(self, ov: Overlay, tag: str, conf: Path) -> None:
        self.ov, self.tag, self.conf = ov, tag, conf
        self.prefix = ov.dev.name_prefix
        self.net_id = ov.network_id("appnet")  # known while the manager is down, too
        cache = images.Podman()
        self.podman = AgentPodman(
            containers_conf=str(conf),
            root=str(cache.home / "root"),
            runroot=str(cache.home / "run"),
            storage_driver="vfs",
            pull="never",
        )

    def podman_h1(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """podman inside h1's namespace, with the CNI configuration of this bed."""
        r = subprocess.run(
            self.ov.dev.nsenter_argv("h1", self.podman.argv(*args)),
            env={**os.environ, **self.podman.env()},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: exit {r.returncode}: {r.stderr}")
        return r

    def name(self, short: str) -> str:
        return f"{self.prefix}{short}"

    def endpoints(self, kind: str = "attachment") -> dict[str, dict[str, Any]]:
        """appnet's endpoints of a kind by name, as `ovctl network inspect` lists them."""
        net = self.ov.json("network", "inspect", "appnet")[0]
        return {e["name"]: e for e in net.get("endpoints", []) if e.get("kind") == kind}

    def web_task(self, host: str) -> TaskView:
        return next(t for t in self.ov.running("web", 2) if t.host == host)

    def outer_veths(self, host: str) -> list[str]:
        """The veths in `host`'s namespace of appnet: one per local task or attachment (none
        when the host has no endpoint on it: then the namespace is gone too)."""
        ns = self.ov.names(host).network_ns(self.net_id)
        if ns not in self.ov.netns_list():
            return []
        out = subprocess.run(
            ["ip", "-n", ns, "-o", "link", "show", "type", "veth"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


CONTAINERS_CONF = """\
# Written by tests/e2e/test_cni.py: the tests' podman, with its CNI backend on ovnet's conflists.
[containers]
default_ulimits = ["nofile=1000:1000", "nproc=1000:1000"]

[engine]
runtime = "runc"

[network]
network_backend = "cni"
network_config_dir = "{conf_dir}"
cni_plugin_dirs = ["{plugin_dir}"]
"""


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    require(images.available(), "podman cannot run here")
    assert (PLUGIN_DIR / "ovnet-cni").exists(), f"no ovnet-cni in {PLUGIN_DIR}: pip install -e ."
    tag = images.ensure_image(images.Podman(), 1)
    dev = E2ECluster(
        name_prefix=f"ovn{os.getpid() % 100000}-",
        hosts=3,
        # Shared with test_mesh and others: modules of one run go one after another.
        subnet="198.51.100.192/27",
        manager_args=["--heartbeat-period", "0.5", "--heartbeat-grace", "15"],
        die_with_parent=True,
    )
    dev.agent_args = ["--reconcile-interval", "1", "--stop-timeout", "2", "--drain-delay", "1"]
    b: Bed | None = None
    try:
        dev.up()
        conf = dev.state_dir / "h1-containers.conf"
        conf.write_text(
            CONTAINERS_CONF.format(
                conf_dir=dev.state_dir / "h1" / "cni" / "net.d", plugin_dir=PLUGIN_DIR
            )
        )
        ov = Overlay(dev)
        ov.ovctl("network", "create", "--attachable", "--subnet", SUBNET, "appnet")
        ov.ovctl("network", "create", "--subnet", "10.95.0.0/24", "plainnet")
        ov.ovctl(
            "service", "create", "-d", "--name", "web", "--replicas", "2", "--network", "appnet",
            "--constraint", "node.hostname!=h1", "--", *WHOAMI,
        )  # fmt: skip
        ov.running("web", 2)
        b = Bed(ov, tag, conf)
        yield b
    finally:
        if b is not None:
            # Containers first, while h1's agent answers their DEL.
            left = b.podman_h1(
                "ps", "-a", "--filter", f"name=^{dev.name_prefix}", "--format", "{{.Names}}",
                check=False,
            ).stdout.split()  # fmt: skip
            if left:
                b.podman_h1("rm", "-f", *left, check=False)
        dev.down()


def attached_within(bed: Bed, name: str, timeout: float = 10.0) -> dict[str, Any]:
    return wait_for(
        f"{name} in network inspect", lambda: bed.endpoints().get(name), timeout=timeout
    )


def fetch(bed: Bed, task: TaskView, host: str) -> str:
    """GET http://HOST:8080/ from inside a task's sandbox ("" if it fails): the image's page
    answers "CONTAINER-HOSTNAME CLIENT-ADDRESS" (busybox httpd, HTTP/1.1)."""
    code = (
        "import urllib.request\n"
        f"print(urllib.request.urlopen('http://{host}:8080/', timeout=5).read().decode())"
    )
    r = bed.ov.in_sandbox(task, code)
    return r.stdout if r.returncode == 0 else ""


def resolves(bed: Bed, task: TaskView, name: str) -> list[str]:
    rcode, answers = dns(bed.ov, task, name)
    return list(answers) if rcode == "NOERROR" else []


# ---------------------------------------------------------------- tests


def test_podman_lists_the_attachable_networks_only(bed: Bed) -> None:
    names = bed.podman_h1("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert "appnet" in names
    assert "plainnet" not in names and "ingress" not in names


def test_a_podman_container_reaches_a_service_by_name_on_other_hosts(bed: Bed) -> None:
    out = bed.podman_h1(
        "run", "--rm", "--name", bed.name("client1"), "--network", "appnet", bed.tag,
        "wget", "-qO-", "http://web:8080/",  # (busybox-static's wget -T segfaults)
    ).stdout  # fmt: skip
    replica, client = out.split()
    web_ips = {t.ips[bed.net_id] for t in bed.ov.running("web", 2)}
    assert replica in web_ips, (out, web_ips)
    assert client.startswith("10.94.0."), out
    # The container is gone again, and so is its address.
    wait_for("client1 released", lambda: bed.name("client1") not in bed.endpoints(), timeout=5)


def test_a_task_reaches_the_podman_container_by_its_name(bed: Bed) -> None:
    name = bed.name("pc1")
    bed.podman_h1("run", "-d", "--name", name, "--network", "appnet", bed.tag)
    ep = attached_within(bed, name)
    assert ep["node"] == "h1" and ep["address"].startswith("10.94.0.")
    ip = ep["address"].split("/")[0]
    task = bed.web_task("h3")
    wait_for(f"{name} resolving on h3", lambda: resolves(bed, task, name) == [ip], timeout=5)
    # The image's page answers "CONTAINER-HOSTNAME CLIENT-ADDRESS": the task's own address.
    page = fetch(bed, task, name)
    assert page.split()[1:] == [task.ips[bed.net_id]], page


def test_podman_rm_frees_the_address_on_every_host_and_it_comes_back(bed: Bed) -> None:
    name = bed.name("pc1")
    if name not in bed.endpoints():
        bed.podman_h1("run", "-d", "--name", name, "--network", "appnet", bed.tag)
        attached_within(bed, name)
    veths = len(bed.outer_veths("h1"))
    t0 = time.monotonic()
    bed.podman_h1("rm", "-f", name)
    tasks = [bed.web_task("h2"), bed.web_task("h3")]

    def gone() -> bool:
        return name not in bed.endpoints() and all(not resolves(bed, t, name) for t in tasks)

    wait_for(f"{name} gone from network inspect and from h2's and h3's DNS", gone, timeout=3)
    took = time.monotonic() - t0
    assert len(bed.outer_veths("h1")) == veths - 1
    # The same container again: an address again, reachable again.
    bed.podman_h1("run", "-d", "--name", name, "--network", "appnet", bed.tag)
    ep = attached_within(bed, name)
    ip = ep["address"].split("/")[0]
    wait_for(f"{name} back on h3", lambda: resolves(bed, tasks[1], name) == [ip], timeout=5)
    assert fetch(bed, tasks[1], name).split()[1:] == [tasks[1].ips[bed.net_id]]
    print(f"podman rm -> gone everywhere in {took:.2f} s")


def test_del_while_the_manager_is_down_releases_once_it_is_back(bed: Bed) -> None:
    name = bed.name("pc2")
    bed.podman_h1("run", "-d", "--name", name, "--network", "appnet", bed.tag)
    ep = attached_within(bed, name)
    veths = bed.outer_veths("h1")
    dev = bed.ov.dev
    dev.stop_manager()
    try:
        r = bed.podman_h1("rm", "-f", name, check=False)
        assert r.returncode == 0, r.stderr
        assert len(bed.outer_veths("h1")) == len(veths) - 1
    finally:
        dev.start_manager()
    wait_for(f"{name} released after the restart", lambda: name not in bed.endpoints(), timeout=15)
    # Its address is free again: nothing else holds it.
    held = {e["address"] for e in bed.endpoints().values()}
    assert ep["address"] not in held


def test_a_killed_agent_refinds_its_attachment(bed: Bed) -> None:
    name = bed.name("pc3")
    bed.podman_h1("run", "-d", "--name", name, "--network", "appnet", bed.tag)
    ep = attached_within(bed, name)
    veths = bed.outer_veths("h1")
    dev = bed.ov.dev
    dev.kill_agent("h1")
    dev.start_agent("h1")
    time.sleep(2)  # a few passes of the new agent
    assert bed.outer_veths("h1") == veths
    assert [e["address"] for n, e in bed.endpoints().items() if n == name] == [ep["address"]]
    task = bed.web_task("h2")
    ip = ep["address"].split("/")[0]
    wait_for(
        f"{name} resolving after restart", lambda: resolves(bed, task, name) == [ip], timeout=10
    )
    assert fetch(bed, task, name).split()[1:] == [task.ips[bed.net_id]]
    bed.podman_h1("rm", "-f", name)
    wait_for(f"{name} released", lambda: name not in bed.endpoints(), timeout=5)


# ---------------------------------------------------------------- the plugin, by hand


def plugin(bed: Bed, conf: dict[str, Any], netns: str, command: str = "ADD") -> Any:
    env = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"{bed.prefix}manual",
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(PLUGIN_DIR),
    }
    r = subprocess.run(
        bed.ov.dev.nsenter_argv("h1", [str(PLUGIN_DIR / "ovnet-cni")]),
        input=json.dumps(conf),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode != 0, r.stdout
    return json.loads(r.stdout)


@pytest.fixture
def spare_netns(bed: Bed) -> Iterator[str]:
    name = f"{bed.prefix}cnitest"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_add_for_an_unknown_or_non_attachable_network_is_a_cni_error(
    bed: Bed, spare_netns: str
) -> None:
    sock = str(bed.ov.dev.state_dir / "h1" / "cni.sock")
    base = {"cniVersion": "1.0.0", "type": "ovnet-cni", "socket": sock}
    before = bed.endpoints()
    err = plugin(bed, {**base, "name": "plainnet"}, spare_netns)
    assert err["code"] == 100, err
    assert "not attachable" in err["msg"] and "plainnet" in err["msg"], err
    err = plugin(bed, {**base, "name": "nonet"}, spare_netns)
    assert err["code"] == 7, err
    assert "nonet" in err["msg"] and "not found" in err["msg"], err
    err = plugin(bed, {**base, "name": "appnet", "cniVersion": "0.3.1"}, spare_netns)
    assert err["code"] == 1, err
    err = plugin(bed, {**base, "name": "appnet", "socket": sock + ".absent"}, spare_netns)
    assert err["code"] == 11 and "cni.sock.absent" in err["msg"], err
    assert bed.endpoints() == before  # nothing allocated
