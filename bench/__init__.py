"""Benchmarks: each prints its figures and writes them as JSON (`write_results`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(path: Path, results: Any) -> None:
    """A benchmark's results as indented JSON at ``path`` (its directory made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
