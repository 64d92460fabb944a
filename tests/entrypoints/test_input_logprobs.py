"""Prompt (input) token logprobs (`logprob_start_len`) against transformers on the same GGUF,
through the cache, across prefill chunks, and max_new_tokens 0."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from radixserve.errors import InvalidRequestError

pytestmark = pytest.mark.slow

PROMPT = ("The capital of France is Paris. The capital of Germany is Berlin. The capital of Spain is Madrid. "
          "The capital of Italy is")
TOL = 1e-4


@pytest.fixture(scope="module")
def reference(hf_smol_model: Any, smol_tokenizer: Any) -> tuple[list[int], list[float]]:
    """The prompt's ids and log p(token p | tokens < p) for p >= 1, from transformers' own forward."""
    ids = list(smol_tokenizer(PROMPT).input_ids)
    with torch.no_grad():
        logits = hf_smol_model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return ids, lp.tolist()


def assert_close(got: list[tuple[float | None, int]], ids: list[int], ref: list[float], start: int) -> None:
    assert [t for _, t in got] == ids[start:]
    values = [lp for lp, _ in got]
    if start == 0:
        assert values[0] is None  # nothing predicts the first token
        values = values[1:]
    assert all(v is not None for v in values)
    want = ref[max(start, 1) - 1 :]
    assert len(values) == len(want)
    worst = max(abs(float(v) - w) for v, w in zip(values, want, strict=True))  # type: ignore[arg-type]
    assert worst < TOL, worst


def test_whole_prompt_with_no_output_tokens(smol_engine: Any, reference: tuple[list[int], list[float]]) -> None:
    ids, ref = reference
    smol_engine.scheduler.flush_cache()
    out = smol_engine.generate(PROMPT, {"max_new_tokens": 0}, logprob_start_len=0)
    assert out["output_ids"] == [] and out["text"] == ""
    assert out["meta_info"]["finish_reason"] == {"type": "length"}
    assert out["meta_info"]["prompt_tokens"] == len(ids)
    assert_close(out["meta_info"]["input_token_logprobs"], ids, ref, 0)


def test_cached_prefix_is_recomputed_from_the_start_position(smol_engine: Any,
                                                             reference: tuple[list[int], list[float]]) -> None:
    ids, ref = reference
    smol_engine.generate(PROMPT, {"max_new_tokens": 0})  # the whole prompt is now in the RadixCache
    start = 9
    out = smol_engine.generate(PROMPT, {"max_new_tokens": 2, "temperature": 0}, logprob_start_len=start,
                               return_logprob=True)
    # Position start - 1's logits score token `start`: the match stops there, the rest is recomputed.
    assert out["meta_info"]["cached_tokens"] == start - 1
    assert_close(out["meta_info"]["input_token_logprobs"], ids, ref, start)
    assert len(out["meta_info"]["output_token_logprobs"]) == 2
    plain = smol_engine.generate(PROMPT, {"max_new_tokens": 2, "temperature": 0})
    assert plain["output_ids"] == out["output_ids"]
    assert "input_token_logprobs" not in plain["meta_info"]


def test_across_prefill_chunks(smol_engine: Any, reference: tuple[list[int], list[float]],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    ids, ref = reference
    args = smol_engine.scheduler.server_args  # read at every schedule: chunks of 10 tokens from here on
    monkeypatch.setattr(args, "chunked_prefill_size", 10)
    monkeypatch.setattr(args, "max_prefill_tokens", 10)
    smol_engine.scheduler.flush_cache()
    outs = smol_engine.generate([PROMPT, PROMPT], [{"max_new_tokens": 0}, {"max_new_tokens": 1, "temperature": 0}],
                                logprob_start_len=3)
    for out in outs:
        assert_close(out["meta_info"]["input_token_logprobs"], ids, ref, 3)
    smol_engine.scheduler.check_memory()


def test_bad_start_is_refused_naming_the_field(smol_engine: Any) -> None:
    n = len(smol_engine.tokenizer(PROMPT).input_ids)
    for bad in (n, n + 5, -2):
        with pytest.raises(InvalidRequestError) as e:
            smol_engine.generate(PROMPT, {"max_new_tokens": 1}, logprob_start_len=bad)
        assert e.value.param == "logprob_start_len" and "logprob_start_len" in str(e.value)
