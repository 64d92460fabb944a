#!/usr/bin/env bash
# One device call (nvidia-h200, carry [".whl", ".gpu_assets"]): where the throughput workload's time
# goes (issue 16). 1. benchmarks/profile_throughput.py: prefill and decode by kernel class, the
# projections' products, the attention kernels' launch shapes. 2. bench_offline's 1000 x (1024 in,
# 256 out) with the scheduler's step log, on the tree in $BASE (an older checkout, e.g.
# `git archive HEAD radixserve benchmarks | tar -x -C .gpu_assets/base`) and on this tree with the
# arguments in $NEW_ARGS; benchmarks/summarise_phases.py totals each log's prefill and decode time.
# The calls of 2026-12-01 (docs/gpu.md, "Throughput: where the time went"):
#   NEW_ARGS="--cuda-graph-max-bs 512" bash benchmarks/run_gpu_profile_throughput.sh
#   PARTS=prefill,decode,extend_variants,decode_variants TREES=new WORKLOADS=throughput,sharegpt,prefill8k \
#     BENCH_S=240 bash benchmarks/run_gpu_profile_throughput.sh
#   SKIP_PROFILE=1 TREES="new base" WORKLOADS=throughput,sharegpt,prefill8k BENCH_S=250 \
#     bash benchmarks/run_gpu_profile_throughput.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
BASE=${BASE:-.gpu_assets/base}
REQS=${REQS:-1000}
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
[ "${SKIP_PROFILE:-0}" = 1 ] || timeout "${PROFILE_S:-200}" python3 benchmarks/profile_throughput.py \
  --parts "${PARTS:-prefill,decode,gemm,extend_variants,decode_variants}" --output "$OUT/profile_throughput.json" > "$OUT/profile.log" 2>&1 || { echo "profile exited $?"; tail -5 "$OUT/profile.log"; }
common=(--device cuda --model-path llama-3-8b --load-format dummy --tokenizer-path "$PWD/.gpu_assets/tokenizer"
        --workloads "${WORKLOADS:-throughput}" --throughput-requests "$REQS" --throughput-input 1024
        --throughput-output 256 --sharegpt-requests 1000 --prefill-len 8192 --max-total-tokens 400000 --skip-hf)
for tree in ${TREES:-base new}; do
  dir=$PWD; args=(${NEW_ARGS:-}); [ "$tree" = base ] && { dir=$PWD/$BASE; args=(); }
  (cd "$dir" && PYTHONPATH=$dir:/tmp/site RADIXSERVE_STEP_LOG="$OUT/steps_$tree" timeout "${BENCH_S:-170}" \
     python3 benchmarks/bench_offline.py "${common[@]}" "${args[@]}" --output "$OUT/bench_$tree.json" \
     >> "$OUT/engine.log" 2>&1) || { echo "bench $tree exited $?"; tail -5 "$OUT/engine.log"; }
done
python3 benchmarks/summarise_phases.py "$OUT"/steps_*.rank0 --output "$OUT/phases.json" | head -80
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("bench_*.json")):
    d = json.loads(f.read_text())
    for name, w in d["workloads"].items():
        print(f.name, name, {k: w.get(k) for k in ("engine_s", "engine_tok_s", "bound_s", "achieved_fraction",
                                                   "cached_tokens")})
PY
