"""Reasoning parsers, whole and streamed at every split point."""

from __future__ import annotations

import pytest

from radixserve.parsers.reasoning import (
    REASONING_PARSERS,
    ReasoningParser,
    ReasoningSplit,
    get_reasoning_parser,
)
from tests.parsers.streaming import assert_reasoning_streams_like_split

THOUGHT = "Okay, the user asks for 2+2. That is 4.\n\nLet me double-check: 2+2=4. 日本 😀"

CASES = {
    "deepseek-r1": [
        # the template opened <think>: the output starts inside it
        (f"{THOUGHT}\n</think>\n\nThe answer is **4**.", THOUGHT, "The answer is **4**."),
        (f"<think>\n{THOUGHT}\n</think>\n\nThe answer is 4.", THOUGHT, "The answer is 4."),
        (f"{THOUGHT}", THOUGHT, ""),  # no end tag: all reasoning
        (f"{THOUGHT} </thi", f"{THOUGHT} </thi", ""),  # a cut-off tag is reasoning
        ("\n</think>\n\nHi", None, "Hi"),  # empty reasoning
        ("<think>\n\n</think>\n\nHi", None, "Hi"),
        ("A</think>B</think>C", "A", "B</think>C"),
        ("", None, ""),
        ("  <thi", "<thi", ""),
    ],
    "qwen3": [
        (f"<think>\n{THOUGHT}\n</think>\n\nThe answer is 4.", THOUGHT, "The answer is 4."),
        ("<think>\n\n</think>\n\nThe answer is 4.", None, "The answer is 4."),  # enable_thinking=False
        ("The answer is 4.", None, "The answer is 4."),  # no think block: all content
        ("  The answer is 4.\n", None, "  The answer is 4.\n"),  # content is kept exactly
        (f"<think>\n{THOUGHT}", THOUGHT, ""),  # cut off inside the block
        ("Text with </think> inside", None, "Text with </think> inside"),
        ("Text then <think>x</think>", None, "Text then <think>x</think>"),
        ("<thin", None, "<thin"),
        ("<think>", None, ""),
        ("", None, ""),
    ],
}


@pytest.mark.parametrize(
    ("name", "text", "reasoning", "content"),
    [(name, *case) for name, cases in CASES.items() for case in cases],
)
def test_split_and_stream(name: str, text: str, reasoning: str | None, content: str) -> None:
    parser = get_reasoning_parser(name)
    got = assert_reasoning_streams_like_split(parser, text)
    assert got == ReasoningSplit(reasoning, content)


def test_streaming_emits_early() -> None:
    """Reasoning goes out as it comes; only a possible tag (and trailing whitespace) is held."""
    s = get_reasoning_parser("qwen3").streamer()
    assert s.feed("<th") == ("", "")
    assert s.feed("ink>\nLet me") == ("Let me", "")
    assert s.feed(" think </th") == (" think", "")
    assert s.feed("ink>\n\nAns") == ("", "Ans")
    assert s.feed("wer.") == ("", "wer.")
    assert s.finish() == ("", "")
    s = get_reasoning_parser("deepseek-r1").streamer()
    assert s.feed("Hmm") == ("Hmm", "")
    assert s.feed(" </think") == ("", "")
    assert s.finish() == (" </think", "")


def test_registry() -> None:
    assert set(REASONING_PARSERS) >= {"deepseek-r1", "qwen3"}
    for name in REASONING_PARSERS:
        p = get_reasoning_parser(name)
        assert isinstance(p, ReasoningParser) and p.name == name
    assert get_reasoning_parser("DeepSeek_R1").name == "deepseek-r1"
    with pytest.raises(ValueError, match="deepseek-r1") as e:
        get_reasoning_parser("o1")
    assert "qwen3" in str(e.value)


def test_feed_after_finish() -> None:
    s = get_reasoning_parser("qwen3").streamer()
    s.finish()
    with pytest.raises(RuntimeError):
        s.feed("x")
