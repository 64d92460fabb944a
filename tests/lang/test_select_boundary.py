"""select's token-boundary rule and request pattern, on a backend with a word tokenizer whose
prefix's last token (" ") merges into the choice's first (" Paris")."""

from __future__ import annotations

import re
from typing import Any

import pytest

from radixserve import lang
from radixserve.lang import GenerateCall, GenerateResult


def tokenize(text: str) -> list[str]:
    return re.findall(r" ?[^ ]+| ", text)


def token_logprob(token: str) -> float:
    return -float(len(token))  # a stand-in model: longer tokens are less likely


class WordBackend:
    """Scores prompts like the engine's `logprob_start_len` does, with the toy tokenizer."""

    def __init__(self) -> None:
        self.calls: list[list[GenerateCall]] = []

    def generate(self, calls: list[GenerateCall]) -> list[GenerateResult]:
        self.calls.append(calls)
        out = []
        for c in calls:
            assert c.sampling_params["max_new_tokens"] == 0
            toks = tokenize(c.text)
            meta: dict[str, Any] = {"prompt_tokens": len(toks), "cached_tokens": 0, "completion_tokens": 0}
            if c.logprob_start_len >= 0:
                meta["input_token_logprobs"] = [(None if p == 0 else token_logprob(toks[p]), hash(toks[p]))
                                                for p in range(c.logprob_start_len, len(toks))]
            out.append(GenerateResult("", [], meta))
        return out

    def chat_template(self) -> Any:
        raise AssertionError("a plain-text program renders no chat template")


@lang.function
def answer(s: lang.ProgramState, method: str) -> None:
    s += "The answer is: "
    s += lang.select("city", ["Paris", "Rome is nice"], method=method)  # type: ignore[arg-type]


def test_choice_tokens_start_where_the_tokenizations_part() -> None:
    backend = WordBackend()
    state = answer.run(method="sum", backend=backend)
    meta = state.get_meta_info("city")
    # " " + "Paris" became one token " Paris": it is the choice's, the prefix's " " is not counted twice.
    assert meta["token_logprobs"] == [[-6.0], [-5.0, -3.0, -5.0]]
    assert meta["logprob_sums"] == [-6.0, -13.0]
    assert state["city"] == "Paris" and state.text() == "The answer is: Paris"
    # One prefill of the prefix, then one batch (prefix and each prefix + choice) scored from P - 2.
    warm, scored = backend.calls
    assert [c.text for c in warm] == ["The answer is: "] and warm[0].logprob_start_len == -1
    assert [c.text for c in scored] == ["The answer is: ", "The answer is: Paris", "The answer is: Rome is nice"]
    assert {c.logprob_start_len for c in scored} == {len(tokenize("The answer is: ")) - 2}


def test_normalized_ranks_by_the_mean_per_token() -> None:
    state = answer.run(method="normalized", backend=WordBackend())
    assert state.get_meta_info("city")["logprob_means"] == pytest.approx([-6.0, -13.0 / 3])
    assert state["city"] == "Rome is nice"


def test_select_needs_choices() -> None:
    with pytest.raises(ValueError, match="at least one choice"):
        lang.select("x", [])
