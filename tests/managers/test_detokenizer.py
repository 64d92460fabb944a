"""Incremental detokenization: deltas add up to the full text, never half a character or a stop string.

The detokenizer gets each request's DecodeSettings once, with its first output; the same
IncrementalDecoder finds stop strings for the scheduler."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixserve.managers.detokenizer_manager import DetokenizerManager
from radixserve.managers.io_struct import BatchTokenIDOut, DecodeSettings, FinishReason
from radixserve.model_loader.tokenizer import load_tokenizer
from radixserve.utils.detokenize import IncrementalDecoder, held_stop_prefix
from tests.conftest import tokenizer_source

TEXT = "héllo 😀 wörld 日本語, done. The end STOP after"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(tokenizer_source())


def out(rid: str, ids: list[int], reason: FinishReason | None = None,
        settings: DecodeSettings | None = None) -> BatchTokenIDOut:
    return BatchTokenIDOut(rids=[rid], new_token_ids=[ids], finished_reasons=[reason], prompt_tokens=[1],
                           completion_tokens=[len(ids)], cached_tokens=[0], new_token_logprobs=[[]],
                           new_top_logprobs=[[]], new_reqs=[settings] if settings else [])


def stream(manager: DetokenizerManager, ids: list[int], steps: list[int], reason: FinishReason,
           stops: list[str] | None = None, skip: bool = True) -> list[str]:
    """Feed ids in pieces of the given sizes; the last piece carries the finish reason."""
    deltas, i = [], 0
    for k, n in enumerate(steps):
        piece = ids[i : i + n]
        i += n
        last = k == len(steps) - 1 or i >= len(ids)
        settings = DecodeSettings("r", stops or [], skip) if k == 0 else None  # sent once
        deltas.append(manager.handle(out("r", piece, reason if last else None, settings)).new_texts[0])
        if last:
            break
    return deltas


def test_one_token_at_a_time_equals_full_decode_without_broken_characters(tokenizer: Any) -> None:
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    m = DetokenizerManager(tokenizer)
    deltas = stream(m, ids, [1] * len(ids), FinishReason("length"))
    assert "".join(deltas) == tokenizer.decode(ids)
    assert all("\ufffd" not in d for d in deltas)  # the emoji and CJK bytes span several tokens
    assert "r" not in m.decoders  # state is dropped at the end


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_chunking_adds_up(tokenizer: Any, data: st.DataObject) -> None:
    text = data.draw(st.text(alphabet=st.sampled_from(list("ab é😀日本 ,.\n")), min_size=1, max_size=30))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    steps = data.draw(st.lists(st.integers(1, 4), min_size=len(ids), max_size=len(ids)))
    deltas = stream(DetokenizerManager(tokenizer), ids, steps, FinishReason("length"))
    assert "".join(deltas) == tokenizer.decode(ids)
    assert all("\ufffd" not in d for d in deltas[:-1])


def test_stop_string_is_never_shown_even_partly(tokenizer: Any) -> None:
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    full = tokenizer.decode(ids)
    # The scheduler finishes at the token that completes "STOP"; find that token.
    end = next(n for n in range(1, len(ids) + 1) if "STOP" in tokenizer.decode(ids[:n]))
    deltas = stream(DetokenizerManager(tokenizer), ids[:end], [1] * end, FinishReason("stop", matched="STOP"),
                    stops=["STOP", "never"])
    assert "".join(deltas) == full[: full.index("STOP")]
    shown = ""
    for d in deltas:
        shown += d
        assert not shown.endswith(("S", "ST", "STO")) or shown == full[: full.index("STOP")]


def test_partial_stop_prefix_is_released_when_it_does_not_complete(tokenizer: Any) -> None:
    ids = tokenizer("a ST b", add_special_tokens=False).input_ids
    deltas = stream(DetokenizerManager(tokenizer), ids, [1] * len(ids), FinishReason("length"), stops=["STOP"])
    assert "".join(deltas) == "a ST b"


def test_skip_special_tokens(tokenizer: Any) -> None:
    ids = [*tokenizer("Hi", add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    kept = stream(DetokenizerManager(tokenizer), ids, [1] * len(ids), FinishReason("length"), skip=False)
    skipped = stream(DetokenizerManager(tokenizer), ids, [1] * len(ids), FinishReason("length"), skip=True)
    assert "".join(kept) == "Hi" + tokenizer.eos_token
    assert "".join(skipped) == "Hi"


def test_requests_are_independent(tokenizer: Any) -> None:
    m = DetokenizerManager(tokenizer)
    a = tokenizer("one two", add_special_tokens=False).input_ids
    b = tokenizer("три четыре", add_special_tokens=False).input_ids
    texts = {"a": "", "b": ""}
    for k in range(max(len(a), len(b))):
        rids = [r for r, ids in (("a", a), ("b", b)) if k < len(ids)]
        batch = BatchTokenIDOut(
            rids=rids, new_token_ids=[(a if r == "a" else b)[k : k + 1] for r in rids],
            finished_reasons=[FinishReason("length") if k == len(a if r == "a" else b) - 1 else None for r in rids],
            prompt_tokens=[1] * len(rids), completion_tokens=[k + 1] * len(rids), cached_tokens=[0] * len(rids),
            new_token_logprobs=[[] for _ in rids], new_top_logprobs=[[] for _ in rids],
            new_reqs=[DecodeSettings(r, ["четыре"] if r == "b" else []) for r in rids] if k == 0 else [])
        for r, t in zip(rids, m.handle(batch).new_texts, strict=True):
            texts[r] += t
    # b's stop string came with its first output only, and still holds back and cuts its text.
    assert texts == {"a": "one two", "b": "три четыре"}
    assert m.decoders == {}


@pytest.mark.parametrize(("text", "stops", "held"), [
    ("abc S", ["STOP"], 1), ("abc ST", ["STOP"], 2), ("abc", ["STOP"], 0), ("abc STO", ["X", "STOP"], 3),
    ("xx", ["x"], 0), ("ab", ["abab"], 2),
])
def test_held_stop_prefix(text: str, stops: list[str], held: int) -> None:
    assert held_stop_prefix(text, stops) == held


def test_find_stop_reports_the_earliest_stop_once(tokenizer: Any) -> None:
    """The scheduler's use: feed one token at a time, ask after each whether a stop string ended."""
    ids = tokenizer("one two STOP three never", add_special_tokens=False).input_ids
    dec = IncrementalDecoder(tokenizer, ["never", "STOP"])
    found = []
    for t in ids:
        dec.append([t])
        found.append(dec.find_stop())
    first = next(i for i, f in enumerate(found) if f is not None)
    assert found[first] == "STOP" and "STOP" in tokenizer.decode(ids[: first + 1])
    assert "STOP" not in tokenizer.decode(ids[:first])
    assert found[first + 1 :].count("STOP") == 0 and found[-1] == "never"
