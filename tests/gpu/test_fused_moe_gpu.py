"""On a GPU: the Triton fused MoE equals the torch reference over decode and prefill shapes, inside
a CUDA graph too, and a tiny Qwen3-MoE decodes float32 greedily like transformers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from radixserve.kernels.fused_moe import GemmConfig, fused_experts
from radixserve.layers.moe import FusedMoE, fused_experts_reference
from tests.kernels.moe_cases import TOLERANCE, check_fused_moe, check_fused_moe_fp8, moe_inputs

pytestmark = pytest.mark.gpu


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("top_k", [2, 8])
@pytest.mark.parametrize("experts", [8, 64, 128])
@pytest.mark.parametrize("tokens", [1, 7, 256])
def test_fused_moe_matches_reference(tokens: int, experts: int, top_k: int, dtype: torch.dtype) -> None:
    # Qwen3-30B-A3B's widths at TP=2 (H 2048, I 768 / 2); the default config pick and both fixed ones.
    configs = [None, GemmConfig(16, 64, 64, 4), GemmConfig(64, 128, 32, 8)]
    check_fused_moe("cuda", dtype, _gen(), [(tokens, experts, top_k, 2048, 384)], configs)


@pytest.mark.parametrize("block", [None, 128], ids=["channel", "block128"])
@pytest.mark.parametrize("tokens", [1, 7, 256])
def test_fp8_experts_match_reference(tokens: int, block: int | None) -> None:
    # Qwen3-30B-A3B at TP=1 (I 768) and TP=2 (I 384); the default config and both fixed ones.
    configs = [None, GemmConfig(16, 64, 64, 4), GemmConfig(64, 128, 32, 8)]
    for inter in (768, 384):
        check_fused_moe_fp8("cuda", torch.bfloat16, _gen(), [(tokens, 128, 8, 2048, inter)], configs, block)


def test_odd_widths_and_fp16() -> None:
    check_fused_moe("cuda", torch.float16, _gen(), [(5, 8, 2, 200, 72), (300, 16, 4, 136, 40)], [None])


def test_layer_dispatches_to_triton_and_runs_in_a_cuda_graph() -> None:
    gen = _gen()
    dtype = torch.bfloat16
    x, w13, w2, _, _ = moe_inputs(8, 64, 8, 1024, 256, dtype, "cuda", gen)
    layer = FusedMoE(64, 8, 1024, 256, True).cuda().to(dtype)
    layer.w13_weight.data.copy_(w13)
    layer.w2_weight.data.copy_(w2)
    logits = torch.randn(8, 64, device="cuda", dtype=dtype)
    atol, rtol = TOLERANCE[dtype]
    with torch.inference_mode():
        eager = layer(x, logits)
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            layer(x, logits)  # warm-up (Triton compiles) outside the capture
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            captured = layer(x, logits)
        # New tokens and new routing in the same buffers: the graph must follow them.
        x.copy_(torch.randn(x.shape, generator=gen).to(x))
        logits.copy_(torch.randn(logits.shape, generator=gen).to(logits))
        graph.replay()
        torch.cuda.synchronize()
        expected = layer(x, logits)
    assert not torch.equal(eager, expected)
    torch.testing.assert_close(captured.float(), expected.float(), atol=atol, rtol=rtol)
    from radixserve.layers.moe import select_experts

    weights, ids = select_experts(logits, 8, True)
    torch.testing.assert_close(fused_experts(x, layer.w13_weight, layer.w2_weight, weights, ids).float(),
                               fused_experts_reference(x, layer.w13_weight, layer.w2_weight, weights, ids).float(),
                               atol=atol, rtol=rtol)


def test_tiny_qwen3_moe_float32_greedy_like_transformers(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from radixserve import Engine
    from tests.conftest import _save_tiny, tokenizer_source

    model_dir = _save_tiny(tmp_path, "qwen3_moe", tokenizer_source(), num_hidden_layers=4, num_key_value_heads=2,
                           head_dim=32, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                           norm_topk_prob=True)
    prompts = [[1, 500, 600, 700, 800, 900], [2, 42], [1000 + i for i in range(300)]]
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    as_module: torch.nn.Module = hf  # see test_gpu_engine._hf: PreTrainedModel.cuda's wrapper confuses mypy
    as_module.cuda()
    hf.eval()
    with Engine(model_path=str(model_dir), device="cuda", dtype="float32", max_total_tokens=8192,
                log_level="warning") as engine:
        outs = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": 16, "temperature": 0,
                                                                   "ignore_eos": True})
    for ids, out in zip(prompts, outs, strict=True):
        seq = hf.generate(torch.tensor([ids], device="cuda"), max_new_tokens=16, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
        assert out["output_ids"] == seq[0, len(ids):].tolist()
