#!/usr/bin/env bash
# One device call: GPU tests, then the 8B-shaped offline benchmark with each attention backend.
# Run through the device tool with carry [".whl", ".gpu_assets"] (see docs/gpu.md); results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
[ "${SKIP_TESTS:-0}" = 1 ] || python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/kernels tests/gpu 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
common=(--device cuda --model-path llama-3-8b --load-format dummy --input-len 512 --output-len 128
        --batch1-prompts 2 --batch-size 16 --workloads batch1,batchN --max-total-tokens 120000 --hf-dtype bfloat16
        --tokenizer-path "$RADIXSERVE_TEST_TOKENIZER")
python3 benchmarks/bench_offline.py "${common[@]}" --attention-backend triton \
  --output "$OUT/bench_offline_cuda_llama3_8b_triton.json" > "$OUT/bench_triton.log" 2>&1 || tail -20 "$OUT/bench_triton.log"
python3 benchmarks/bench_offline.py "${common[@]}" --attention-backend torch --skip-hf \
  --output "$OUT/bench_offline_cuda_llama3_8b_torch.json" > "$OUT/bench_torch.log" 2>&1 || tail -20 "$OUT/bench_torch.log"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("bench_offline_*.json")):
    d = json.loads(f.read_text())
    print(f.name, d["attention_backend"], "copy GB/s", d.get("copy_bandwidth_gb_s"))
    for name, w in d["workloads"].items():
        print(" ", name, {k: v for k, v in w.items() if k not in ("greedy_agreement",)})
PY
