#!/usr/bin/env bash
# One device call: `radixserve serve` on the GPU (8B-shaped random weights, bf16, Triton attention,
# CUDA graphs) driven by bench_serving.py: shared-prefix with the radix cache on and off, and a
# random-prompt throughput run. Run through the device tool with carry [".whl", ".gpu_assets"].
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 RADIXSERVE_CACHE=/tmp/radixserve-cache
PORT=30777
server=(python3 -m radixserve.server --port $PORT --model-path llama-3-8b --load-format dummy
        --tokenizer-path "$PWD/.gpu_assets/tokenizer" --max-total-tokens 200000 --log-level warning)
shared=(--dataset shared-prefix --num-groups 8 --prompts-per-group 32 --system-prompt-len 700 --question-len 32
        --output-len 64 --ignore-eos --disable-tqdm)

start() {  # $1: log name; rest: extra server flags
  local name=$1; shift
  "${server[@]}" "$@" > "$OUT/server_$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return 0; sleep 1; done
  tail -20 "$OUT/server_$1.log"; return 1
}
bench() { timeout 240 python3 benchmarks/bench_serving.py --base-url "http://127.0.0.1:$PORT" "$@"; }

if start radix_cache; then
  bench "${shared[@]}" --output "$OUT/serving_cuda_llama3_8b_shared_radix_cache.json" | tail -6
  bench --dataset random --num-prompts 500 --random-input-len 350 --output-len 256 --ignore-eos --disable-tqdm \
    --output "$OUT/serving_cuda_llama3_8b_random.json" | tail -6
  kill -TERM $pid; wait $pid
fi
if start no_radix_cache --disable-radix-cache; then
  bench "${shared[@]}" --output "$OUT/serving_cuda_llama3_8b_shared_no_radix_cache.json" | tail -6
  kill -TERM $pid; wait $pid
fi
nvidia-smi --query-gpu=name,memory.used --format=csv
