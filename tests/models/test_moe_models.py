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
from tests.conftest import _save_tiny, tokenizer_source

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
    hf_ids, hf_logits = _hf_greedy(model_dir)
    with Engine(model_path=str(model_dir), max_total_tokens=2048, log_level="warning") as engine:
        outs = engine.generate(input_ids=PROMPTS, sampling_params=GREEDY, return_logprob=True, top_logprobs_num=5)
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


@pytest.mark.parametrize(("arch", "hf"), [("qwen3moe", "Qwen3MoeForCausalLM"), ("llama", "MixtralForCausalLM")])
def test_gguf_moe_is_refused_by_name(tmp_path: Path, arch: str, hf: str) -> None:
    import gguf

    path = tmp_path / f"{arch}-moe.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_expert_count(8)
    writer.add_expert_used_count(2)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    from radixserve.configs.model_config import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=rf"mixture-of-experts.*{arch!r}, 8 experts.*{hf} is supported"):
        Engine(model_path=str(path), log_level="warning")


def test_named_moe_shapes_have_the_published_parameter_counts() -> None:
    from radixserve.configs.model_config import NAMED_SHAPES, ModelConfig
    from radixserve.models.registry import MODEL_CLASSES

    published = {"qwen3-30b-a3b": 30_532_122_624, "mixtral-8x7b": 46_702_792_704,
                 "qwen1.5-moe-a2.7b": 14_315_784_192}
    for shape, count in published.items():
        config = ModelConfig.from_hf_dict(NAMED_SHAPES[shape], shape)
        with torch.device("meta"):  # shapes only: no memory for 47B parameters
            model = MODEL_CLASSES[config.architecture](config)
        assert sum(p.numel() for p in model.parameters()) == count, shape


def test_dummy_weights_for_a_moe_config(moe_models: dict[str, Path]) -> None:
    """--load-format dummy: random weights in the stacked expert parameters, and decoding runs."""
    with Engine(model_path=str(moe_models["qwen3_moe"]), load_format="dummy", max_total_tokens=2048,
                log_level="warning") as engine:
        out = engine.generate(input_ids=PROMPTS[0], sampling_params=GREEDY)
    assert isinstance(out, dict) and len(out["output_ids"]) == STEPS


def test_stacked_expert_checkpoint_layout(moe_models: dict[str, Path], tmp_path: Path) -> None:
    """transformers 5's in-memory layout (experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I])
    loads to the same model as one tensor per expert."""
    import re

    from safetensors.torch import load_file, save_file

    src = moe_models["qwen3_moe"]
    tensors: dict[str, torch.Tensor] = {}
    for f in src.glob("*.safetensors"):
        tensors.update(load_file(str(f)))
    stacked: dict[str, torch.Tensor] = {}
    per_expert: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name, t in tensors.items():
        m = re.match(r"(.+\.mlp\.experts)\.(\d+)\.(\w+)\.weight$", name)
        if m is None:
            stacked[name] = t
        else:
            per_expert.setdefault(m[1], {}).setdefault(m[3], {})[int(m[2])] = t
    assert len(per_expert) == 3  # layers 0, 2 and 3
    for prefix, projs in per_expert.items():
        def stack(proj: str, p: dict[str, dict[int, torch.Tensor]] = projs) -> torch.Tensor:
            return torch.stack([p[proj][e] for e in sorted(p[proj])])
        stacked[f"{prefix}.gate_up_proj"] = torch.cat([stack("gate_proj"), stack("up_proj")], dim=1)
        stacked[f"{prefix}.down_proj"] = stack("down_proj")
    out = tmp_path / "stacked"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    save_file(stacked, str(out / "model.safetensors"), metadata={"format": "pt"})
    results = []
    for path in (src, out):
        with Engine(model_path=str(path), max_total_tokens=2048, log_level="warning") as engine:
            results.append(engine.generate(input_ids=PROMPTS, sampling_params=GREEDY, return_logprob=True))
    assert [o["meta_info"]["output_token_logprobs"] for o in results[0]] == \
        [o["meta_info"]["output_token_logprobs"] for o in results[1]]


@pytest.mark.parametrize(("change", "expected"), [
    ({"num_experts_per_tok": 9}, r"0 < num_experts_per_tok <= num_experts \(got 8 experts, top-k 9\)"),
    ({"moe_intermediate_size": None}, r"Qwen3MoeForCausalLM: the config lacks moe_intermediate_size"),
])
def test_inconsistent_moe_config_is_refused(change: dict[str, Any], expected: str) -> None:
    from radixserve.configs.model_config import NAMED_SHAPES, ModelConfig, UnsupportedModelError

    cfg = {**NAMED_SHAPES["qwen3-30b-a3b"], "num_experts": 8, **change}
    with pytest.raises(UnsupportedModelError, match=expected):
        ModelConfig.from_hf_dict(cfg)
