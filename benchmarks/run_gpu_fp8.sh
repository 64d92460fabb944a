#!/usr/bin/env bash
# One device call (kind nvidia-h200) for FP8 (issue 19): the FP8 GPU tests, the per-projection
# W8A8-vs-bf16 table, then the Llama-3-8B shape (random weights) at bf16 and at --quantization fp8:
# batch-1 decode and 1000 x (1024 in, 256 out) distinct prompts, each against its roofline.
# Run through the device tool with carry [".whl", ".gpu_assets"]; results land in $OUT.
#   PART=tests bash benchmarks/run_gpu_fp8.sh    # tests + GEMM table (~3 min)
#   PART=offline bash benchmarks/run_gpu_fp8.sh  # the two offline runs (~5 min)
#   PART=kv bash benchmarks/run_gpu_fp8.sh       # FP8 KV cache: its GPU tests, then bf16 weights with a
#                                                # bf16 and an e4m3 KV cache, pools sized by free memory (~5 min)
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
PART=${PART:-all}
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "$PART" = kv ]; then
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/kernels/test_triton_attention.py \
    tests/kernels/test_fused_ops.py 2>&1 | tee "$OUT/gpu_fp8_kv_tests.log" | tail -5
  common=(--device cuda --model-path llama-3-8b --load-format dummy --tokenizer-path "$RADIXSERVE_TEST_TOKENIZER"
          --skip-hf --workloads batch1,throughput --input-len 512 --output-len 128 --batch1-prompts 2
          --throughput-requests 1000 --throughput-input 1024 --throughput-output 256)
  for kv in auto fp8_e4m3; do
    timeout 200 python3 benchmarks/bench_offline.py "${common[@]}" --kv-cache-dtype $kv \
      --output "$OUT/bench_offline_cuda_llama3_8b_kv_$kv.json" > "$OUT/offline_kv_$kv.log" 2>&1 || tail -8 "$OUT/offline_kv_$kv.log"
  done
  python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("bench_offline_cuda_llama3_8b_kv_*.json")):
    d = json.loads(f.read_text())
    print(f.name, "pool", d.get("kv_pool_tokens"), {w: (r.get("engine_tok_s"), r.get("achieved_fraction"),
                                                        r.get("cached_fraction")) for w, r in d["workloads"].items()})
PY
  exit 0
fi
if [ "$PART" != offline ]; then
  timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/gpu/test_fp8_gpu.py tests/layers/test_fp8.py \
    2>&1 | tee "$OUT/gpu_fp8_tests.log" | tail -15
  timeout 150 python3 benchmarks/bench_fp8_gemm.py --output "$OUT/bench_fp8_gemm_cuda.json" > "$OUT/gemm.log" 2>&1 \
    || tail -20 "$OUT/gemm.log"
fi
if [ "$PART" != tests ]; then
  common=(--device cuda --model-path llama-3-8b --load-format dummy --tokenizer-path "$RADIXSERVE_TEST_TOKENIZER"
          --skip-hf --workloads batch1,throughput --input-len 512 --output-len 128 --batch1-prompts 2
          --throughput-requests 1000 --throughput-input 1024 --throughput-output 256 --max-total-tokens 400000)
  timeout 240 python3 benchmarks/bench_offline.py "${common[@]}" \
    --output "$OUT/bench_offline_cuda_llama3_8b_bf16.json" > "$OUT/offline_bf16.log" 2>&1 || tail -8 "$OUT/offline_bf16.log"
  timeout 240 python3 benchmarks/bench_offline.py "${common[@]}" --quantization fp8 \
    --output "$OUT/bench_offline_cuda_llama3_8b_fp8.json" > "$OUT/offline_fp8.log" 2>&1 || tail -8 "$OUT/offline_fp8.log"
fi
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
g = out / "bench_fp8_gemm_cuda.json"
if g.exists():
    d = json.loads(g.read_text())
    print("rates", {k: d[k] for k in ("matmul_tflops", "fp8_matmul_tflops", "copy_gb_s")})
    for e in d["table"]:
        print(e["shape"], e["m"], {v: (e[v]["us"], e[v]["of_bound"]) for v in (
            "bf16", "fp8_channel", "fp8_channel_scaled_mm", "fp8_channel_triton", "fp8_block")},
              "quant", e.get("fp8_quantize_us"))
for f in sorted(out.glob("bench_offline_*.json")):
    d = json.loads(f.read_text())
    print(f.name, d.get("quantization"), d.get("matmul_tflops"), d.get("fp8_matmul_tflops"), d.get("copy_gb_s"),
          d["roofline_model"])
    for name, w in d["workloads"].items():
        print(" ", name, {k: w[k] for k in ("engine_tok_s", "engine_s", "bound_s", "achieved_fraction",
                                             "cached_tokens", "decode_roofline_tok_s") if k in w})
PY
