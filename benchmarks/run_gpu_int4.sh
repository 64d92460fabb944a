#!/usr/bin/env bash
# Device calls (kind nvidia-h200) for W4A16 on the GPU (issue 19: GGUF weights stay packed on CUDA, and
# --quantization int4). Run through the device tool with carry [".whl", ".gpu_assets"]; results in $OUT.
#   PART=tests bash benchmarks/run_gpu_int4.sh    # GPU tests + the per-projection table with a tile sweep
#                                                 # (ROWS=1,16,256 BITS=4,8 by default; ~4 min)
#   PART=offline bash benchmarks/run_gpu_int4.sh  # Llama-3-8B shape, random weights, bf16 vs --quantization int4:
#                                                 # batch-1 decode and 1000 x (1024 in, 256 out) distinct prompts
#                                                 # (WORKLOADS=batch1,throughput by default)
#   PART=tests,offline ...                        # both in one call
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
PART=${PART:-tests}
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [[ ",$PART," == *,tests,* ]]; then
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/gpu/test_int4_gpu.py 2>&1 \
    | tee "$OUT/gpu_int4_tests.log" | tail -15
  timeout 300 python3 benchmarks/bench_int4_gemm.py --rows "${ROWS:-1,16,256}" --bits "${BITS:-4,8}" \
    --output "$OUT/bench_int4_gemm_cuda.json" > "$OUT/gemm.log" 2>&1 || tail -20 "$OUT/gemm.log"
  tr '\r' '\n' < "$OUT/gemm.log" | grep -oE "(qkv|o|gate_up|down) [0-9]+ [0-9] .*" | head -60
fi
if [[ ",$PART," == *,offline,* ]]; then
  common=(--device cuda --model-path llama-3-8b --load-format dummy --tokenizer-path "$RADIXSERVE_TEST_TOKENIZER"
          --skip-hf --workloads "${WORKLOADS:-batch1,throughput}" --input-len 512 --output-len 128 --batch1-prompts 2
          --throughput-requests 1000 --throughput-input 1024 --throughput-output 256 --max-total-tokens 400000)
  for q in int4 none; do
    extra=(); [ "$q" = int4 ] && extra=(--quantization int4)
    timeout 280 python3 benchmarks/bench_offline.py "${common[@]}" "${extra[@]}" \
      --output "$OUT/bench_offline_cuda_llama3_8b_$q.json" > "$OUT/offline_$q.log" 2>&1 || tail -8 "$OUT/offline_$q.log"
  done
  python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("bench_offline_*.json")):
    d = json.loads(f.read_text())
    print(f.name, d.get("quantization"), d["roofline_model"])
    for name, w in d["workloads"].items():
        print(" ", name, {k: w[k] for k in ("engine_tok_s", "engine_s", "bound_s", "achieved_fraction",
                                             "cached_tokens", "decode_roofline_tok_s") if k in w})
PY
fi
