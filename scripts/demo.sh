#!/usr/bin/env bash
# The main job, in one command (as root on Debian 12): install what is needed, then bring up a
# local control plane (etcd, a manager bootstrapped by `ovnet-manager init`, three agents that
# join with the worker token; every gRPC channel mutual TLS, ovctl with the admin certificate)
# and run a scripted ovctl session against it. Everything it starts is stopped again at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install.sh"
exec "$root/.venv/bin/python" "$root/scripts/demo.py" "$@"
