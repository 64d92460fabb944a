"""Incremental detokenization: deltas add up to the full text, never half a character or a stop string."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixserve.managers.detokenizer_manager import DetokenizerManager, held_stop_prefix
from radixserve.managers.io_struct import BatchTokenIDOut, FinishReason
from radixserve.model_loader.tokenizer import load_tokenizer
from tests.conftest import tokenizer_source

TEXT = "héllo 😀 wörld 日本語, done. The end STOP after"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(tokenizer_source())


def out(rid: str, ids: list[int], reason: FinishReason | None = None, stops: list[str] | None = None,
        skip: bool = True) -> BatchTokenIDOut:
    return BatchTokenIDOut(rids=[rid], new_token_ids=[ids], finished_reasons=[reason], prompt_tokens=[1],
                           completion_tokens=[len(ids)], cached_tokens=[0], skip_special_tokens=[skip],
                           stop_strs=[stops or []])


def stream(manager: DetokenizerManager, ids: list[int], steps: list[int], reason: FinishReason,
           stops: list[str] | None = None, skip: bool = True) -> list[str]:
    """Feed ids in pieces of the given sizes; the last piece carries the finish reason."""
    deltas, i = [], 0
    for k, n in enumerate(steps):
        piece = ids[i : i + n]
        i += n
        last = k == len(steps) - 1 or i >= len(ids)
        deltas.append(manager.handle(out("r", piece, reason if last else None, stops, skip)).new_texts[0])
        if last:
            break
    return deltas


def test_one_token_at_a_time_equals_full_decode_without_broken_characters(tokenizer: Any) -> None:
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    m = DetokenizerManager(tokenizer)
    deltas = stream(m, ids, [1] * len(ids), FinishReason("length"))
    assert "".join(deltas) == tokenizer.decode(ids)
    assert all("\ufffd" not in d for d in deltas)  # the emoji and CJK bytes span several tokens
    assert "r" not in m.status  # state is dropped at the end


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
            skip_special_tokens=[True] * len(rids), stop_strs=[[] for _ in rids])
        for r, t in zip(rids, m.handle(batch).new_texts, strict=True):
            texts[r] += t
    assert texts == {"a": "one two", "b": "три четыре"}
    assert m.status == {}


@pytest.mark.parametrize(("text", "stops", "held"), [
    ("abc S", ["STOP"], 1), ("abc ST", ["STOP"], 2), ("abc", ["STOP"], 0), ("abc STO", ["X", "STOP"], 3),
    ("xx", ["x"], 0), ("ab", ["abab"], 2),
])
def test_held_stop_prefix(text: str, stops: list[str], held: int) -> None:
    assert held_stop_prefix(text, stops) == held
