"""Feeding parsers in fragments, and checking that any fragmentation gives what `parse` gives."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable

from radixserve.parsers.reasoning import ReasoningParser, ReasoningSplit
from radixserve.parsers.tool_calls import ToolCall, ToolCallDelta, ToolCallParse, ToolCallParser


def stream_tool_calls(parser: ToolCallParser, chunks: Iterable[str]) -> ToolCallParse:
    """Feed `chunks`, check the delta invariants, and join what came out."""
    s = parser.streamer()
    events = [s.feed(c) for c in chunks]
    events.append(s.finish())
    content = "".join(c for c, _ in events)
    deltas: list[ToolCallDelta] = [d for _, ds in events for d in ds]
    names: dict[int, str] = {}
    args: dict[int, list[str]] = {}
    for d in deltas:
        if d.name is not None:
            assert d.index not in names, f"second name delta for call {d.index}"
            assert d.index == len(names), "calls are numbered 0, 1, ... in order"
            names[d.index] = d.name
        else:
            assert d.index in names, "arguments before the call's name"
            assert d.arguments, "an empty arguments delta"
        args.setdefault(d.index, []).append(d.arguments)
    calls = [ToolCall(names[i], "".join(args[i])) for i in range(len(names))]
    for c in calls:
        assert isinstance(json.loads(c.arguments), dict), c
    return ToolCallParse(content, calls)


def splits(text: str, seed: int = 0, random_splits: int = 20) -> Iterable[list[str]]:
    """The text in two pieces at every position, one character at a time, and in random pieces."""
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    yield list(text)
    rng = random.Random(seed)
    for _ in range(random_splits):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12)))) if len(text) > 1 else []
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def assert_streams_like_parse(parser: ToolCallParser, text: str) -> ToolCallParse:
    whole = parser.parse(text)
    for chunks in splits(text):
        got = stream_tool_calls(parser, chunks)
        assert got == whole, (chunks, got, whole)
    return whole


def stream_reasoning(parser: ReasoningParser, chunks: Iterable[str]) -> ReasoningSplit:
    s = parser.streamer()
    events = [s.feed(c) for c in chunks]
    events.append(s.finish())
    reasoning = "".join(r for r, _ in events)
    return ReasoningSplit(reasoning or None, "".join(c for _, c in events))


def assert_reasoning_streams_like_split(parser: ReasoningParser, text: str) -> ReasoningSplit:
    whole = parser.split(text)
    for chunks in splits(text):
        got = stream_reasoning(parser, chunks)
        assert got == whole, (chunks, got, whole)
    return whole
