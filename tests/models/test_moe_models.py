"""Mixture-of-experts models (Qwen3-MoE, Qwen2-MoE, Mixtral): tiny random checkpoints saved by
transformers decode greedily to transformers' own tokens, TP=2 to TP=1's, and broken checkpoints
fail naming what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from radixserve import Engine
from radixserve.model_loader.source import resolve_model_source
from tests.conftest import _save_tiny, tokenizer_source
from tests.models.moe_gguf import write_moe_gguf

PROMPTS = [[1, 500, 600, 700, 800, 900], [2, 42], [1000 + 7 * i for i in range(40)]]
STEPS = 8
GREEDY: dict[str, Any] = {"max_new_tokens": STEPS, "temperature": 0, "ignore_eos": True}

# 4 layers, 8 experts of width 32, top-2; each exercises its own routing/layout rule.
ARCHS: dict[str, dict[str, Any]] = {
    # q/k norm, renormalised top-k; layer 1 dense (mlp_only_layers), layers 0, 2, 3 MoE.
    "qwen3_moe": dict(num_key_value_heads=2, head_dim=32, num_experts=8, num_experts_per_tok=2,
                      moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1]),
    # qkv bias, no renormalisation, a shared expert with its sigmoid gate; decoder_sparse_step=2:
    # layers 1 and 3 MoE, 0 and 2 dense.
    "qwen2_moe": dict(num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=48, norm_topk_prob=False, decoder_sparse_step=2),
    # Mistral attention, experts of width intermediate_size, checkpoint names block_sparse_moe.w1/w2/w3.
    "mixtral": dict(num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, intermediate_size=32),
}


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("moe")
    return {arch: _save_tiny(tmp, arch, tokenizer_source(), num_hidden_layers=4, **kw)
            for arch, kw in ARCHS.items()}


def _hf_greedy(model_dir: Path) -> tuple[list[list[int]], list[list[torch.Tensor]]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids, logits = [], []
    for p in PROMPTS:
        out = model.generate(torch.tensor([p]), max_new_tokens=STEPS, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
        ids.append(out.sequences[0, len(p):].tolist())
        logits.append([lg[0] for lg in out.logits])
    return ids, logits


@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_matches_transformers(moe_models: dict[str, Path], arch: str) -> None:
    model_dir = moe_models[arch]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"][0].endswith(("MoeForCausalLM", "MixtralForCausalLM"))
    with Engine(model_path=str(model_dir), max_total_tokens=2048, log_level="warning") as engine:
        outs = engine.generate(input_ids=PROMPTS, sampling_params=GREEDY, return_logprob=True, top_logprobs_num=5)
    _assert_matches_transformers(outs, model_dir)


def _assert_matches_transformers(outs: Any, model_dir: Path) -> None:
    """Greedy ids equal transformers' on the checkpoint at `model_dir`, top-5 log-probs within float32 noise."""
    hf_ids, hf_logits = _hf_greedy(model_dir)
    assert isinstance(outs, list)
    for out, ids, logits in zip(outs, hf_ids, hf_logits, strict=True):
        assert out["output_ids"] == ids
        for row, lg in zip(out["meta_info"]["output_top_logprobs"], logits, strict=True):
            hf_lp = torch.log_softmax(lg.float(), dim=-1)
            ours = torch.tensor([lp for lp, _ in row])
            torch.testing.assert_close(ours, hf_lp[torch.tensor([t for _, t in row])], atol=2e-4, rtol=1e-4)
    # A model where every output collapses onto one token would pass the comparison vacuously.
    assert len({t for out in outs for t in out["output_ids"]}) > 3


@pytest.mark.parametrize(("arch", "parallel"), [
    # Experts, the shared expert and the dense layers sliced along their width, one all-reduce per layer.
    ("qwen2_moe", {"tp_size": 2}),
    # Two stages of two layers: MoE layers chosen by their global index on each stage.
    ("qwen3_moe", {"pp_size": 2}),
])
def test_parallel_equals_single_process(moe_models: dict[str, Path], arch: str, parallel: dict[str, int]) -> None:
    path = str(moe_models[arch])
    with Engine(model_path=path, max_total_tokens=2048, log_level="warning") as one:
        ref = one.generate(input_ids=PROMPTS, sampling_params=GREEDY, return_logprob=True)
    with Engine(model_path=path, max_total_tokens=2048, log_level="warning", **parallel) as two:
        got = two.generate(input_ids=PROMPTS, sampling_params=GREEDY, return_logprob=True)
    _assert_same_greedy(got, ref)


def _assert_same_greedy(got: Any, ref: Any) -> None:
    """Same token ids, and each chosen token's log-prob within 1e-4 (the parallel sums' order)."""
    for a, b in zip(got, ref, strict=True):
        assert a["output_ids"] == b["output_ids"]
        for (la, _), (lb, _) in zip(a["meta_info"]["output_token_logprobs"], b["meta_info"]["output_token_logprobs"],
                                    strict=True):
            assert abs(la - lb) <= 1e-4


def _drop_tensor(src: Path, dst: Path, name: str) -> None:
    """Copy the checkpoint at `src` to `dst` without tensor `name`."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = load_file(str(f))
        if name in tensors:
            del tensors[name]
            save_file(tensors, str(f), metadata={"format": "pt"})
            return
    raise AssertionError(f"{name} not in the checkpoint")


@pytest.mark.parametrize(("arch", "name", "expected"), [
    ("qwen3_moe", "model.layers.3.mlp.experts.5.up_proj.weight",
     r"lacks 1 expert tensors of model\.layers\.3\.mlp\.experts.*experts\.5\.up_proj\.weight"),
    ("mixtral", "model.layers.0.block_sparse_moe.experts.2.w2.weight",
     r"model\.layers\.0\.block_sparse_moe\.experts\.2\.w2\.weight"),
    ("qwen2_moe", "model.layers.1.mlp.gate.weight", r"model\.layers\.1\.mlp\.gate\.weight"),
])
def test_missing_tensors_are_named(moe_models: dict[str, Path], tmp_path: Path, arch: str, name: str,
                                   expected: str) -> None:
    broken = tmp_path / arch
    _drop_tensor(moe_models[arch], broken, name)
    with pytest.raises(ValueError, match=expected):
        Engine(model_path=str(broken), max_total_tokens=2048, log_level="warning")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_gguf_greedy_matches_transformers(moe_models: dict[str, Path], tmp_path: Path, arch: str) -> None:
    # The checkpoint as llama.cpp's converter writes it, experts stacked and quantized Q8_0 (dequantized
    # at load: the MoE layer runs float experts); transformers gets the same quantized experts back.
    reference = tmp_path / "reference"
    path = write_moe_gguf(moe_models[arch], tmp_path / f"{arch}.gguf", "Q8_0", reference_dir=reference)
    with Engine(model_path=str(path), tokenizer_path=str(moe_models[arch]), max_total_tokens=2048,
                log_level="warning") as engine:
        outs = engine.generate(input_ids=PROMPTS, sampling_params=GREEDY, return_logprob=True, top_logprobs_num=5)
    hf_arch = json.loads((moe_models[arch] / "config.json").read_text())["architectures"][0]
    assert resolve_model_source(str(path)).config.architecture == hf_arch
    _assert_matches_transformers(outs, reference)


def test_gguf_mixtral_at_tp2_equals_tp1(moe_models: dict[str, Path], tmp_path: Path) -> None:
    # Permuted q/k rows and the experts' width, both sliced per rank after loading from GGUF.
    path = str(write_moe_gguf(moe_models["mixtral"], tmp_path / "mixtral.gguf"))
    tok = str(moe_models["mixtral"])
    with Engine(model_path=path, tokenizer_path=tok, max_total_tokens=2048, log_level="warning") as one:
        ref = one.generate(input_ids=PROMPTS, sampling_params=GREEDY, return_logprob=True)
    with Engine(model_path=path, tokenizer_path=tok, max_total_tokens=2048, log_level="warning", tp_size=2) as two:
        got = two.generate(input_ids=PROMPTS, sampling_params=GREEDY, return_logprob=True)
    _assert_same_greedy(got, ref)


@pytest.mark.parametrize(("arch", "experts", "expected"), [
    ("qwen3moe", 0, r"a qwen3moe GGUF file without qwen3moe\.expert_count"),
    ("qwen2", 8, r"a qwen2 GGUF file with 8 experts: mixture-of-experts GGUF is supported for \['llama', 'qwen2moe', "
                 r"'qwen3moe'\]"),
])
def test_gguf_moe_metadata_that_does_not_fit_is_refused_by_name(tmp_path: Path, arch: str, experts: int,
                                                                 expected: str) -> None:
    import gguf

    path = tmp_path / f"{arch}.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    if experts:
        writer.add_expert_count(experts)
    writer.add_block_count(2)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_vocab_size(4)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    from radixserve.configs.model_config import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=expected):
        Engine(model_path=str(path), log_level="warning")
