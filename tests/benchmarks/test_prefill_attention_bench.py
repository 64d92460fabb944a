"""bench_prefill_attention on the CPU (Triton's interpreter, float32, tiny heads): the problems it builds
(fresh prompts, and prompts with a cached prefix at shuffled pool slots) give the extend kernel and
torch's SDPA (math, lower-right causal mask for the prefix) the same attention, and the shape
parser and FLOP count are right."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_prefill_attention import Shape

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_shape_parse_and_visible_pairs() -> None:
    assert Shape.parse("8x1024") == Shape(8, 1024, 0)
    assert Shape.parse("1x8192@8192") == Shape(1, 8192, 8192)
    assert Shape.parse("2x3@4").name == "2x3@4"
    # 2 prompts of 3 new tokens after 4 cached: each query sees the 4 cached keys and 1, 2, 3 new ones
    assert Shape(2, 3, 4).visible_pairs() == 2 * (3 * 4 + 6)


def test_variants_and_sdpa_agree_in_the_interpreter(tmp_path: Path) -> None:
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    out = tmp_path / "pa.json"
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_prefill_attention.py"), "--device", "cpu",
           "--dtype", "float32", "--shapes", "2x40,1x33@20", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
           "--peers", "math", "--variants", "before_m64n64w4s3,default,m128n64w8s3", "--rounds", "1",
           "--launches", "1", "--output", str(out)]
    proc = subprocess.run(cmd, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [s["shape"] for s in result["shapes"]] == ["2x40", "1x33@20"]
    for shape in result["shapes"]:
        assert shape["errors"] == {}
        rows = shape["results"]
        assert set(rows) == {"before_m64n64w4s3", "default", "m128n64w8s3", "math"}
        for name, row in rows.items():
            if name != "math":
                assert row["kind"] == "ours"
                assert row["max_abs_diff_vs_math"] < 1e-5, (shape["shape"], name, row)
            assert row["us"] > 0
