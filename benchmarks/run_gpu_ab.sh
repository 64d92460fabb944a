#!/usr/bin/env bash
# One device call: the GPU tests on this tree, then the 8B-shaped offline benchmark on this tree and
# on an older checkout, alternating (new old new old ...), on the same GPU, so a change's speed is
# compared in one call. Usage (device run, carry [".whl", ".gpu_assets"]):
#   git archive HEAD radixserve benchmarks | tar -x -C .gpu_assets/base   # the older tree, here
#   OLD=.gpu_assets/base bash benchmarks/run_gpu_ab.sh
# Knobs: TESTS (pytest paths, "" skips the tests), WORKLOADS (batch1,batchN), ROUNDS (2),
# BENCH_ARGS (more bench_offline arguments, for every tree), TREES ("name:dir ...", dirs relative
# to this tree; default "new:. old:$OLD").
# The call of 2026-12-02 (docs/gpu.md, "Batch-1 decode: the step outside the graph"):
#   OLD=.gpu_assets/base TESTS="tests/kernels/test_triton_attention.py tests/gpu/test_gpu_engine.py" \
#     WORKLOADS=batch1 ROUNDS=3 BENCH_ARGS="--batch1-prompts 4" bash benchmarks/run_gpu_ab.sh
set -uo pipefail
OLD=${OLD:-.old}
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
TESTS=${TESTS-tests/kernels tests/gpu}
[ -z "$TESTS" ] || python3 -m pytest -q -m gpu -p no:cacheprovider -rs $TESTS 2>&1 | tee "$OUT/gpu_tests.log" | tail -8
args=(--device cuda --model-path llama-3-8b --load-format dummy --input-len 512 --output-len 128
      --batch1-prompts 2 --batch-size 16 --workloads "${WORKLOADS:-batch1,batchN}" --max-total-tokens 120000 --skip-hf
      --cuda-graph-max-bs 32 --tokenizer-path "$RADIXSERVE_TEST_TOKENIZER" ${BENCH_ARGS:-})
for round in $(seq "${ROUNDS:-2}"); do  # alternate the trees so a warming GPU favours neither
  for entry in ${TREES:-new:. old:$OLD}; do
    tree=${entry%%:*}; dir=$PWD/${entry#*:}
    (cd "$dir" && PYTHONPATH=$dir:/tmp/site python3 benchmarks/bench_offline.py "${args[@]}" \
      --output "$OUT/ab_${tree}_${round}.json" > "/tmp/ab_${tree}_${round}.log" 2>&1) || tail -15 "/tmp/ab_${tree}_${round}.log"
  done
done
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("ab_*.json")):
    w = json.loads(f.read_text())["workloads"]
    for name, r in w.items():
        d = r.get("decode_phase") or {}
        print(f.name, name, "tok/s", r["engine_tok_s"], "of bound", r.get("achieved_fraction"),
              "| decode phase tok/s", d.get("tok_s"), "of bound", d.get("achieved_fraction"))
PY
