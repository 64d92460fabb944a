"""On a GPU: the FP8 W8A8 products (torch._scaled_mm row-wise, the Triton block kernel) against the float32
reference, and FP8 models served through CUDA graphs within the CPU tests' bound of their bf16 twins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from radixserve import Engine
from tests.conftest import _save_tiny, tokenizer_source
from tests.kernels.fp8_cases import (
    check_block_kernel,
    check_channel_kernel,
    check_linear_apply,
    check_quantize_kernel,
)
from tests.model_loader.fp8_checkpoints import write_fp8_checkpoint
from tests.model_loader.test_fp8_checkpoint import LOGPROB_TOL, PROMPTS, TOP

pytestmark = pytest.mark.gpu

# The Llama-3-8B projections (qkv, o, gate/up, down) at decode and prefill row counts.
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


def test_activation_quantization_kernel_is_bit_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    check_quantize_kernel("cuda", gen, [(1, 4096, None), (33, 14336, None), (300, 4096, 128), (7, 384, 128)])


@pytest.mark.parametrize("m", [1, 7, 64, 300])
def test_block_kernel_matches_reference(m: int) -> None:
    gen = torch.Generator().manual_seed(m)
    check_block_kernel("cuda", gen, [(m, n, k) for n, k in SHAPES[:2]] + [(m, 200, 384)])
    check_channel_kernel("cuda", gen, [(m, n, k) for n, k in SHAPES[2:]] + [(m, 200, 384)])


@pytest.mark.parametrize("block", [None, (128, 128)])
@pytest.mark.parametrize("m", [1, 16, 64, 65, 257])
def test_fp8_linear_apply_in_bf16_matches_reference(m: int, block: tuple[int, int] | None) -> None:
    gen = torch.Generator().manual_seed(m)
    check_linear_apply("cuda", torch.bfloat16, gen, [(m, n, k, block) for n, k in SHAPES])


@pytest.fixture(scope="module")
def fp8_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    tmp = tmp_path_factory.mktemp("fp8gpu")
    src = _save_tiny(tmp, "llama", tokenizer_source(), hidden_size=256, intermediate_size=512,
                     num_attention_heads=4, num_key_value_heads=2)
    out = {layout: write_fp8_checkpoint(src, tmp / "layouts", layout) for layout in ("fbgemm_fp8", "fp8-block")}
    out["online"] = (src, src)
    return out


def _first_token_logprobs(model: Path, **kw: Any) -> tuple[list[dict[int, float]], list[list[int]]]:
    # 24 greedy tokens: the decode steps run through the captured CUDA graphs (batch 4).
    with Engine(model_path=str(model), device="cuda", dtype="bfloat16", max_total_tokens=8192,
                log_level="warning", **kw) as engine:
        outs = engine.generate(PROMPTS, {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True},
                               return_logprob=True, top_logprobs_num=TOP)
    tops = [{tok: lp for lp, tok in o["meta_info"]["output_top_logprobs"][0]} for o in outs]
    return tops, [o["output_ids"] for o in outs]


@pytest.mark.parametrize("layout", ["fbgemm_fp8", "fp8-block", "online"])
def test_fp8_model_on_cuda_within_bound_of_bf16_twin(layout: str, fp8_models: dict[str, tuple[Path, Path]]) -> None:
    fp8_dir, twin_dir = fp8_models[layout]
    got, ids = _first_token_logprobs(fp8_dir, **({"quantization": "fp8"} if layout == "online" else {}))
    _assert_within_bound(got, ids, _first_token_logprobs(twin_dir)[0])


def _assert_within_bound(got: list[dict[int, float]], ids: list[list[int]], want: list[dict[int, float]]) -> None:
    assert all(len(x) == 24 for x in ids)
    for g, w in zip(got, want, strict=True):
        common = set(g) & set(w)
        assert len(common) >= TOP // 2, (g, w)
        # bf16 activations and outputs add their own rounding to the FP8 rounding of the CPU bound.
        assert max(abs(g[t] - w[t]) for t in common) <= LOGPROB_TOL + 0.2, (g, w)


def test_fp8_kv_cache_through_cuda_graphs_within_bound(fp8_models: dict[str, tuple[Path, Path]]) -> None:
    """--kv-cache-dtype fp8_e4m3 on the GPU path: the fused rotary store, the Triton extend and decode
    kernels and the captured decode graphs, against the same bf16 model with a bf16 KV cache."""
    src, _ = fp8_models["online"]
    got, ids = _first_token_logprobs(src, kv_cache_dtype="fp8_e4m3", kv_cache_v_scale=0.5)
    _assert_within_bound(got, ids, _first_token_logprobs(src)[0])
