"""radixserve.lang programs on the in-process Engine: forks share the cached prompt, select picks
the choice transformers scores highest, run_batch, errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from radixserve import lang

pytestmark = pytest.mark.slow

LONG_SYSTEM = "You are a meticulous travel guide who answers with short, concrete plans. " * 20


@lang.function
def tour(s: lang.ProgramState, city: str) -> lang.ForkGroup:
    s += lang.system(LONG_SYSTEM)
    s += lang.user(f"Plan a day in {city}.")
    branches = s.fork(4)
    for i, b in enumerate(branches):
        b += lang.assistant(f"Option {i + 1}:", lang.gen("plan", max_tokens=3, temperature=0))
    branches.join()
    return branches


@lang.function
def quiz(s: lang.ProgramState, question: str, choices: list[str], method: str = "sum") -> None:
    s += lang.user(question)
    s += lang.assistant("The answer is: ", lang.select("answer", choices, method=method))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def backend(smol_engine: Any) -> lang.EngineBackend:
    return lang.EngineBackend(smol_engine)


def test_fork_branches_find_the_shared_prompt_cached(smol_engine: Any, backend: lang.EngineBackend) -> None:
    smol_engine.scheduler.flush_cache()
    state = tour.run(city="Lisbon", backend=backend)
    shared_text = smol_engine.tokenizer.apply_chat_template(
        [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "Plan a day in Lisbon."}],
        tokenize=False)
    shared = len(smol_engine.tokenizer(shared_text).input_ids)
    assert shared > 200
    branches = state.ret_value
    metas = [b.get_meta_info("plan") for b in branches]
    for meta in metas[1:]:  # (the first finds it too: fork sends the shared prompt once before branching)
        assert shared - 1 <= meta["cached_tokens"] < meta["prompt_tokens"]
    assert all(m["completion_tokens"] == 3 for m in metas)
    for i, b in enumerate(branches):
        assert b.messages()[-1] == {"role": "assistant", "content": f"Option {i + 1}:" + b["plan"]}
    assert "plan" not in state.variables  # a branch's variables are its own


def choice_logprob_sums(model: Any, tokenizer: Any, prefix: str, choices: list[str]) -> list[float]:
    """Each choice's summed token logprobs after `prefix`, by transformers: prefix + choice is
    tokenized as one text and the choice's tokens are those past the common prefix with the prefix's tokens."""
    base = list(tokenizer(prefix).input_ids)
    sums = []
    for c in choices:
        ids = list(tokenizer(prefix + c).input_ids)
        common = next((i for i, (a, b) in enumerate(zip(base, ids, strict=False)) if a != b), min(len(base), len(ids)))
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        sums.append(sum(float(lp[p - 1, ids[p]]) for p in range(max(common, 1), len(ids))))
    return sums


def test_select_picks_the_choice_transformers_scores_highest(smol_engine: Any, hf_smol_model: Any,
                                                             backend: lang.EngineBackend) -> None:
    question = "What is the capital of France? Answer with one word."
    choices = ["London", "Paris", "Rome and Milan", "Berlin"]
    tok = smol_engine.tokenizer
    prefix = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                     add_generation_prompt=True) + "The answer is: "
    sums = choice_logprob_sums(hf_smol_model, tok, prefix, choices)
    for method in ("sum", "normalized"):
        state = quiz.run(question=question, choices=choices, method=method, backend=backend)
        meta = state.get_meta_info("answer")
        assert meta["logprob_sums"] == pytest.approx(sums, abs=1e-3)
        counts = [len(t) for t in meta["token_logprobs"]]
        assert counts[2] > 1  # a multi-token choice
        ranking = sums if method == "sum" else [s / n for s, n in zip(sums, counts, strict=True)]
        assert state["answer"] == choices[max(range(len(choices)), key=lambda i: ranking[i])]
        assert state.text() == prefix + state["answer"] + "<|im_end|>\n"


def test_run_batch_keeps_order_and_matches_single_runs(backend: lang.EngineBackend) -> None:
    @lang.function
    def complete(s: lang.ProgramState, start: str) -> None:
        s += start
        s += lang.gen("rest", max_tokens=4, temperature=0)

    starts = ["One, two, three,", "The sky is", "def add(a, b):"]
    states = complete.run_batch([{"start": x} for x in starts], backend=backend, num_threads=3, progress_bar=True)
    assert [s.text() for s in states] == [x + s["rest"] for x, s in zip(starts, states, strict=True)]
    assert states[1]["rest"] == complete.run(start=starts[1], backend=backend)["rest"]


def test_errors_reach_the_caller(backend: lang.EngineBackend) -> None:
    @lang.function
    def bad(s: lang.ProgramState) -> None:
        s += "Hello"
        s += lang.gen("x", max_tokens=2, temperature=-1.0)

    with pytest.raises(lang.BackendError, match="temperature"):
        bad.run(backend=backend)

    @lang.function
    def mixed(s: lang.ProgramState) -> None:
        s += lang.user("hi")
        s += "loose text"

    with pytest.raises(ValueError, match="inside a role"):
        mixed.run(backend=backend)
    with pytest.raises(ValueError, match="no backend"):
        mixed.run()
