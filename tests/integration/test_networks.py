"""Networks through ovctl against a real manager and etcd: the happy path, and every kind of bad
input refused with its gRPC status and an actionable message, leaving etcd byte-for-byte as it
was."""

from __future__ import annotations

import ipaddress

import grpc
import pytest

from proto import control_pb2 as cpb
from proto import objects_pb2 as pb
from tests.integration.agents import AgentPool
from tests.integration.conftest import ManagerCluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


def test_create_ls_inspect_rm(managers: ManagerCluster) -> None:
    out = managers.ovctl(
        "network",
        "create",
        "--subnet",
        "10.10.0.0/24",
        "--gateway",
        "10.10.0.254",
        "--ip-range",
        "10.10.0.128/25",
        "--attachable",
        "--opt",
        "encrypted",
        "--label",
        "team=a",
        "front",
    )
    net_id = out.stdout.strip()
    assert len(net_id) == 25
    managers.ovctl("network", "create", "back")
    managers.ovctl("network", "create", "--internal", "db")

    nets = managers.ovctl_json("network", "ls")
    assert isinstance(nets, list)
    by_name = {n["spec"]["name"]: n for n in nets}
    # The leader made the routing mesh's network first, from the start of the pool.
    assert set(by_name) == {"ingress", "front", "back", "db"}
    ingress = by_name["ingress"]
    assert ingress["spec"]["ingress"] is True and ingress["subnet"] == "10.0.0.0/24"
    front = by_name["front"]
    assert front["subnet"] == "10.10.0.0/24" and front["gateway"] == "10.10.0.254"
    assert front["spec"]["encrypted"] is True and front["spec"]["attachable"] is True
    assert front["spec"]["labels"] == {"team": "a"}
    assert by_name["db"]["spec"]["internal"] is True
    # Automatic subnets come from 10.0.0.0/8 in /24s, never overlap, and VNIs start at 4096.
    subnets = [ipaddress.ip_network(n["subnet"]) for n in nets]
    for i, a in enumerate(subnets):
        for b in subnets[i + 1 :]:
            assert not a.overlaps(b)
    assert all(ipaddress.ip_network(by_name[n]["subnet"]).prefixlen == 24 for n in ("back", "db"))
    assert sorted(n["vni"] for n in nets) == [4096, 4097, 4098, 4099]
    assert ingress["vni"] == 4096

    table = managers.ovctl("network", "ls").stdout
    assert "front" in table and "10.10.0.0/24" in table
    assert managers.ovctl("network", "ls", "-q").stdout.split() == sorted(
        [n["meta"]["id"] for n in nets], key=lambda i: by_name_id(nets, i)
    )
    inspected = managers.ovctl_json("network", "inspect", "front")
    assert isinstance(inspected, list) and inspected[0]["meta"]["id"] == net_id
    # Encrypted, with no task on it yet: no host pairs to report on.
    assert inspected[0]["ipsec"] == []
    pretty = managers.ovctl("network", "inspect", "--pretty", "front").stdout
    assert "Options:    encrypted, attachable" in pretty
    assert "IPsec:      - (fewer than two hosts run tasks on it)" in pretty
    assert "ipsec" not in managers.ovctl_json("network", "inspect", "back")[0]
    # An ID prefix works as a reference too.
    assert managers.ovctl_json("network", "inspect", net_id[:8])[0]["spec"]["name"] == "front"

    managers.ovctl("network", "rm", "front", "back")
    assert [n["spec"]["name"] for n in managers.ovctl_json("network", "ls")] == ["db", "ingress"]
    assert len(managers.object_keys("networks")) == 2


def by_name_id(nets: list, net_id: str) -> str:
    return next(n["spec"]["name"] for n in nets if n["meta"]["id"] == net_id)


BAD_NETWORKS = [
    (["--subnet", "10.0.0.1/24", "x"], "INVALID_ARGUMENT", "host bits"),
    (["--subnet", "banana", "x"], "INVALID_ARGUMENT", "banana"),
    (["--subnet", "10.20.0.0/24", "--gateway", "10.30.0.1", "x"], "INVALID_ARGUMENT", "10.30.0.1"),
    (
        ["--subnet", "10.20.0.0/24", "--ip-range", "10.21.0.0/25", "x"],
        "INVALID_ARGUMENT",
        "10.21.0.0/25",
    ),
    (["--subnet", "10.50.1.0/24", "x"], "FAILED_PRECONDITION", "overlap"),
    (["--subnet", "10.50.0.0/16", "x"], "FAILED_PRECONDITION", "overlap"),
    (["taken"], "ALREADY_EXISTS", "taken"),
    (["bad name!"], "INVALID_ARGUMENT", "bad name!"),
    (["--", "-leading-dash"], "INVALID_ARGUMENT", "-leading-dash"),
    (["n" * 64], "INVALID_ARGUMENT", "at most 63"),
    (["--opt", "encrypted=maybe", "x"], "INVALID_ARGUMENT", "encrypted"),
]


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    BAD_NETWORKS,
    ids=[f"{c}-{'-'.join(a)[:30]}" for a, c, _ in BAD_NETWORKS],
)
def test_bad_network_refused_and_nothing_written(
    managers: ManagerCluster, args: list[str], code: str, fragment: str
) -> None:
    managers.ovctl("network", "create", "--subnet", "10.50.1.0/24", "taken")
    before = managers.dump()
    res = managers.ovctl("network", "create", *args, check=False)
    assert res.returncode != 0
    assert fragment in res.stderr, res.stderr
    # The exact status travels over gRPC too.
    stub = managers.stub()
    spec = _spec_from_args(args)
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateNetwork(cpb.CreateNetworkRequest(spec=spec), timeout=10)
    assert err.value.code().name == code, err.value.details()
    assert managers.dump() == before


def _spec_from_args(args: list[str]) -> pb.NetworkSpec:
    spec = pb.NetworkSpec(name=args[-1])
    it = iter(a for a in args[:-1] if a != "--")
    for flag in it:
        value = next(it)
        if flag == "--opt":
            k, _, v = value.partition("=")
            spec.options[k] = v
        else:
            setattr(spec, flag[2:].replace("-", "_"), value)
    return spec


def test_empty_name_and_unknown_network(managers: ManagerCluster) -> None:
    stub = managers.stub()
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateNetwork(cpb.CreateNetworkRequest(spec=pb.NetworkSpec(name="")), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in (err.value.details() or "")
    res = managers.ovctl("network", "rm", "nosuch", check=False)
    assert res.returncode != 0 and "nosuch" in res.stderr and "not found" in res.stderr
    res = managers.ovctl("network", "inspect", "nosuch", check=False)
    assert res.returncode != 0 and "not found" in res.stderr


def test_pool_exhausted(etcd, spawn_process) -> None:  # type: ignore[no-untyped-def]
    cluster = ManagerCluster(etcd, spawn_process, **{"default-pool": "10.99.0.0/23"})
    cluster.add()
    cluster.wait_leader()
    try:
        # The default ingress network holds the first of the pool's two /24s.
        assert [n["subnet"] for n in cluster.ovctl_json("network", "ls")] == ["10.99.0.0/24"]
        cluster.ovctl("network", "create", "a")
        before = cluster.dump()
        res = cluster.ovctl("network", "create", "c", check=False)
        assert res.returncode != 0 and "10.99.0.0/23" in res.stderr
        with pytest.raises(grpc.RpcError) as err:
            cluster.stub().CreateNetwork(
                cpb.CreateNetworkRequest(spec=pb.NetworkSpec(name="c")), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert cluster.dump() == before
        # Removing one frees its subnet for the next network.
        cluster.ovctl("network", "rm", "a")
        cluster.ovctl("network", "create", "c")
    finally:
        cluster.close()


def test_creating_an_encrypted_network_warns_when_no_ready_node_can_encrypt(
    managers: ManagerCluster, agents: AgentPool
) -> None:
    """Each agent says at registration whether its kernel can do ESP; `network create --opt
    encrypted` is not refused (a node that can may join later) but says so."""
    why = "this host's kernel cannot encrypt (no ESP support)"
    host = agents.add(managers.addrs, "noesp", unavailable={"ipsec": why})
    wait_for("registration", lambda: host.node_id)
    wait_for("Ready", lambda: "Ready" in managers.ovctl("node", "ls").stdout)
    out = managers.ovctl("network", "create", "--opt", "encrypted", "sec1")
    assert out.returncode == 0 and len(out.stdout.strip()) == 25
    assert out.stderr.strip() == (
        f"warning: no Ready node can encrypt ({why}): tasks on network 'sec1' will fail "
        "until a node that can joins"
    )
    pretty = managers.ovctl("node", "inspect", "--pretty", "noesp").stdout
    assert f"Unavailable:      ipsec: {why}" in pretty
    # A plain network is no concern; nor is an encrypted one once a node can encrypt.
    assert managers.ovctl("network", "create", "plain1").stderr == ""
    able = agents.add(managers.addrs, "esp")
    wait_for("registration", lambda: able.node_id)
    wait_for("both Ready", lambda: managers.ovctl("node", "ls").stdout.count("Ready") == 2)
    assert managers.ovctl("network", "create", "--opt", "encrypted", "sec2").stderr == ""
