#!/usr/bin/env bash
# Device calls (kind nvidia-h200) for the mixture-of-experts work of issue 19: the Qwen3-30B-A3B shape
# (random weights, 128 experts, top-8) through bench_offline, each workload against its roofline (the
# weights a step reads: everything but the experts, plus the experts its tokens are expected to use).
# Run through the device tool with carry [".whl", ".gpu_assets"]; results land in $OUT.
#   PART=tests bash benchmarks/run_gpu_moe.sh     # the fused-MoE GPU tests (bf16/fp32/fp16 and FP8 experts)
#   PART=offline bash benchmarks/run_gpu_moe.sh   # bf16, then --quantization fp8 (FP8 experts, W8A16, and
#                                                 # W8A8 attention); WORKLOADS=batch1,throughput by default,
#                                                 # THROUGHPUT_REQUESTS=1000; QUANTS="bf16 fp8"
#   HF=1 ...                                      # also HF transformers (bf16, same GPU) in the bf16 run
#   PART=tests,offline ...                        # both in one call
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
PART=${PART:-offline}
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [[ ",$PART," == *,tests,* ]]; then
  timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/gpu/test_fused_moe_gpu.py 2>&1 \
    | tee "$OUT/gpu_moe_tests.log" | tail -15
fi
if [[ ",$PART," == *,offline,* ]]; then
  # 120k KV tokens (12 GB) + the engine's 61 GB (+ HF's 61 GB with HF=1) fit one H200 (139 GiB).
  common=(--device cuda --model-path qwen3-30b-a3b --load-format dummy --tokenizer-path "$RADIXSERVE_TEST_TOKENIZER"
          --workloads "${WORKLOADS:-batch1,throughput}" --input-len 512 --output-len 128 --batch1-prompts 2
          --throughput-requests "${THROUGHPUT_REQUESTS:-1000}" --throughput-input 1024 --throughput-output 256
          --max-total-tokens 120000)
  for q in ${QUANTS:-bf16 fp8}; do
    extra=(--skip-hf)
    [ "$q" = fp8 ] && extra+=(--quantization fp8)
    [ "$q" = bf16 ] && [ -n "${HF:-}" ] && extra=(--hf-dtype bfloat16 --hf-throughput-requests 32 --hf-batch 32)
    timeout "${LIMIT:-280}" python3 benchmarks/bench_offline.py "${common[@]}" "${extra[@]}" \
      --output "$OUT/bench_offline_cuda_qwen3_30b_a3b_$q.json" > "$OUT/offline_moe_$q.log" 2>&1 \
      || tail -15 "$OUT/offline_moe_$q.log"
  done
  python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("bench_offline_cuda_qwen3*.json")):
    d = json.loads(f.read_text())
    print(f.name, d["device_name"], d["matmul_tflops"], d["copy_gb_s"], d.get("quantization"), d["roofline_model"])
    for name, w in d["workloads"].items():
        print(" ", name, {k: w.get(k) for k in ("engine_tok_s", "engine_s", "bound_s", "achieved_fraction", "hf_tok_s",
                                                 "speedup_vs_hf", "cached_tokens", "decode_roofline_tok_s")})
PY
fi
