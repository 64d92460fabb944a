#!/usr/bin/env bash
# One device call: kernel bandwidth table, 8B-shaped offline throughput vs HF, shared-prefix cache on/off.
# Run through the device tool with carry [".whl", ".gpu_assets"]; results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 RADIXSERVE_CACHE=/tmp/radixserve-cache
tok=$PWD/.gpu_assets/tokenizer
[ "${SKIP_KERNELS:-0}" = 1 ] || python3 benchmarks/bench_kernels.py --output "$OUT/bench_kernels_cuda_h100.json" 2>&1 | grep -v kernels:
common=(--device cuda --model-path llama-3-8b --load-format dummy --tokenizer-path "$tok" --hf-dtype bfloat16)
timeout 420 python3 benchmarks/bench_offline.py "${common[@]}" --workloads throughput --max-total-tokens 200000 --hf-batch 32 \
  --output "$OUT/bench_offline_cuda_llama3_8b_throughput.json" > "$OUT/throughput.log" 2>&1 || tail -5 "$OUT/throughput.log"
[ "${SKIP_SHARED:-0}" = 1 ] || timeout 150 python3 benchmarks/bench_offline.py "${common[@]}" --workloads shared --skip-hf --max-total-tokens 120000 \
  --groups 8 --per-group 32 --prefix-len 2048 --question-len 32 --shared-output-len 64 \
  --output "$OUT/bench_offline_cuda_llama3_8b_shared.json" > "$OUT/shared.log" 2>&1 || tail -5 "$OUT/shared.log"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("bench_offline_*.json")):
    for name, w in json.loads(f.read_text())["workloads"].items():
        print(name, w)
PY
