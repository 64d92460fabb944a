#!/usr/bin/env bash
# One device call: `radixserve serve` on the GPU (8B-shaped random weights, bf16, Triton attention,
# CUDA graphs) driven by bench_serving.py (issue 16: distinct prompts, cached-token guard):
#   1. random: 500 distinct prompts of 1024 token ids, 256 out, at request rates $RATES in one
#      invocation (each rate with its own prompts), through /v1/completions (a chat template's common
#      header would be served from the cache and trip the 1 % guard);
#   2. sharegpt: 500 token-id requests with ShareGPT-like input/output lengths, all at once;
#   3. shared prefix (8 system prompts x 32 questions) with the radix cache on, then on a second
#      server with it off.
#   4. transformers' continuous batching (`generate_batch`, bench_hf_baseline.py on the GPU, the same
#      random weights' shape) on the first $HF_REQUESTS (default 64; 0 skips it) of the all-at-once
#      run's requests, and the server (cache off, so they are not served from the cache) on the same
#      requests all at once: output tok/s of the two in the summary.
# Run through the device tool with carry [".whl", ".gpu_assets"]; results land in $OUT.
#   git rev-parse HEAD > .gpu_assets/git_commit     # here, before the call: the device copy has no .git
#   bash benchmarks/run_gpu_serving.sh               # kind nvidia-h200;  TP=2 with kind nvidia-h200-x2
# PARTS (default "serving,hf") picks what runs: "serving" is 1-3, "hf" is 4 alone (PARTS=hf: ~3 min).
# Budget, H200 (estimates): 2 server starts ~40 s each; random at 8 and 16 req/s takes at least 500/8 +
# 500/16 = 94 s of arrivals, at inf ~30 s; sharegpt ~25 s; shared ~25 s; transformers on 64 requests
# ~60-90 s (305 tok/s measured for its continuous batching in issue 16): about 6 min, inside 8.
# A rate of 4 req/s would add 125 s of arrivals alone, so it is not in the default $RATES.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
TP=${TP:-1}
RATES=${RATES:-8,16,inf}
PARTS=${PARTS:-serving,hf}
part() { [[ ",$PARTS," == *",$1,"* ]]; }
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

ids=(--endpoint /v1/completions --token-ids --vocab-lo 100 --vocab-hi 32000 --ignore-eos)
if part serving && start radix_cache; then
  bench 200 --dataset random "${ids[@]}" --num-prompts 500 --random-input-len 1024 --output-len 256 \
    --request-rates "$RATES" --seed 1 --output "$OUT/serving_${tag}_random_rates.json"
  bench 120 --dataset sharegpt "${ids[@]}" --num-prompts 500 --seed 2 --output "$OUT/serving_${tag}_sharegpt.json"
  bench 90 "${shared[@]}" --output "$OUT/serving_${tag}_shared_radix_cache.json"
  kill -TERM $pid; wait $pid
fi
# bench_serving's run i of --request-rates uses seed 1 + 1000 * i: the all-at-once run's requests.
IFS=, read -ra rate_list <<< "$RATES"
for i in "${!rate_list[@]}"; do [ "${rate_list[$i]}" = inf ] && inf_seed=$((1 + 1000 * i)); done
if part hf && [ "${HF_REQUESTS:-64}" -gt 0 ] && [ -n "${inf_seed:-}" ]; then
  timeout 300 python3 benchmarks/bench_hf_baseline.py --device cuda --load-format dummy --model-path llama-3-8b \
    --dtype bfloat16 --method generate_batch --dataset random --token-ids --vocab-lo 100 --vocab-hi 32000 \
    --num-prompts "${HF_REQUESTS:-64}" --random-input-len 1024 --output-len 256 --ignore-eos --seed "$inf_seed" \
    --disable-tqdm --output "$OUT/hf_continuous_${tag}_random_inf.json" \
    > "$OUT/hf.log" 2>&1 || { echo "bench_hf_baseline exited $?"; tail -8 "$OUT/hf.log"; }
fi
if { part serving || [ -f "$OUT/hf_continuous_${tag}_random_inf.json" ]; } && start no_radix_cache --disable-radix-cache; then
  part serving && bench 90 "${shared[@]}" --output "$OUT/serving_${tag}_shared_no_radix_cache.json"
  # The requests transformers ran above (a prefix of the all-at-once run's: random_prompts is prefix-stable).
  [ -f "$OUT/hf_continuous_${tag}_random_inf.json" ] && bench 60 --dataset random "${ids[@]}" \
    --num-prompts "${HF_REQUESTS:-64}" --random-input-len 1024 --output-len 256 --seed "$inf_seed" \
    --output "$OUT/serving_${tag}_random_hf_requests.json"
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
for f in sorted(pathlib.Path(sys.argv[1]).glob("hf_continuous_*.json")):
    hf = json.loads(f.read_text())
    same = sorted(pathlib.Path(sys.argv[1]).glob("serving_*_random_hf_requests.json"))
    ours = json.loads(same[0].read_text()) if same else None
    print(f.name, "transformers", hf["method"], hf["completed"], "requests: out tok/s", hf["output_token_throughput"],
          "| radixserve, the same requests:", ours and ours["output_token_throughput"],
          "=", ours and round(ours["output_token_throughput"] / hf["output_token_throughput"], 2), "x")
PY
