"""One table of tensor-parallel scaling from the files of one device call (issue 22): bench_offline
runs of one model at several --tp-size, and bench_allreduce runs at the same GPU counts.

For each TP size: batch-1 and offline-throughput speed, each against its own roofline (bench_offline's
bound per GPU, communication excluded), the speed-up over the smallest TP size measured, and the
scaling efficiency (speed-up over the ratio of GPU counts). The all-reduce time of a decode step is
2 all-reduces a layer (attention and MLP outputs) x layers x bench_allreduce's latency at that message
size, inside CUDA graphs, with the variant the engine picks ("auto"); at batch 1 it is also given as
a share of the measured decode step (bench_offline's batch-1 decode phase), which is what bounds
batch-1 scaling once the weights' share of a step has shrunk with TP.

    python benchmarks/summarise_tp_scaling.py --offline tp2.json tp4.json tp8.json \\
        --allreduce ar2.json ar4.json ar8.json --output tp_scaling.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from radixserve.configs.model_config import NAMED_SHAPES  # noqa: E402

DECODE_TOKENS = 256  # the message size taken for a large decode batch (a row of bench_allreduce)


def _layers(model: str) -> int:
    shape = model.removeprefix("dummy-")
    if shape not in NAMED_SHAPES:
        raise ValueError(f"{model!r} is not a named shape ({', '.join(sorted(NAMED_SHAPES))})")
    return int(NAMED_SHAPES[shape]["num_hidden_layers"])


def allreduce_us(result: dict[str, Any], tokens: int) -> float | None:
    """The engine's choice ("auto", else NCCL in a graph) at exactly `tokens` rows, if measured correct."""
    for row in result["rows"]:
        if row["tokens"] != tokens:
            continue
        for variant in ("auto", "nccl_graph"):
            cell = row.get(variant) or {}
            if cell.get("correct") and "us_per_call" in cell:
                return float(cell["us_per_call"])
    return None


def _run(offline: dict[str, Any], allreduce: dict[str, Any] | None, layers: int) -> dict[str, Any]:
    tp = int(offline["tp_size"])
    work = offline["workloads"]
    row: dict[str, Any] = {"tp": tp, "kv_pool_tokens": offline.get("kv_pool_tokens")}
    if "batch1" in work:
        b1 = work["batch1"]
        row |= {"batch1_tok_s": b1["engine_tok_s"], "batch1_fraction": b1["achieved_fraction"],
                "batch1_cached_tokens": b1["cached_tokens"]}
        if b1.get("decode_phase"):
            row |= {"batch1_decode_tok_s": b1["decode_phase"]["tok_s"],
                    "batch1_decode_fraction": b1["decode_phase"]["achieved_fraction"]}
    if "throughput" in work:
        t = work["throughput"]
        row |= {"throughput_requests": t["requests"], "throughput_out_tok_s": t["engine_tok_s"],
                "throughput_fraction": t["achieved_fraction"], "throughput_cached_tokens": t["cached_tokens"]}
    if allreduce is not None and tp > 1:
        one, many = allreduce_us(allreduce, 1), allreduce_us(allreduce, DECODE_TOKENS)
        row["allreduce_us_per_call_at"] = {"1": one, str(DECODE_TOKENS): many}
        if one is not None:
            row["allreduce_ms_per_step_batch1"] = round(2 * layers * one / 1e3, 3)
            if row.get("batch1_decode_tok_s"):
                step_ms = 1e3 / row["batch1_decode_tok_s"]
                row["batch1_decode_step_ms"] = round(step_ms, 3)
                row["allreduce_share_of_batch1_step"] = round(row["allreduce_ms_per_step_batch1"] / step_ms, 4)
        if many is not None:
            row[f"allreduce_ms_per_step_batch{DECODE_TOKENS}"] = round(2 * layers * many / 1e3, 3)
    return row


def _speedups(runs: list[dict[str, Any]]) -> None:
    base = runs[0]
    for run in runs:
        ratio = run["tp"] / base["tp"]
        for key in ("batch1_tok_s", "batch1_decode_tok_s", "throughput_out_tok_s"):
            if run.get(key) and base.get(key):
                speedup = run[key] / base[key]
                run[f"{key}_vs_tp{base['tp']}"] = round(speedup, 3)
                run[f"{key}_scaling_efficiency"] = round(speedup / ratio, 3)


def summarise(offline: list[dict[str, Any]], allreduce: list[dict[str, Any]],
              skipped: dict[int, str] | None = None) -> dict[str, Any]:
    if not offline:
        raise ValueError("no bench_offline result to summarise")
    models = {o["model"] for o in offline}
    if len(models) != 1:
        raise ValueError(f"the runs are of different models: {sorted(models)}")
    if len({o["tp_size"] for o in offline}) != len(offline):
        raise ValueError("two runs of the same TP size")
    (model,) = models
    layers = _layers(model)
    by_gpus = {int(a["gpus"]): a for a in allreduce}
    runs = [_run(o, by_gpus.get(int(o["tp_size"])), layers) for o in sorted(offline, key=lambda o: o["tp_size"])]
    _speedups(runs)
    return {"benchmark": "tp_scaling", "model": model, "layers": layers,
            "device_name": offline[0].get("device_name"), "gpu_count": offline[0].get("gpu_count"),
            "git_commit": offline[0].get("git_commit"), "base_tp": runs[0]["tp"], "runs": runs,
            "skipped": {str(k): v for k, v in sorted((skipped or {}).items())},
            "definition": "fractions: bench_offline's roofline per GPU (benchmarks/roofline.py), communication "
                          "excluded; all-reduce per step: 2 x layers x bench_allreduce's latency in CUDA graphs"}


def table(summary: dict[str, Any]) -> str:
    """Markdown, for docs/gpu.md."""
    base = summary["base_tp"]
    lines = [f"| TP | batch 1 tok/s (of its bound) | vs TP={base} | throughput out tok/s (of its bound) | vs TP={base} "
             "| all-reduce per batch-1 step (share) |", "|---|---|---|---|---|---|"]

    def cell(run: dict[str, Any], key: str, frac: str) -> str:
        return f"{run[key]:,.1f} ({run[frac]:.1%})" if run.get(key) is not None else "-"

    for run in summary["runs"]:
        share = (f"{run['allreduce_ms_per_step_batch1']:.2f} ms ({run['allreduce_share_of_batch1_step']:.0%})"
                 if run.get("allreduce_share_of_batch1_step") is not None else "-")
        lines.append(f"| {run['tp']} | {cell(run, 'batch1_tok_s', 'batch1_fraction')} "
                     f"| {run.get(f'batch1_tok_s_vs_tp{base}', '-')}x "
                     f"| {cell(run, 'throughput_out_tok_s', 'throughput_fraction')} "
                     f"| {run.get(f'throughput_out_tok_s_vs_tp{base}', '-')}x | {share} |")
    for tp, why in summary["skipped"].items():
        lines.append(f"| {tp} | not run: {why} | | | | |")
    return "\n".join(lines)


def _skip(text: str) -> tuple[int, str]:
    tp, sep, why = text.partition("=")
    if not sep or not tp.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected TP=reason")
    return int(tp), why


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--offline", nargs="+", required=True, help="bench_offline JSON files, one per TP size")
    p.add_argument("--allreduce", nargs="*", default=[], help="bench_allreduce JSON files (their --gpus)")
    p.add_argument("--skipped", nargs="*", type=_skip, default=[], metavar="TP=REASON",
                   help="TP sizes the call did not run, and why")
    p.add_argument("--output", required=True, help="the summary's JSON path")
    args = p.parse_args(argv)
    offline = [json.loads(Path(f).read_text()) for f in args.offline]
    allreduce = [json.loads(Path(f).read_text()) for f in args.allreduce]
    summary = summarise(offline, allreduce, dict(args.skipped))
    Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
