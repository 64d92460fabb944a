#!/usr/bin/env bash
# The serving benchmark of record on this CPU machine: the shared-prefix workload against
# `radixserve serve` with the radix cache on, then off, then the same requests through
# Hugging Face transformers in process (bench_hf_baseline.py). Results go to benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT=${PORT:-30555}
WORKLOAD=(--dataset shared-prefix --num-groups 4 --prompts-per-group 8 --system-prompt-len 256
          --question-len 32 --output-len 32 --ignore-eos)

serve_and_bench() {  # $1: result name; rest: extra server flags
  local name=$1; shift
  $PY -m radixserve.server --port "$PORT" --log-level warning "$@" &
  local pid=$!
  until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 1; done
  $PY benchmarks/bench_serving.py --base-url "http://127.0.0.1:$PORT" "${WORKLOAD[@]}" \
      --output "benchmarks/results/serving_cpu_${name}.json" --disable-tqdm
  kill -TERM "$pid"; wait "$pid"
}

serve_and_bench radix_cache
serve_and_bench no_radix_cache --disable-radix-cache
$PY benchmarks/bench_hf_baseline.py "${WORKLOAD[@]}" --output benchmarks/results/serving_cpu_hf_baseline.json
