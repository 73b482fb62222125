"""ansible/site.yml on three booted Debian 12 nodes (tests/nodes/bed.py), as an operator runs it.

One test, in the order an operator lives it: the first run (etcd with TLS and a manager on
node1, agents on all three, every unit Type=notify and active); `ovctl`, with the admin
credentials the playbook fetched, creates a network and a 3-replica service publishing a port,
and each node's published port answers from a replica; a second run changes nothing; the agent
killed with SIGKILL is restarted by systemd, its task keeps running and the node is Ready again;
an upgrade (the playbook run with a new commit of the checkout) under a request loop through
the routing mesh of every node fails no request, restarting every agent one host at a time.

The playbook runs from a copy of the checkout (its own git repository), so the upgrade's "new
commit" never touches the real one. Wheels come from a cache under /var/cache/ovnet-tests (the
playbook's stamp keeps it per pyproject.toml).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import bed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = bed.CACHE_ROOT / "wheels"
PORT = 8080
GROUPS = {"etcd": ["node1"], "managers": ["node1"], "agents": ["node1", "node2", "node3"]}

# Runs in the bridge namespace during the upgrade: GET each node's published port in turn until
# the stop file appears, then write {"ok": n, "failed": [...]} to the output file.
PROBE = r"""
import json, os, sys, time, urllib.request
out, stop, urls = sys.argv[1], sys.argv[2], sys.argv[3:]
ok, failed, i = 0, [], 0
while not os.path.exists(stop):
    url = urls[i % len(urls)]
    i += 1
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            r.read()
        ok += 1
    except Exception as e:
        failed.append(f"{time.time():.2f} {url}: {e!r}")
    time.sleep(0.02)
json.dump({"ok": ok, "failed": failed}, open(out, "w"))
"""


GET = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"
)


def _copy_checkout(dst: Path) -> None:
    """The files git knows (tracked, and new ones not ignored), as a repository of its own."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "commit", "-q", "-m", "the checkout under test")


def _git(repo: Path, *args: str) -> None:
    ident = ["-c", "user.name=ovnet tests", "-c", "user.email=tests@ovnet.invalid"]
    subprocess.run(["git", "-C", str(repo), *ident, *args], check=True, capture_output=True)


def _recap(stdout: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> {ok, changed, failed, ...}."""
    out: dict[str, dict[str, int]] = {}
    for line in stdout.split("PLAY RECAP", 1)[-1].splitlines():
        m = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if m:
            out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out


def _fill_wheelhouse(src: Path) -> None:
    """What the playbook's first step does on a control node with an index at hand, done here
    in the root namespace: the bridge namespace the playbook runs in reaches no index. With
    the stamp in place the playbook finds the wheels and moves on (a real rerun does too)."""
    pyproject = (src / "pyproject.toml").read_text()
    # Ansible's file lookup strips trailing whitespace before the playbook hashes it.
    stamp = WHEELHOUSE / f".pyproject-{hashlib.sha1(pyproject.rstrip().encode()).hexdigest()}"
    if stamp.exists():
        return
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
         "--dest", str(WHEELHOUSE), str(src), "setuptools>=68", "wheel"],
        check=True,
    )  # fmt: skip
    stamp.touch()


class Deployment:
    """The bed, the checkout copy and the playbook, with what the test asks of them."""

    def __init__(self, node_bed: bed.NodeBed, src: Path) -> None:
        self.bed = node_bed
        self.src = src
        self.inventory = node_bed.write_inventory(GROUPS)
        self.admin = self.inventory.parent / "ovnet-admin"
        self.runs = 0

    def playbook(self, *extra: str) -> tuple[dict[str, dict[str, int]], float]:
        """Run site.yml (``extra``: more -e, each NAME=VALUE or JSON); PLAY RECAP and wall
        seconds."""
        t0 = time.monotonic()
        res = self.bed.control_run(
            [
                str(bed.ansible_command("ansible-playbook")),
                "-i",
                str(self.inventory),
                # As README says: the playbook's variables are set with -e (an inventory's
                # group vars rank below ansible/group_vars/all.yml).
                "-e",
                f"ovnet_wheelhouse={WHEELHOUSE}",
                *(arg for e in extra for arg in ("-e", e)),
                str(self.src / "ansible" / "site.yml"),
            ],
            env=self.bed.ansible_env({"ANSIBLE_CONFIG": str(self.src / "ansible/ansible.cfg")}),
            cwd=self.src / "ansible",
            check=False,
            timeout=1200,
        )
        seconds = time.monotonic() - t0
        self.runs += 1
        log = self.inventory.parent / f"playbook-{self.runs}.log"
        log.write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            # The task that failed and its error, not 6,000 characters of pip's retries.
            lines = res.stdout.splitlines()
            tasks = [i for i, line in enumerate(lines) if line.startswith("TASK [")]
            last = "\n".join(line[:1500] for line in lines[tasks[-1] if tasks else 0 :])
            raise AssertionError(f"ansible-playbook failed (whole output: {log}):\n{last}")
        return _recap(res.stdout), seconds

    def ovctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.bed.control_run(
            [str(Path(sys.executable).parent / "ovctl"), *args],
            env={**self.bed.ansible_env(), "OVCTL_CONFIG": str(self.admin / "context.yaml")},
            check=check,
            timeout=60,
        )

    def tasks(self, service: str) -> list[dict[str, Any]]:
        out = self.ovctl("service", "ps", service, "--format", "json").stdout
        return [t for t in json.loads(out) if t["status"]["state"] == "TASK_STATE_RUNNING"]

    def nodes_ready(self) -> dict[str, str]:
        nodes = json.loads(self.ovctl("node", "ls", "--format", "json").stdout)
        return {n["description"]["hostname"]: n["status"]["state"] for n in nodes}

    def get(self, node: bed.Node) -> subprocess.CompletedProcess[str]:
        """GET the node's published port from the bridge namespace."""
        return self.bed.control_run(
            [sys.executable, "-c", GET, f"http://{node.address}:{PORT}/"], check=False
        )


def _wait(what: str, cond: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def _unit(node: bed.Node, unit: str, prop: str) -> str:
    return node.run(["systemctl", "show", "-p", prop, "--value", unit]).stdout.strip()


def _journals_around(node_bed: bed.NodeBed, failures: list[str]) -> str:
    """The ovnet services' journal on each node a failed request went to, from 10 s before
    the first failure to 3 s after the last: what the agents were doing then."""
    by_addr = {n.address: n for n in node_bed.nodes}
    out = []
    times = [float(f.split()[0]) for f in failures]
    for addr in sorted({f.split("//")[1].split(":")[0] for f in failures}):
        node = by_addr[addr]
        res = node.run(
            ["journalctl", "-o", "short-unix", "--no-pager", "-u", "ovnet-agent",
             "-u", "ovnet-manager", f"--since=@{min(times) - 10:.0f}",
             f"--until=@{max(times) + 3:.0f}"],
            check=False,
        )  # fmt: skip
        out.append(f"\n--- {node.name} journal ---\n{res.stdout[-8000:]}")
    return "".join(out)


def _units(node: bed.Node) -> list[str]:
    """The services the playbook runs on `node` (GROUPS)."""
    return ["ovnet-agent"] + (["etcd", "ovnet-manager"] if node.name == "node1" else [])


def _task_pids(node: bed.Node) -> set[int]:
    """PIDs of the replicas in the node (minbase has no procps: /proc read directly)."""
    script = (
        'for p in /proc/[0-9]*; do tr "\\0" " " <"$p/cmdline" 2>/dev/null'
        ' | grep -q "scripts/[w]hoami.py" && echo "${p#/proc/}"; done; true'
    )
    return {int(p) for p in node.run(["sh", "-c", script]).stdout.split()}


def test_site_playbook_deploys_upgrades_and_survives_an_agent_crash(
    node_bed_factory: Callable[..., bed.NodeBed], tmp_path: Path
) -> None:
    node_bed = node_bed_factory(3)
    node1, node2, _ = node_bed.nodes
    src = tmp_path / "checkout"
    _copy_checkout(src)
    _fill_wheelhouse(src)
    d = Deployment(node_bed, src)

    # --- first run: a cluster from nothing.
    recap, first_s = d.playbook()
    assert set(recap) >= {"node1", "node2", "node3"}
    for node in node_bed.nodes:
        for unit in _units(node):
            assert _unit(node, unit, "ActiveState") == "active", (node.name, unit)
        for unit in [u for u in _units(node) if u.startswith("ovnet-")]:
            assert _unit(node, unit, "Type") == "notify", (node.name, unit)
            # ExecStart exists now: verify checks the whole unit, drop-ins included.
            verify = node.run(["systemd-analyze", "verify", f"{unit}.service"], check=False)
            assert (verify.returncode, verify.stdout + verify.stderr) == (0, ""), unit
        assert re.match(r"\d+ tasks, \d+ networks", _unit(node, "ovnet-agent", "StatusText"))
    _wait(
        "the manager's status to count 3 ready nodes",
        lambda: _unit(node1, "ovnet-manager", "StatusText").startswith("leader, 3 of 3 nodes"),
        timeout=10,
    )
    # etcd talks TLS and wants a client certificate.
    etcdctl = ["etcdctl", f"--endpoints=https://{node1.address}:2379"]
    ca = "--cacert=/etc/ovnet/etcd/ca.crt"
    assert node1.run([*etcdctl, ca, "endpoint", "health"], check=False).returncode != 0
    node1.run(
        [*etcdctl, ca, "--cert=/etc/ovnet/etcd/member.crt", "--key=/etc/ovnet/etcd/member.key",
         "endpoint", "health"],
    )  # fmt: skip
    assert oct((d.admin / "admin.key").stat().st_mode & 0o777) == "0o600"

    # --- ovctl from the control node: a network and a published 3-replica service.
    assert d.nodes_ready() == dict.fromkeys(("node1", "node2", "node3"), "NODE_STATE_READY")
    d.ovctl("network", "create", "app")
    d.ovctl(
        "service", "create", "-d", "--name", "web", "--network", "app", "--replicas", "3",
        "--publish", f"{PORT}:{PORT}", "--health-tcp", str(PORT),
        "--", "python3", "/opt/ovnet/scripts/whoami.py", str(PORT),
    )  # fmt: skip
    _wait("3 running replicas", lambda: len(d.tasks("web")) == 3)
    replicas = {a["addresses"][0].split("/")[0] for t in d.tasks("web") for a in t["networks"]}
    for node in node_bed.nodes:
        _wait(f"{node.name}:{PORT} answering", functools.partial(_answers, d, node))
        answer = d.get(node).stdout
        assert any(r in answer for r in replicas), (node.name, answer, replicas)

    # --- second run: nothing to do.
    recap, second_s = d.playbook()
    assert {h: r["changed"] for h, r in recap.items()} == dict.fromkeys(recap, 0), recap

    # --- a changed variable restarts what depends on it, and nothing else.
    pids = {(n.name, u): _unit(n, u, "MainPID") for n in node_bed.nodes for u in _units(n)}
    recap, _ = d.playbook(json.dumps({"ovnet_agent_extra_args": "--dns-ttl 3"}))
    for (name, unit), before in pids.items():
        node = next(n for n in node_bed.nodes if n.name == name)
        restarted = _unit(node, unit, "MainPID") != before
        assert restarted == (unit == "ovnet-agent"), (name, unit, restarted)
    assert "--dns-ttl 3" in node2.read_file("/etc/ovnet/agent.env")

    # --- SIGKILL the agent on node2: systemd restarts it; its task never stops.
    pid = int(_unit(node2, "ovnet-agent", "MainPID"))
    tasks_before = _task_pids(node2)
    assert tasks_before, "no replica runs on node2"
    node2.run(["sh", "-c", f"kill -9 {pid}"])
    _wait(
        "systemd to restart the agent",
        lambda: (
            _unit(node2, "ovnet-agent", "ActiveState") == "active"
            and int(_unit(node2, "ovnet-agent", "MainPID") or 0) not in (0, pid)
        ),
    )
    assert _task_pids(node2) == tasks_before
    _wait("node2 Ready again", lambda: d.nodes_ready().get("node2") == "NODE_STATE_READY")
    _wait("node2's agent to finish its first pass", lambda: "tasks" in _unit(
        node2, "ovnet-agent", "StatusText"))  # fmt: skip
    assert len(d.tasks("web")) == 3
    assert _answers(d, node2)

    # --- upgrade: a new commit, the playbook again, requests through every node meanwhile.
    marker = src / "agent" / "__init__.py"
    marker.write_text(marker.read_text() + "# upgraded by tests/nodes/test_deploy.py\n")
    _git(src, "commit", "-qam", "a new version")
    agents_before = {n.name: _unit(n, "ovnet-agent", "MainPID") for n in node_bed.nodes}
    task_pids_before = {n.name: _task_pids(n) for n in node_bed.nodes}
    out, stop = tmp_path / "probe.json", tmp_path / "probe.stop"
    urls = [f"http://{n.address}:{PORT}/" for n in node_bed.nodes]
    probe = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{node_bed.bridge_netns}", "--",
         sys.executable, "-c", PROBE, str(out), str(stop), *urls],
    )  # fmt: skip
    try:
        recap, upgrade_s = d.playbook()
        time.sleep(2)  # requests after the last restart count too
    finally:
        stop.touch()
        probe.wait(timeout=30)
    result = json.loads(out.read_text())
    assert result["failed"] == [], (
        f"{len(result['failed'])} of {result['ok']} requests failed:\n"
        + "\n".join(result["failed"][:10])
        + _journals_around(node_bed, result["failed"])
    )
    assert result["ok"] > 100
    for node in node_bed.nodes:
        assert _unit(node, "ovnet-agent", "MainPID") != agents_before[node.name], node.name
        assert _task_pids(node) == task_pids_before[node.name], node.name
    assert (
        node1.run(["grep", "-c", "upgraded by", "/opt/ovnet/agent/__init__.py"]).stdout.strip()
        == "1"
    )

    print(
        f"\nsite.yml on 3 nodes: first run {first_s:.0f} s, second run {second_s:.0f} s "
        f"(changed=0), upgrade {upgrade_s:.0f} s with {result['ok']} requests, 0 failed"
    )


def _answers(d: Deployment, node: bed.Node) -> bool:
    return d.get(node).returncode == 0
