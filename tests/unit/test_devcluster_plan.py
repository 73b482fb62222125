"""The dev cluster's pure parts: names, addresses, validation, command lines, context file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
import yaml

from osutil.proc import pid_alive, proc_start_time
from ovctl.client import TLSFiles, resolve_tls
from ovctl.devcluster.plan import (
    DevClusterError,
    agent_argv,
    context_text,
    context_written_by_dev,
    default_state_dir,
    init_passthrough,
    is_cluster_daemon,
    listener_flags,
    make_plan,
    manager_argv,
    manager_files,
    manager_init_argv,
    max_hosts,
    metrics_url,
    parse_init_output,
    parse_subnet,
    validate_prefix,
)
from ovctl.devcluster.procs import terminate_pids


def test_default_plan_names_and_addresses() -> None:
    plan = make_plan("ovd-", 3, "198.51.100.0/26")
    assert plan.bridge == "ovd-br"
    assert plan.gateway == IPv4Interface("198.51.100.1/26")
    assert plan.host_names == ["h1", "h2", "h3"]
    h2 = plan.host("h2")
    assert (h2.netns, h2.veth, h2.addr) == ("ovd-h2", "ovd-h2", IPv4Interface("198.51.100.12/26"))
    assert h2.ip == "198.51.100.12"
    assert default_state_dir("ovd-") == Path("/run/ovnet-dev/ovd")


def test_addresses_are_relative_to_the_subnet() -> None:
    plan = make_plan("ovt1-", 2, "198.51.100.192/27")
    assert str(plan.gateway) == "198.51.100.193/27"
    assert [str(h.addr) for h in plan.hosts] == ["198.51.100.203/27", "198.51.100.204/27"]


def test_clients_come_from_the_top_and_stop_before_the_hosts() -> None:
    plan = make_plan("ovt1-", 2, "198.51.100.192/27")
    first = plan.client("web", 0)
    assert (first.netns, first.veth, first.addr) == ("ovt1-c-web", "ovt1-c0", "198.51.100.222")
    assert first.interface == IPv4Interface("198.51.100.222/27")
    last = plan.client("x", plan.max_clients - 1)
    assert last.addr == "198.51.100.205"  # just above h2 (.204)
    with pytest.raises(DevClusterError, match="no address left"):
        plan.client("y", plan.max_clients)
    with pytest.raises(DevClusterError, match="invalid client name"):
        plan.client("Bad-Name", 1)


@pytest.mark.parametrize("prefix", ["ovd-", "x-", "ovt12345-", "a1b2c3d4e5f6-"])
def test_valid_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix",
    ["", "ovd", "ovd--", "ov-d-", "Ovd-", "1ovd-", "ov d-", "ovd_", "abcdefghijklm-"],
)
def test_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(DevClusterError, match="prefix"):
        validate_prefix(prefix)


def test_prefix_and_host_count_must_fit_interface_names() -> None:
    make_plan("abcdefghijk-", 9, "198.51.100.0/26")  # "abcdefghijk-h9" is 14 chars
    with pytest.raises(DevClusterError, match="exceed 15"):
        make_plan("abcdefghijkl-", 10, "198.51.100.0/26")  # "...-h10" would be 16


@pytest.mark.parametrize(
    ("subnet", "message"),
    [
        ("10.0.0.0/24", "outside 198.51.100.0/24"),
        ("192.0.2.0/26", "outside"),
        ("198.51.0.0/16", "outside"),
        ("198.51.100.5/26", "invalid subnet"),  # host bits set
        ("nonsense", "invalid subnet"),
    ],
)
def test_subnets_outside_the_underlay_range_are_refused(subnet: str, message: str) -> None:
    with pytest.raises(DevClusterError, match=message):
        parse_subnet(subnet)


def test_subnet_needs_room_for_the_hosts() -> None:
    assert max_hosts(parse_subnet("198.51.100.0/28")) == 3
    make_plan("ovd-", 3, "198.51.100.0/28")
    with pytest.raises(DevClusterError, match="room for 3 hosts, not 4"):
        make_plan("ovd-", 4, "198.51.100.0/28")
    with pytest.raises(DevClusterError, match="room for 0 hosts"):
        make_plan("ovd-", 1, "198.51.100.0/30")
    with pytest.raises(DevClusterError, match="at least 1 host"):
        make_plan("ovd-", 0, "198.51.100.0/26")


def test_host_namespaces_do_not_include_other_hosts() -> None:
    plan = make_plan("ovd-", 12, "198.51.100.0/26")
    assert plan.host_owns_netns("h1", "ovd-h1")
    assert plan.host_owns_netns("h1", "ovd-h1-t-abc")
    assert not plan.host_owns_netns("h1", "ovd-h10")
    assert not plan.host_owns_netns("h1", "ovd-h10-n-abc")
    assert plan.owns("ovd-c-web") and not plan.owns("ovdx-h1")
    with pytest.raises(DevClusterError, match="no host 'h13'"):
        plan.host("h13")


def test_manager_command_line() -> None:
    files = manager_files(Path("/st"))
    argv = manager_argv(
        "/py",
        "198.51.100.1:5000",
        "127.0.0.1:2379",
        300,
        "ovd-manager",
        ["-x"],
        files=files,
        join_listen="198.51.100.1:5001",
    )
    assert argv[:3] == ["/py", "-m", "manager.main"]
    flags = dict(zip(argv[3:-1:2], argv[4:-1:2], strict=True))
    assert flags["--listen"] == flags["--advertise"] == "198.51.100.1:5000"
    assert flags["--join-listen"] == "198.51.100.1:5001"
    assert flags["--etcd"] == "127.0.0.1:2379"
    assert flags["--heartbeat-period"] == "0.3"  # the manager takes seconds
    assert flags["--state-dir"] == "/st/manager"
    assert flags["--ca-key-file"] == "/st/ca.kek"
    assert argv[-1] == "-x"  # extra arguments last, so they override
    assert is_cluster_daemon(argv, "ovd-")
    assert not is_cluster_daemon(argv, "ovx-")


def test_init_command_line_matches_the_manager_and_passes_init_flags() -> None:
    files = manager_files(Path("/st"))
    extra = ["--prefix", "/p", "--heartbeat-grace", "2", "--cert-expiry=60", "--log-level"]
    assert init_passthrough(extra) == ["--prefix", "/p", "--cert-expiry=60"]
    argv = manager_init_argv(
        "/py", "198.51.100.1:5000", "127.0.0.1:2379", "ovd-manager", files, extra
    )
    assert argv[:4] == ["/py", "-m", "manager.main", "init"]
    flags = dict(zip(argv[4:-1:2], argv[5:-1:2], strict=True))
    assert flags["--admin-dir"] == "/st/admin"
    assert flags["--state-dir"] == "/st/manager" and flags["--ca-key-file"] == "/st/ca.kek"
    assert flags["--manager-id"] == "ovd-manager"
    assert argv[-3:] == ["--prefix", "/p", "--cert-expiry=60"]  # after the default --prefix
    assert "--heartbeat-period" not in argv and "--join-listen" not in argv
    assert is_cluster_daemon(argv, "ovd-")


def test_init_output_gives_the_tokens() -> None:
    out = "worker token: OVNTKN-1-A-B\nmanager token: OVNTKN-1-A-C\n"
    assert parse_init_output(out) == {"worker": "OVNTKN-1-A-B", "manager": "OVNTKN-1-A-C"}
    assert parse_init_output("cluster already initialized\n") == {}


def test_agent_command_line_enters_the_host_namespace() -> None:
    host = make_plan("ovd-", 2, "198.51.100.0/26").host("h2")
    argv = agent_argv("/py", host, "198.51.100.1:5000", Path("/st"), ["--v"])
    assert argv[:4] == ["nsenter", "--net=/run/netns/ovd-h2", "--", "/py"]
    assert argv[4:6] == ["-m", "agent.main"]
    flags = dict(zip(argv[6:-1:2], argv[7:-1:2], strict=True))
    assert flags == {
        "--manager": "198.51.100.1:5000",
        "--hostname": "h2",
        "--addr": "198.51.100.12",
        "--state-dir": "/st/h2",
        "--netns-prefix": "ovd-h2-",
        # Each host's CNI plugin socket and conflists are its own.
        "--cni-socket": "/st/h2/cni.sock",
        "--cni-conf-dir": "/st/h2/cni/net.d",
        # The hosts never forward names to this machine's own resolver.
        "--dns-upstream": "none",
        # Metrics on the host's underlay address, reachable from the root namespace.
        "--metrics-listen": "198.51.100.12:9464",
    }
    assert argv[-1] == "--v"
    assert metrics_url(argv) == "http://198.51.100.12:9464/metrics"
    mine = agent_argv("/py", host, "198.51.100.1:5000", Path("/st"), ["--dns-upstream", "x"])
    assert mine.count("--dns-upstream") == 1 and mine[-1] == "x"
    joining = agent_argv(
        "/py", host, "198.51.100.1:5000", Path("/st"), join_token="T", join_addr="198.51.100.1:7"
    )
    flags = dict(zip(joining[6::2], joining[7::2], strict=True))
    assert flags["--join-token"] == "T" and flags["--join-addr"] == "198.51.100.1:7"


def test_metrics_urls_follow_the_last_flag() -> None:
    """`ovctl dev status` lists the URL a daemon serves its metrics at, from its command line:
    the last --metrics-listen wins (as in argparse), an empty one means none."""
    flags = listener_flags("198.51.100.1", 5002, 5003)
    assert flags == ["--ui-listen", "198.51.100.1:5002", "--metrics-listen", "198.51.100.1:5003"]
    assert metrics_url(["/py", *flags]) == "http://198.51.100.1:5003/metrics"
    assert metrics_url([*flags, "--metrics-listen=127.0.0.1:9"]) == "http://127.0.0.1:9/metrics"
    assert metrics_url([*flags, "--metrics-listen", ""]) is None
    assert metrics_url(["--ui-listen", "198.51.100.1:5002"]) is None


def test_context_file_marker() -> None:
    text = context_text("ovd-", "198.51.100.1:4000")
    assert context_written_by_dev(text)
    assert context_written_by_dev(text, "ovd-")
    assert not context_written_by_dev(text, "ovx-")
    assert not context_written_by_dev("managers:\n  - 1.2.3.4:1\n")
    assert yaml.safe_load(text) == {"managers": ["198.51.100.1:4000"]}


def test_context_file_names_the_admin_credentials(tmp_path: Path) -> None:
    tls = manager_files(tmp_path / "state").admin_tls
    ctx = tmp_path / "context.yaml"
    ctx.write_text(context_text("ovd-", "198.51.100.1:4000", tls))
    assert context_written_by_dev(ctx.read_text(), "ovd-")
    assert (
        resolve_tls({"OVCTL_CONFIG": str(ctx)})
        == tls
        == TLSFiles(
            ca=tmp_path / "state/admin/ca.pem",
            cert=tmp_path / "state/admin/admin.crt",
            key=tmp_path / "state/admin/admin.key",
        )
    )


def test_terminate_pids_leaves_a_reused_pid_alone_and_escalates() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        start = proc_start_time(proc.pid)
        assert start is not None and pid_alive(proc.pid, start)
        # Another start time: a different process that happens to have this PID now.
        assert terminate_pids({proc.pid: start + 1}) == []
        assert proc.poll() is None
        # SIGTERM is ignored, so SIGKILL follows after the grace period; our own child is
        # reaped on the way (so Popen sees no status of its own).
        began = time.monotonic()
        assert terminate_pids({proc.pid: start}, grace=0.2) == [proc.pid]
        assert time.monotonic() - began >= 0.2
        assert not pid_alive(proc.pid) and proc_start_time(proc.pid) is None
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_context_file_is_written_only_over_our_own(tmp_path: Path) -> None:
    from ovctl.devcluster.cluster import DevCluster

    cluster = DevCluster("ovd-", hosts=1, state_dir=tmp_path / "state")
    cluster._state["manager_addr"] = "198.51.100.1:4000"
    ctx = tmp_path / "context.yaml"
    assert cluster.write_context(ctx)
    admin = tmp_path / "state" / "admin"
    assert yaml.safe_load(ctx.read_text()) == {
        "managers": ["198.51.100.1:4000"],
        "tls": {
            "ca": str(admin / "ca.pem"),
            "cert": str(admin / "admin.crt"),
            "key": str(admin / "admin.key"),
        },
    }
    # Another dev cluster's file is dev up's too: replaced.
    ctx.write_text(context_text("ovx-", "198.51.100.65:1"))
    assert cluster.write_context(ctx)
    assert context_written_by_dev(ctx.read_text(), "ovd-")
    # The user's own file is never touched.
    ctx.write_text("managers: [10.1.1.1:4242]\n")
    assert not cluster.write_context(ctx)
    assert ctx.read_text() == "managers: [10.1.1.1:4242]\n"
