"""Greedy output of Engine() on the embedded model equals transformers' greedy generate on the same GGUF."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytestmark = pytest.mark.slow

MAX_NEW = 24
LONG = (
    "The history of computing spans centuries, from the abacus and mechanical calculators to the "
    "programmable machines of the twentieth century. Charles Babbage designed the Analytical Engine, "
    "and Ada Lovelace wrote what many consider the first algorithm intended for a machine. In the "
    "1940s, electronic computers such as ENIAC filled entire rooms and consumed enormous power. The "
    "invention of the transistor and later the integrated circuit shrank computers dramatically, "
    "leading to personal computers in the 1970s and 1980s, and eventually to smartphones. "
) * 2 + "Summarize this history in one sentence:"

RAW_PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "长城是中国古代的伟大建筑，它",
    LONG,
    "Hi",
]
CHAT_PROMPTS = [
    "What is the capital of France?",
    "東京について一文で説明してください。",
    "Write a Python function that reverses a string.",
    "List three prime numbers.",
]


@pytest.fixture(scope="module")
def prompt_ids(smol_engine: Any) -> list[list[int]]:
    tok = smol_engine.tokenizer
    ids = [list(tok(p).input_ids) for p in RAW_PROMPTS]
    ids += [smol_engine.apply_chat_template([{"role": "user", "content": p}]) for p in CHAT_PROMPTS]
    assert max(len(x) for x in ids) > 150 and min(len(x) for x in ids) < 5
    return ids


@pytest.fixture(scope="module")
def hf_outputs(hf_smol_model: Any, prompt_ids: list[list[int]], smol_engine: Any) -> list[list[int]]:
    eos = smol_engine.tokenizer.eos_token_id
    outs = []
    for ids in prompt_ids:
        with torch.no_grad():
            seq = hf_smol_model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False,
                                         eos_token_id=eos, pad_token_id=eos)
        outs.append(seq[0, len(ids):].tolist())
    return outs


GREEDY = {"max_new_tokens": MAX_NEW, "temperature": 0}


def test_one_at_a_time(smol_engine: Any, prompt_ids: list[list[int]], hf_outputs: list[list[int]]) -> None:
    for ids, expected in zip(prompt_ids, hf_outputs, strict=True):
        out = smol_engine.generate(input_ids=ids, sampling_params=GREEDY)
        assert out["output_ids"] == expected, smol_engine.tokenizer.decode(ids)


def test_one_mixed_batch(smol_engine: Any, prompt_ids: list[list[int]], hf_outputs: list[list[int]]) -> None:
    smol_engine.scheduler.flush_cache()
    outs = smol_engine.generate(input_ids=prompt_ids, sampling_params=GREEDY)
    assert [o["output_ids"] for o in outs] == hf_outputs


def test_chunked_prefill_16(prompt_ids: list[list[int]], hf_outputs: list[list[int]]) -> None:
    from radixserve import Engine

    with Engine(chunked_prefill_size=16, max_prefill_tokens=16, log_level="warning", gguf_dequantize=True) as engine:
        outs = engine.generate(input_ids=prompt_ids, sampling_params=GREEDY)
        assert [o["output_ids"] for o in outs] == hf_outputs
        engine.scheduler.check_memory()
