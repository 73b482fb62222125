"""agent.cni.conflists: the conflist of a network, and a config dir kept in step with the
networks without touching what is not ours."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.cni import conflists
from agent.cni.conflists import ConflistWriter, render, sync
from proto import objects_pb2 as pb

SOCK = "/run/ovnet/cni.sock"


def test_render() -> None:
    text = render("backend", "net-id-1", SOCK)
    assert text.endswith("}\n")
    assert json.loads(text) == {
        "cniVersion": "1.0.0",
        "name": "backend",
        "plugins": [
            {
                "type": "ovnet-cni",
                "network": "net-id-1",
                "socket": SOCK,
                "capabilities": {"aliases": True},
            }
        ],
    }
    assert text.startswith('{\n  "cniVersion": "1.0.0",\n  "name": "backend",\n')
    assert render("backend", "net-id-1", SOCK) == text
    assert json.loads(render("b", "i", "/s", cni_version="0.4.0"))["cniVersion"] == "0.4.0"


def test_sync_writes_then_changes_nothing(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"  # made on the first write
    nets = {"id-b": "backend", "id-f": "frontend"}
    assert sync(conf_dir, nets, SOCK) == [
        f"wrote {conf_dir}/ovnet-backend.conflist",
        f"wrote {conf_dir}/ovnet-frontend.conflist",
    ]
    assert (conf_dir / "ovnet-backend.conflist").read_text() == render("backend", "id-b", SOCK)
    mtimes = {p: p.stat().st_mtime_ns for p in conf_dir.iterdir()}
    assert sync(conf_dir, nets, SOCK) == []
    assert {p: p.stat().st_mtime_ns for p in conf_dir.iterdir()} == mtimes


def test_sync_rewrites_a_changed_file(tmp_path: Path) -> None:
    sync(tmp_path, {"id-old": "backend"}, SOCK)
    assert sync(tmp_path, {"id-new": "backend"}, SOCK) == [
        f"wrote {tmp_path}/ovnet-backend.conflist"
    ]
    data = json.loads((tmp_path / "ovnet-backend.conflist").read_text())
    assert data["plugins"][0]["network"] == "id-new"


def test_sync_removes_a_stale_file_of_ours(tmp_path: Path) -> None:
    sync(tmp_path, {"id-b": "backend", "id-old": "old"}, SOCK)
    # one of ours written by hand with the default socket left implicit
    implicit = {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "ovnet-cni"}]}
    (tmp_path / "ovnet-x.conflist").write_text(json.dumps(implicit))
    assert sync(tmp_path, {"id-b": "backend"}, SOCK) == [
        f"removed {tmp_path}/ovnet-old.conflist",
        f"removed {tmp_path}/ovnet-x.conflist",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ovnet-backend.conflist"]


def test_sync_leaves_what_is_not_ours_alone(tmp_path: Path) -> None:
    foreign = {
        # another runtime's network under our prefix
        "ovnet-bridge.conflist": json.dumps(
            {"cniVersion": "1.0.0", "name": "bridge", "plugins": [{"type": "bridge"}]}
        ),
        # another agent on this host: same plugin, its own socket
        "ovnet-other.conflist": render("other", "id-o", "/run/ovnet2/cni.sock"),
        # not JSON
        "ovnet-broken.conflist": "{",
        # ours by content, but not a conflist by name
        "ovnet-old.conf": render("old", "id-old", SOCK),
        "87-podman.conflist": render("podman", "id-p", SOCK),
    }
    for name, text in foreign.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "ovnet-dir.conflist").mkdir()
    assert sync(tmp_path, {}, SOCK) == []
    # a wanted name held by a foreign file is not overwritten either
    changes = sync(tmp_path, {"id-br": "bridge", "id-b": "backend"}, SOCK)
    assert changes == [
        f"wrote {tmp_path}/ovnet-backend.conflist",
        f"left {tmp_path}/ovnet-bridge.conflist alone: it is not ours (so no conflist for it)",
    ]
    for name, text in foreign.items():
        assert (tmp_path / name).read_text() == text, name
    assert (tmp_path / "ovnet-dir.conflist").is_dir()


def test_sync_skips_names_that_are_no_cni_network_name(tmp_path: Path) -> None:
    changes = sync(tmp_path, {"id-1": "../etc", "id-2": "ok", "id-3": "ok"}, SOCK)
    assert changes == [
        "skipped network id-1: '../etc' is not a CNI network name",
        "skipped network id-3: network id-2 is also named ok",
        f"wrote {tmp_path}/ovnet-ok.conflist",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["ovnet-ok.conflist"]


def test_is_ours() -> None:
    assert conflists.is_ours(render("a", "i", SOCK), SOCK)
    assert not conflists.is_ours(render("a", "i", SOCK), "/elsewhere.sock")
    assert not conflists.is_ours('{"plugins": "ovnet-cni"}', SOCK)
    assert not conflists.is_ours("[]", SOCK)


def _net(net_id: str, name: str, *, attachable: bool = True, ingress: bool = False) -> pb.Network:
    return pb.Network(
        meta=pb.Meta(id=net_id),
        spec=pb.NetworkSpec(name=name, attachable=attachable, ingress=ingress),
    )


def test_writer_lists_attachable_networks_and_syncs_only_on_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.cni.conflists")
    writer = ConflistWriter(tmp_path, SOCK)
    nets = {
        "a": _net("a", "backend"),
        "s": _net("s", "services-only", attachable=False),
        "i": _net("i", "ingress", attachable=True, ingress=True),
    }
    writer(nets)
    assert [p.name for p in tmp_path.iterdir()] == ["ovnet-backend.conflist"]
    assert caplog.messages == [f"CNI conflists: wrote {tmp_path}/ovnet-backend.conflist"]
    (tmp_path / "ovnet-backend.conflist").unlink()
    writer(nets)  # nothing changed in the networks: the dir is not even read
    assert list(tmp_path.iterdir()) == []
    writer({})
    writer(nets)
    assert [p.name for p in tmp_path.iterdir()] == ["ovnet-backend.conflist"]


def test_writer_logs_a_failure_and_tries_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "net.d"
    blocker.write_text("a file where the dir should be")
    writer = ConflistWriter(blocker, SOCK)
    writer({"a": _net("a", "backend")})  # does not raise into the daemon
    assert "cannot write the CNI conflists" in caplog.text
    blocker.unlink()
    writer({"a": _net("a", "backend")})
    assert (blocker / "ovnet-backend.conflist").is_file()
