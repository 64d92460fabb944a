#!/usr/bin/env bash
# Sets up .venv and runs the whole check: ruff, mypy, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
RADIXSERVE_EXTRAS=dev bash scripts/setup.sh
PY=${PYTHON:-python3}
# moto's S3 server for tests/model_store/test_s3.py, in a venv of its own: moto needs botocore, which
# pins python-dateutil<3, while the kubernetes client in .venv needs >=3. The tests start it as a process.
[ -x .venv-s3/bin/python ] || "$PY" -m venv .venv-s3
[ -x .venv-s3/bin/moto_server ] || .venv-s3/bin/python -m pip install -q --disable-pip-version-check "moto[server]"
.venv/bin/ruff check radixserve tests benchmarks
.venv/bin/mypy
set +e
.venv/bin/python -m pytest -q --durations=15 "$@"
rc=$?
set -e
# pytest exits 5 when it collects no tests; that is not a failure of the suite.
if [ "$rc" -eq 5 ]; then rc=0; fi
exit "$rc"
