#!/usr/bin/env bash
# One device call (kind nvidia-h200): the offline 8B-shaped workloads (random bf16 weights, distinct
# prompts) under several engine configurations, one after another in one call, with the GPU's clock
# and power logged throughout (gpu_monitor.csv) and, first, the matmul rate held over seconds against
# the roofline's burst measurement (bench_sustained_rate.py; SUSTAINED_S=0 leaves it out).
# CONFIGS: "name:flags" entries separated by ';', flags for bench_offline.py (e.g. --max-total-tokens,
# --mem-fraction-static, or engine switches such as RADIXSERVE_*=... in front).
# Each run writes bench_offline_cuda_llama3_8b_<name>.json; STEP_LOG=1 adds step logs.
# Run through the device tool with carry [".whl", ".gpu_assets"]; results land in $OUT.
#   CONFIGS="pool400k:--max-total-tokens 400000;pool_default:" bash benchmarks/run_gpu_offline_configs.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
CONFIGS=${CONFIGS:-"pool400k:--max-total-tokens 400000;pool_default:"}
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv,noheader
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active \
  --format=csv -lms 250 > "$OUT/gpu_monitor.csv" 2>&1 &
monitor=$!
mark() { echo "$(date -u +%Y/%m/%d\ %H:%M:%S.%3N) $*" >> "$OUT/phases.txt"; }
if [ "${SUSTAINED_S:-20}" != 0 ]; then
  mark sustained start
  timeout 120 python3 benchmarks/bench_sustained_rate.py --seconds "${SUSTAINED_S:-20}" \
    --output "$OUT/sustained_rate_h200.json" 2>&1 | tail -6
  mark sustained end
fi
common=(--device cuda --model-path llama-3-8b --load-format dummy --tokenizer-path "$PWD/.gpu_assets/tokenizer"
        --workloads "${WORKLOADS:-throughput}" --throughput-requests 1000 --throughput-input 1024
        --throughput-output 256 --sharegpt-requests 1000 --prefill-len 8192 --skip-hf)
IFS=';' read -ra configs <<< "$CONFIGS"
for entry in "${configs[@]}"; do
  parse_config "$entry"  # gpu_env.sh: $name, envs, args
  [ "${STEP_LOG:-0}" = 1 ] && envs+=("RADIXSERVE_STEP_LOG=$OUT/steps_$name")
  mark "$name start"
  env "${envs[@]}" timeout "${BENCH_S:-170}" python3 benchmarks/bench_offline.py "${common[@]}" "${args[@]}" \
    --output "$OUT/bench_offline_cuda_llama3_8b_$name.json" > "$OUT/offline_$name.log" 2>&1 \
    || { echo "$name exited $?"; tail -5 "$OUT/offline_$name.log"; }
  mark "$name end"
done
kill $monitor 2>/dev/null
[ "${STEP_LOG:-0}" = 1 ] && python3 benchmarks/summarise_phases.py "$OUT"/steps_*.rank0 --output "$OUT/phases.json" | head -40
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("bench_offline_*.json")):
    d = json.loads(f.read_text())
    print(f.name, "matmul TFLOP/s", d["matmul_tflops"], "sustained", d.get("sustained_matmul_tflops"), "copy GB/s",
          d["copy_gb_s"], "kv pool", d["kv_pool_tokens"])
    for name, w in d["workloads"].items():
        print(" ", name, {k: w.get(k) for k in ("engine_s", "engine_tok_s", "bound_s", "achieved_fraction",
                                                "achieved_fraction_sustained", "cached_tokens", "guard_error")})
PY
