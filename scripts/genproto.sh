#!/usr/bin/env bash
# Regenerates proto/*_pb2*.py from proto/*.proto. Run from anywhere; needs grpcio-tools (dev extra).
# protoc runs with the repository root as include path, so generated modules import each other
# as `from proto import x_pb2` and are importable inside the package without patching.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
py=${PYTHON:-$root/.venv/bin/python}
cd "$root"
"$py" -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" proto/*.proto
