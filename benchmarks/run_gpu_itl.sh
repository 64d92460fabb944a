#!/usr/bin/env bash
# One device call (kind nvidia-h200): inter-token latency under a prefill-heavy load, default
# scheduling against mixed chunked prefill. `radixserve serve` (8B-shaped random weights) takes
# 500 distinct 1024-token prompts (256 out) at $RATES, once per server configuration in $CONFIGS
# ("name:flags" entries separated by ';'; leading VAR=value words are the server's environment);
# each run writes serving_cuda_llama3_8b_itl_<name>.json; STEP_LOG=1 adds a step-time log per run.
# RUNS="16@1 16@4 inf@4" runs several loads per server ("rates@load-generator processes", each with
# its own seed), to tell the server's inter-token gaps from a saturated one-process client.
# Run through the device tool with carry [".whl", ".gpu_assets"]; results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
RATES=${RATES:-16,inf}
CONFIGS=${CONFIGS:-"default:;mixed2048:--enable-mixed-chunk --chunked-prefill-size 2048"}
source "$(dirname "$0")/gpu_env.sh"
PORT=30778
IFS=';' read -ra configs <<< "$CONFIGS"
for entry in "${configs[@]}"; do
  parse_config "$entry"  # gpu_env.sh: $name, envs (the server's environment), args
  # STEP_LOG=1: each scheduler step's timing goes to steps_<name>.jsonl.rank0 (benchmarks/analyze_step_log.py).
  [ "${STEP_LOG:-0}" = 1 ] && envs+=("RADIXSERVE_STEP_LOG=$OUT/steps_$name.jsonl")
  env "${envs[@]}" python3 -m radixserve.server --port $PORT --model-path llama-3-8b --load-format dummy \
    --tokenizer-path "$PWD/.gpu_assets/tokenizer" --max-total-tokens 200000 --log-level warning "${args[@]}" \
    > "$OUT/server_itl_$name.log" 2>&1 &
  pid=$!
  up=0; for _ in $(seq 240); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && { up=1; break; }; sleep 1; done
  if [ $up = 1 ]; then
    # RUNS: "rates@client_processes" entries; each run its own seed (distinct prompts: nothing cached).
    seed=1
    for run in ${RUNS:-"$RATES@1"}; do
      rates=${run%@*}; procs=${run#*@}; suffix="_rate${rates//,/-}_clients$procs"
      timeout 300 python3 benchmarks/bench_serving.py --base-url "http://127.0.0.1:$PORT" --disable-tqdm \
        --dataset random --endpoint /v1/completions --token-ids --vocab-lo 100 --vocab-hi 32000 --ignore-eos \
        --num-prompts 500 --random-input-len 1024 --output-len 256 --request-rates "$rates" --seed $seed \
        --client-processes "$procs" --output "$OUT/serving_cuda_llama3_8b_itl_$name$suffix.json" \
        > "$OUT/bench_itl_$name$suffix.log" 2>&1 || echo "bench $name$suffix failed"
      seed=$((seed + 100000))
    done
  else
    tail -20 "$OUT/server_itl_$name.log"
  fi
  kill -TERM $pid; wait $pid
  for log in "$OUT"/steps_"$name".jsonl.*; do
    [ -f "$log" ] && python3 benchmarks/analyze_step_log.py "$log" --output "$OUT/summary_${log##*/}.json"
  done
done
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("serving_*_itl_*.json")):
    for r in json.loads(f.read_text())["runs"]:
        print(f.name, "rate", r["config"]["request_rate"] or "inf", "out tok/s", r["output_token_throughput"],
              "itl p50/p99 ms", r["itl_ms"]["p50"], r["itl_ms"]["p99"], "ttft p50/p99 ms", r["ttft_ms"]["p50"],
              r["ttft_ms"]["p99"], "cached", r["cache_hit_rate"], "retractions", r.get("server_retractions"))
        per_token = r.get("itl_per_token_ms") or {}
        print("  per-token itl p50/p99/max ms", per_token.get("p50"), per_token.get("p99"), per_token.get("max"))
PY
