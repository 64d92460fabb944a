#!/usr/bin/env bash
# One device call on ONE GPU (nvidia-h200): what a TP rank's batch-1 decode step costs when only one GPU is
# lent. First the GPU tests of the one-row kernels, including their TP form with two ranks on the one GPU
# (gloo), then bench_tp_shard.py: each (shape, TP) as rank 0 of TP=N with collectives that do nothing,
# the one-row fusion off/on x PDL off/on, against the rank's bound and the TP=1 step of the same call.
# Run through the device tool with carry [".whl", ".gpu_assets"] (see docs/gpu.md); results land in $OUT.
#   CONFIGS="llama-3-8b:1,2,4,8 llama-3-70b:2,4,8" (default) SKIP_TESTS=1 to skip the tests.
#   ALL_REDUCE=lamport-local: each all-reduce runs the one-kernel all-reduce with the rank alone (default none).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
[ "${SKIP_TESTS:-0}" = 1 ] || python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/kernels/test_gemv.py 2>&1 \
  | tee "$OUT/gpu_tests_tp_shard.log" | tail -15
# shellcheck disable=SC2086  # CONFIGS is a list of words
python3 benchmarks/bench_tp_shard.py --tokenizer-path "$RADIXSERVE_TEST_TOKENIZER" \
  --all-reduce "${ALL_REDUCE:-none}" --configs ${CONFIGS:-llama-3-8b:1,2,4,8 llama-3-70b:2,4,8} --output "$OUT/tp_shard_h200.json" 2>&1 \
  | tee "$OUT/tp_shard.log" | tail -30
