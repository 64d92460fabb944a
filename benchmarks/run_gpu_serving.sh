#!/usr/bin/env bash
# One device call: `radixserve serve` on the GPU (8B-shaped random weights, bf16, Triton attention,
# CUDA graphs) driven by bench_serving.py (issue 16: distinct prompts, cached-token guard):
#   1. random: 500 distinct prompts of 1024 token ids, 256 out, at request rates $RATES in one
#      invocation (each rate with its own prompts), through /v1/completions (a chat template's common
#      header would be served from the cache and trip the 1 % guard);
#   2. sharegpt: 500 token-id requests with ShareGPT-like input/output lengths, all at once;
#   3. shared prefix (8 system prompts x 32 questions) with the radix cache on, then on a second
#      server with it off.
# bench_hf_baseline.py is not run here: it loads an HF checkpoint on the CPU (no dummy 8B shape, no
# GPU), so it cannot serve these requests; bench_offline.py (run_gpu_throughput.sh) runs the GPU
# transformers baseline.
# Run through the device tool with carry [".whl", ".gpu_assets"]; results land in $OUT.
#   git rev-parse HEAD > .gpu_assets/git_commit     # here, before the call: the device copy has no .git
#   bash benchmarks/run_gpu_serving.sh               # kind nvidia-h200;  TP=2 with kind nvidia-h200-x2
# Budget, H200 (estimates): 2 server starts ~40 s each; random at 8 and 16 req/s takes at least 500/8 +
# 500/16 = 94 s of arrivals, at inf ~30 s; sharegpt ~25 s; shared ~25 s: about 4.5 min, inside 8.
# A rate of 4 req/s would add 125 s of arrivals alone, so it is not in the default $RATES.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
TP=${TP:-1}
RATES=${RATES:-8,16,inf}
source "$(dirname "$0")/gpu_env.sh"
PORT=30777
server=(python3 -m radixserve.server --port $PORT --model-path llama-3-8b --load-format dummy --tp "$TP"
        --tokenizer-path "$PWD/.gpu_assets/tokenizer" --max-total-tokens 200000 --log-level warning)
shared=(--dataset shared-prefix --num-groups 8 --prompts-per-group 32 --system-prompt-len 700 --question-len 32
        --output-len 64 --ignore-eos --disable-tqdm)
tag=cuda_llama3_8b_tp${TP}

start() {  # $1: log name; rest: extra server flags
  local name=$1; shift
  "${server[@]}" "$@" > "$OUT/server_$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return 0; sleep 1; done
  tail -20 "$OUT/server_$name.log"; return 1
}
bench() {  # $1: timeout in s; rest: bench_serving flags. Exit 2: the cached-token guard failed.
  local limit=$1; shift
  timeout "$limit" python3 benchmarks/bench_serving.py --base-url "http://127.0.0.1:$PORT" --disable-tqdm "$@" \
    > "$OUT/bench.log" 2>&1
  local rc=$?
  tail -12 "$OUT/bench.log"; [ $rc = 0 ] || echo "bench_serving exited $rc"
}

if start radix_cache; then
  ids=(--endpoint /v1/completions --token-ids --vocab-lo 100 --vocab-hi 32000 --ignore-eos)
  bench 200 --dataset random "${ids[@]}" --num-prompts 500 --random-input-len 1024 --output-len 256 \
    --request-rates "$RATES" --seed 1 --output "$OUT/serving_${tag}_random_rates.json"
  bench 120 --dataset sharegpt "${ids[@]}" --num-prompts 500 --seed 2 --output "$OUT/serving_${tag}_sharegpt.json"
  bench 90 "${shared[@]}" --output "$OUT/serving_${tag}_shared_radix_cache.json"
  kill -TERM $pid; wait $pid
fi
if start no_radix_cache --disable-radix-cache; then
  bench 90 "${shared[@]}" --output "$OUT/serving_${tag}_shared_no_radix_cache.json"
  kill -TERM $pid; wait $pid
fi
nvidia-smi --query-gpu=name,memory.used --format=csv
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("serving_*.json")):
    d = json.loads(f.read_text())
    for r in d.get("runs") or [d]:
        print(f.name, "rate", r["config"]["request_rate"] or "inf", "req/s", r["request_throughput"],
              "out tok/s", r["output_token_throughput"], "ttft p50 ms", r["ttft_ms"]["p50"],
              "cached", r["cache_hit_rate"], "guard", r["cache_guard"]["passed"])
PY
