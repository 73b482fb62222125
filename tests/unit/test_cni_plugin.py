"""The `ovnet-cni` plugin run as a runtime runs it: a real process with the CNI environment and
the configuration on stdin, talking to a fake agent on a real unix socket.

The fake records every request it gets, so each refusal also proves that nothing reached the
agent: a bad input must be answered by the plugin alone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cni import plugin
from agent.cni.protocol import Answer, Endpoint, Request

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = ROOT / ".venv" / "bin" / "ovnet-cni"
CONTAINER = "c0ffee0123456789"
ENDPOINT = Endpoint(
    attachment_id="att-1",
    address="10.0.5.3/24",
    gateway="10.0.5.1",
    mac="02:42:0a:00:05:03",
    mtu=1450,
    netns="/run/netns/x",
    ifname="eth1",
    nameservers=("127.0.0.11",),
    search=("ovnet",),
)
DELETE = object()  # a conflist key or variable the case removes


class FakeAgent:
    """The agent's end of the socket: one request per connection, a canned answer (raw bytes;
    None: read the request, then never answer)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[Request] = []
        self.answer: bytes | None = Answer(ok=True).encode()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen()
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(Request.decode(data))
                if self.answer is None:
                    conn.recv(1)  # until the plugin gives up and closes
                else:
                    conn.sendall(self.answer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def _short_dir(tmp_path: Path) -> Path:
    """tmp_path, unless a socket path in it would pass AF_UNIX's 108-byte limit."""
    if len(str(tmp_path / "agent.sock")) < 100:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="ovcni", dir="/tmp"))


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[FakeAgent]:
    fake = FakeAgent(str(_short_dir(tmp_path) / "agent.sock"))
    yield fake
    fake.close()


@pytest.fixture
def netns(tmp_path: Path) -> str:
    """Stands in for /proc/PID/ns/net: the plugin only checks that it exists."""
    path = tmp_path / "netns"
    path.touch()
    return str(path)


def conf(agent: FakeAgent, version: str = "1.0.0", **changes: Any) -> dict[str, Any]:
    """The configuration a runtime derives from our conflist, as podman passes it."""
    c: dict[str, Any] = {
        "cniVersion": version,
        "name": "backend",
        "type": "ovnet-cni",
        "network": "net-id-1",
        "socket": agent.path,
        "capabilities": {"aliases": True},
        "runtimeConfig": {"aliases": {"backend": ["web", "api", "web"]}},
    }
    c.update(changes)
    return {k: v for k, v in c.items() if v is not DELETE}


def cni_env(command: str, netns: str, **changes: Any) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": CONTAINER,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth1",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1",
        "CNI_PATH": "/opt/cni/bin",
    }
    env.update(changes)
    return {k: v for k, v in env.items() if v is not DELETE}


def run_plugin(
    env: dict[str, str], stdin: bytes | dict[str, Any], argv: list[str] | None = None
) -> tuple[int, Any]:
    """(exit status, stdout parsed as JSON or None when empty)."""
    data = json.dumps(stdin).encode() if isinstance(stdin, dict) else stdin
    proc = subprocess.run(
        argv or [sys.executable, "-m", "agent.cni.plugin"],
        input=data,
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.stderr == b"", proc.stderr.decode()
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


# --- VERSION ---------------------------------------------------------------------------------


def test_version_without_stdin_through_the_console_script() -> None:
    assert CONSOLE_SCRIPT.exists(), "pip install -e . has not made the ovnet-cni script"
    code, out = run_plugin({"CNI_COMMAND": "VERSION"}, b"", argv=[str(CONSOLE_SCRIPT)])
    assert (code, out) == (0, {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]})


@pytest.mark.parametrize(
    ("stdin", "version"),
    [
        (b'{"cniVersion": "0.4.0"}', "0.4.0"),
        (b'{"cniVersion": "1.0.0"}', "1.0.0"),
        (b'{"cniVersion": "0.3.1"}', "1.0.0"),  # not ours: report the default
        (b"not json", "1.0.0"),
    ],
)
def test_version_with_stdin(stdin: bytes, version: str) -> None:
    code, out = run_plugin({"CNI_COMMAND": "VERSION"}, stdin)
    assert (code, out) == (0, {"cniVersion": version, "supportedVersions": ["0.4.0", "1.0.0"]})


# --- ADD, DEL, CHECK -------------------------------------------------------------------------


def test_add_1_0_0(agent: FakeAgent, netns: str) -> None:
    agent.answer = Answer(ok=True, endpoint=ENDPOINT).encode()
    code, out = run_plugin(cni_env("ADD", netns), conf(agent))
    assert code == 0
    assert out == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth1", "mac": "02:42:0a:00:05:03", "mtu": 1450, "sandbox": netns}],
        "ips": [{"address": "10.0.5.3/24", "gateway": "10.0.5.1", "interface": 0}],
        "routes": [],
        "dns": {"nameservers": ["127.0.0.11"], "search": ["ovnet"]},
    }
    assert agent.requests == [
        Request(
            command="ADD",
            network="net-id-1",
            container_id=CONTAINER,
            ifname="eth1",
            netns=netns,
            name="web-1",
            aliases=("web", "api"),
        )
    ]


def test_add_0_4_0_has_ip_versions_and_no_mtu(agent: FakeAgent, netns: str) -> None:
    agent.answer = Answer(ok=True, endpoint=ENDPOINT).encode()
    code, out = run_plugin(cni_env("ADD", netns), conf(agent, "0.4.0"))
    assert code == 0
    assert out == {
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "eth1", "mac": "02:42:0a:00:05:03", "sandbox": netns}],
        "ips": [{"version": "4", "address": "10.0.5.3/24", "gateway": "10.0.5.1", "interface": 0}],
        "routes": [],
        "dns": {"nameservers": ["127.0.0.11"], "search": ["ovnet"]},
    }
    assert [r.command for r in agent.requests] == ["ADD"]


def test_add_without_network_key_pod_name_or_aliases(agent: FakeAgent, netns: str) -> None:
    """The network is then the configuration's name; the agent names the endpoint itself."""
    agent.answer = Answer(ok=True, endpoint=ENDPOINT).encode()
    env = cni_env("ADD", netns, CNI_ARGS=DELETE)
    code, _ = run_plugin(env, conf(agent, network=DELETE, runtimeConfig=DELETE))
    assert code == 0
    (req,) = agent.requests
    assert (req.network, req.name, req.aliases) == ("backend", "", ())


def test_add_appends_to_a_previous_result(agent: FakeAgent, netns: str) -> None:
    agent.answer = Answer(ok=True, endpoint=ENDPOINT).encode()
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": netns}],
        "ips": [{"address": "192.168.1.2/24", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "192.168.1.1"}],
    }
    code, out = run_plugin(cni_env("ADD", netns), conf(agent, prevResult=prev))
    assert code == 0
    assert [i["name"] for i in out["interfaces"]] == ["eth0", "eth1"]
    assert out["ips"][1] == {"address": "10.0.5.3/24", "gateway": "10.0.5.1", "interface": 1}
    assert out["routes"] == prev["routes"]


def test_del_without_netns_is_relayed_and_prints_nothing(agent: FakeAgent) -> None:
    code, out = run_plugin(cni_env("DEL", "", CNI_NETNS=DELETE), conf(agent))
    assert (code, out) == (0, None)
    (req,) = agent.requests
    assert (req.command, req.network, req.container_id, req.netns) == (
        "DEL",
        "net-id-1",
        CONTAINER,
        "",
    )


def test_check_is_relayed_and_prints_nothing(agent: FakeAgent, netns: str) -> None:
    agent.answer = Answer(ok=True, endpoint=ENDPOINT).encode()
    prev = {"cniVersion": "1.0.0", "interfaces": [], "ips": []}
    code, out = run_plugin(cni_env("CHECK", netns), conf(agent, prevResult=prev))
    assert (code, out) == (0, None)
    assert [(r.command, r.netns) for r in agent.requests] == [("CHECK", netns)]


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_agent_error_is_relayed(agent: FakeAgent, netns: str, version: str) -> None:
    agent.answer = Answer.error(100, "network backend is not attachable", "ovctl net ...").encode()
    code, out = run_plugin(cni_env("ADD", netns), conf(agent, version))
    assert code == 1
    assert out == {
        "cniVersion": version,
        "code": 100,
        "msg": "network backend is not attachable",
        "details": "ovctl net ...",
    }


# --- refusals: nothing reaches the agent -----------------------------------------------------

BAD_INPUT = [
    # (id, env changes, conflist changes or raw stdin, code, words the message must have)
    ("no-command", {"CNI_COMMAND": DELETE}, {}, 4, ["CNI_COMMAND is not set"]),
    ("bad-command", {"CNI_COMMAND": "GC"}, {}, 4, ["CNI_COMMAND is 'GC'"]),
    ("no-container", {"CNI_CONTAINERID": DELETE}, {}, 4, ["CNI_CONTAINERID is not set"]),
    ("bad-container", {"CNI_CONTAINERID": "-x/y"}, {}, 4, ["CNI_CONTAINERID '-x/y'"]),
    ("no-ifname", {"CNI_IFNAME": DELETE}, {}, 4, ["CNI_IFNAME is not set"]),
    ("long-ifname", {"CNI_IFNAME": "x" * 16}, {}, 4, ["CNI_IFNAME 'xxxxxxxx"]),
    ("no-netns", {"CNI_NETNS": DELETE}, {}, 4, ["CNI_NETNS is not set", "ADD"]),
    ("check-no-netns", {"CNI_COMMAND": "CHECK", "CNI_NETNS": ""}, {}, 4, ["CHECK"]),
    ("netns-gone", {"CNI_NETNS": "/proc/0/ns/net"}, {}, 3, ["/proc/0/ns/net", "CNI_NETNS"]),
    (
        "check-netns-gone",
        {"CNI_COMMAND": "CHECK", "CNI_NETNS": "/run/netns/gone"},
        {},
        3,
        ["/run/netns/gone"],
    ),
    ("bad-args", {"CNI_ARGS": "K8S_POD_NAME"}, {}, 4, ["CNI_ARGS", "'K8S_POD_NAME'"]),
    ("empty-stdin", {}, b"", 6, ["no network configuration on stdin"]),
    ("not-json", {}, b"{cniVersion: 1.0.0", 6, ["not JSON"]),
    ("not-object", {}, b'["backend"]', 7, ["a JSON list, not an object"]),
    ("no-name", {}, {"name": DELETE}, 7, ['has no "name"']),
    ("no-type", {}, {"type": DELETE}, 7, ['has no "type"']),
    ("name-number", {}, {"name": 5}, 7, ['"name" is 5']),
    ("empty-network", {}, {"network": ""}, 7, ['"network" is ""']),
    ("socket-list", {}, {"socket": ["/run/x"]}, 7, ['"socket" is ["/run/x"]']),
    ("aliases-str", {}, {"runtimeConfig": {"aliases": "web"}}, 7, ['"runtimeConfig.aliases"']),
    ("prev-str", {}, {"prevResult": "x"}, 7, ['"prevResult" is "x"']),
    ("version-num", {}, {"cniVersion": 1}, 7, ['"cniVersion" is 1']),
    (
        "old-version",
        {},
        {"cniVersion": "0.3.1"},
        1,
        ["ovnet-cni supports CNI 0.4.0 and 1.0.0, not 0.3.1"],
    ),
    ("no-version", {}, {"cniVersion": DELETE}, 1, ['no "cniVersion"', "0.1.0"]),
]


@pytest.mark.parametrize(
    ("env_changes", "stdin", "code", "words"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_is_refused_before_the_agent_hears_of_it(
    agent: FakeAgent,
    netns: str,
    env_changes: dict[str, Any],
    stdin: bytes | dict[str, Any],
    code: int,
    words: list[str],
) -> None:
    data = stdin if isinstance(stdin, bytes) else conf(agent, **stdin)
    status, out = run_plugin(cni_env("ADD", netns, **env_changes), data)
    assert status != 0
    assert out["code"] == code, out
    assert set(out) == {"cniVersion", "code", "msg", "details"}
    text = out["msg"] + " " + out["details"]
    for word in words:
        assert word in text, out
    assert agent.requests == []


# --- the agent unreachable or broken ---------------------------------------------------------


def test_no_agent_socket(agent: FakeAgent, netns: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-agent.sock")
    code, out = run_plugin(cni_env("ADD", netns), conf(agent, socket=missing))
    assert (code, out["code"]) == (1, 11)
    assert missing in out["msg"]
    assert "not running on this host" in out["details"] and '"socket"' in out["details"]
    assert agent.requests == []


def test_stale_socket_file_is_refused_connection(netns: str, tmp_path: Path) -> None:
    path = str(_short_dir(tmp_path) / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)  # bound, never listening: connect() is refused
        stdin = {"cniVersion": "1.0.0", "name": "backend", "type": "ovnet-cni", "socket": path}
        code, out = run_plugin(cni_env("DEL", netns), stdin)
    assert (code, out["code"]) == (1, 11)
    assert path in out["msg"]


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b"garbage\n", "not an answer"),
        (b'{"ok": true}\n', "sent no attachment"),
        (b"", "closed the connection without answering"),
    ],
    ids=["garbled", "add-without-attachment", "closed"],
)
def test_broken_answer(agent: FakeAgent, netns: str, answer: bytes, words: str) -> None:
    agent.answer = answer
    code, out = run_plugin(cni_env("ADD", netns), conf(agent))
    assert (code, out["code"]) == (1, 5)
    assert words in out["msg"] + out["details"]


def test_no_answer_in_time_is_try_again_later(agent: FakeAgent, netns: str) -> None:
    """In process, with a short deadline (the plugin's own is 120 s)."""
    agent.answer = None
    req = Request(command="ADD", network="n", container_id=CONTAINER, ifname="eth1", netns=netns)
    with pytest.raises(plugin.CniError) as caught:
        plugin.relay(req, agent.path, timeout=0.3)
    assert caught.value.code == 11
    assert "did not answer within 0.3 s" in caught.value.msg
    assert agent.path in caught.value.msg
    assert plugin.ANSWER_TIMEOUT == 120


def test_socket_from_env_when_the_conflist_names_none(agent: FakeAgent, netns: str) -> None:
    env = cni_env("DEL", netns, OVNET_CNI_SOCKET=agent.path)
    assert run_plugin(env, conf(agent, socket=DELETE)) == (0, None)
    assert len(agent.requests) == 1


def test_the_conflist_socket_wins_over_env(agent: FakeAgent, netns: str, tmp_path: Path) -> None:
    env = cni_env("DEL", netns, OVNET_CNI_SOCKET=str(tmp_path / "elsewhere.sock"))
    assert run_plugin(env, conf(agent)) == (0, None)
    assert len(agent.requests) == 1


def test_without_env_or_key_the_default_socket_is_used(agent: FakeAgent, netns: str) -> None:
    """Parsed only: a real agent may listen on the default socket of this host."""
    stdin = json.dumps(conf(agent, socket=DELETE)).encode()
    inv = plugin.parse(cni_env("DEL", netns), stdin)
    assert inv.socket_path == "/run/ovnet/cni.sock"
