#!/usr/bin/env bash
# One device call: the GPU tests on this tree, then the 8B-shaped offline benchmark (batch 1 and
# batch 16, no HF) on this tree and on an older checkout, back to back on the same GPU, so a
# refactor's speed is compared in one call. Usage (device run, carry [".whl", ".gpu_assets", ".old"]):
#   OLD=.old bash benchmarks/run_gpu_ab.sh        # .old: `git worktree add .old <rev>` (git-ignored)
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
OLD=${OLD:-.old}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 RADIXSERVE_CACHE=/tmp/radixserve-cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export RADIXSERVE_TEST_TOKENIZER=$PWD/.gpu_assets/tokenizer
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ "${SKIP_TESTS:-0}" = 1 ] || PYTHONPATH=$PWD:/tmp/site python3 -m pytest -q -m gpu -p no:cacheprovider -rs \
  tests/kernels tests/gpu 2>&1 | tee "$OUT/gpu_tests.log" | tail -8
args=(--device cuda --model-path llama-3-8b --load-format dummy --input-len 512 --output-len 128
      --batch1-prompts 2 --batch-size 16 --workloads batch1,batchN --max-total-tokens 120000 --skip-hf
      --cuda-graph-max-bs 32 --tokenizer-path "$RADIXSERVE_TEST_TOKENIZER")
for round in 1 2; do  # alternate the trees so a warming GPU favours neither
  for tree in new old; do
    dir=$PWD; [ "$tree" = old ] && dir=$PWD/$OLD
    (cd "$dir" && PYTHONPATH=$dir:/tmp/site python3 benchmarks/bench_offline.py "${args[@]}" \
      --output "$OUT/ab_${tree}_${round}.json" > "$OUT/ab_${tree}_${round}.log" 2>&1) || tail -15 "$OUT/ab_${tree}_${round}.log"
  done
done
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("ab_*.json")):
    w = json.loads(f.read_text())["workloads"]
    print(f.name, {k: v["engine_tok_s"] for k, v in w.items()})
PY
