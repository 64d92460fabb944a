"""bench_tp_shard on the CPU: a model built as rank 0 of TP=2 in a group that does nothing holds half of
the sharded weights, makes the collectives a TP=2 rank would (the embedding's all-reduce, two a layer,
the LM head's gather) and decodes; the summary compares it with TP=1 of the same call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.bench_tp_shard import SilentGroup, parse_configs, parse_tiles, summarise
from benchmarks.profile_decode_breakdown import kernel_classes

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_parse_configs() -> None:
    assert parse_configs(["llama-3-8b:1,2", "/m/a:b:4"]) == [("llama-3-8b", 1), ("llama-3-8b", 2), ("/m/a:b", 4)]
    with pytest.raises(SystemExit):
        parse_configs(["llama-3-8b"])


def test_parse_tiles() -> None:
    assert parse_tiles(["rope:3072x4096=8,512,4,1", "residual:4096x2048=8,1024,4,1"]) == {
        ("rope", 3072, 4096): (8, 512, 4, 1), ("residual", 4096, 2048): (8, 1024, 4, 1)}
    with pytest.raises(SystemExit):
        parse_tiles(["rope:3072x4096=8,512"])


def test_the_silent_group_counts_and_keeps_shapes() -> None:
    g = SilentGroup(rank=0, size=4)
    x = torch.arange(6.0).reshape(2, 3)
    assert g.all_reduce(x) is x
    assert g.all_gather_last_dim(x).shape == (2, 12)
    assert (g.counts.all_reduce, g.counts.gather) == (1, 1)
    assert g.broadcast_bytes([b"a"]) == [b"a"] and g.all_reduce_min(7) == 7
    one = SilentGroup()
    one.all_reduce(x)
    assert one.all_gather_last_dim(x) is x and (one.counts.all_reduce, one.counts.gather) == (0, 0)


LOCAL_RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import interpreter_compat; interpreter_compat.install()
sys.path.insert(0, sys.argv[2])
from benchmarks.bench_tp_shard import LocalAllReduce, SilentGroup
g = SilentGroup(rank=0, size=2, local=LocalAllReduce(cap=4096, programs=4))
for n in (4096, 100, 4096, 7, 3000):
    x = torch.randn(1, n)
    x[0, 0] = -0.0
    y = g.all_reduce(x)
    assert y is not x and torch.equal(y, x), n
big = torch.randn(2, 4096)
assert g.all_reduce(big) is big  # over the buffer: as it is, like the prompt's
assert (g.counts.all_reduce, g.local.calls) == (6, 5)
print("local ok")
"""


def test_the_local_all_reduce_runs_the_kernel_alone() -> None:
    """--all-reduce lamport-local: a group of one through the one-kernel all-reduce gives the input back,
    call after call (the slots rotate), in Triton's CPU interpreter."""
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    from tests.kernels.interpreter_compat import run_in_interpreter

    assert "local ok" in run_in_interpreter(LOCAL_RUN, str(REPO_ROOT))


def test_a_tp2_rank_on_the_cpu(tmp_path: Path) -> None:
    from tests.conftest import _save_tiny, tokenizer_source

    layers = 3
    model = _save_tiny(tmp_path, "llama", tokenizer_source(), num_key_value_heads=2, num_hidden_layers=layers)
    out = tmp_path / "shard.json"
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_tp_shard.py"), "--device", "cpu", "--configs",
           f"{model}:1,2", "--input-len", "16", "--steps", "6", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    one, two = result["configs"]
    assert (one["tp"], two["tp"]) == (1, 2)
    # Every weight but the norms is split in two (the embedding is not counted: a step reads one row).
    assert 0.5 < two["weight_bytes"] / one["weight_bytes"] < 0.51
    assert two["kv_bytes"] * 2 == one["kv_bytes"] and one["context"] == two["context"] == 16 + 1 + 6 + 6  # prompt, its token, two rounds of steps
    assert one["collectives_per_forward"] == {"all_reduce": 0, "gather": 0}
    assert two["collectives_per_forward"] == {"all_reduce": 1 + 2 * layers, "gather": 1}
    for c in (one, two):
        v = c["variants"]["layers"]
        assert 0 < v["min_ms"] <= v["median_ms"] <= v["max_ms"]
        # of_bound, bound_ms and median_ms are each rounded to 4 places (a tiny model's bound is ~1e-3 ms).
        slack = 5e-5 + 5e-5 / v["median_ms"] + 5e-5 * c["bound_ms"] / v["median_ms"] ** 2
        assert v["of_bound"] == pytest.approx(c["bound_ms"] / v["median_ms"], abs=slack)
    rows = {r["tp"]: r for r in result["summary"]}
    assert rows[1]["default_speedup_vs_tp1"] == 1.0
    assert rows[2]["default_speedup_vs_tp1"] == pytest.approx(one["variants"]["layers"]["median_ms"] /
                                                              two["variants"]["layers"]["median_ms"], rel=1e-2)
    assert rows[2]["collectives_per_step"] == two["collectives_per_forward"]


def test_summary_defaults_follow_the_engine() -> None:
    """An Engine runs the one-row path with PDL at every TP; the speed-ups are over the first TP=1 run."""
    def cfg(tp: int, ms: dict[str, float]) -> dict[str, object]:
        return {"model": "m", "tp": tp, "collectives_per_forward": {},
                "variants": {k: {"median_ms": v, "of_bound": 1 / v} for k, v in ms.items()}}
    ms = {"fusion0_pdl0": 5.0, "fusion0_pdl1": 4.8, "fusion1_pdl0": 4.2, "fusion1_pdl1": 4.0}
    half = {k: v / 2 for k, v in ms.items()}
    rows = summarise([cfg(1, ms), cfg(2, half), cfg(1, {k: v * 1.01 for k, v in ms.items()}),
                      {"model": "m", "tp": 4, "error": "boom"}])
    half["fusion0_pdl0"] = 1.5  # the fastest at TP=2
    rows = summarise([cfg(1, ms), cfg(2, half), cfg(1, {k: v * 1.01 for k, v in ms.items()}),
                      {"model": "m", "tp": 4, "error": "boom"}])
    assert rows[0]["default"] == rows[1]["default"] == "fusion1_pdl1"
    assert rows[1]["best"] == "fusion0_pdl0"
    assert rows[1]["default_speedup_vs_tp1"] == pytest.approx(2.0, rel=1e-3)
    assert rows[1]["best_speedup_vs_tp1"] == pytest.approx(4.0 / 1.5, rel=1e-3)
    assert rows[2]["default_speedup_vs_tp1"] == pytest.approx(1 / 1.01, rel=1e-3)  # against the first TP=1
    assert rows[3] == {"model": "m", "tp": 4, "error": "boom"}


def test_kernel_classes_per_step_and_gaps() -> None:
    """Two replays of a three-kernel graph: per-step us and launches by class, and the idle time between
    the first kernel's start and the last one's end."""
    def k(name: str, ts: float, dur: float) -> dict[str, object]:
        return {"name": name, "ts": ts, "dur": dur}
    step = [("_gemv_residual_kernel", 0.0, 10.0),
            ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>", 12.0, 2.0),
            ("_gemv_residual_kernel", 15.0, 6.0)]
    ks = [k(n, ts + 100 * r, d + r) for r in range(2) for n, ts, d in step]
    got = kernel_classes(ks, 2)
    assert got["kernels_per_step"] == 3
    assert got["classes"]["o/down+residual (fused)"] == {"calls": 2.0, "us": 17.0}  # (10 + 6 + 11 + 7) / 2
    assert got["classes"]["add (torch)"] == {"calls": 1.0, "us": 2.5}
    assert list(got["classes"]) == ["o/down+residual (fused)", "add (torch)"]  # the most time first
    assert got["span_us"] == 21.5 and got["busy_us"] == 19.5 and got["gaps_us"] == 2.0  # medians of 21/22, 18/21
    with pytest.raises(ValueError):
        kernel_classes(ks[:-1], 2)
