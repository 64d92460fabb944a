"""FP8 checkpoints in each published layout: loaded as FP8, read exactly as written, and serving within
a stated bound of their dequantized twin; `--quantization fp8` likewise; other methods refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from radixserve import Engine
from radixserve.configs.model_config import UnsupportedModelError
from radixserve.layers.quantization.fp8 import Fp8Weight
from radixserve.model_loader.fp8_checkpoint import checkpoint_scheme, iter_fp8_checkpoint
from radixserve.model_loader.hf_loader import safetensors_files
from tests.conftest import _save_tiny, tokenizer_source
from tests.model_loader.fp8_checkpoints import (
    LAYOUTS,
    LINEARS,
    write_expert_twin,
    write_fp8_checkpoint,
    write_int4_twin,
)

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "Water boils at"]
ONE_TOKEN = {"max_new_tokens": 1, "temperature": 0}
TOP = 10
# Weights are identical in the FP8 model and its twin; what differs is the FP8 rounding of the
# activations (per token, or per token and 128 columns) before each linear layer, up to 6 % of a value
# each. On these tiny random models (2 layers, a flat next-token distribution around -6 nats) the top-10
# log-probs of the next token were seen to differ by up to 0.42 nats; --quantization fp8 (weights
# rounded too) likewise. The exactness of the loading itself is checked tensor by tensor above.
LOGPROB_TOL = 0.6


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Every projection a multiple of 128 rows and columns (q, k, v: 2 heads of 64), so 128x128 block scales
    # tile it exactly; a tied head halves the bytes written per layout.
    return _save_tiny(tmp_path_factory.mktemp("fp8"), "llama", tokenizer_source(), hidden_size=128,
                      intermediate_size=256, num_attention_heads=2, num_key_value_heads=2,
                      tie_word_embeddings=True)


@pytest.fixture(scope="module")
def checkpoints(float_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    dest = tmp_path_factory.mktemp("fp8-layouts")
    return {layout: write_fp8_checkpoint(float_model, dest, layout, with_input_scales=layout.endswith("tensor"))
            for layout in LAYOUTS}


def _top_logprobs(model: Path, **engine_args: Any) -> list[dict[int, float]]:
    engine = Engine(model_path=str(model), log_level="warning", **engine_args)
    try:
        outs = engine.generate(PROMPTS, ONE_TOKEN, return_logprob=True, top_logprobs_num=TOP)
    finally:
        engine.shutdown()
    return [{tok: lp for lp, tok in out["meta_info"]["output_top_logprobs"][0]} for out in outs]


def _assert_close(got: list[dict[int, float]], want: list[dict[int, float]], tol: float = LOGPROB_TOL) -> None:
    for g, w in zip(got, want, strict=True):
        common = set(g) & set(w)
        assert len(common) >= TOP // 2, (g, w)
        worst = max(abs(g[t] - w[t]) for t in common)
        assert worst <= tol, (worst, g, w)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_checkpoint_stream_is_read_exactly(layout: str, checkpoints: dict[str, tuple[Path, Path]]) -> None:
    fp8_dir, twin_dir = checkpoints[layout]
    scheme = checkpoint_scheme(fp8_dir)
    assert scheme is not None and scheme.method == LAYOUTS[layout][0]["quant_method"]
    stream = dict(iter_fp8_checkpoint(fp8_dir, safetensors_files(fp8_dir), scheme))
    twin = dict(iter_fp8_checkpoint(twin_dir, safetensors_files(twin_dir), scheme))
    assert set(stream) == set(twin)  # scales (and input scales) consumed, nothing else added or lost
    quantized = [n for n, t in stream.items() if isinstance(t, Fp8Weight)]
    assert len(quantized) == 2 * len(LINEARS)
    for name, tensor in stream.items():
        want = twin[name]
        assert isinstance(want, torch.Tensor)
        got = tensor.dequantize() if isinstance(tensor, Fp8Weight) else tensor
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    expected_block = (128, 128) if LAYOUTS[layout][1] == "block" else None
    assert all(t.block == expected_block for t in stream.values() if isinstance(t, Fp8Weight))


@pytest.mark.parametrize("layout", ["compressed-tensors-tensor", "fbgemm_fp8", "fp8-block"])
def test_fp8_checkpoint_serves_within_bound_of_its_twin(layout: str,
                                                        checkpoints: dict[str, tuple[Path, Path]]) -> None:
    fp8_dir, twin_dir = checkpoints[layout]
    _assert_close(_top_logprobs(fp8_dir), _top_logprobs(twin_dir))


def test_quantization_fp8_at_load_serves_within_bound(float_model: Path) -> None:
    _assert_close(_top_logprobs(float_model, quantization="fp8"), _top_logprobs(float_model))


def test_other_quantization_methods_are_refused_by_name(float_model: Path, tmp_path: Path) -> None:
    awq = tmp_path / "awq"
    shutil.copytree(float_model, awq)
    cfg = json.loads((awq / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    (awq / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=r"quantization method 'awq' is not supported"):
        Engine(model_path=str(awq), log_level="warning")


def test_quantization_int4_at_load_matches_its_dequantized_twin(float_model: Path, tmp_path: Path) -> None:
    # The twin holds the 4-bit weights expanded back to float: the int4 engine differs from it only by
    # the packed kernel's bf16 activations, scales and output (the weights' own rounding is the same).
    # Seen: 0.025 nats at most, 9 of the top 10 shared (the float original: 0.36 nats, 2 of 10).
    twin = write_int4_twin(float_model, tmp_path / "int4-twin")
    _assert_close(_top_logprobs(float_model, quantization="int4"), _top_logprobs(twin), tol=0.1)


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Qwen3-MoE, 4 experts of width 128 (top 2), layers 0 and 2 MoE, 1 dense: experts tile 128x128 blocks.
    return _save_tiny(tmp_path_factory.mktemp("fp8-moe"), "qwen3_moe", tokenizer_source(), hidden_size=128,
                      num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2, head_dim=64, num_experts=4,
                      num_experts_per_tok=2, moe_intermediate_size=128, norm_topk_prob=True,
                      decoder_sparse_step=1, mlp_only_layers=[1], tie_word_embeddings=True)


def _moe_top_logprobs(model: Path, **engine_args: Any) -> tuple[list[dict[int, float]], list[str]]:
    """Top log-probs, and how each MoE layer holds its experts."""
    from radixserve.layers.moe import FusedMoE

    engine = Engine(model_path=str(model), log_level="warning", **engine_args)
    try:
        kinds = [f"{type(m.w13).__name__}/{type(m.w2).__name__}"
                 for m in engine.model_runner.model.modules() if isinstance(m, FusedMoE)]
        outs = engine.generate(PROMPTS, ONE_TOKEN, return_logprob=True, top_logprobs_num=TOP)
    finally:
        engine.shutdown()
    return [{tok: lp for lp, tok in out["meta_info"]["output_top_logprobs"][0]} for out in outs], kinds


@pytest.mark.parametrize("layout", ["compressed-tensors-channel", "fp8-block"])
def test_fp8_moe_checkpoint_keeps_its_experts_in_fp8(layout: str, moe_model: Path, tmp_path: Path) -> None:
    fp8_dir, twin_dir = write_fp8_checkpoint(moe_model, tmp_path, layout)
    # The same checkpoint with only the experts dequantized: every expert routed to the wrong stack,
    # expert or projection, or read with the wrong scales, would show in the logits.
    expert_twin = write_expert_twin(fp8_dir, twin_dir, tmp_path / "expert-twin")
    got, kinds = _moe_top_logprobs(fp8_dir)
    want, twin_kinds = _moe_top_logprobs(expert_twin)
    assert kinds == ["Fp8Experts/Fp8Experts"] * 2 and twin_kinds == ["Parameter/Parameter"] * 2
    # On CPU FP8 experts are dequantized to the twin's float32 values: the same logits up to the order
    # of float32 sums.
    _assert_close(got, want, tol=1e-4)


def test_quantization_fp8_at_load_quantizes_experts(moe_model: Path) -> None:
    # This model's next-token distribution is flat (its top 10 within ~0.3 nats around -7.5), so FP8
    # rounding reorders the top 10: seen 2-9 of 10 shared per prompt, shared ones within 0.33 nats.
    got, kinds = _moe_top_logprobs(moe_model, quantization="fp8")
    assert kinds == ["Fp8Experts/Fp8Experts"] * 2
    want, _ = _moe_top_logprobs(moe_model)
    shared = 0
    for g, w in zip(got, want, strict=True):
        common = set(g) & set(w)
        assert common and max(abs(g[t] - w[t]) for t in common) <= LOGPROB_TOL, (g, w)
        shared += len(common)
    assert shared >= len(PROMPTS) * TOP // 3
