"""ovctl: parsing and formatting as pure functions, then whole commands through `main(argv)`
against a real gRPC server on loopback (port 0) with a fake Control servicer, over mutual TLS
with certificates of a real cluster CA (security.pki): the server presents a manager
certificate and requires a client certificate, as a manager does."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from ovctl import cli, logview, render, specs
from ovctl.client import (
    DEFAULT_ADDR,
    ConfigError,
    TLSFiles,
    load_credentials,
    managers_from_context,
    normalize_addr,
    resolve_managers,
    resolve_tls,
)
from proto import control_pb2 as cpb
from proto import control_pb2_grpc
from proto import objects_pb2 as pb
from security import pki

# ---------------------------------------------------------------- specs: scalars


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("5s", 5000),
        ("1m", 60_000),
        ("2h", 7_200_000),
        ("1m30s", 90_000),
        ("1.5s", 1500),
        ("0", 0),
        (" 10s ", 10_000),
    ],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert specs.parse_duration(text) == ms


@pytest.mark.parametrize("text", ["5", "", "s", "5x", "5s3", "-1s", "1 m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(specs.SpecError, match="invalid duration"):
        specs.parse_duration(text)


def test_parse_uint_bounds() -> None:
    assert specs.parse_uint("7", "replicas") == 7
    with pytest.raises(specs.SpecError, match="expected a whole number"):
        specs.parse_uint("x", "replicas")
    with pytest.raises(specs.SpecError, match=">= 1"):
        specs.parse_uint("0", "n", minimum=1)
    with pytest.raises(specs.SpecError, match="between 1 and 65535"):
        specs.parse_port("70000")


def test_parse_task_state() -> None:
    assert specs.parse_task_state("running") == pb.TASK_STATE_RUNNING
    assert specs.parse_task_state("Shutdown") == pb.TASK_STATE_SHUTDOWN
    with pytest.raises(specs.SpecError, match="expected one of new, pending"):
        specs.parse_task_state("sleeping")


# ---------------------------------------------------------------- specs: publish


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", pb.PortConfig(published_port=8080, target_port=80)),
        ("8080:80/tcp", pb.PortConfig(published_port=8080, target_port=80)),
        ("53:53/udp", pb.PortConfig(published_port=53, target_port=53, protocol=pb.PROTOCOL_UDP)),
        ("80", pb.PortConfig(target_port=80)),
        ("80/UDP", pb.PortConfig(target_port=80, protocol=pb.PROTOCOL_UDP)),
        (
            "published=8080,target=80,protocol=tcp,mode=host",
            pb.PortConfig(published_port=8080, target_port=80, publish_mode=pb.PUBLISH_MODE_HOST),
        ),
        ("target=53,protocol=udp", pb.PortConfig(target_port=53, protocol=pb.PROTOCOL_UDP)),
        ("mode=ingress,target=80", pb.PortConfig(target_port=80)),
    ],
)
def test_parse_publish(text: str, expected: pb.PortConfig) -> None:
    assert specs.parse_publish(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8080:80:90", "expected PUBLISHED:TARGET"),
        ("http", "invalid target port 'http'"),
        ("0:80", "invalid published port 0"),
        ("80/sctp", "expected one of tcp, udp"),
        ("published=8080", "target=PORT is required"),
        ("target=80,color=red", "unknown key 'color'"),
        ("target=80,mode=vip", "invalid publish mode"),
        ("target=80,udp", "is not KEY=VALUE"),
    ],
)
def test_parse_publish_rejects(text: str, message: str) -> None:
    with pytest.raises(specs.SpecError, match=message):
        specs.parse_publish(text)


def test_parse_port_ref() -> None:
    assert specs.parse_port_ref("80") == (80, None)
    assert specs.parse_port_ref("53/udp") == (53, pb.PROTOCOL_UDP)
    with pytest.raises(specs.SpecError):
        specs.parse_port_ref("80/xyz")


# ---------------------------------------------------------------- specs: networks, constraints


def test_parse_network_attachment_forms() -> None:
    assert specs.parse_network_attachment("front") == pb.NetworkAttachmentConfig(target="front")
    assert specs.parse_network_attachment("front,alias=web,alias=www") == (
        pb.NetworkAttachmentConfig(target="front", aliases=["web", "www"])
    )
    assert specs.parse_network_attachment("name=front,alias=web") == (
        pb.NetworkAttachmentConfig(target="front", aliases=["web"])
    )


@pytest.mark.parametrize("text", ["", "alias=web", "front,web", "front,alias=", "front,x=1"])
def test_parse_network_attachment_rejects(text: str) -> None:
    with pytest.raises(specs.SpecError, match="invalid network"):
        specs.parse_network_attachment(text)


def test_parse_constraint_normalises_spacing() -> None:
    assert specs.parse_constraint("node.labels.zone == a") == "node.labels.zone==a"
    assert specs.parse_constraint("node.role!=manager") == "node.role!=manager"
    for bad in ("node.role=manager", "node.role==", "==a", "node role==a"):
        with pytest.raises(specs.SpecError, match="KEY==VALUE"):
            specs.parse_constraint(bad)


# 2026-12-04T21:55:02.250Z: `--since` durations count back from it.
NOW = 1_796_421_302.25
NOW_MS = 1_796_421_302_250


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        # RFC 3339, with a zone (date only, to the minute, second, any fraction).
        ("2026-12-04T21:55:02Z", NOW_MS - 250),
        ("2026-12-04T21:55:02.123456789Z", NOW_MS - 127),
        ("2026-12-04T22:55:02.5+01:00", NOW_MS + 250),
        ("2026-12-04t21:55:02z", NOW_MS - 250),
        ("2026-12-04T21:55Z", NOW_MS - 2250),
        ("2026-12-04Z", NOW_MS - (21 * 3600 + 55 * 60 + 2) * 1000 - 250),
        ("2026-12-04+01:00", NOW_MS - (22 * 3600 + 55 * 60 + 2) * 1000 - 250),
        # Unix time in seconds, optionally fractional; "0" is everything.
        ("1796421302", NOW_MS - 250),
        ("1796421302.5", NOW_MS + 250),
        ("0", 0),
        # Durations before now.
        ("42m", NOW_MS - 42 * 60_000),
        ("1h30m", NOW_MS - 5_400_000),
        ("10s", NOW_MS - 10_000),
        ("250ms", NOW_MS - 250),
    ],
)
def test_parse_since(text: str, ms: int) -> None:
    assert logview.parse_since(text, NOW) == ms


def test_parse_since_without_a_zone_is_local_time() -> None:
    local = dt.datetime(2026, 12, 4, 21, 55, 2).timestamp()  # naive: this machine's zone
    assert logview.parse_since("2026-12-04T21:55:02", NOW) == int(local * 1000)
    midnight = dt.datetime(2026, 12, 4).timestamp()
    assert logview.parse_since("2026-12-04", NOW) == int(midnight * 1000)


@pytest.mark.parametrize(
    "text",
    ["", "yesterday", "5x", "-1h", "10 s", "2026-13-04", "2026-12-04T25:00Z", "2026-W49",
     "2026-12-04T21:55:02Zjunk", "1796421302.", "1969-12-31T23:59:59Z"],
)  # fmt: skip
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(specs.SpecError, match=f"invalid since {text!r}: "):
        logview.parse_since(text, NOW)


def test_log_timestamps_are_rfc3339_nano_per_line() -> None:
    assert logview.stamp(NOW_MS) == "2026-12-04T21:55:02.250000000Z"
    assert logview.stamp(0) == "1970-01-01T00:00:00.000000000Z"
    line = cpb.LogLine(timestamp_ms=NOW_MS, data=b"one\ntwo\n")
    assert logview.timestamped(line) == (
        b"2026-12-04T21:55:02.250000000Z one\n2026-12-04T21:55:02.250000000Z two\n"
    )
    # A piece of a longer line (or an unterminated last line) still ends its printed line.
    assert logview.timestamped(cpb.LogLine(data=b"piece")).endswith(b"Z piece\n")


def test_parse_filters_scale_tail() -> None:
    assert specs.parse_filters(["name=a", "label=x=1", "name=b"], ("name", "label")) == {
        "name": ["a", "b"],
        "label": ["x=1"],
    }
    with pytest.raises(specs.SpecError, match="unknown key 'driver'"):
        specs.parse_filters(["driver=overlay"], ("name",))
    with pytest.raises(specs.SpecError, match="expected KEY=VALUE"):
        specs.parse_filters(["name"], ("name",))
    assert specs.parse_scale("web=3") == ("web", 3)
    with pytest.raises(specs.SpecError, match="SERVICE=REPLICAS"):
        specs.parse_scale("web")
    with pytest.raises(specs.SpecError, match="replica count for web"):
        specs.parse_scale("web=many")
    assert specs.parse_tail("all") == 0
    assert specs.parse_tail("20") == 20


# ---------------------------------------------------------------- specs: network spec


@pytest.mark.parametrize(
    ("opt", "encrypted"),
    [("encrypted", True), ("encrypted=true", True), ("encrypted=false", False)],
)
def test_network_spec_lifts_encrypted(opt: str, encrypted: bool) -> None:
    spec = specs.network_spec(name="n", opts=[opt, "mtu=1400"])
    assert spec.encrypted is encrypted
    assert dict(spec.options) == {"mtu": "1400"}


def test_network_spec_fields_and_errors() -> None:
    spec = specs.network_spec(
        name="n",
        subnet="10.1.0.0/24",
        gateway="10.1.0.254",
        ip_range="10.1.0.128/25",
        internal=True,
        attachable=True,
        ingress=True,
        labels=["env=prod", "flag"],
    )
    assert (spec.subnet, spec.gateway, spec.ip_range) == (
        "10.1.0.0/24",
        "10.1.0.254",
        "10.1.0.128/25",
    )
    assert spec.internal and spec.attachable and spec.ingress and not spec.encrypted
    assert dict(spec.labels) == {"env": "prod", "flag": ""}
    with pytest.raises(specs.SpecError, match="host bits set"):
        specs.network_spec(name="n", subnet="10.1.0.1/24")
    with pytest.raises(specs.SpecError, match="invalid gateway"):
        specs.network_spec(name="n", gateway="10.1.0")
    with pytest.raises(specs.SpecError, match="option encrypted"):
        specs.network_spec(name="n", opts=["encrypted=maybe"])


# ---------------------------------------------------------------- specs: service spec


def test_service_spec_defaults_leave_policies_unset() -> None:
    spec = specs.service_spec(specs.ServiceOptions(name="web", command=["sleep", "1"]))
    assert spec.replicated.replicas == 1
    assert not spec.HasField("restart_policy")
    assert not spec.HasField("update_config")
    assert not spec.HasField("endpoint")
    assert not spec.HasField("placement")


def test_service_spec_all_options() -> None:
    spec = specs.service_spec(
        specs.ServiceOptions(
            name="web",
            command=["httpd"],
            replicas=3,
            networks=[pb.NetworkAttachmentConfig(target="front")],
            ports=[pb.PortConfig(target_port=80)],
            endpoint_mode="dnsrr",
            constraints=["node.role == worker"],
            max_replicas_per_node=2,
            env=["A=1"],
            workdir="/srv",
            labels=["tier=web"],
            restart_condition="on-failure",
            restart_delay_ms=5000,
            restart_max_attempts=3,
            restart_window_ms=60_000,
            update=specs.UpdateOptions(parallelism=2, delay_ms=10_000),
            rollback=specs.UpdateOptions(
                failure_action="continue", monitor_ms=0, max_failure_ratio=0.5, order="start-first"
            ),
        )
    )
    assert spec.replicated.replicas == 3
    assert spec.endpoint.mode == pb.ENDPOINT_MODE_DNSRR
    assert list(spec.placement.constraints) == ["node.role==worker"]
    assert spec.placement.max_replicas_per_node == 2
    assert spec.restart_policy == pb.RestartPolicy(
        condition=pb.RESTART_CONDITION_ON_FAILURE, delay_ms=5000, max_attempts=3, window_ms=60_000
    )
    assert spec.update_config == pb.UpdateConfig(parallelism=2, delay_ms=10_000)
    assert spec.rollback_config == pb.UpdateConfig(
        failure_action=pb.UPDATE_FAILURE_ACTION_CONTINUE,
        monitor_ms=0,
        max_failure_ratio=0.5,
        order=pb.UPDATE_ORDER_START_FIRST,
    )
    assert spec.rollback_config.HasField("monitor_ms")
    assert (list(spec.env), spec.workdir, dict(spec.labels)) == (["A=1"], "/srv", {"tier": "web"})


def test_service_spec_global_and_errors() -> None:
    spec = specs.service_spec(specs.ServiceOptions(name="g", command=["x"], mode="global"))
    assert spec.WhichOneof("mode") == "global"
    with pytest.raises(specs.SpecError, match="--replicas cannot be used with --mode global"):
        specs.service_spec(specs.ServiceOptions(name="g", command=["x"], mode="global", replicas=2))
    with pytest.raises(specs.SpecError, match=r"needs an image \(--image\) or a command"):
        specs.service_spec(specs.ServiceOptions(name="g", command=[]))
    with pytest.raises(specs.SpecError, match="expected KEY=VALUE"):
        specs.service_spec(specs.ServiceOptions(name="g", command=["x"], env=["A"]))


def _stored_spec() -> pb.ServiceSpec:
    spec = pb.ServiceSpec(
        name="web",
        command=["old"],
        env=["A=1", "B=2"],
        networks=[pb.NetworkAttachmentConfig(target="netid1")],
        labels={"keep": "1", "drop": "1"},
    )
    spec.replicated.replicas = 2
    spec.endpoint.ports.append(pb.PortConfig(target_port=80, published_port=8080))
    spec.placement.constraints.append("node.role==worker")
    return spec


def test_apply_service_changes() -> None:
    current = _stored_spec()
    changes = specs.ServiceChanges(
        replicas=5,
        env_add=["B=3", "C=4"],
        env_rm=["A"],
        publish_add=[pb.PortConfig(target_port=53, protocol=pb.PROTOCOL_UDP)],
        publish_rm=[(80, None)],
        constraint_add=["node.labels.zone==a"],
        constraint_rm=["node.role == worker"],
        network_add=[pb.NetworkAttachmentConfig(target="back")],
        network_rm=[("front", frozenset({"front", "netid1"}))],
        update=specs.UpdateOptions(parallelism=3, failure_action="rollback"),
        restart_condition="none",
        command=["new", "arg"],
        label_add=["new=2"],
        label_rm=["drop"],
    )
    spec = specs.apply_service_changes(current, changes)
    assert spec.replicated.replicas == 5
    assert list(spec.env) == ["B=3", "C=4"]
    assert list(spec.endpoint.ports) == [pb.PortConfig(target_port=53, protocol=pb.PROTOCOL_UDP)]
    assert list(spec.placement.constraints) == ["node.labels.zone==a"]
    assert [n.target for n in spec.networks] == ["back"]
    assert spec.update_config.parallelism == 3
    assert spec.update_config.failure_action == pb.UPDATE_FAILURE_ACTION_ROLLBACK
    assert not spec.HasField("rollback_config")
    assert spec.restart_policy.condition == pb.RESTART_CONDITION_NONE
    assert list(spec.command) == ["new", "arg"]
    assert dict(spec.labels) == {"keep": "1", "new": "2"}
    assert current == _stored_spec(), "the spec read from the manager must not be modified"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (specs.ServiceChanges(publish_rm=[(443, None)]), "publishes no port with target 443"),
        (specs.ServiceChanges(publish_rm=[(80, pb.PROTOCOL_UDP)]), "no port with target 80"),
        (specs.ServiceChanges(constraint_rm=["node.role==manager"]), "no constraint"),
        (
            specs.ServiceChanges(network_rm=[("back", frozenset({"back"}))]),
            "not attached to network 'back'",
        ),
        (specs.ServiceChanges(label_rm=["nope"]), "no label 'nope'"),
    ],
)
def test_apply_service_changes_conflicts(changes: specs.ServiceChanges, message: str) -> None:
    with pytest.raises(specs.SpecConflict, match=message):
        specs.apply_service_changes(_stored_spec(), changes)


def test_apply_service_changes_refuses_replicas_on_global() -> None:
    spec = pb.ServiceSpec(name="g", command=["x"])
    getattr(spec, "global").SetInParent()
    with pytest.raises(specs.SpecConflict, match="service g is global"):
        specs.apply_service_changes(spec, specs.ServiceChanges(replicas=3))


def test_apply_service_changes_dedups_added_port_and_constraint() -> None:
    spec = specs.apply_service_changes(
        _stored_spec(),
        specs.ServiceChanges(
            publish_add=[pb.PortConfig(target_port=80, published_port=8080)],
            constraint_add=["node.role==worker"],
        ),
    )
    assert len(spec.endpoint.ports) == 1
    assert list(spec.placement.constraints) == ["node.role==worker"]


def test_apply_node_changes() -> None:
    current = pb.NodeSpec(labels={"a": "1"})
    spec = specs.apply_node_changes(
        current, availability="drain", role="manager", label_add=["zone=b"], label_rm=["a"]
    )
    assert spec == pb.NodeSpec(
        labels={"zone": "b"}, role=pb.NODE_ROLE_MANAGER, availability=pb.NODE_AVAILABILITY_DRAIN
    )
    with pytest.raises(specs.SpecConflict, match="no label 'x'"):
        specs.apply_node_changes(current, label_rm=["x"])


# ---------------------------------------------------------------- render


def test_table_aligns_columns_without_trailing_blanks() -> None:
    out = render.table(("A", "LONGER", "C"), [["xxxx", "y", ""], ["z", "w", "last"]])
    assert out.splitlines() == ["A      LONGER   C", "xxxx   y", "z      w        last"]


def test_enum_labels() -> None:
    assert render.enum_label(pb.TaskState, pb.TASK_STATE_RUNNING) == "Running"
    assert render.enum_label(pb.NodeAvailability, pb.NODE_AVAILABILITY_DRAIN) == "Drain"
    assert render.enum_label(pb.NodeState, pb.NODE_STATE_READY) == "Ready"
    assert render.enum_word(pb.RestartCondition, pb.RESTART_CONDITION_ON_FAILURE) == "on-failure"
    assert render.enum_label(pb.TaskState, 9999) == "9999"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.3, "Less than a second"),
        (1, "1 second"),
        (5, "5 seconds"),
        (70, "About a minute"),
        (600, "10 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert render.human_duration(seconds) == text


def test_port_text() -> None:
    assert render.port_text(pb.PortConfig(published_port=8080, target_port=80)) == "*:8080->80/tcp"
    assert render.port_text(pb.PortConfig(target_port=53, protocol=pb.PROTOCOL_UDP)) == (
        "*:?->53/udp"
    )
    assert render.port_text(
        pb.PortConfig(published_port=1, target_port=2, publish_mode=pb.PUBLISH_MODE_HOST)
    ) == ("*:1->2/tcp (host)")


def _network(name: str, nid: str, **spec: Any) -> pb.Network:
    return pb.Network(
        meta=pb.Meta(id=nid),
        spec=pb.NetworkSpec(name=name, **spec),
        subnet="10.0.1.0/24",
        gateway="10.0.1.1",
        vni=4097,
    )


def test_network_table() -> None:
    out = render.network_table(
        [
            _network("zeta", "b" * 25, encrypted=True, attachable=True),
            _network("alpha", "a" * 25),
        ]
    )
    lines = out.splitlines()
    assert lines[0].split() == ["NETWORK", "ID", "NAME", "SUBNET", "GATEWAY", "VNI", "FLAGS"]
    assert lines[1].split() == ["a" * 12, "alpha", "10.0.1.0/24", "10.0.1.1", "4097"]
    assert lines[2].split() == [
        "b" * 12,
        "zeta",
        "10.0.1.0/24",
        "10.0.1.1",
        "4097",
        "encrypted,attachable",
    ]


def _service(name: str, sid: str, command: list[str], replicas: int | None = None) -> pb.Service:
    svc = pb.Service(
        meta=pb.Meta(id=sid, version=7), spec=pb.ServiceSpec(name=name, command=command)
    )
    if replicas is None:
        getattr(svc.spec, "global").SetInParent()
    else:
        svc.spec.replicated.replicas = replicas
    return svc


def test_service_table() -> None:
    web = _service("web", "s1" * 10, ["python3", "-m", "http.server", "80"], replicas=3)
    web.spec.endpoint.ports.append(pb.PortConfig(target_port=80))
    web.endpoint.ports.append(pb.PortConfig(target_port=80, published_port=30000))
    mon = _service("mon", "s2" * 10, ["sh", "-c", "echo hi"])
    resp = cpb.ListServicesResponse(
        services=[web, mon],
        running_tasks={web.meta.id: 2},
        desired_tasks={web.meta.id: 3, mon.meta.id: 2},
    )
    lines = render.service_table(resp).splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "MODE", "REPLICAS"]
    assert lines[1].split()[1:4] == ["mon", "global", "0/2"]
    assert lines[1].endswith("   sh -c 'echo hi'")
    assert lines[2].split()[1:6] == ["web", "replicated", "2/3", "-", "*:30000->80/tcp"]


def _task(
    tid: str, slot: int, created: int, state: int, node: str = "n1", err: str = ""
) -> pb.Task:
    return pb.Task(
        meta=pb.Meta(id=tid, created_at_ms=created),
        service_name="web",
        slot=slot,
        node_id=node,
        desired_state=pb.TASK_STATE_RUNNING,
        status=pb.TaskStatus(state=state, timestamp_ms=100_000, err=err),  # type: ignore[arg-type]
        networks=[pb.NetworkAttachment(network_id="x", addresses=["10.0.1.5/24"])],
    )


def test_task_rows_show_history_under_the_slot() -> None:
    tasks = [
        _task("old1", 1, 10, pb.TASK_STATE_FAILED, err="exit 1"),
        _task("slot2", 2, 30, pb.TASK_STATE_RUNNING),
        _task("new1", 1, 20, pb.TASK_STATE_RUNNING),
    ]
    rows = [
        render.task_row(t, older, {"n1": "host-a"}, now_ms=105_000)
        for t, older in render.order_tasks(tasks, {"n1": "host-a"})
    ]
    assert [r[:3] for r in rows] == [
        ["new1", "web.1", "host-a"],
        ["old1", " \\_ web.1", "host-a"],
        ["slot2", "web.2", "host-a"],
    ]
    assert rows[0][3:] == ["Running", "Running 5 seconds ago", "", "10.0.1.5/24"]
    assert rows[1][4:6] == ["Failed 5 seconds ago", "exit 1"]


def test_global_task_named_by_node() -> None:
    assert render.task_name(_task("t", 0, 1, pb.TASK_STATE_RUNNING, node="nodeX")) == "web.nodeX"


def test_node_table_and_cluster_info() -> None:
    node = pb.Node(
        meta=pb.Meta(id="n" * 20),
        spec=pb.NodeSpec(role=pb.NODE_ROLE_MANAGER, availability=pb.NODE_AVAILABILITY_PAUSE),
        description=pb.NodeDescription(hostname="h1", addr="198.51.100.1"),
        status=pb.NodeStatus(state=pb.NODE_STATE_DOWN),
    )
    assert render.node_table([node]).splitlines()[1].split() == [
        "n" * 12,
        "h1",
        "Down",
        "Pause",
        "manager",
        "198.51.100.1",
    ]
    info = render.cluster_info_text(
        cpb.GetClusterInfoResponse(
            managers=[
                cpb.ManagerInfo(manager_id="m1", addr="a:1"),
                cpb.ManagerInfo(manager_id="m2", addr="b:1", leader=True),
            ],
            leader_id="m2",
            etcd_revision=42,
        )
    )
    assert info.startswith("Leader: m2 (b:1)\netcd revision: 42")
    assert "m2           b:1       yes" in info


def test_log_lines_split_chunks() -> None:
    line = cpb.LogLine(task_name="web.1", node_id="n1", data=b"a\nb\n")
    assert render.log_lines(line, {"n1": "h1"}) == ["web.1@h1 | a", "web.1@h1 | b"]


def test_json_uses_proto_names_enum_names_and_defaults() -> None:
    doc = json.loads(render.to_json([_network("n", "id1")]))
    assert doc[0]["spec"]["ip_range"] == ""
    assert doc[0]["spec"]["internal"] is False
    assert doc[0]["meta"]["created_at_ms"] == "0"
    node = json.loads(render.to_json(pb.Node(spec=pb.NodeSpec())))
    assert node["spec"]["availability"] == "NODE_AVAILABILITY_ACTIVE"


# ---------------------------------------------------------------- client: which managers


def test_normalize_addr() -> None:
    assert normalize_addr("10.0.0.1") == "10.0.0.1:4242"
    assert normalize_addr("m1:5000") == "m1:5000"
    assert normalize_addr("::1") == "[::1]:4242"
    assert normalize_addr("[::1]") == "[::1]:4242"
    assert normalize_addr("[::1]:9") == "[::1]:9"


def test_resolve_managers_precedence(tmp_path: Path) -> None:
    ctx = tmp_path / "context.yaml"
    ctx.write_text("managers: [m1:1, m2]\n")
    env = {"OVCTL_CONFIG": str(ctx)}
    assert resolve_managers(None, env) == ["m1:1", "m2:4242"]
    assert resolve_managers(None, {**env, "OVCTL_HOST": "e1,e2:2"}) == ["e1:4242", "e2:2"]
    assert resolve_managers("f1", {**env, "OVCTL_HOST": "e1"}) == ["f1:4242"]
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_managers(None, {"OVCTL_CONFIG": str(tmp_path / "missing.yaml")})


def test_default_manager_when_no_context_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_managers(None, {}) == [DEFAULT_ADDR]
    (tmp_path / ".config" / "ovnet").mkdir(parents=True)
    (tmp_path / ".config" / "ovnet" / "context.yaml").write_text("managers: [h:1]\n")
    assert resolve_managers(None, {}) == ["h:1"]


def test_context_file_errors() -> None:
    assert managers_from_context("managers: a,b\n", "f") == ["a:4242", "b:4242"]
    with pytest.raises(ConfigError, match="f: expected a non-empty list"):
        managers_from_context("other: 1\n", "f")
    with pytest.raises(ConfigError, match="not valid YAML"):
        managers_from_context("managers: [\n", "f")


# ---------------------------------------------------------------- main() against a real server

Canned = Any  # a response message, a list of them (streams), an RpcError spec, or a callable


class Abort:
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details


class FakeControl(control_pb2_grpc.ControlServicer):
    """Records every request; answers with what the test put in `answers[method]`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.answers: dict[str, Canned] = {}
        for name in dir(control_pb2_grpc.ControlServicer):
            if not name.startswith("_"):
                setattr(self, name, self._handler(name))

    def _handler(self, name: str) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            self.calls.append((name, request))
            answer = self.answers.get(name)
            if callable(answer):
                answer = answer(request)
            if isinstance(answer, Abort):
                context.abort(answer.code, answer.details)
            if answer is None:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no answer for {name}")
            return iter(answer) if isinstance(answer, list) else answer

        return handle

    def requests(self, name: str) -> list[Any]:
        return [r for n, r in self.calls if n == name]


@dataclass
class ClusterCA:
    """A cluster root and certificates it issues, as `ovnet-manager init` would make them."""

    root: Any
    root_key: pki.PrivateKey

    @classmethod
    def new(cls) -> ClusterCA:
        root, key = pki.new_root("test-cluster", pki.utcnow())
        return cls(root, key)

    @property
    def root_pem(self) -> bytes:
        return pki.cert_pem(self.root)

    def issue(
        self,
        node_id: str,
        role: str,
        lifetime: dt.timedelta = dt.timedelta(days=1),
        now: dt.datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for node_id/role, issued at `now` (default: now)."""
        key = pki.new_key()
        cert = pki.issue(
            self.root,
            self.root_key,
            pki.make_csr(key),
            node_id=node_id,
            role=role,
            now=now or pki.utcnow(),
            lifetime=lifetime,
        )
        return pki.cert_pem(cert), pki.key_pem(key)

    def write_admin(self, directory: Path, cert_key: tuple[bytes, bytes] | None = None) -> Path:
        """ca.pem, admin.crt, admin.key and a context file in `directory`; returns the file."""
        cert, key = cert_key or self.issue("admin-test", pki.ROLE_ADMIN)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.pem").write_bytes(self.root_pem)
        (directory / "admin.crt").write_bytes(cert)
        (directory / "admin.key").write_bytes(key)
        ctx = directory / "context.yaml"
        ctx.write_text("managers: [127.0.0.1:1]\n")
        return ctx


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.new()


def _serve(servicer: FakeControl, ca: ClusterCA) -> tuple[grpc.Server, str]:
    """The fake servicer behind a manager's TLS: its certificate, client certificates
    required and verified against the cluster root."""
    cert, key = ca.issue("m1", pki.ROLE_MANAGER)
    creds = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca.root_pem, require_client_auth=True
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    control_pb2_grpc.add_ControlServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def fake(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: ClusterCA
) -> Iterator[tuple[FakeControl, str]]:
    monkeypatch.delenv("OVCTL_HOST", raising=False)
    monkeypatch.setenv("OVCTL_CONFIG", str(ca.write_admin(tmp_path / "ovnet")))
    servicer = FakeControl()
    server, addr = _serve(servicer, ca)
    yield servicer, addr
    server.stop(0)


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def run(addr: str, *argv: str) -> int:
    return cli.main(["-H", addr, *argv])


def test_network_create_sends_spec_and_prints_id(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["CreateNetwork"] = cpb.CreateNetworkResponse(
        network=pb.Network(meta=pb.Meta(id="net123"))
    )
    code = run(
        addr,
        "network",
        "create",
        "--subnet",
        "10.9.0.0/24",
        "--opt",
        "encrypted",
        "--opt",
        "com.x=1",
        "--label",
        "env=dev",
        "--attachable",
        "front",
    )
    assert code == 0
    assert capsys.readouterr().out == "net123\n"
    (req,) = servicer.requests("CreateNetwork")
    assert req.spec == pb.NetworkSpec(
        name="front",
        subnet="10.9.0.0/24",
        encrypted=True,
        attachable=True,
        options={"com.x": "1"},
        labels={"env": "dev"},
    )


def test_double_dash_lets_a_name_start_with_a_dash(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["CreateNetwork"] = Abort(grpc.StatusCode.INVALID_ARGUMENT, "bad name -x")
    servicer.answers["RemoveNetwork"] = cpb.RemoveNetworkResponse()
    assert run(addr, "network", "create", "-x") == 2
    assert "goes after --" in capsys.readouterr().err
    assert run(addr, "network", "create", "--", "-x") == 1
    assert servicer.requests("CreateNetwork")[0].spec.name == "-x"
    assert run(addr, "network", "rm", "a", "--", "-b") == 0
    assert [r.network_ref for r in servicer.requests("RemoveNetwork")] == ["a", "-b"]
    assert capsys.readouterr().err == "Error: bad name -x\n"


def test_network_ls_filters_quiet_and_json(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["ListNetworks"] = cpb.ListNetworksResponse(
        networks=[_network("b", "id-b" * 5), _network("a", "id-a" * 5)]
    )
    assert run(addr, "network", "ls", "-q", "--filter", "name=a", "-f", "label=env") == 0
    assert capsys.readouterr().out == f"{'id-a' * 5}\n{'id-b' * 5}\n"
    assert servicer.requests("ListNetworks")[0] == cpb.ListNetworksRequest(
        name_prefixes=["a"], labels=["env"]
    )
    assert run(addr, "network", "ls", "--format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [n["spec"]["name"] for n in doc] == ["b", "a"]
    assert doc[0]["vni"] == 4097 and doc[0]["spec"]["encrypted"] is False
    assert run(addr, "network", "ls") == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("id-aid-aid-a   a ")


def test_service_create_builds_the_spec(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["CreateService"] = cpb.CreateServiceResponse(
        service=pb.Service(meta=pb.Meta(id="svc1"))
    )
    code = run(
        addr,
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "front,alias=www",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        "--publish",
        "target=53,protocol=udp",
        "--constraint",
        "node.role==worker",
        "--env",
        "A=1",
        "--restart-delay",
        "2s",
        "--update-delay",
        "1m",
        "--stop-grace-period",
        "30s",
        "--",
        "python3",
        "-m",
        "http.server",
        "80",
    )
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out == "svc1\n"
    spec = servicer.requests("CreateService")[0].spec
    assert list(spec.command) == ["python3", "-m", "http.server", "80"]
    assert spec.replicated.replicas == 3
    assert spec.networks[0] == pb.NetworkAttachmentConfig(target="front", aliases=["www"])
    assert [(p.published_port, p.target_port, p.protocol) for p in spec.endpoint.ports] == [
        (8080, 80, pb.PROTOCOL_TCP),
        (0, 53, pb.PROTOCOL_UDP),
    ]
    assert spec.restart_policy.delay_ms == 2000 and spec.update_config.delay_ms == 60_000
    assert spec.stop_grace_period_ms == 30_000


def test_usage_errors_exit_2_without_calling(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    assert run(addr, "service", "create", "-d", "--name", "web", "--restart-delay", "5") == 2
    assert "invalid duration '5'" in capsys.readouterr().err
    assert (
        run(
            addr,
            "service",
            "create",
            "-d",
            "--name",
            "g",
            "--mode",
            "global",
            "--replicas",
            "2",
            "--",
            "x",
        )
        == 2
    )
    assert "--replicas cannot be used with --mode global" in capsys.readouterr().err
    assert run(addr, "cluster", "info", "--", "x") == 2
    assert "unrecognized arguments: -- x" in capsys.readouterr().err
    assert run(addr, "service", "create", "-d", "--", "sleep", "1") == 2
    assert "required: --name" in capsys.readouterr().err
    assert run(addr, "service", "update", "-d", "web") == 2
    assert "nothing to update" in capsys.readouterr().err
    assert servicer.calls == []


def test_server_refusal_is_printed_and_exits_1(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["CreateNetwork"] = Abort(
        grpc.StatusCode.INVALID_ARGUMENT, "subnet 10.9.0.0/24 overlaps network back (10.9.0.0/16)"
    )
    assert run(addr, "network", "create", "--subnet", "10.9.0.0/24", "front") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "Error: subnet 10.9.0.0/24 overlaps network back (10.9.0.0/16)\n"


def test_internal_errors_name_their_code(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["ListNodes"] = Abort(grpc.StatusCode.INTERNAL, "boom")
    assert run(addr, "node", "ls") == 1
    assert capsys.readouterr().err == "Error: INTERNAL: boom\n"


def test_rm_goes_on_past_not_found(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["RemoveService"] = lambda req: (
        Abort(grpc.StatusCode.NOT_FOUND, f"no service {req.service_ref}")
        if req.service_ref == "ghost"
        else cpb.RemoveServiceResponse()
    )
    assert run(addr, "service", "rm", "ghost", "web") == 1
    captured = capsys.readouterr()
    assert captured.out == "web\n"
    assert captured.err == "Error: no service ghost\n"
    assert [r.service_ref for r in servicer.requests("RemoveService")] == ["ghost", "web"]


def test_inspect_prints_found_objects_as_a_list(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["GetNode"] = lambda req: (
        cpb.GetNodeResponse(node=pb.Node(meta=pb.Meta(id=req.node_ref)))
        if req.node_ref != "ghost"
        else Abort(grpc.StatusCode.NOT_FOUND, "no node ghost")
    )
    assert run(addr, "node", "inspect", "n1", "ghost", "--format", "json") == 1
    captured = capsys.readouterr()
    assert [n["meta"]["id"] for n in json.loads(captured.out)] == ["n1"]
    assert "Error: no node ghost" in captured.err


def _gossip_report() -> pb.GossipStatus:
    return pb.GossipStatus(
        updated_ms=100_000,
        last_sync_ms=95_000,
        members=[
            pb.GossipMember(
                node_id="n2" * 10, addr="198.51.100.12:7946", state="suspect", incarnation=3
            ),
            pb.GossipMember(
                node_id="n1" * 10, addr="198.51.100.11:7946", state="alive", incarnation=1
            ),
            pb.GossipMember(node_id="gone", addr="198.51.100.19:7946", state="dead", incarnation=9),
        ],
        networks=[pb.GossipNetworkView(network_id="net1", entries=4, peers=["n2" * 10])],
        dropped={"auth": 2, "replay": 0, "malformed": 1},
        packets_in=10,
        packets_out=12,
        bytes_in=1536,
        bytes_out=900,
    )


def test_gossip_text_names_members_and_networks() -> None:
    hostnames = {"n1" * 10: "h1", "n2" * 10: "h2"}
    text = render.gossip_text(_gossip_report(), 102_000, hostnames, {"net1": "front"})
    lines = text.splitlines()
    assert lines[0] == "Gossip (reported 2 seconds ago):"
    assert "  Last sync:  7 seconds ago" in lines
    assert "  Received:   10 packets, 1.5 KiB" in lines
    assert "  Sent:       12 packets, 900 B" in lines
    assert "  Dropped:    auth=2, malformed=1" in lines
    members = lines[lines.index("  Members (3):") + 1 : lines.index("  Networks (1):")]
    assert [m.split()[:2] for m in members] == [
        ["NODE", "ADDRESS"],
        ["h1", "(n1n1n1n1n1n1)"],
        ["h2", "(n2n2n2n2n2n2)"],
        ["gone", "198.51.100.19:7946"],
    ]
    assert members[2].split()[-2:] == ["suspect", "3"]
    net = lines[-1].split(maxsplit=2)
    assert net == ["front", "4", "h2 (n2n2n2n2n2n2)"]
    never = render.gossip_text(pb.GossipStatus(), 1, {}, {})
    assert "no report" in never
    fresh = render.gossip_text(pb.GossipStatus(updated_ms=1), 1, {}, {})
    assert "  Last sync:  never" in fresh.splitlines() and "  Dropped:    none" in fresh


def test_node_inspect_json_carries_the_gossip_report_and_pretty_names_things(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    n1 = pb.Node(
        meta=pb.Meta(id="n1" * 10),
        description=pb.NodeDescription(hostname="h1", addr="198.51.100.11", gossip_port=7946),
        status=pb.NodeStatus(state=pb.NODE_STATE_READY),
    )
    n2 = pb.Node(meta=pb.Meta(id="n2" * 10), description=pb.NodeDescription(hostname="h2"))
    servicer.answers["GetNode"] = cpb.GetNodeResponse(node=n1, gossip=_gossip_report())
    servicer.answers["ListNodes"] = cpb.ListNodesResponse(nodes=[n1, n2])
    servicer.answers["ListNetworks"] = cpb.ListNetworksResponse(
        networks=[pb.Network(meta=pb.Meta(id="net1"), spec=pb.NetworkSpec(name="front"))]
    )
    assert run(addr, "node", "inspect", "h1") == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["description"]["gossip_port"] == 7946
    assert doc["gossip"]["members"][0]["state"] == "suspect"
    assert doc["gossip"]["dropped"] == {"auth": "2", "replay": "0", "malformed": "1"}
    assert run(addr, "node", "inspect", "--pretty", "h1") == 0
    out = capsys.readouterr().out
    assert "Hostname:         h1" in out and "Gossip port:      7946" in out
    assert "Members (3):" in out and "front" in out and "h2 (n2n2n2n2n2n2)" in out
    # No report yet: the JSON still has the key, with its defaults.
    servicer.answers["GetNode"] = cpb.GetNodeResponse(node=n2)
    assert run(addr, "node", "inspect", "h2") == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["gossip"]["updated_ms"] == "0" and doc["gossip"]["members"] == []


def test_scale_updates_with_the_version_read(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    services = {
        "web": _service("web", "idweb", ["x"], replicas=1),
        "mon": _service("mon", "idmon", ["x"]),
    }
    servicer.answers["GetService"] = lambda req: cpb.GetServiceResponse(
        service=services[req.service_ref]
    )
    servicer.answers["UpdateService"] = lambda req: cpb.UpdateServiceResponse()
    assert run(addr, "service", "scale", "-d", "web=4", "mon=2") == 1
    captured = capsys.readouterr()
    assert captured.out == "web scaled to 4\n"
    assert "service mon is global" in captured.err
    (update,) = servicer.requests("UpdateService")
    assert (update.service_ref, update.version, update.spec.replicated.replicas) == ("idweb", 7, 4)
    assert list(update.spec.command) == ["x"]


def test_scale_rejects_bad_syntax(fake: tuple[FakeControl, str]) -> None:
    _, addr = fake
    assert run(addr, "service", "scale", "-d", "web") == 2


def test_service_update_read_modify_write(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    svc = pb.Service(meta=pb.Meta(id="idweb", version=11), spec=_stored_spec())
    servicer.answers["GetService"] = cpb.GetServiceResponse(service=svc)
    servicer.answers["GetNetwork"] = cpb.GetNetworkResponse(
        network=pb.Network(meta=pb.Meta(id="netid1"), spec=pb.NetworkSpec(name="front"))
    )
    servicer.answers["UpdateService"] = cpb.UpdateServiceResponse()
    code = run(
        addr,
        "service",
        "update",
        "-d",
        "--env-add",
        "A=9",
        "--network-rm",
        "front",
        "--publish-rm",
        "80",
        "--command",
        "web",
        "--",
        "sleep",
        "5",
    )
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out == "web\n"
    (req,) = servicer.requests("UpdateService")
    assert (req.service_ref, req.version) == ("idweb", 11)
    assert list(req.spec.env) == ["B=2", "A=9"]
    assert list(req.spec.networks) == []
    assert list(req.spec.endpoint.ports) == []
    assert list(req.spec.command) == ["sleep", "5"]


def test_service_update_conflict_exits_1(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["GetService"] = cpb.GetServiceResponse(
        service=pb.Service(meta=pb.Meta(id="idweb"), spec=_stored_spec())
    )
    assert run(addr, "service", "update", "-d", "--label-rm", "absent", "web") == 1
    assert "has no label 'absent'" in capsys.readouterr().err
    assert servicer.requests("UpdateService") == []


def test_service_ps_resolves_hostnames_and_filters(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    task = _task("task1" * 4, 1, 1, pb.TASK_STATE_RUNNING)
    task.status.timestamp_ms = int(time.time() * 1000) - 5000
    servicer.answers["ListTasks"] = cpb.ListTasksResponse(tasks=[task])
    servicer.answers["ListNodes"] = cpb.ListNodesResponse(
        nodes=[pb.Node(meta=pb.Meta(id="n1"), description=pb.NodeDescription(hostname="host-a"))]
    )
    assert run(addr, "service", "ps", "web", "--filter", "desired-state=running") == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.split()[:5] == ["task1task1ta", "web.1", "host-a", "Running", "Running"]
    assert "seconds ago" in row and row.endswith("10.0.1.5/24")
    assert servicer.requests("ListTasks")[0] == cpb.ListTasksRequest(
        service_refs=["web"], desired_states=[pb.TASK_STATE_RUNNING]
    )
    assert run(addr, "service", "ps", "-q", "web") == 0
    assert capsys.readouterr().out == "task1" * 4 + "\n"


def test_service_logs_streams_to_stdout_and_stderr(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["ListNodes"] = cpb.ListNodesResponse(
        nodes=[pb.Node(meta=pb.Meta(id="n1"), description=pb.NodeDescription(hostname="h1"))]
    )
    servicer.answers["ServiceLogs"] = [
        cpb.LogLine(task_name="web.1.abc", node_id="n1", stream="stdout", data=b"hello\n"),
        cpb.LogLine(task_name="web.2.def", node_id="n1", stream="stderr", data=b"oops\n"),
    ]
    assert run(addr, "service", "logs", "--tail", "10", "web") == 0
    captured = capsys.readouterr()
    assert captured.out == "web.1.abc@h1 | hello\n"
    assert captured.err == "web.2.def@h1 | oops\n"
    assert servicer.requests("ServiceLogs")[0] == cpb.ServiceLogsRequest(service_ref="web", tail=10)


def test_logs_since_and_timestamps_on_both_commands(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["ListNodes"] = cpb.ListNodesResponse(
        nodes=[pb.Node(meta=pb.Meta(id="n1"), description=pb.NodeDescription(hostname="h1"))]
    )
    servicer.answers["GetService"] = cpb.GetServiceResponse(
        service=pb.Service(
            meta=pb.Meta(id="s1"), spec=pb.ServiceSpec(name="once", standalone=pb.Standalone())
        )
    )
    task = {"task_name": "web.1", "node_id": "n1"}
    servicer.answers["ServiceLogs"] = [
        cpb.LogLine(**task, stream="stdout", timestamp_ms=NOW_MS, data=b"b\n"),
        cpb.LogLine(**task, stream="stderr", timestamp_ms=NOW_MS + 1, data=b"c\n"),
    ]
    assert run(addr, "service", "logs", "--since", "2026-12-04T21:55:02Z", "-t", "web") == 0
    captured = capsys.readouterr()
    assert captured.out == "2026-12-04T21:55:02.250000000Z web.1@h1 | b\n"
    assert captured.err == "2026-12-04T21:55:02.251000000Z web.1@h1 | c\n"
    assert servicer.requests("ServiceLogs")[-1] == cpb.ServiceLogsRequest(
        service_ref="web", since_ms=NOW_MS - 250
    )
    assert run(addr, "logs", "--timestamps", "--since", "1796421302.25", "once") == 0
    captured = capsys.readouterr()
    assert captured.out == "2026-12-04T21:55:02.250000000Z b\n"
    assert captured.err == "2026-12-04T21:55:02.251000000Z c\n"
    assert servicer.requests("ServiceLogs")[-1] == cpb.ServiceLogsRequest(
        service_ref="s1", since_ms=NOW_MS
    )
    # Without -t, `ovctl logs` prints the bytes as they were written.
    assert run(addr, "logs", "once") == 0
    assert capsys.readouterr().out == "b\n"


@pytest.mark.parametrize("verb", [("service", "logs"), ("logs",)])
def test_a_bad_since_is_a_usage_error_naming_flag_and_value(
    verb: tuple[str, ...], fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    assert run(addr, *verb, "--since", "2026-12-32", "x") == 2
    assert "argument --since: invalid since '2026-12-32'" in capsys.readouterr().err
    assert servicer.requests("ServiceLogs") == []


def test_node_update_and_rm(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["GetNode"] = cpb.GetNodeResponse(
        node=pb.Node(meta=pb.Meta(id="nid", version=3), spec=pb.NodeSpec(labels={"a": "1"}))
    )
    servicer.answers["UpdateNode"] = cpb.UpdateNodeResponse()
    servicer.answers["RemoveNode"] = cpb.RemoveNodeResponse()
    assert run(addr, "node", "update", "--availability", "drain", "--label-add", "z=1", "h1") == 0
    (req,) = servicer.requests("UpdateNode")
    assert (req.node_ref, req.version) == ("nid", 3)
    assert req.spec == pb.NodeSpec(
        labels={"a": "1", "z": "1"}, availability=pb.NODE_AVAILABILITY_DRAIN
    )
    assert run(addr, "node", "rm", "--force", "h1") == 0
    assert servicer.requests("RemoveNode") == [cpb.RemoveNodeRequest(node_ref="h1", force=True)]
    assert capsys.readouterr().out == "h1\nh1\n"


def test_cluster_info_json(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["GetClusterInfo"] = cpb.GetClusterInfoResponse(
        managers=[cpb.ManagerInfo(manager_id="m1", addr=addr, leader=True)], leader_id="m1"
    )
    assert run(addr, "cluster", "info", "--format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["leader_id"] == "m1" and doc["managers"][0]["leader"] is True


def test_fails_over_from_unreachable_and_unavailable_managers(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str], ca: ClusterCA
) -> None:
    servicer, addr = fake
    servicer.answers["ListNodes"] = cpb.ListNodesResponse()
    follower = FakeControl()
    follower.answers["ListNodes"] = Abort(grpc.StatusCode.UNAVAILABLE, "not the leader")
    server, follower_addr = _serve(follower, ca)
    try:
        assert cli.main(["node", "ls", "-q", "-H", f"{_closed_port()},{follower_addr},{addr}"]) == 0
    finally:
        server.stop(0)
    assert len(follower.requests("ListNodes")) == 1
    assert len(servicer.requests("ListNodes")) == 1
    assert capsys.readouterr().err == ""


def test_log_stream_fails_over_before_the_first_line(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str], ca: ClusterCA
) -> None:
    servicer, addr = fake
    servicer.answers["ListNodes"] = cpb.ListNodesResponse()
    servicer.answers["ServiceLogs"] = [cpb.LogLine(task_name="t", node_id="n", data=b"x")]
    follower = FakeControl()
    follower.answers["ServiceLogs"] = Abort(grpc.StatusCode.UNAVAILABLE, "not the leader")
    server, follower_addr = _serve(follower, ca)
    try:
        # The first address answers ListNodes, so the stream starts there and must move on.
        follower.answers["ListNodes"] = cpb.ListNodesResponse()
        assert run(f"{follower_addr},{addr}", "service", "logs", "web") == 0
    finally:
        server.stop(0)
    assert len(follower.requests("ServiceLogs")) == 1
    assert capsys.readouterr().out == "t@n | x\n"


def test_help_exits_0_without_a_call(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    assert run(addr, "service", "update", "-d", "--help") == 0
    assert "--publish-rm TARGET[/PROTO]" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert servicer.calls == []


def test_all_managers_unavailable(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["ListNodes"] = Abort(grpc.StatusCode.UNAVAILABLE, "not the leader")
    dead = _closed_port()
    assert run(f"{dead},{addr}", "node", "ls") == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"Error: no manager could serve the request (tried {dead}, {addr}): not the leader"
    )


def test_timeout_is_applied(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake

    def slow(_req: Any) -> cpb.ListNodesResponse:
        time.sleep(1)
        return cpb.ListNodesResponse()

    servicer.answers["ListNodes"] = slow
    start = time.monotonic()
    assert run(addr, "--timeout", "0.2", "node", "ls") == 1
    assert time.monotonic() - start < 0.9
    assert capsys.readouterr().err.startswith("Error: DEADLINE_EXCEEDED")


def test_host_from_environment(
    fake: tuple[FakeControl, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    servicer, addr = fake
    servicer.answers["ListServices"] = cpb.ListServicesResponse()
    monkeypatch.setenv("OVCTL_HOST", addr)
    assert cli.main(["service", "ls"]) == 0
    assert capsys.readouterr().out.split() == [
        "ID",
        "NAME",
        "MODE",
        "REPLICAS",
        "IMAGE",
        "PORTS",
        "COMMAND",
    ]


# ---------------------------------------------------------------- health checks, ingress


def test_health_flags_build_the_check(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["CreateService"] = cpb.CreateServiceResponse(
        service=pb.Service(meta=pb.Meta(id="svc1"))
    )
    code = run(
        addr,
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--health-cmd",
        "curl -fs localhost:80/ || exit 1",
        "--health-interval",
        "2s",
        "--health-timeout",
        "500ms",
        "--health-retries",
        "5",
        "--health-start-period",
        "1m",
        "--update-parallelism",
        "2",
        "--update-delay",
        "3s",
        "--",
        "sleep",
        "1d",
    )
    assert code == 0, capsys.readouterr().err
    spec = servicer.requests("CreateService")[0].spec
    assert spec.health_check == pb.HealthCheck(
        command=["sh", "-c", "curl -fs localhost:80/ || exit 1"],
        interval_ms=2000,
        timeout_ms=500,
        retries=5,
        start_period_ms=60_000,
    )
    assert (spec.update_config.parallelism, spec.update_config.delay_ms) == (2, 3000)
    # Without a health flag the spec carries no check at all.
    assert run(addr, "service", "create", "-d", "--name", "plain", "--", "true") == 0
    assert not servicer.requests("CreateService")[1].spec.HasField("health_check")


def test_health_flag_usage_errors(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    base = ("service", "create", "-d", "--name", "w")
    assert run(addr, *base, "--health-cmd", "true", "--health-tcp", "80", "--", "x") == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert run(addr, *base, "--health-tcp", "70000", "--", "x") == 2
    assert "health check port" in capsys.readouterr().err
    assert run(addr, *base, "--health-interval", "5", "--", "x") == 2
    assert "invalid duration '5'" in capsys.readouterr().err
    assert run(addr, *base, "--health-retries", "-1", "--", "x") == 2
    assert run(addr, *base, "--health-cmd", " ", "--", "x") == 2
    assert "--health-cmd is empty" in capsys.readouterr().err
    assert run(addr, "service", "update", "-d", "--no-healthcheck", "--health-cmd", "x", "w") == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert run(addr, "service", "create", "-d", "--no-healthcheck", "--name", "w", "--", "x") == 2
    assert servicer.calls == []


def test_apply_health_switches_kind_and_clears() -> None:
    spec = pb.ServiceSpec(
        name="web", health_check=pb.HealthCheck(command=["sh", "-c", "true"], retries=4)
    )
    specs.apply_health(spec, specs.HealthOptions(tcp_port=8080))
    # Switching to a TCP check drops the command but keeps the timing already chosen.
    assert spec.health_check == pb.HealthCheck(tcp_port=8080, retries=4)
    specs.apply_health(spec, specs.HealthOptions(cmd="pgrep web", interval_ms=3000))
    assert spec.health_check == pb.HealthCheck(
        command=["sh", "-c", "pgrep web"], retries=4, interval_ms=3000
    )
    specs.apply_health(spec, specs.HealthOptions())  # nothing given: nothing changes
    assert spec.health_check.interval_ms == 3000
    specs.apply_health(spec, None, clear=True)
    assert not spec.HasField("health_check")
    with pytest.raises(specs.SpecError, match="exclusive"):
        specs.apply_health(spec, specs.HealthOptions(cmd="x", tcp_port=1))
    with pytest.raises(specs.SpecError, match="--no-healthcheck cannot be combined"):
        specs.apply_health(spec, specs.HealthOptions(retries=1), clear=True)


def test_service_update_health_and_update_config(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    stored = _stored_spec()
    stored.health_check.CopyFrom(pb.HealthCheck(tcp_port=80, timeout_ms=200))
    svc = pb.Service(meta=pb.Meta(id="idweb", version=3), spec=stored)
    servicer.answers["GetService"] = cpb.GetServiceResponse(service=svc)
    servicer.answers["UpdateService"] = cpb.UpdateServiceResponse()
    code = run(
        addr,
        "service",
        "update",
        "-d",
        "--health-retries",
        "7",
        "--update-parallelism",
        "1",
        "--update-delay",
        "10s",
        "web",
    )
    assert code == 0, capsys.readouterr().err
    (req,) = servicer.requests("UpdateService")
    assert req.spec.health_check == pb.HealthCheck(tcp_port=80, timeout_ms=200, retries=7)
    assert (req.spec.update_config.parallelism, req.spec.update_config.delay_ms) == (1, 10_000)
    assert run(addr, "service", "update", "-d", "--no-healthcheck", "web") == 0
    assert not servicer.requests("UpdateService")[1].spec.HasField("health_check")


def test_update_and_rollback_flags(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    svc = pb.Service(meta=pb.Meta(id="idweb", version=3), spec=_stored_spec())
    servicer.answers["GetService"] = cpb.GetServiceResponse(service=svc)
    servicer.answers["UpdateService"] = cpb.UpdateServiceResponse(service=svc)
    code = run(
        addr, "service", "update", "-d",
        "--update-order", "start-first", "--update-failure-action", "rollback",
        "--update-monitor", "5s", "--update-max-failure-ratio", "0.25",
        "--rollback-parallelism", "1", "--rollback-failure-action", "continue",
        "web",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (req,) = servicer.requests("UpdateService")
    u, r = req.spec.update_config, req.spec.rollback_config
    assert (u.order, u.failure_action, u.monitor_ms, u.max_failure_ratio) == (
        pb.UPDATE_ORDER_START_FIRST, pb.UPDATE_FAILURE_ACTION_ROLLBACK, 5000, 0.25,
    )  # fmt: skip
    assert (r.parallelism, r.failure_action) == (1, pb.UPDATE_FAILURE_ACTION_CONTINUE)
    # Bad values are usage errors naming the flag; nothing is sent.
    assert run(addr, "service", "update", "--update-max-failure-ratio", "2", "web") == 2
    assert "invalid update max failure ratio '2': expected a number between 0 and 1" in (
        capsys.readouterr().err
    )
    assert run(addr, "service", "update", "--rollback-failure-action", "rollback", "web") == 2
    assert "invalid choice: 'rollback'" in capsys.readouterr().err
    assert len(servicer.requests("UpdateService")) == 1
    # service rollback asks for the previous spec, with no spec of its own.
    assert run(addr, "service", "rollback", "-d", "web") == 0
    last = servicer.requests("UpdateService")[-1]
    assert last.rollback and not last.HasField("spec") and last.version == 3


def test_update_retries_when_only_the_status_changed(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The orchestrator writing the update status bumps the version: the change is made again
    on the new version; a real concurrent spec change is refused as before."""
    servicer, addr = fake
    svc = pb.Service(meta=pb.Meta(id="idweb", version=3), spec=_stored_spec())
    reads: list[pb.Service] = []
    bumped = pb.Service()
    bumped.CopyFrom(svc)
    bumped.meta.version = 4
    bumped.update_status.state = pb.UpdateStatus.COMPLETED
    # The first read is version 3; the status write lands before the update.
    servicer.answers["GetService"] = lambda _r: cpb.GetServiceResponse(
        service=reads.pop(0) if len(reads) > 1 else reads[0]
    )
    reads[:] = [svc, bumped]
    servicer.answers["UpdateService"] = lambda req: (
        cpb.UpdateServiceResponse(service=bumped)
        if req.version == 4
        else Abort(grpc.StatusCode.FAILED_PRECONDITION, "update out of sequence")
    )
    assert run(addr, "service", "update", "-d", "--env-add", "X=1", "web") == 0, (
        capsys.readouterr().err
    )
    assert [r.version for r in servicer.requests("UpdateService")] == [3, 4]
    # A spec that changed meanwhile is not overwritten.
    changed = pb.Service()
    changed.CopyFrom(bumped)
    changed.spec.env.append("Z=9")
    reads[:] = [svc, changed]
    assert run(addr, "service", "update", "-d", "--env-add", "X=1", "web") == 1
    assert "update out of sequence" in capsys.readouterr().err


def test_task_state_shows_health() -> None:
    now = 100_000
    running = pb.TaskStatus(state=pb.TASK_STATE_RUNNING, timestamp_ms=95_000)
    assert render.current_state(running, now) == "Running 5 seconds ago"
    running.health = pb.TASK_HEALTH_STARTING
    assert render.current_state(running, now) == "Running 5 seconds ago (starting)"
    running.health = pb.TASK_HEALTH_UNHEALTHY
    assert render.current_state(running, now) == "Running 5 seconds ago (unhealthy)"
    row = render.task_row(
        pb.Task(meta=pb.Meta(id="t1"), service_name="web", slot=1, status=running), False, {}, now
    )
    assert row[4] == "Running 5 seconds ago (unhealthy)"


def test_health_check_text_and_service_pretty(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert render.health_check_text(pb.HealthCheck()) == "none"
    assert render.health_check_text(pb.HealthCheck(tcp_port=80, retries=5)) == (
        "tcp port 80, every 1000 ms, timeout 1000 ms, 5 retries, start period 0 ms"
    )
    assert render.health_check_text(
        pb.HealthCheck(command=["sh", "-c", "curl -f x"], interval_ms=2000, timeout_ms=500)
    ).startswith("cmd 'curl -f x', every 2000 ms, timeout 500 ms, 3 retries")
    assert render.health_check_text(pb.HealthCheck(command=["pgrep", "a b"])).startswith(
        "cmd \"pgrep 'a b'\""
    )
    servicer, addr = fake
    spec = _stored_spec()
    spec.health_check.CopyFrom(pb.HealthCheck(command=["sh", "-c", "true"]))
    spec.update_config.CopyFrom(pb.UpdateConfig(parallelism=2, delay_ms=5000))
    svc = pb.Service(meta=pb.Meta(id="idweb"), spec=spec, spec_version=4)
    servicer.answers["GetService"] = cpb.GetServiceResponse(service=svc)
    assert run(addr, "service", "inspect", "--pretty", "web") == 0
    out = capsys.readouterr().out
    assert "Health check:     cmd 'true', every 1000 ms" in out
    assert "Update:           parallelism 2, delay 5000 ms, stop-first, on failure pause" in out
    assert "Spec version:     4" in out
    assert "Update status" not in out  # never updated
    svc.update_status.CopyFrom(
        pb.UpdateStatus(state=pb.UpdateStatus.PAUSED, message="update paused due to x")
    )
    servicer.answers["GetService"] = cpb.GetServiceResponse(service=svc)
    assert run(addr, "service", "inspect", "--pretty", "web") == 0
    out = capsys.readouterr().out
    assert "Update status:    paused\n  Message:        update paused due to x" in out
    assert run(addr, "service", "inspect", "web") == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["spec"]["health_check"]["command"] == ["sh", "-c", "true"]


def test_node_pretty_shows_the_ingress_address() -> None:
    node = pb.Node(
        meta=pb.Meta(id="n1"),
        attachments=[pb.NetworkAttachment(network_id="ing", addresses=["10.0.0.7/24"])],
    )
    text = render.node_pretty(node, pb.GossipStatus(), 0, {}, {})
    assert "Ingress address:  10.0.0.7/24" in text
    assert "Ingress address:  -" in render.node_pretty(pb.Node(), pb.GossipStatus(), 0, {}, {})


# ---------------------------------------------------------------- credentials and join tokens


def test_tls_files_come_from_the_context_file(tmp_path: Path) -> None:
    ctx = tmp_path / "conf" / "context.yaml"
    ctx.parent.mkdir()
    env = {"OVCTL_CONFIG": str(ctx), "OVCTL_HOST": "elsewhere:1"}
    ctx.write_text("managers: [m1]\n")
    assert resolve_tls(env) == TLSFiles(
        ca=ctx.parent / "ca.pem", cert=ctx.parent / "admin.crt", key=ctx.parent / "admin.key"
    )
    ctx.write_text("managers: [m1]\ntls: {ca: ../ca.pem, cert: me.crt, key: /abs/me.key}\n")
    assert resolve_tls(env) == TLSFiles(
        ca=ctx.parent / "../ca.pem", cert=ctx.parent / "me.crt", key=Path("/abs/me.key")
    )
    ctx.write_text("managers: [m1]\ntls: {ca: ca.pem}\n")
    with pytest.raises(ConfigError, match="ca, cert and key"):
        resolve_tls(env)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_tls({"OVCTL_CONFIG": str(tmp_path / "missing.yaml")})


def test_missing_credentials_name_the_files_and_how_to_make_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ca: ClusterCA,
) -> None:
    admin = tmp_path / "ovnet"
    ctx = ca.write_admin(admin)
    (admin / "admin.key").unlink()
    monkeypatch.setenv("OVCTL_CONFIG", str(ctx))
    assert cli.main(["-H", _closed_port(), "node", "ls"]) == 1
    err = capsys.readouterr().err
    assert f"{admin / 'admin.key'} does not exist" in err
    assert "admin.crt" not in err.split("exist")[0]
    assert f"ovnet-manager init --admin-dir {admin}" in err
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        (admin / "admin.key").write_bytes(b"x")
        (admin / "admin.crt").write_bytes(b"junk")
        load_credentials(resolve_tls({"OVCTL_CONFIG": str(ctx)}))


def test_a_refused_handshake_says_what_is_wrong_with_the_admin_certificate(
    fake: tuple[FakeControl, str],
    ca: ClusterCA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    servicer, addr = fake
    servicer.answers["ListNodes"] = cpb.ListNodesResponse()

    def node_ls_with(name: str, cert_key: tuple[bytes, bytes]) -> str:
        monkeypatch.setenv("OVCTL_CONFIG", str(ca.write_admin(tmp_path / name, cert_key)))
        assert run(addr, "--timeout", "5", "node", "ls") == 1
        assert servicer.calls == []
        return capsys.readouterr().err

    # Expired yesterday: the manager closes the socket; ovctl says why.
    issued = pki.utcnow() - dt.timedelta(days=3)
    expired = ca.issue("admin-old", pki.ROLE_ADMIN, lifetime=dt.timedelta(days=2), now=issued)
    err = node_ls_with("expired", expired)
    assert err.startswith(f"Error: no manager could serve the request (tried {addr}): ")
    assert "the managers refuse the admin certificate: it expired at " in err
    assert str(tmp_path / "expired" / "admin.crt") in err
    # Issued by another cluster's CA (ca.pem is this cluster's).
    err = node_ls_with("foreign", ClusterCA.new().issue("admin-x", pki.ROLE_ADMIN))
    assert "it was not issued by the root CA stored with it" in err
    # A manager of another cluster: its certificate is not signed by our ca.pem.
    monkeypatch.setenv("OVCTL_CONFIG", str(ca.write_admin(tmp_path / "good")))
    stranger, stranger_addr = _serve(FakeControl(), ClusterCA.new())
    try:
        assert run(stranger_addr, "--timeout", "5", "node", "ls") == 1
    finally:
        stranger.stop(0)
    err = capsys.readouterr().err
    assert "the manager's certificate is not signed by the cluster CA in " in err
    assert str(tmp_path / "good" / "ca.pem") in err
    # A valid certificate needs no diagnosis: the same call works.
    monkeypatch.setenv("OVCTL_CONFIG", str(ca.write_admin(tmp_path / "good")))
    assert run(addr, "node", "ls", "-q") == 0
    assert capsys.readouterr().err == ""


def test_join_token_prints_the_command_to_run_like_docker(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    servicer.answers["GetJoinToken"] = lambda req: cpb.GetJoinTokenResponse(
        role=req.role, token=f"OVNTKN-1-{req.role}-{int(req.rotate)}"
    )
    servicer.answers["GetClusterInfo"] = cpb.GetClusterInfoResponse(
        managers=[
            cpb.ManagerInfo(manager_id="m2", addr="10.0.0.2:4242"),
            cpb.ManagerInfo(manager_id="m1", addr="10.0.0.1:4242", leader=True),
        ],
        leader_id="m1",
    )
    assert run(addr, "cluster", "join-token", "worker") == 0
    assert capsys.readouterr().out == (
        "To add a worker to this cluster, run on it:\n"
        "  ovnet-agent --manager 10.0.0.1:4242,10.0.0.2:4242 --join-token OVNTKN-1-worker-0\n"
    )
    assert run(addr, "cluster", "join-token", "--rotate", "-q", "manager") == 0
    assert capsys.readouterr().out == "OVNTKN-1-manager-1\n"
    assert run(addr, "cluster", "join-token", "manager", "--rotate") == 0
    assert capsys.readouterr().out == (
        "Successfully rotated manager join token.\n\n"
        "To add a manager to this cluster, run on it:\n"
        "  ovnet-manager --etcd ETCD_ENDPOINTS --join 10.0.0.1:4243 "
        "--join-token OVNTKN-1-manager-1\n"
    )
    sent = [(r.role, r.rotate) for r in servicer.requests("GetJoinToken")]
    assert sent == [("worker", False), ("manager", True), ("manager", True)]
    assert run(addr, "cluster", "join-token", "admin") == 2
    assert len(servicer.requests("GetJoinToken")) == 3


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "a worker certificate may not call Control.GetJoinToken (allowed: admin, manager)",
        ),
        (
            grpc.StatusCode.UNAUTHENTICATED,
            "no client certificate: 127.0.0.1:1 is the join listener",
        ),
    ],
)
def test_join_token_refusals_are_printed(
    fake: tuple[FakeControl, str],
    capsys: pytest.CaptureFixture[str],
    code: grpc.StatusCode,
    details: str,
) -> None:
    servicer, addr = fake
    servicer.answers["GetJoinToken"] = Abort(code, details)
    assert run(addr, "cluster", "join-token", "worker") == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"Error: {details}\n"


def test_node_pretty_shows_esp_per_peer_and_refused_cleartext() -> None:
    st = pb.IpsecStatus(
        peers=[
            pb.IpsecPeer(addr="198.51.100.2"),
            pb.IpsecPeer(addr="198.51.100.3", silent_since_ms=40_000),
        ],
        cleartext_dropped_in=2,
    )
    text = render.node_pretty(pb.Node(), pb.GossipStatus(), 52_500, {}, {}, st)
    assert "IPsec:            cleartext refused: 2 in, 0 out" in text
    assert "  ESP from 198.51.100.2: ok" in text
    assert "  ESP from 198.51.100.3: no ESP for 12 s" in text
    assert "IPsec" not in render.node_pretty(pb.Node(), pb.GossipStatus(), 0, {}, {})


def test_network_pretty_lists_each_host_pair() -> None:
    resp = cpb.GetNetworkResponse(
        network=pb.Network(spec=pb.NetworkSpec(name="sec", encrypted=True), vni=4097),
        ipsec=[
            cpb.IpsecLink(node="h1", peer="h2", state="ok"),
            cpb.IpsecLink(node="h2", peer="h1", state="no ESP from h1 for 12 s"),
        ],
    )
    text = render.network_pretty(resp)
    assert "Options:    encrypted" in text
    assert "  h1 <- h2: ok\n  h2 <- h1: no ESP from h1 for 12 s" in text
    assert render.network_inspect_dict(resp)["ipsec"][1]["state"] == "no ESP from h1 for 12 s"
