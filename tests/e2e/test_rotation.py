"""F5 end to end: node certificates renew and cluster keys rotate while a service serves.

Three netns hosts (DevCluster, TLS everywhere, agents joined with the worker token) run with
periods short enough to see several renewals and rotations within a test: certificates live
20 s (so each agent renews every 10-16 s and reconnects its session with the new one) and the
gossip and IPsec keys rotate every 3 s. Meanwhile a client task on h1 sends requests to a
service's VIP and a client on the underlay to its published port on h2, and the service is
scaled down and up again, which only works if the agents' sessions (new certificates) and
gossip (new keys) keep working. No request may fail.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from aetcd import rpc

from ovctl.devcluster.plan import MANAGER_ETCD_PREFIX
from proto import objects_pb2 as pb
from security import pki
from tests.e2e.overlay import Overlay, wait_for
from tests.e2e.test_mesh import (
    HEALTHY,
    Loop,
    client_argv,
    create,
    load,
    on_host,
    sandbox_argv,
    settled,
    vip,
)
from tests.support.cluster import E2ECluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

CERT_LIFETIME_S = 20
KEY_ROTATION_S = 3


@pytest.fixture(scope="module")
def ov() -> Iterator[Overlay]:
    dev = E2ECluster(
        name_prefix=f"ovr{os.getpid() % 100000}-",
        hosts=3,
        # Shared with test_gossip/test_devcluster/test_mesh: modules of one run go one by one.
        subnet="198.51.100.192/27",
        manager_args=[
            "--heartbeat-period", "0.5", "--heartbeat-grace", "3",
            "--cert-expiry", str(CERT_LIFETIME_S),
            "--key-rotation-interval", str(KEY_ROTATION_S),
        ],
        die_with_parent=True,
    )  # fmt: skip
    dev.agent_args = ["--reconcile-interval", "1", "--stop-timeout", "2", "--drain-delay", "2"]
    try:
        dev.up()
        ov = Overlay(dev)
        ov.ovctl("network", "create", "--subnet", "10.83.0.0/24", "rotnet")
        yield ov
    finally:
        dev.down()


def agent_serials(dev: E2ECluster) -> dict[str, int]:
    """Each agent's certificate serial, as saved in its state dir."""
    out = {}
    for host in dev.hosts:
        path = dev.state_dir / host / "tls" / "node.crt"
        out[host] = pki.info(pki.load_cert(path.read_bytes())).serial
    return out


def gossip_primary(dev: E2ECluster) -> bytes:
    """The gossip keyring's primary key, read from etcd."""
    key = f"{MANAGER_ETCD_PREFIX}/keys/gossip".encode()
    with grpc.insecure_channel(dev.etcd_endpoint) as ch:
        resp = rpc.KVStub(ch).Range(rpc.RangeRequest(key=key), timeout=5)
    ring = pb.Keyring()
    ring.ParseFromString(resp.kvs[0].value)
    return ring.keys[0].key


def test_renewal_and_key_rotation_drop_no_request(ov: Overlay) -> None:
    dev = ov.dev
    create(ov, "rot", 3, "--network", "rotnet", "--publish", "18090:8080", *HEALTHY)
    ov.running("rot", 3)
    cli = on_host(ov, "rotcli", "h1", "rotnet")
    the_vip = vip(ov, "rot", "rotnet")
    wait_for(
        "VIP of rot", lambda: load(ov, sandbox_argv(ov, cli), the_vip, 8080, 3)["failures"] == 0
    )
    wait_for(
        "mesh port of rot",
        lambda: load(ov, client_argv(ov, "rotout"), dev.host_addr("h2"), 18090, 3)["failures"] == 0,
    )
    serials: dict[str, set[int]] = {h: {s} for h, s in agent_serials(dev).items()}
    primaries = {gossip_primary(dev)}

    def observe() -> None:
        for h, s in agent_serials(dev).items():
            serials[h].add(s)
        primaries.add(gossip_primary(dev))

    via_vip = Loop(sandbox_argv(ov, cli), the_vip, 8080)
    via_mesh = Loop(client_argv(ov, "rotout"), dev.host_addr("h2"), 18090)
    try:
        # Scale while certificates and keys change under the cluster: the sessions must carry
        # the new assignments and gossip must carry the new endpoints to every host.
        ov.ovctl("service", "scale", "-d", "rot=1")
        ov.running("rot", 1)
        wait_for("tasks.rot down to 1 on h1", functools.partial(settled, ov, cli, "rot", "rotnet"))
        ov.ovctl("service", "scale", "-d", "rot=3")
        ov.running("rot", 3)
        wait_for("tasks.rot back to 3 on h1", functools.partial(settled, ov, cli, "rot", "rotnet"))
        # Long enough for every agent to renew twice (each renews every 10-16 s).
        deadline = time.monotonic() + 2 * CERT_LIFETIME_S
        while time.monotonic() < deadline:
            observe()
            time.sleep(0.5)
    finally:
        vip_tally = via_vip.finish()
        mesh_tally = via_mesh.finish()
    print(f"\nserials seen {serials}\ngossip primaries seen {len(primaries)}")
    print(f"VIP {vip_tally}\nmesh {mesh_tally}")
    assert all(len(s) >= 3 for s in serials.values()), serials  # renewed at least twice
    # Renewing went through the agents' helper process: none of them maps `cryptography`.
    for host in dev.hosts:
        pid = dev.pid(host)
        assert pid is not None
        proc = Path(f"/proc/{pid}")
        assert b"agent.main" in (proc / "cmdline").read_bytes()  # the agent, not a launcher
        maps = (proc / "maps").read_text()
        assert "cryptography" not in maps, f"{host}'s agent loaded cryptography"
    assert len(primaries) >= 5, f"only {len(primaries)} gossip keys in {2 * CERT_LIFETIME_S} s"
    # Every node is still READY with a session (its renewed certificate is accepted).
    assert {n["status"]["state"] for n in ov.nodes().values()} == {"NODE_STATE_READY"}
    assert vip_tally["requests"] > 100 and mesh_tally["requests"] > 100
    assert vip_tally["failures"] == 0, vip_tally["errors"]
    assert mesh_tally["failures"] == 0, mesh_tally["errors"]
