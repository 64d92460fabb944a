"""The incremental JSON scanner and re-serializer: same result as json.loads + json.dumps, whatever
the fragmentation; every prefix of the output is a prefix of the final text."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from radixserve.parsers._json_stream import ArgsSerializer, JsonScanner, dumps, loads_first_wins
from radixserve.parsers.tool_calls import ToolCall, get_tool_call_parser
from tests.parsers.streaming import splits, stream_tool_calls


def reserialize(chunks: list[str]) -> tuple[str, list[str], bool, bool]:
    """Feed the chunks: (output, output after each chunk, done, failed)."""
    ser = ArgsSerializer()
    sc = JsonScanner(ser)
    outs = []
    for c in chunks:
        stop = sc.feed(c)
        outs.append(ser.take())
        if sc.done or sc.failed:
            assert stop <= len(c)
            break
    return "".join(outs), outs, sc.done, sc.failed


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] * 2 if depth < 4 else [])
    k = rng.choice(kinds)
    if k == "str":
        alphabet = 'abc xyz"\\/\n\t\x01\u00e9\u65e5\U0001f600\u2028{}[],:'
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
    if k == "int":
        return rng.choice([0, -1, 7, 10**20, -(10**3)])
    if k == "float":
        return rng.choice([0.5, -2.25, 1e-7, 3.0e21, 1.5])
    if k == "bool":
        return rng.random() < 0.5
    if k == "null":
        return None
    if k == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_value(rng, 5) if rng.random() < 0.2 else rng.choice("abcde"): random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def random_text(rng: random.Random, value: Any) -> str:
    return json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]),
                      separators=rng.choice([None, (",", ":"), (" , ", " : ")]))


@pytest.mark.parametrize("seed", range(30))
def test_reserializes_like_json_dumps(seed: int) -> None:
    rng = random.Random(seed)
    value = {"k": random_value(rng)} if seed % 3 else random_value(rng)
    if not isinstance(value, dict):
        value = {"v": value}
    text = random_text(rng, value)
    expected = dumps(loads_first_wins(text))
    assert expected == json.dumps(value, ensure_ascii=False)
    for chunks in splits(text, seed=seed, random_splits=5):
        out, outs, done, failed = reserialize(chunks)
        assert done and not failed
        assert out == expected
        for i in range(len(outs)):
            assert expected.startswith("".join(outs[: i + 1]))


def test_duplicate_keys_first_wins() -> None:
    text = '{"a": 1, "b": {"x": [1, {"a": 2}], "x": 3}, "a": [4, {"z": 5}], "c": "é"}'
    expected = dumps(loads_first_wins(text))
    assert expected == '{"a": 1, "b": {"x": [1, {"a": 2}]}, "c": "é"}'
    for chunks in splits(text):
        assert reserialize(chunks)[0] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"s": "\\ud83d\\ude00"}', '{"s": "😀"}'),
        ('{"s": "\\ud83d x"}', '{"s": "\\ud83d x"}'),  # a lone surrogate stays escaped (UTF-8 safe)
        ('{"s": "\\ude00\\ud83d"}', '{"s": "\\ude00\\ud83d"}'),
        ('{"s": "\\u0001\\u2028"}', '{"s": "\\u0001\u2028"}'),
        ('{"n": [1E2, -0.0, 0, 1e400]}', '{"n": [100.0, -0.0, 0, 1e400]}'),
        ('{"s": "a\nb"}', '{"s": "a\\nb"}'),  # a raw control character in a string
    ],
)
def test_escapes_and_numbers(text: str, expected: str) -> None:
    for chunks in splits(text):
        out = reserialize(chunks)[0]
        assert out == expected
        out.encode()


@pytest.mark.parametrize(
    "text",
    ['{"a": tru}', '{"a": 01}', '{"a": 1.}', '{"a": -}', '{"a" 1}', '{"a": 1,}', '{a: 1}', '{"a": [1 2]}',
     '{"a": "\\x"}', '{"a": "\\u12G4"}', "[1, 2", "1", '"s"', "{}}", '{"a": nulll}', '{"a": 1}]'],
)
def test_rejects_what_is_not_json(text: str) -> None:
    """Invalid text fails at the first character no JSON could continue with (a trailing "}" or "]"
    after a complete value is simply not read)."""
    ser = ArgsSerializer()
    sc = JsonScanner(ser)
    stop = sc.feed(text)
    if text in ("{}}", '{"a": 1}]'):
        assert sc.done and stop == len(text) - 1
    elif text == "[1, 2":
        assert not sc.done and not sc.failed
    else:
        assert sc.failed and stop < len(text)


@pytest.mark.parametrize("seed", range(15))
def test_random_calls_stream_like_parse(seed: int) -> None:
    """Random arguments in each JSON format: streamed in random pieces == parse == json.dumps."""
    rng = random.Random(1000 + seed)
    calls = []
    for i in range(rng.randint(1, 3)):
        args = {rng.choice("abcdef") + str(j): random_value(rng, 1) for j in range(rng.randint(0, 4))}
        calls.append((f"fn_{i}", args, random_text(rng, args)))
    texts = {
        "hermes": "Prefix.\n" + "\n".join(f'<tool_call>\n{{"name": "{n}", "arguments": {a}}}\n</tool_call>'
                                         for n, _, a in calls),
        "llama3": "<|python_tag|>" + "; ".join(f'{{"name": "{n}", "parameters": {a}}}' for n, _, a in calls),
        "mistral": "[TOOL_CALLS] [" + ", ".join(f'{{"name": "{n}", "arguments": {a}}}' for n, _, a in calls) + "]",
        "mistral-args": "".join(f"[TOOL_CALLS]{n}[ARGS]{a}" for n, _, a in calls),
    }
    expected = [ToolCall(n, json.dumps(args, ensure_ascii=False)) for n, args, _ in calls]
    for fmt, text in texts.items():
        parser = get_tool_call_parser(fmt.split("-")[0])
        whole = parser.parse(text)
        assert whole.calls == expected, fmt
        assert whole.content == ("Prefix." if fmt == "hermes" else "")
        for chunks in splits(text, seed=seed, random_splits=10):
            if len(chunks) == 2 and (seed % 3 or len(text) > 400):
                continue  # every split point of a few short ones, random pieces of all
            assert stream_tool_calls(parser, chunks) == whole, (fmt, chunks)
