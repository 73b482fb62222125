"""Image tasks without podman: the manager's checks, the scheduler's need, ovctl's spec, and
the container executor's pure parts (podman's command line, its failures read by the shim)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.executor import shim
from agent.executor.api import TaskSpec
from agent.executor.container import OWNER_LABEL, TASK_LABEL, Podman, run_argv
from manager.errors import InvalidArgument
from manager.scheduler import service_needs
from manager.servicespec import task_spec_of
from manager.validation import check_image, check_service_spec
from ovctl import specs
from proto import objects_pb2 as pb


@pytest.mark.parametrize(
    "ref",
    [
        "nginx",
        "localhost/web:1",
        "docker.io/library/nginx:1.25",
        "registry.example:5000/team/app_x:v1.2-rc.1",
        "localhost/ovnet-test-httpd:ff61877dec6d",
        "web@sha256:" + "a" * 64,
    ],
)
def test_image_references_podman_takes(ref: str) -> None:
    check_image(ref)


@pytest.mark.parametrize(
    "ref", ["", "Nginx", "web:", "/web", "a:b:c", "web:tag with space", "x" * 300, "web@sha256:1"]
)
def test_bad_image_references_are_refused_naming_them(ref: str) -> None:
    with pytest.raises(InvalidArgument, match=r"invalid image reference .*NAME\[:TAG\]"):
        check_image(ref)


def test_a_service_needs_a_command_or_an_image() -> None:
    check_service_spec(pb.ServiceSpec(name="web", image="localhost/web:1"))
    check_service_spec(pb.ServiceSpec(name="web", image="localhost/web:1", command=["httpd"]))
    with pytest.raises(InvalidArgument, match="no command and no image"):
        check_service_spec(pb.ServiceSpec(name="web"))
    with pytest.raises(InvalidArgument, match="invalid image reference 'Web'"):
        check_service_spec(pb.ServiceSpec(name="web", image="Web"))


def test_a_new_image_replaces_the_tasks() -> None:
    a = pb.ServiceSpec(name="web", image="localhost/web:1")
    b = pb.ServiceSpec(name="web", image="localhost/web:2")
    assert task_spec_of(a) != task_spec_of(b)
    assert task_spec_of(a) == task_spec_of(pb.ServiceSpec(name="web", image="localhost/web:1"))


def test_an_image_service_needs_a_node_that_runs_containers() -> None:
    svc = pb.Service(spec=pb.ServiceSpec(name="web", image="localhost/web:1"))
    assert service_needs(svc, {}) == {"containers"}
    assert service_needs(pb.Service(spec=pb.ServiceSpec(name="p", command=["x"])), {}) == set()


def test_ovctl_service_spec_and_update_with_an_image() -> None:
    spec = specs.service_spec(specs.ServiceOptions(name="web", command=[], image="localhost/w:1"))
    assert spec.image == "localhost/w:1" and list(spec.command) == []
    with pytest.raises(specs.SpecError, match="needs an image"):
        specs.service_spec(specs.ServiceOptions(name="web", command=[]))
    new = specs.apply_service_changes(spec, specs.ServiceChanges(image="localhost/w:2"))
    assert new.image == "localhost/w:2" and spec.image == "localhost/w:1"
    # An image service may go back to the image's own command.
    cleared = specs.apply_service_changes(
        pb.ServiceSpec(name="web", image="i", command=["x"]), specs.ServiceChanges(command=[])
    )
    assert list(cleared.command) == []
    with pytest.raises(specs.SpecError, match="--command needs the new command"):
        specs.apply_service_changes(
            pb.ServiceSpec(name="p", command=["x"]), specs.ServiceChanges(command=[])
        )


def test_podman_run_argv_joins_the_sandbox_and_passes_output_through() -> None:
    pm = Podman(
        binary="/usr/bin/podman",
        containers_conf="/etc/x.conf",
        root="/r",
        runroot="/rr",
        storage_driver="vfs",
        pull="never",
    )
    spec = TaskSpec("t1", ("httpd", "-f"), ("A=1", "B=x y"), "/www", "ov-t-1", image="img:1")
    argv = run_argv(pm, spec, "ov-c-t1", "ov-", Path("/run/netns"))
    assert argv[:7] == [
        "/usr/bin/podman",
        "--root",
        "/r",
        "--runroot",
        "/rr",
        "--storage-driver",
        "vfs",
    ]
    words = " ".join(argv)
    for part in (
        "run --rm --name ov-c-t1",
        f"--label {OWNER_LABEL}=ov-",
        f"--label {TASK_LABEL}=t1",
        "--network ns:/run/netns/ov-t-1",
        "--dns 127.0.0.11",
        "--log-driver passthrough",
        "--pull never",
        "--env A=1 --env B=x y",
        "--workdir /www",
    ):
        assert part in words
    assert argv[-3:] == ["img:1", "httpd", "-f"]
    assert pm.env_items() == ["CONTAINERS_CONF=/etc/x.conf"]
    default = run_argv(Podman(), TaskSpec("t2", (), (), "/", "n", image="img"), "c", "p-")
    assert "--workdir" not in default and default[-1] == "img"


def test_a_host_without_podman_says_so() -> None:
    assert "podman not found" in Podman(binary="/nonexistent/podman").unavailable()
    if os.access("/usr/bin/podman", os.X_OK):
        assert Podman(binary="/usr/bin/podman").unavailable() == ""
        assert (
            "does not exist"
            in Podman(binary="/usr/bin/podman", containers_conf="/nonexistent.conf").unavailable()
        )


def _exited(code: int) -> int:
    return code << 8


def test_podmans_own_failures_are_start_failures_with_its_message() -> None:
    head = b"Error: localhost/x:1: image not known\n"
    rec = shim.exit_record(_exited(125), 0.3, head, now_ms=0, argv0="/usr/bin/podman")
    assert rec["start_failed"] is True
    assert rec["error"] == "podman: localhost/x:1: image not known"
    # Late too (a pull that took a while): podman's message is the last "Error:" line.
    late = b"task output\nError: initializing source docker://x: pinging registry\n"
    rec = shim.exit_record(_exited(125), 40.0, late, now_ms=0, argv0="podman")
    assert rec["error"] == "podman: initializing source docker://x: pinging registry"


@pytest.mark.parametrize(
    ("code", "head"),
    [
        (1, b"Error: the program's own words\n"),  # not podman's statuses
        (125, b"no podman message\n"),
        (0, b""),
    ],
)
def test_a_containers_own_exit_is_not_a_start_failure(code: int, head: bytes) -> None:
    rec = shim.exit_record(_exited(code), 0.1, head, now_ms=0, argv0="podman")
    assert rec["start_failed"] is False and rec["error"] == f"exit status {code}"


def test_podman_like_words_from_a_process_task_are_its_own() -> None:
    head = b"Error: localhost/x:1: image not known\n"
    rec = shim.exit_record(_exited(125), 0.1, head, now_ms=0, argv0="/usr/sbin/ip")
    assert rec["start_failed"] is False and rec["error"] == "exit status 125"
