#!/usr/bin/env bash
# Issue 22 on a four- or eight-GPU machine (kinds nvidia-h200-x4, nvidia-h200-x8): two device calls on
# the same warm machine, each under the 10-minute limit of a call.
#   PART=checks  the multi-GPU tests (float32 greedy identity at TP=2, 4, 8 over NCCL, as many as the
#                GPUs allow; the peer-memory all-reduce at 2), then `radixserve serve --tp $NGPU` on the
#                Llama-3-70B shape (bf16, --load-format dummy) answering the openai client's chat
#                requests, plain and streamed (benchmarks/openai_chat_check.py).
#   PART=scaling for each TP in $TPS (default 2 4 8, up to the GPU count): bench_allreduce at the
#                70B's hidden width on TP GPUs, then bench_offline on the 70B shape at that TP (batch 1
#                and 200 x (1024 in, 256 out) distinct prompts, each against its roofline), and one
#                summary (benchmarks/summarise_tp_scaling.py): speed-ups over the smallest TP, scaling
#                efficiency, all-reduce time per decode step and its share of the batch-1 step.
# A TP size whose weights would take more than 80 % of a GPU's memory (TP=2 on 80 GB H100s) is not run,
# and the summary says why. NVLink multicast stays off (gpu_env.sh, inherited by every child process).
# Run through the device tool with carry [".whl", ".gpu_assets"] (.whl needs openai's wheels:
# `bash ../shared/device-wheels.sh msgspec openai`); results land in $OUT.
#   git rev-parse HEAD > .gpu_assets/git_commit     # here, before the calls: the device copy has no .git
#   PART=checks bash benchmarks/run_gpu_tp_scaling.sh
#   PART=scaling bash benchmarks/run_gpu_tp_scaling.sh
# Budget (estimates from the 70B at TP=2 on 2026-12-01, 35.6 s for the throughput workload): checks
# ~4 min (tests ~1.5, a 70B server start ~1.5, the chat check ~0.5); scaling ~2 min per TP size (CUDA
# graphs up to batch 256: the 200 requests never run more at once). A TP size not started by
# $BUDGET_S (400) seconds into the call is skipped, and the summary says so.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
PART=${PART:-checks}
SHAPE=${SHAPE:-llama-3-70b}
source "$(dirname "$0")/gpu_env.sh"
tok=$PWD/.gpu_assets/tokenizer
NGPU=$(nvidia-smi --list-gpus | wc -l)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sort | uniq -c
nvidia-smi topo -m | head -$((NGPU + 1))

# Weights per GPU at a TP size against 80 % of one GPU's memory: prints why not, or nothing.
too_big() {
  python3 - "$SHAPE" "$1" <<'PY'
import sys
import torch
from benchmarks.roofline import ModelCost
from radixserve.configs.model_config import NAMED_SHAPES, ModelConfig
cfg = ModelConfig.from_hf_dict(NAMED_SHAPES[sys.argv[1]], source=f"shape {sys.argv[1]}")
tp = int(sys.argv[2])
per_gpu = ModelCost.from_config(cfg, dtype_bytes=2).weight_bytes / tp / 1e9
mem = torch.cuda.get_device_properties(0).total_memory / 1e9
if per_gpu > 0.8 * mem:
    print(f"{per_gpu:.1f} GB of bf16 weights per GPU at TP={tp}, over 80 % of the GPU's {mem:.1f} GB")
PY
}

if [ "$PART" = checks ]; then
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/gpu/test_tensor_parallel_gpu.py 2>&1 \
    | tee "$OUT/gpu_tests_tp_${NGPU}gpus.log" | tail -6
  why=$(too_big "$NGPU")
  if [ -n "$why" ]; then echo "serve --tp $NGPU not run: $why"; else
    PORT=30778
    python3 -m radixserve.server --port $PORT --model-path "$SHAPE" --load-format dummy --tp "$NGPU" \
      --tokenizer-path "$tok" --max-total-tokens 100000 --log-level warning > "$OUT/server_tp$NGPU.log" 2>&1 &
    pid=$!
    for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
    timeout 180 python3 benchmarks/openai_chat_check.py --base-url "http://127.0.0.1:$PORT" --requests 4 \
      --max-tokens 32 --output "$OUT/openai_chat_${SHAPE//[.-]/_}_tp$NGPU.json" || echo "chat check exited $?"
    curl -s "http://127.0.0.1:$PORT/get_server_info" | python3 -c \
      "import json,sys; d=json.load(sys.stdin); print('tp', d['tensor_parallel_size'], 'ranks', len(d['scheduler_pids']))"
    kill -TERM $pid; wait $pid
    tail -3 "$OUT/server_tp$NGPU.log"
  fi
  exit 0
fi

offline=(); allreduce=(); skipped=()
hidden=$(python3 -c "from radixserve.configs.model_config import NAMED_SHAPES as s; print(s['$SHAPE']['hidden_size'])")
for tp in ${TPS:-2 4 8}; do
  if [ "$tp" -gt "$NGPU" ]; then skipped+=("$tp=needs $tp GPUs, this machine has $NGPU"); continue; fi
  # A call ends at 10 minutes: leave the summary time rather than lose it to the limit.
  if [ "$SECONDS" -gt "${BUDGET_S:-400}" ]; then skipped+=("$tp=not reached within the call ($SECONDS s used)"); continue; fi
  why=$(too_big "$tp")
  if [ -n "$why" ]; then skipped+=("$tp=$why"); echo "TP=$tp not run: $why"; continue; fi
  ar=$OUT/allreduce_h${hidden}_gpus$tp.json
  timeout 120 python3 benchmarks/bench_allreduce.py --gpus "$tp" --hidden "$hidden" --output "$ar" 2>&1 \
    | grep -v Warning | tail -3
  [ -f "$ar" ] && allreduce+=("$ar")
  res=$OUT/bench_offline_cuda_${SHAPE//[.-]/_}_tp$tp.json
  timeout 260 python3 benchmarks/bench_offline.py --device cuda --model-path "$SHAPE" --load-format dummy \
    --tokenizer-path "$tok" --tp-size "$tp" --skip-hf --workloads batch1,throughput --input-len 512 --cuda-graph-max-bs 256 \
    --output-len 128 --batch1-prompts 2 --throughput-requests "${THROUGHPUT_REQUESTS:-200}" --throughput-input 1024 \
    --throughput-output 256 --output "$res" > "$OUT/bench_tp$tp.log" 2>&1 || tail -20 "$OUT/bench_tp$tp.log"
  if [ -f "$res" ]; then offline+=("$res"); else skipped+=("$tp=bench_offline failed (bench_tp$tp.log)"); fi
done
if [ ${#offline[@]} -gt 0 ]; then
  python3 benchmarks/summarise_tp_scaling.py --offline "${offline[@]}" --allreduce "${allreduce[@]}" \
    --skipped "${skipped[@]}" --output "$OUT/tp_scaling_${SHAPE//[.-]/_}.json"
fi
