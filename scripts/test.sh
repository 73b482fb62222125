#!/usr/bin/env bash
# The one test command: installs what is missing (scripts/install.sh), lints (ruff), type-checks
# (mypy), then runs pytest with the arguments given (default: the whole suite, quietly).
# CI calls it through .ci/run with CI=true. Run from any directory:
#
#   bash scripts/test.sh                   # everything (as root)
#   bash scripts/test.sh tests/unit -x     # arguments go to pytest
#
# Exits non-zero if any step fails; pytest's "no tests collected" (exit 5) is a failure too,
# since a run that tested nothing must not pass.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash "$root/scripts/install.sh"

bin="$root/.venv/bin"

echo "test.sh: ruff check ."
"$bin/ruff" check .

typed=()
for d in osutil security manager agent ovctl proto bench tests; do
    [[ -d $d ]] && typed+=("$d")
done
echo "test.sh: mypy ${typed[*]}"
"$bin/mypy" "${typed[@]}"

args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(-q)
if [[ ${CI:-} == true ]]; then
    # A clean clone has no cache worth keeping, and a shared checkout should not get one.
    args=(-p no:cacheprovider "${args[@]}")
fi
echo "test.sh: pytest ${args[*]}"
status=0
"$bin/pytest" "${args[@]}" || status=$?
if [[ $status -eq 5 ]]; then
    echo "test.sh: pytest collected no tests; treating that as a failure" >&2
fi
exit "$status"
