#!/usr/bin/env bash
# One device call: the 8B-shaped offline benchmark (random bf16 weights) on distinct prompts (issue 16):
# batch 1, batch 16, 1000 x (1024 in, 256 out), ShareGPT-like lengths, one 8191-token prefill (the
# 8B shape's context is 8192 and the prompt needs room for its one output token), each with its
# prompt/cached tokens, the cached-token guard and its roofline bound, the transformers baseline in
# the same process; then the shared-prefix workload, radix cache on vs off.
# Run through the device tool with carry [".whl", ".gpu_assets"]; results land in $OUT.
#   git rev-parse HEAD > .gpu_assets/git_commit     # here, before the call: the device copy has no .git
#   bash benchmarks/run_gpu_throughput.sh           # kind nvidia-h200
#   TP=2 bash benchmarks/run_gpu_throughput.sh      # kind nvidia-h200-x2: the same workloads over 2 ranks
# Budget, H200 (estimates, well inside 8 min): main run 3-5 min (capped at 330 s), shared ~1.5 min
# (capped at 110 s, SKIP_SHARED=1 to leave it out); the kernel table only with KERNELS=1.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
TP=${TP:-1}
source "$(dirname "$0")/gpu_env.sh"
tok=$PWD/.gpu_assets/tokenizer
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ "${KERNELS:-0}" = 1 ] && python3 benchmarks/bench_kernels.py --output "$OUT/bench_kernels_cuda.json" 2>&1 | grep -v kernels:
common=(--device cuda --model-path llama-3-8b --load-format dummy --tokenizer-path "$tok" --hf-dtype bfloat16
        --tp-size "$TP")
# 400k KV tokens (51 GB over the ranks) leave room on GPU 0 for the HF model (16 GB) and its batches.
# HF: 64 of the 1000 throughput prompts at batch 32 (its static batches need ~20 s for them); the
# batch-1 and batch-16 workloads run it on all their prompts.
timeout 330 python3 benchmarks/bench_offline.py "${common[@]}" \
  --workloads batch1,batchN,throughput,sharegpt,prefill8k --input-len 512 --output-len 128 --batch1-prompts 2 \
  --batch-size 16 --throughput-requests 1000 --throughput-input 1024 --throughput-output 256 \
  --hf-throughput-requests 64 --hf-batch 32 --sharegpt-requests 1000 --prefill-len 8192 --max-total-tokens 400000 \
  --output "$OUT/bench_offline_cuda_llama3_8b_tp${TP}.json" > "$OUT/offline_tp${TP}.log" 2>&1 \
  || { echo "bench_offline exited $?"; tail -8 "$OUT/offline_tp${TP}.log"; }
[ "${SKIP_SHARED:-0}" = 1 ] || timeout 110 python3 benchmarks/bench_offline.py "${common[@]}" --workloads shared --skip-hf \
  --max-total-tokens 120000 --groups 8 --per-group 32 --prefix-len 2048 --question-len 32 --shared-output-len 64 \
  --output "$OUT/bench_offline_cuda_llama3_8b_shared_tp${TP}.json" > "$OUT/shared_tp${TP}.log" 2>&1 \
  || { echo "shared exited $?"; tail -8 "$OUT/shared_tp${TP}.log"; }
python3 - "$OUT" <<'PY'
import json, pathlib, sys
keys = ("engine_tok_s", "engine_total_tok_s", "prefill_tok_s", "hf_tok_s", "speedup_vs_hf", "cache_on_tok_s",
        "cache_off_tok_s", "prompt_tokens", "cached_tokens", "cached_fraction", "bound_s", "engine_s",
        "achieved_fraction", "achieved_fraction_sustained", "guard_error")
for f in sorted(pathlib.Path(sys.argv[1]).glob("bench_offline_*.json")):
    d = json.loads(f.read_text())
    print(f.name, d["device_name"], "tp", d["tp_size"], "matmul TFLOP/s", d["matmul_tflops"], "copy GB/s",
          d["copy_gb_s"], "sustained TFLOP/s", d.get("sustained_matmul_tflops"), "kv pool", d["kv_pool_tokens"], "guard", d.get("guard_error", "passed"))
    for name, w in d["workloads"].items():
        print(" ", name, {k: w[k] for k in keys if k in w})
PY
