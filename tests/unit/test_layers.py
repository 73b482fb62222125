"""The import rule, walked with ast over every product module.

    proto  <-  security, osutil  <-  {manager, agent}
    ovctl uses proto, security and osutil only (its dev cluster runs the daemons as processes)

manager never imports agent and agent never imports manager; only manager/store talks to etcd
(aetcd); osutil is standard library only (the task shim imports it on its start path); no product
module imports tests/ or bench/. A violation fails with the file, line and import named.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("proto", "osutil", "security", "manager", "agent", "ovctl")
OURS = {*PRODUCT, "tests", "bench", "scripts"}

# Which of our packages each package may import (itself is always allowed).
ALLOWED: dict[str, set[str]] = {
    "proto": set(),
    "osutil": set(),
    "security": {"proto", "osutil"},
    "manager": {"proto", "osutil", "security"},
    "agent": {"proto", "osutil", "security"},
    "ovctl": {"proto", "osutil", "security"},
}
# The only modules allowed to import the etcd client.
ETCD_CLIENT = "aetcd"
ETCD_OWNERS = ("manager/store.py", "manager/store/")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    module: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.module}: {self.why}"


def imported_modules(tree: ast.AST, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in ``tree``, relative ones resolved
    against ``path`` (a path relative to the repository root)."""
    found: list[tuple[int, str]] = []
    package = list(path.parent.parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            # `from . import x` / `from pkg import sub` may name submodules: check those too.
            found.extend((node.lineno, f"{mod}.{a.name}") for a in node.names if a.name != "*")
    return found


def check_source(path: Path, source: str) -> list[Violation]:
    """The import-rule violations of one module (``path`` relative to the repository root)."""
    owner = path.parts[0]
    rel = path.as_posix()
    out: list[Violation] = []
    tree = ast.parse(source, filename=rel)
    for line, mod in imported_modules(tree, path):
        top = mod.split(".")[0]
        if top == ETCD_CLIENT and not rel.startswith(ETCD_OWNERS):
            out.append(Violation(rel, line, mod, "only manager/store may talk to etcd"))
        elif owner == "osutil" and top not in sys.stdlib_module_names and top != "osutil":
            out.append(Violation(rel, line, mod, "osutil is standard library only"))
        elif top in OURS and top != owner and top not in ALLOWED[owner]:
            allowed = ", ".join(sorted(ALLOWED[owner])) or "nothing of ovnet"
            out.append(Violation(rel, line, mod, f"{owner} may import only {allowed}"))
    # A `from pkg import name` also yields "pkg.name", which may be a symbol, not a module:
    # report each (line, top-level package) once.
    seen: set[tuple[int, str]] = set()
    unique = []
    for v in out:
        key = (v.line, v.module.split(".")[0])
        if key not in seen:
            seen.add(key)
            unique.append(v)
    return unique


def product_modules() -> list[Path]:
    mods = []
    for pkg in PRODUCT:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            if p.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            mods.append(p.relative_to(ROOT))
    return mods


def test_every_product_module_follows_the_import_rule() -> None:
    violations = [
        v for rel in product_modules() for v in check_source(rel, (ROOT / rel).read_text())
    ]
    assert not violations, "import rule broken:\n" + "\n".join(map(str, violations))


def test_the_walk_sees_every_package() -> None:
    found = {p.parts[0] for p in product_modules()}
    assert found == set(PRODUCT)


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        ("manager/x.py", "from agent import tls\n", "manager/x.py:1: imports agent"),
        ("agent/x.py", "import manager.ca.pki\n", "agent/x.py:1: imports manager.ca.pki"),
        ("agent/sub/x.py", "from ...manager import store\n", "agent/sub/x.py:1: imports manager"),
        ("ovctl/x.py", "\nfrom agent.tls import join\n", "ovctl/x.py:2: imports agent.tls"),
        ("manager/keys.py", "import aetcd\n", "only manager/store may talk to etcd"),
        ("osutil/x.py", "import grpc\n", "osutil is standard library only"),
        ("security/x.py", "from manager import errors\n", "security may import only"),
        ("manager/x.py", "from tests.support.wait import wait_for\n", "imports tests"),
        ("agent/x.py", "def f():\n    import manager\n", "agent/x.py:2: imports manager"),
    ],
)
def test_a_violation_is_named(path: str, source: str, expected: str) -> None:
    found = [str(v) for v in check_source(Path(path), source)]
    assert any(expected in f for f in found), found


def test_allowed_imports_pass() -> None:
    ok = {
        "manager/store.py": "import aetcd\nfrom aetcd import rpc\n",
        "agent/x.py": "from osutil.netns import run_in_netns\nfrom security import pki\n",
        "ovctl/x.py": "from proto import control_pb2\nimport grpc\n",
        "osutil/x.py": "import os, ctypes\nfrom osutil.files import atomic_write\n",
        "manager/sub/x.py": "from ..store import Store\nfrom . import y\n",
    }
    for path, source in ok.items():
        assert check_source(Path(path), source) == [], path
