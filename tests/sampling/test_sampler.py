"""Batched sampler: each knob on synthetic logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from radixserve.constrained.base import GrammarMatcher
from radixserve.sampling.sampler import SamplingBatchInfo, sample
from radixserve.sampling.sampling_params import SamplingParams, SamplingParamsError


@dataclass
class FakeReq:
    sampling_params: SamplingParams
    origin_input_ids: list[int] = field(default_factory=lambda: [0])
    output_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    return_logprob: bool = False
    top_logprobs_num: int = 0
    stop_ids_for_min_tokens: list[int] = field(default_factory=list)
    grammar: GrammarMatcher | None = None


def run(logits: torch.Tensor, *reqs: FakeReq) -> list[int]:
    return sample(logits, SamplingBatchInfo.from_reqs(list(reqs), logits.device)).next_token_ids.tolist()


LOGITS = torch.tensor([[2.0, 1.5, 1.0, 0.5, -1.0, -3.0]])


def p(**kw: object) -> SamplingParams:
    return SamplingParams.from_dict(kw)


def test_greedy_and_degenerate_filters_pick_argmax() -> None:
    for params in (p(temperature=0), p(temperature=5.0, top_k=1), p(temperature=5.0, top_p=1e-6),
                   p(temperature=5.0, min_p=1.0)):
        assert run(LOGITS.clone(), FakeReq(params)) == [0]


def test_top_k_and_top_p_restrict_support() -> None:
    g = torch.Generator().manual_seed(0)
    seen_k, seen_p = set(), set()
    for _ in range(300):
        seen_k.update(run(LOGITS, FakeReq(p(temperature=3.0, top_k=2), generator=g)))
        seen_p.update(run(LOGITS, FakeReq(p(temperature=1.0, top_p=0.8), generator=g)))
    assert seen_k == {0, 1}
    probs = torch.softmax(LOGITS[0], -1)  # 0.44, 0.27, 0.16, ...: top_p 0.8 keeps the first three
    assert probs[:2].sum() < 0.8 <= probs[:3].sum()
    assert seen_p == {0, 1, 2}


def test_sampling_follows_the_distribution() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.tensor([[0.0, 1.0, 2.0]]).repeat(4000, 1)
    reqs = [FakeReq(p(temperature=1.0), generator=g) for _ in range(4000)]
    counts = torch.bincount(torch.tensor(run(logits, *reqs)), minlength=3).float() / 4000
    torch.testing.assert_close(counts, torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0), atol=0.03, rtol=0)


def test_seeded_rows_do_not_depend_on_the_batch() -> None:
    logits = torch.randn(1, 50)

    def draws(extra: int) -> list[int]:
        g = torch.Generator().manual_seed(1234)
        out = []
        for _ in range(20):
            batch = torch.cat([logits, torch.randn(extra, 50)])
            reqs = [FakeReq(p(temperature=1.0), generator=g)] + [FakeReq(p(temperature=1.0)) for _ in range(extra)]
            out.append(run(batch, *reqs)[0])
        return out

    assert draws(0) == draws(5)
    assert len(set(draws(0))) > 1


def test_penalties() -> None:
    logits = torch.tensor([[3.0, 2.9, 0.0]])
    rep = FakeReq(p(temperature=0, repetition_penalty=1.5), origin_input_ids=[0])
    assert run(logits, rep) == [1]  # 3.0 / 1.5 < 2.9
    freq = FakeReq(p(temperature=0, frequency_penalty=0.06), output_ids=[0, 0])
    assert run(logits, freq) == [1]  # 3.0 - 2 * 0.06 < 2.9
    pres = FakeReq(p(temperature=0, presence_penalty=0.05), output_ids=[0, 0, 0])
    assert run(logits, pres) == [0]  # presence counts once: 2.95 > 2.9
    neg = FakeReq(p(temperature=0, presence_penalty=-0.5), output_ids=[2])
    assert run(torch.tensor([[0.3, 0.2, 0.0]]), neg) == [2]


def test_min_new_tokens_masks_stop_ids() -> None:
    req = FakeReq(p(temperature=0, min_new_tokens=2), output_ids=[5], stop_ids_for_min_tokens=[0])
    assert run(LOGITS, req) == [1]


def test_logprobs_are_of_the_raw_distribution() -> None:
    req = FakeReq(p(temperature=0.5, top_k=3, repetition_penalty=1.2), return_logprob=True, top_logprobs_num=3,
                  generator=torch.Generator().manual_seed(0))
    out = sample(LOGITS, SamplingBatchInfo.from_reqs([req], LOGITS.device))
    lp = torch.log_softmax(LOGITS[0], -1)
    assert out.logprobs is not None and out.top_logprobs is not None
    assert out.logprobs[0] == pytest.approx(lp[int(out.next_token_ids[0])].item())
    assert [t for t, _ in out.top_logprobs[0]] == [0, 1, 2]
    assert out.top_logprobs[0][0][1] == pytest.approx(lp[0].item())


@pytest.mark.parametrize("bad,field_name", [
    ({"max_new_tokens": -1}, "max_new_tokens"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"temperature": -0.1}, "temperature"), ({"top_k": 0}, "top_k"), ({"min_p": 2}, "min_p"),
    ({"frequency_penalty": 3}, "frequency_penalty"), ({"n": 0}, "n"), ({"stop": [""]}, "stop"),
    ({"best_of": 2}, "best_of"), ({"max_new_tokens": "5"}, "max_new_tokens"), ({"seed": 1.5}, "seed"),
])
def test_invalid_parameters_name_the_field(bad: dict[str, object], field_name: str) -> None:
    with pytest.raises(SamplingParamsError, match=repr(field_name)):
        SamplingParams.from_dict(bad)


@pytest.mark.parametrize("bad,field_name", [
    ({"temperature": float("nan")}, "temperature"), ({"top_p": float("inf")}, "top_p"),
    ({"min_p": float("nan")}, "min_p"), ({"repetition_penalty": float("inf")}, "repetition_penalty"),
    ({"frequency_penalty": float("-inf")}, "frequency_penalty"), ({"temperature": 10**400}, "temperature"),
    ({"top_k": 2**31}, "top_k"), ({"top_k": 2**63}, "top_k"), ({"seed": 2**63}, "seed"), ({"seed": -1}, "seed"),
    ({"max_new_tokens": 2**63}, "max_new_tokens"), ({"stop_token_ids": [2**64]}, "stop_token_ids"),
    ({"stop": ["x"] * 17}, "stop"), ({"stop": ["x" * 257]}, "stop"), ({"ignore_eos": "no"}, "ignore_eos"),
])
def test_validate_rejects_what_the_engine_cannot_honour(bad: dict[str, object], field_name: str) -> None:
    """The struct itself (the offline Engine's path, no pydantic in front) is checked, not only from_dict."""
    with pytest.raises(SamplingParamsError, match=repr(field_name)):
        SamplingParams(**bad).validate()  # type: ignore[arg-type]


def test_largest_top_k_and_seed_sample() -> None:
    req = FakeReq(p(temperature=1.0, top_k=2**31 - 1, seed=2**63 - 1),
                  generator=torch.Generator().manual_seed(2**63 - 1))
    out = sample(LOGITS, SamplingBatchInfo.from_reqs([req], LOGITS.device))
    assert 0 <= int(out.next_token_ids[0]) < LOGITS.shape[1]
