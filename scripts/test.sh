#!/usr/bin/env bash
# Sets up .venv and runs the whole check: ruff, mypy, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check radixserve tests benchmarks
.venv/bin/mypy
set +e
.venv/bin/python -m pytest -q --durations=15 "$@"
rc=$?
set -e
# pytest exits 5 when it collects no tests; that is not a failure of the suite.
if [ "$rc" -eq 5 ]; then rc=0; fi
exit "$rc"
