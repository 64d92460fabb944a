#!/usr/bin/env bash
# One device call on nvidia-h200-x2: the two-GPU tests, all-reduce latency per implementation
# (inside CUDA graphs; SKIP_ALLREDUCE=1 to skip), the 8B-shaped Engine at TP=1 and TP=2 at batch 1
# (and TP=2 with NCCL only, TP=2 with the one-kernel Lamport all-reduce, and TP=2 with the one-row path off) and 256 x (1024 in,
# 256 out); PROFILE=1 adds torch.profiler tables of 20 steady steps per rank (RADIXSERVE_PROFILE_DIR).
# Run through the device tool with carry [".whl", ".gpu_assets"]; results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
source "$(dirname "$0")/gpu_env.sh"
tok=$PWD/.gpu_assets/tokenizer
export RADIXSERVE_TEST_TOKENIZER=$tok
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/gpu/test_tensor_parallel_gpu.py 2>&1 \
  | tee "$OUT/gpu_tests_tp2.log" | tail -4
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nvidia-smi topo -m | head -4
[ "${SKIP_ALLREDUCE:-0}" = 1 ] || for h in 4096 8192; do
  timeout 150 python3 benchmarks/bench_allreduce.py --gpus 2 --hidden $h --output "$OUT/allreduce_h$h.json" 2>&1 | grep -v Warning
done
prof=/tmp/prof
# PROFILE=1: torch.profiler tables per rank (their writing falls inside the timed run: figures
# from profiled runs are not speeds).
profile() { [ "${PROFILE:-0}" = 1 ] && echo "RADIXSERVE_PROFILE_DIR=$prof/$1/x RADIXSERVE_PROFILE_START=$2 RADIXSERVE_PROFILE_STEPS=20"; }
env $(profile b1 40) timeout 240 \
  python3 benchmarks/bench_tp.py --shape llama-3-8b --tp 2 --pp 1 --batch 1 --input-len 128 --output-len 256 \
  --max-total-tokens 60000 --skip-comm --nccl-too --lamport-too 64K --tokenizer-path "$tok" \
  --output "$OUT/tp_llama3_8b_batch1.json" 2>&1 | tail -5
# The batch-1 one-row path at TP=2 (on by default at every TP since a rank's step measured it faster on one
# GPU, bench_tp_shard.py): the same run with it off, the layer-by-layer path, on two GPUs.
RADIXSERVE_ONE_ROW_FUSION=0 timeout 240 \
  python3 benchmarks/bench_tp.py --shape llama-3-8b --tp 2 --pp 1 --batch 1 --input-len 128 --output-len 256 \
  --max-total-tokens 60000 --skip-comm --tokenizer-path "$tok" --output "$OUT/tp_llama3_8b_batch1_layers.json" 2>&1 | tail -4
env $(profile b256 120) timeout 300 \
  python3 benchmarks/bench_tp.py --shape llama-3-8b --tp 2 --pp 1 --batch 256 --input-len 1024 --output-len 256 \
  --max-total-tokens 400000 --skip-comm --tokenizer-path "$tok" --output "$OUT/tp_llama3_8b_batch256.json" 2>&1 | tail -4
[ "${PROFILE:-0}" = 1 ] && (cd $prof && tar czf "$OUT/profiles.tgz" --exclude='*trace.json' . )
# A Llama-3-70B shape (bf16, 141 GB of weights) across both GPUs, against its two-GPU roofline.
# The call ends at 10 minutes: past 300 s there is not room for it (run it in a call of its own:
# SKIP_ALLREDUCE=1 and the 70B alone, or `PART=scaling TPS=2 bash benchmarks/run_gpu_tp_scaling.sh`).
if [ "${SKIP_70B:-0}" != 1 ] && [ "$SECONDS" -gt 300 ]; then echo "70B not run: $SECONDS s used"; SKIP_70B=1; fi
[ "${SKIP_70B:-0}" = 1 ] || timeout 300 python3 benchmarks/bench_offline.py --device cuda --model-path llama-3-70b \
  --load-format dummy --tokenizer-path "$tok" --tp-size 2 --skip-hf --workloads batch1,throughput \
  --input-len 512 --output-len 128 --batch1-prompts 2 --throughput-requests 200 --throughput-input 1024 \
  --throughput-output 256 --output "$OUT/bench_offline_cuda_llama3_70b_tp2.json" > "$OUT/bench_70b.log" 2>&1 \
  || tail -20 "$OUT/bench_70b.log"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    d = json.loads(f.read_text())
    if "runs" in d and d.get("benchmark") == "tensor_parallel":
        print(f.name, [(r["tp"], r.get("disable_custom_all_reduce", False), r.get("env", {}), r["output_tokens_per_s"])
                       for r in d["runs"]])
    for name, w in (d.get("workloads") or {}).items():
        print(f.name, name, {k: w.get(k) for k in ("engine_tok_s", "achieved_fraction", "cached_tokens")})
PY
