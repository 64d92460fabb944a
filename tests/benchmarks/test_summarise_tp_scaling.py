"""The TP scaling summary (issue 22) over the committed TP=2 files of the 70B shape, and a TP=4 run made
from them with known figures: speed-ups, efficiencies and the all-reduce share are what they must be."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.summarise_tp_scaling import allreduce_us, main, summarise, table

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
OFFLINE_TP2 = RESULTS / "bench_offline_cuda_llama3_70b_tp2_h200x2_20261201.json"
ALLREDUCE_2 = RESULTS / "allreduce_h8192_h200x2_20261201.json"


def _load(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def _tp4_from(tp2: dict[str, Any], allreduce2: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A TP=4 run 1.5x as fast at batch 1 and 1.8x at throughput, with all-reduces 1.25x as slow."""
    offline = copy.deepcopy(tp2)
    offline["tp_size"] = 4
    offline["workloads"]["batch1"]["engine_tok_s"] *= 1.5
    offline["workloads"]["batch1"]["decode_phase"] = {"tok_s": 80.0, "achieved_fraction": 0.7}
    offline["workloads"]["throughput"]["engine_tok_s"] *= 1.8
    allreduce = copy.deepcopy(allreduce2)
    allreduce["gpus"] = 4
    for row in allreduce["rows"]:
        for cell in row.values():
            if isinstance(cell, dict) and "us_per_call" in cell:
                cell["us_per_call"] *= 1.25
    return offline, allreduce


def test_scaling_against_the_smallest_tp_and_the_allreduce_share() -> None:
    tp2, ar2 = _load(OFFLINE_TP2), _load(ALLREDUCE_2)
    tp4, ar4 = _tp4_from(tp2, ar2)
    summary = summarise([tp4, tp2], [ar2, ar4], {8: "needs 8 GPUs"})
    assert summary["model"] == "dummy-llama-3-70b" and summary["layers"] == 80 and summary["base_tp"] == 2
    two, four = summary["runs"]
    assert (two["tp"], four["tp"]) == (2, 4)
    assert two["batch1_tok_s_vs_tp2"] == 1.0 and two["throughput_out_tok_s_scaling_efficiency"] == 1.0
    assert four["batch1_tok_s_vs_tp2"] == 1.5 and four["batch1_tok_s_scaling_efficiency"] == 0.75
    assert four["throughput_out_tok_s_vs_tp2"] == 1.8 and four["throughput_out_tok_s_scaling_efficiency"] == 0.9
    assert two["batch1_fraction"] == tp2["workloads"]["batch1"]["achieved_fraction"]
    assert two["throughput_cached_tokens"] == tp2["workloads"]["throughput"]["cached_tokens"]

    # 2 all-reduces a layer x 80 layers x the latency at one token (the engine's choice).
    one, many = allreduce_us(ar2, 1), allreduce_us(ar4, 256)
    assert one is not None and many is not None
    assert one == ar2["rows"][0]["auto"]["us_per_call"]
    assert two["allreduce_ms_per_step_batch1"] == round(160 * one / 1e3, 3)
    assert four["allreduce_ms_per_step_batch1"] == round(160 * one * 1.25 / 1e3, 3)
    # Against the measured batch-1 decode step (12.5 ms at 80 tok/s).
    assert four["batch1_decode_step_ms"] == 12.5
    assert four["allreduce_share_of_batch1_step"] == round(four["allreduce_ms_per_step_batch1"] / 12.5, 4)
    assert four["allreduce_ms_per_step_batch256"] == round(160 * many / 1e3, 3)

    text = table(summary)
    assert "| 4 |" in text and "1.5x" in text and "| 8 | not run: needs 8 GPUs" in text


def test_a_wrong_allreduce_cell_is_not_used() -> None:
    ar = _load(ALLREDUCE_2)
    ar["rows"][0]["auto"]["correct"] = False
    assert allreduce_us(ar, 1) == ar["rows"][0]["nccl_graph"]["us_per_call"]
    ar["rows"][0]["nccl_graph"] = {"error": "no NCCL"}
    assert allreduce_us(ar, 1) is None
    assert allreduce_us(ar, 3) is None  # not a measured size


def test_mixed_models_or_repeated_tp_are_refused() -> None:
    tp2 = _load(OFFLINE_TP2)
    other = {**copy.deepcopy(tp2), "model": "dummy-llama-3-8b", "tp_size": 4}
    with pytest.raises(ValueError, match="different models"):
        summarise([tp2, other], [])
    with pytest.raises(ValueError, match="same TP size"):
        summarise([tp2, copy.deepcopy(tp2)], [])
    with pytest.raises(ValueError, match="no bench_offline"):
        summarise([], [])


def test_the_command_writes_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tp_scaling.json"
    assert main(["--offline", str(OFFLINE_TP2), "--allreduce", str(ALLREDUCE_2), "--skipped", "4=no GPUs",
                 "--output", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert [r["tp"] for r in summary["runs"]] == [2] and summary["skipped"] == {"4": "no GPUs"}
    assert "| 2 |" in capsys.readouterr().out
