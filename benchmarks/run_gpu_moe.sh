#!/usr/bin/env bash
# One device call (kind nvidia-h200) for the mixture-of-experts benchmark of issue 19: the
# Qwen3-30B-A3B shape (random bf16 weights, 128 experts, top-8) through bench_offline: batch-1
# decode and 1000 x (1024 in, 256 out) distinct prompts, each against its roofline (the weights a
# step reads: everything but the experts, plus the experts its tokens are expected to use), with
# HF transformers (same shape, random weights, same GPU) in the same call.
# Run through the device tool with carry [".whl", ".gpu_assets"]; results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# 120k KV tokens (12 GB) + the engine's 61 GB + HF's 61 GB fit one H200 (139 GiB).
timeout ${LIMIT:-480} python3 benchmarks/bench_offline.py --device cuda --model-path qwen3-30b-a3b --load-format dummy \
  --tokenizer-path "$PWD/.gpu_assets/tokenizer" --hf-dtype bfloat16 --workloads batch1,throughput \
  --input-len 512 --output-len 128 --batch1-prompts 2 --throughput-requests 1000 --throughput-input 1024 \
  --throughput-output 256 --hf-throughput-requests 32 --hf-batch 32 --max-total-tokens 120000 \
  --output "$OUT/bench_offline_cuda_qwen3_30b_a3b.json" > "$OUT/offline_moe.log" 2>&1 || tail -15 "$OUT/offline_moe.log"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
f = pathlib.Path(sys.argv[1]) / "bench_offline_cuda_qwen3_30b_a3b.json"
if f.exists():
    d = json.loads(f.read_text())
    print(d["device_name"], d["matmul_tflops"], d["copy_gb_s"], d["roofline_model"])
    for name, w in d["workloads"].items():
        print(" ", name, {k: w.get(k) for k in ("engine_tok_s", "engine_s", "bound_s", "achieved_fraction", "hf_tok_s",
                                                 "speedup_vs_hf", "cached_tokens", "decode_roofline_tok_s")})
PY
