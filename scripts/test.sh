#!/usr/bin/env bash
# Lint and test: setup.sh, then `ruff check .`, then pytest (extra arguments go to pytest).
# Both ruff and pytest always run; the exit code is non-zero if either fails (including pytest
# exit 5, "no tests collected").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

ruff_rc=0
echo "test: ruff check ."
.venv/bin/ruff check . || ruff_rc=$?

pytest_rc=0
echo "test: pytest $*"
.venv/bin/pytest "$@" || pytest_rc=$?

echo "test: ruff exit $ruff_rc, pytest exit $pytest_rc"
if [ "$ruff_rc" -ne 0 ] || [ "$pytest_rc" -ne 0 ]; then
    echo "test: FAILED" >&2
    exit 1
fi
echo "test: OK"
