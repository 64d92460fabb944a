"""HF safetensors directories (tiny random models made with transformers) give transformers' logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from radixserve import Engine

PROMPTS = [[1, 500, 600, 700, 800, 900], [2, 42], [1000 + i for i in range(40)]]


def _hf_step_logits(model_dir: Path, ids: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = model.generate(torch.tensor([ids]), max_new_tokens=steps, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    return out.sequences[0, len(ids):].tolist(), [lg[0] for lg in out.logits]


@pytest.mark.parametrize(("name", "tp"), [("llama", 1), ("llama_gqa_tied", 1), ("qwen2", 1), ("qwen3", 1),
                                          # TP=2: 4 KV heads split, and 2 KV heads (one per rank)
                                          ("llama", 2), ("llama_gqa_tied", 2)])
def test_safetensors_logits_match_transformers(tiny_models: dict[str, Path], name: str, tp: int) -> None:
    model_dir = tiny_models[name]
    assert len(list(model_dir.glob("*.safetensors"))) > 1, "fixture should be sharded"
    steps = 4
    with Engine(model_path=str(model_dir), max_total_tokens=2048, log_level="warning", tp_size=tp) as engine:
        outs = engine.generate(input_ids=PROMPTS, return_logprob=True, top_logprobs_num=20,
                               sampling_params={"max_new_tokens": steps, "temperature": 0, "ignore_eos": True})
    assert isinstance(outs, list)
    for ids, out in zip(PROMPTS, outs, strict=True):
        hf_ids, hf_logits = _hf_step_logits(model_dir, ids, steps)
        assert out["output_ids"] == hf_ids
        tops: Any = out["meta_info"]["output_top_logprobs"]
        for step, row in enumerate(tops):
            hf_lp = torch.log_softmax(hf_logits[step].float(), dim=-1)
            ours = torch.tensor([lp for lp, _ in row])
            theirs = hf_lp[torch.tensor([tid for _, tid in row])]
            torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)
            # The top-20 sets agree too (order may only differ among exact ties).
            assert set(tid for _, tid in row) == set(hf_lp.topk(20).indices.tolist())


def test_unsupported_architecture_names_what_is_supported(tmp_path: Path) -> None:
    import json

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*supported: \['LlamaForCausalLM'"):
        Engine(model_path=str(tmp_path), log_level="warning")
