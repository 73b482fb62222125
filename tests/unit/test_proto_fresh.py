"""The committed generated modules match the .proto sources and the pinned generator.

A .proto edited without running scripts/genproto.sh, or a grpcio-tools upgrade without
regenerating, fails here instead of at some later import or on the wire.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATED = sorted(p.name for p in (REPO / "proto").glob("*_pb2*.py*"))


def test_every_proto_has_its_modules() -> None:
    for src in (REPO / "proto").glob("*.proto"):
        stem = src.stem
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert f"{stem}{suffix}" in GENERATED, f"{stem}{suffix} missing: run genproto.sh"


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run(["bash", str(REPO / "scripts/genproto.sh"), str(tmp_path)], check=True,
                   env={**os.environ, "PYTHON": sys.executable})
    fresh = sorted(p.name for p in (tmp_path / "proto").glob("*_pb2*.py*"))
    assert fresh == GENERATED
    stale = [name for name in fresh
             if (tmp_path / "proto" / name).read_bytes() != (REPO / "proto" / name).read_bytes()]
    assert not stale, f"stale generated modules {stale}: run scripts/genproto.sh"


def test_generated_code_imports_inside_the_package() -> None:
    # Absolute `import objects_pb2` (protoc's default) would fail here; ours import as
    # `from proto import objects_pb2`.
    for name in GENERATED:
        if name.endswith(".py"):
            text = (REPO / "proto" / name).read_text()
            for line in text.splitlines():
                if line.startswith("import ") and "_pb2" in line:
                    pytest.fail(f"{name}: absolute import of a generated module: {line}")
    from proto import control_pb2_grpc, dispatcher_pb2_grpc  # noqa: F401
