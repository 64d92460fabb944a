#!/usr/bin/env bash
# One device call: the GPU tests on this tree, then the 8B-shaped offline benchmark on this tree and
# on older checkouts, alternating, on the same GPU, so a change's speed is compared in one call.
# Every run also writes the scheduler's step log: the summary gives the median time between decode
# steps (dt_med), and the longest steps; bench_offline lists the Triton kernels compiled inside each
# timed workload (a slow first run of a call on 2026-12-02 was one: docs/gpu.md, "Compiles inside
# timed runs"; TRITON_CACHE_DIR=<empty dir> reproduces a fresh machine). Usage (device run, carry
# [".whl", ".gpu_assets"]):
#   git archive <rev> radixserve benchmarks | tar -x -C .gpu_assets/base   # an older tree, here
#   TREES="new:. base:.gpu_assets/base" bash benchmarks/run_gpu_ab.sh
# Knobs: TREES ("name:dir ...", dirs relative to this tree; default "new:. old:$OLD"), ORDER (tree
# names in run order; default ROUNDS (2) times the TREES in turn), TESTS (pytest paths, "" skips
# the tests), WORKLOADS (batch1,batchN), BENCH_ARGS (more bench_offline arguments, every run).
# The call of 2026-12-02 (docs/gpu.md, "Batch-1 decode: what runs outside the graph"):
#   TREES="cur:. base:.gpu_assets/base" ORDER="cur base base cur cur base" TESTS= WORKLOADS=batch1 \
#     BENCH_ARGS="--batch1-prompts 4 --sustained-matmul-s 1 --max-total-tokens 400000" bash benchmarks/run_gpu_ab.sh
set -uo pipefail
OLD=${OLD:-.old}
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
TESTS=${TESTS-tests/kernels tests/gpu}
[ -z "$TESTS" ] || python3 -m pytest -q -m gpu -p no:cacheprovider -rs $TESTS 2>&1 | tee "$OUT/gpu_tests.log" | tail -8
TREES=${TREES:-new:. old:$OLD}
declare -A DIR
names=()
for entry in $TREES; do DIR[${entry%%:*}]=${entry#*:}; names+=("${entry%%:*}"); done
ORDER=${ORDER:-$(for _ in $(seq "${ROUNDS:-2}"); do echo "${names[@]}"; done)}
args=(--device cuda --model-path llama-3-8b --load-format dummy --input-len 512 --output-len 128
      --batch1-prompts 2 --batch-size 16 --workloads "${WORKLOADS:-batch1,batchN}" --max-total-tokens 120000 --skip-hf
      --cuda-graph-max-bs 32 --tokenizer-path "$RADIXSERVE_TEST_TOKENIZER" ${BENCH_ARGS:-})
i=0
for tree in $ORDER; do  # alternating trees, so a warming GPU favours none
  i=$((i+1)); dir=$PWD/${DIR[$tree]}
  rm -f /tmp/steps_${tree}_$i.*  # a step log appends: an earlier call on this machine must not add to it
  (cd "$dir" && PYTHONPATH=$dir:/tmp/site RADIXSERVE_STEP_LOG=/tmp/steps_${tree}_$i python3 benchmarks/bench_offline.py \
    "${args[@]}" --output "$OUT/ab_${tree}_$i.json" > "/tmp/ab_${tree}_$i.log" 2>&1) || tail -15 "/tmp/ab_${tree}_$i.log"
done
python3 - "$OUT" <<'PY'
import json, pathlib, statistics, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("ab_*.json")):
    steps = [json.loads(line) for line in open(f"/tmp/steps_{f.stem[3:]}.rank0")]
    for name, r in json.loads(f.read_text())["workloads"].items():
        batch = int(name[5:]) if name.startswith("batch") and name[5:].isdigit() else None  # batch1, batch16
        dts = [s["dt_ms"] for s in steps if s.get("mode") == "decode" and batch in (None, s["reqs"])]
        d = r.get("decode_phase") or {}
        print(f.name, name, "tok/s", r["engine_tok_s"], "of bound", r.get("achieved_fraction"),
              "| decode phase tok/s", d.get("tok_s"), "of bound", d.get("achieved_fraction"),
              "| decode steps", len(dts), "dt_med ms", statistics.median(dts) if dts else None)
        if r.get("kernel_compiles"):  # Triton compiles inside the timed workload (utils/kernel_compiles.py)
            print("   compiled:", r["kernel_compiles"])
    timed = [(s["dt_ms"], i, s["mode"], s["reqs"]) for i, s in enumerate(steps) if "dt_ms" in s]
    print("   longest steps (ms, index, mode, reqs) of", len(timed), ":", sorted(timed, reverse=True)[:5])
PY
