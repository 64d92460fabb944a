"""On a GPU: the Triton W4A16 kernel (GGUF weights and --quantization int4) at Llama-3-8B shapes against
its float32 reference, and --quantization int4 served through CUDA graphs against its dequantized twin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from radixserve import Engine
from tests.conftest import _save_tiny, tokenizer_source
from tests.kernels.int4_cases import check_int4_gemm
from tests.model_loader.fp8_checkpoints import write_int4_twin

pytestmark = pytest.mark.gpu

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]  # qkv, o, gate/up, down
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "Water boils at"]
TOP = 10


@pytest.mark.parametrize("m", [1, 7, 64, 300])
def test_int4_kernel_matches_reference(m: int) -> None:
    gen = torch.Generator().manual_seed(m)
    # 4-bit codes at every shape; split 8-bit codes (Q8_0, Q6_K) at two; a width off the tiles.
    cases = [(m, n, k, 4) for n, k in SHAPES] + [(m, n, k, 8) for n, k in SHAPES[1::2]] + [(m, 200, 384, 5)]
    check_int4_gemm("cuda", gen, cases)


def _run(model: Path, **kw: Any) -> tuple[list[dict[int, float]], list[list[int]]]:
    # 24 greedy tokens: the decode steps run through the captured CUDA graphs (batch 4).
    with Engine(model_path=str(model), device="cuda", dtype="bfloat16", max_total_tokens=8192,
                log_level="warning", **kw) as engine:
        outs = engine.generate(PROMPTS, {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True},
                               return_logprob=True, top_logprobs_num=TOP)
        if kw.get("quantization") == "int4":
            names = {type(m.quant).__name__ for m in engine.model_runner.model.modules()
                     if getattr(m, "quant", None) is not None}
            assert names == {"Int4TritonWeight"}, names
    return [{tok: lp for lp, tok in o["meta_info"]["output_top_logprobs"][0]} for o in outs], \
        [o["output_ids"] for o in outs]


def test_int4_at_load_through_cuda_graphs_matches_its_dequantized_twin(tmp_path: Path) -> None:
    src = _save_tiny(tmp_path, "llama", tokenizer_source(), hidden_size=256, intermediate_size=512,
                     num_attention_heads=4, num_key_value_heads=2)
    twin = write_int4_twin(src, tmp_path / "twin")
    got, ids = _run(src, quantization="int4")
    want, _ = _run(twin)
    assert all(len(x) == 24 for x in ids)
    for g, w in zip(got, want, strict=True):
        common = set(g) & set(w)
        assert len(common) >= TOP // 2, (g, w)
        # Both run bf16 activations; the packed kernel adds the rounding of fp16 scales and its
        # dequantized bf16 weights (the twin's weights are the same values in the checkpoint dtype).
        assert max(abs(g[t] - w[t]) for t in common) <= 0.2, (g, w)


def test_gguf_every_packed_width_on_cuda_matches_the_file_dequantized(tmp_path: Path) -> None:
    """GGUF on CUDA end to end: 4-, 5- and 8-bit codes and the tied Q8_0 head through the Triton kernel and
    the captured decode graphs, against the same file expanded to bf16."""
    from tests.model_loader.test_gguf_packed import assert_greedy_close, run_tiny_gguf

    got, names = run_tiny_gguf(tmp_path, "cuda", dequantize=False)
    assert names == {"int4-triton(Q4_0+Q8_0, split nibbles)", "int4-triton(Q5_0, split nibbles)",
                     "int4-triton(Q4_1)", "int4-triton(Q8_0, split nibbles)"}
    ref, _ = run_tiny_gguf(tmp_path, "cuda", dequantize=True)
    assert assert_greedy_close(ref, got) >= 1
