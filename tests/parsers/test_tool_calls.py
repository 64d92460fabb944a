"""Tool-call parsers on hand-written outputs in each model family's documented format.

Every case is checked whole (`parse`) and streamed: split in two at every position, one character
at a time, and in random pieces; streaming must give exactly what `parse` gives."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from radixserve.parsers._types import collect
from radixserve.parsers.tool_calls import (
    TOOL_CALL_PARSERS,
    ToolCall,
    ToolCallParse,
    ToolCallParser,
    detect_tool_call_parser,
    get_tool_call_parser,
)
from tests.parsers.streaming import assert_streams_like_parse, stream_tool_calls

WEATHER_ARGS = {"location": "San Francisco, CA, USA", "unit": "celsius"}
UNICODE_ARGS = {"city": "Zürich", "text": '¿Dónde está? 日本語 😀 "quoted" \\ back\nslash\ttab'}
NESTED_ARGS = {
    "query": "hotels",
    "filters": {"price": {"min": 50, "max": 120.5}, "stars": [4, 5], "tags": [{"k": "wifi", "v": True}]},
    "limit": 10,
    "cursor": None,
    "empty": {},
    "none": [],
}


def call(name: str, args: Mapping[str, object]) -> ToolCall:
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


def j(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


# (text, expected content, expected calls) for each parser
HERMES_CASES = [
    pytest.param(  # Qwen2.5, one call
        f'<tool_call>\n{{"name": "get_current_temperature", "arguments": {j(WEATHER_ARGS)}}}\n</tool_call>',
        "", [call("get_current_temperature", WEATHER_ARGS)], id="single"),
    pytest.param(  # two calls, content before them
        "I'll check both cities for you.\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo", "days": 3}}\n</tool_call>',
        "I'll check both cities for you.",
        [call("get_weather", {"city": "Paris"}), call("get_weather", {"city": "Tokyo", "days": 3})], id="two-calls"),
    pytest.param(  # unicode raw and escaped, and a compact call with no newlines
        '<tool_call>{"name": "translate", "arguments": ' + j(UNICODE_ARGS) + "}</tool_call>"
        '<tool_call>{"name": "echo", "arguments": {"s": "\\u00e9\\ud83d\\ude00\\n\\"x\\"\\/"}}</tool_call>',
        "", [call("translate", UNICODE_ARGS), call("echo", {"s": 'é😀\n"x"/'})], id="unicode"),
    pytest.param(
        f'<tool_call>\n{{"name": "search_hotels", "arguments": {json.dumps(NESTED_ARGS, indent=2)}}}\n</tool_call>',
        "", [call("search_hotels", NESTED_ARGS)], id="nested-pretty"),
    pytest.param(  # arguments before the name; no arguments; numbers re-serialized
        '<tool_call>\n{"arguments": {"x": 1.50, "y": -0, "z": 1e3}, "name": "f"}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time"}\n</tool_call>',
        "", [ToolCall("f", '{"x": 1.5, "y": 0, "z": 1000.0}'), ToolCall("get_time", "{}")], id="order-and-missing"),
    pytest.param(  # a key repeated keeps its first value; extra top-level keys are ignored
        '<tool_call>\n{"name": "f", "arguments": {"a": 1, "b": {"c": 2, "c": [3]}, "a": {"deep": [1]}}, '
        '"name": "g", "id": "x"}\n</tool_call>',
        "", [ToolCall("f", '{"a": 1, "b": {"c": 2}}')], id="duplicate-keys"),
    pytest.param(  # the model stopped before the closing tag
        'Checking.\n<tool_call>\n{"name": "f", "arguments": {"a": [1, 2]}}',
        "Checking.", [ToolCall("f", '{"a": [1, 2]}')], id="no-close-tag"),
    pytest.param(
        '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\nThe result will follow.',
        "\nThe result will follow.", [ToolCall("f", "{}")], id="content-after"),
    pytest.param(  # raw newline inside a string (a model writing code): accepted, escaped
        '<tool_call>\n{"name": "run", "arguments": {"code": "print(1)\nprint(2)"}}\n</tool_call>',
        "", [ToolCall("run", '{"code": "print(1)\\nprint(2)"}')], id="raw-newline"),
]

HERMES_NOT_CALLS = [
    "<tool_call>not json</tool_call>",
    "<tool_call>\n{\"arguments\": {\"a\": 1}}\n</tool_call>",  # no name
    '<tool_call>{"name": 42, "arguments": {}}</tool_call>',
    '<tool_call>{"name": "", "arguments": {}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>',
    '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>',
    '<tool_call>["f", {}]</tool_call>',
    "Wrap each call in <tool_call></tool_call> tags, like <tool_call> {name} </tool_call>.",
    "<tool_call",
    "<tool_call>",
    "a < b and <tool_c> and </tool_call>",
    "",
    "   \n",
    "Plain answer with trailing whitespace.  \n",
]

LLAMA3_CASES = [
    pytest.param(
        '{"name": "get_weather", "parameters": {"location": "Menlo Park, CA", "unit": "fahrenheit"}}',
        "", [call("get_weather", {"location": "Menlo Park, CA", "unit": "fahrenheit"})], id="bare"),
    pytest.param(
        '<|python_tag|>{"name": "get_weather", "parameters": {"location": "Paris"}}',
        "", [call("get_weather", {"location": "Paris"})], id="python-tag"),
    pytest.param(
        '{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}\n{"name": "c", "arguments": '
        + j(NESTED_ARGS) + "}",
        "", [ToolCall("a", "{}"), call("b", {"x": 1}), call("c", NESTED_ARGS)], id="three-calls"),
    pytest.param(
        "\n\n" + '{"type": "function", "name": "translate", "parameters": ' + j(UNICODE_ARGS) + "}",
        "", [call("translate", UNICODE_ARGS)], id="unicode-type-key"),
    pytest.param(  # Llama 3.1 with text before the tag
        'Let me search.<|python_tag|>{"name": "search", "parameters": {"q": "llama"}}',
        "Let me search.", [call("search", {"q": "llama"})], id="content-then-tag"),
    pytest.param(
        '{"name": "f", "parameters": {"a": 1}}\nI called f for you.',
        "I called f for you.", [call("f", {"a": 1})], id="content-after"),
    pytest.param(
        '<|python_tag|>{"name": "f", "parameters": {}}<|python_tag|>{"name": "g", "parameters": {}}',
        "", [ToolCall("f", "{}"), ToolCall("g", "{}")], id="two-tags"),
    pytest.param(  # a second object that is not a call ends the calls
        '{"name": "f", "parameters": {}}; {"result": 3}',
        '{"result": 3}', [ToolCall("f", "{}")], id="second-not-a-call"),
]

LLAMA3_NOT_CALLS = [
    "The weather in Paris is sunny.",
    'Here is the JSON you asked for: {"name": "x", "parameters": {}}',  # not at the start
    '{"foo": "bar"}',
    '{"name": "Bob", "age": 3}',  # no parameters: an answer, not a call
    "{not json at all",
    '<|python_tag|>brave_search.call(query="weather")',  # a built-in tool, not JSON
    "<|python_tag|>",
    "{",
    "",
]

MISTRAL_CASES = [
    pytest.param(
        '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"location": "Paris, France", '
        '"format": "celsius"}}]',
        "", [call("get_current_weather", {"location": "Paris, France", "format": "celsius"})], id="v03-single"),
    pytest.param(
        'Let me look both up. [TOOL_CALLS][{"name": "a", "arguments": ' + j(UNICODE_ARGS) + "}, "
        '{"name": "b", "arguments": ' + j(NESTED_ARGS) + ', "id": "a1b2c3d4e"}]',
        "Let me look both up.", [call("a", UNICODE_ARGS), call("b", NESTED_ARGS)], id="v03-two-content"),
    pytest.param(
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
        "", [call("get_weather", {"city": "Paris"})], id="args-style"),
    pytest.param(
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]search_hotels[ARGS]' + j(NESTED_ARGS),
        "", [call("get_weather", {"city": "Paris"}), call("search_hotels", NESTED_ARGS)], id="args-style-two"),
    pytest.param(
        '[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Zürich"}',
        "", [call("get_weather", {"city": "Zürich"})], id="call-id"),
    pytest.param(
        '[TOOL_CALLS] {"name": "f", "arguments": {"x": [1, {"y": false}]}}',
        "", [call("f", {"x": [1, {"y": False}]})], id="bare-object"),
    pytest.param(  # [TOOL_CALLS] left out by skip_special_tokens: a list of calls at the start still is
        ' [{"name": "f", "arguments": {"a": "é"}}, {"name": "g", "arguments": {}}]',
        "", [call("f", {"a": "é"}), ToolCall("g", "{}")], id="no-marker"),
    pytest.param(  # the second element is not a call: what follows the first call is content
        '[TOOL_CALLS] [{"name": "f", "arguments": {}}, {"arguments": {}}]',
        ', {"arguments": {}}]', [ToolCall("f", "{}")], id="second-element-not-a-call"),
]

MISTRAL_NOT_CALLS = [
    "[TOOL_CALLS] not json",
    "[TOOL_CALLS] []",
    "[TOOL_CALLS]",
    '[TOOL_CALLS] [{"arguments": {"a": 1}}]',
    "[TOOL_CALLS]f[ARGS]not json",
    "[TOOL_CALLS]f[ARGS][1]",
    "[TOOL_CALLS]f(x)",
    "[TOOL_CALLS]f[CALL_ID]",
    "Use [TOOL_CALLS] to call tools.",
    '[{"a": 1}]',
    "[1, 2]",
    "[ ",
    '[link](x) and [{"name": "f", "arguments": {}}]',
    'Here: [{"name": "f", "arguments": {}}]',
    "[TOOL_CALL",
]

PYTHONIC_CASES = [
    pytest.param('[get_weather(city="San Francisco", metric="celsius")]',
                 "", [call("get_weather", {"city": "San Francisco", "metric": "celsius"})], id="single"),
    pytest.param('[get_weather(city="Paris"), get_time(timezone="Europe/Paris"), ping()]',
                 "", [call("get_weather", {"city": "Paris"}), call("get_time", {"timezone": "Europe/Paris"}),
                      ToolCall("ping", "{}")], id="three"),
    pytest.param('[search(filters={"year": [2020, 2024], "tags": ("a", "b"), "x": {"y": -1.5}}, limit=10, '
                 "exact=False, cursor=None, strict=true)]",
                 "", [call("search", {"filters": {"year": [2020, 2024], "tags": ["a", "b"], "x": {"y": -1.5}},
                                      "limit": 10, "exact": False, "cursor": None, "strict": True})], id="nested"),
    pytest.param("[translate(text='¿Dónde está la estación? 日本 😀', target=\"ja\")]",
                 "", [call("translate", {"text": "¿Dónde está la estación? 日本 😀", "target": "ja"})], id="unicode"),
    pytest.param('<|python_start|>[f(a="x]y", b="[", c=[1, [2]])]<|python_end|>',
                 "", [call("f", {"a": "x]y", "b": "[", "c": [1, [2]]})], id="llama4-tags-brackets-in-strings"),
    pytest.param('\n[brave_search.call(query="llama 4")]\nDone.',
                 "Done.", [call("brave_search.call", {"query": "llama 4"})], id="dotted-and-content-after"),
]

PYTHONIC_NOT_CALLS = [
    "[1, 2, 3]",
    '["a", "b"]',
    "[]",
    "[1] Introduction\n[2] Methods",
    "[link](https://example.com)",
    "[f(x), g(y=1)]",  # positional argument
    "[f(a=b)]",  # a variable
    "[f(a=1 + 2)]",  # an expression
    '[__import__("os").system("echo hi")]',
    "[f(**kwargs)]",
    "[f(a={1, 2})]",  # a set
    "[f(a={1: 2})]",  # a non-string key
    "[f(a=1), 3]",
    "Sure! [get_weather(city='Paris')]",  # not at the start
    "[get_weather(city='Paris')",  # never closed
    "[get_weather(city='Paris'",
    "<|python_start|>nope",
    "",
]


def _check(parser_name: str, text: str, content: str, calls: list[ToolCall]) -> None:
    parser = get_tool_call_parser(parser_name)
    got = assert_streams_like_parse(parser, text)
    assert got.calls == calls
    assert got.content == content


@pytest.mark.parametrize(("text", "content", "calls"), HERMES_CASES)
def test_hermes(text: str, content: str, calls: list[ToolCall]) -> None:
    _check("hermes", text, content, calls)


@pytest.mark.parametrize(("text", "content", "calls"), LLAMA3_CASES)
def test_llama3(text: str, content: str, calls: list[ToolCall]) -> None:
    _check("llama3", text, content, calls)


@pytest.mark.parametrize(("text", "content", "calls"), MISTRAL_CASES)
def test_mistral(text: str, content: str, calls: list[ToolCall]) -> None:
    _check("mistral", text, content, calls)


@pytest.mark.parametrize(("text", "content", "calls"), PYTHONIC_CASES)
def test_pythonic(text: str, content: str, calls: list[ToolCall]) -> None:
    _check("pythonic", text, content, calls)


@pytest.mark.parametrize(
    ("name", "text"),
    [("hermes", t) for t in HERMES_NOT_CALLS] + [("llama3", t) for t in LLAMA3_NOT_CALLS]
    + [("mistral", t) for t in MISTRAL_NOT_CALLS] + [("pythonic", t) for t in PYTHONIC_NOT_CALLS],
)
def test_look_alikes_are_content(name: str, text: str) -> None:
    """What only looks like a call comes back as the text itself, whole and streamed."""
    got = assert_streams_like_parse(get_tool_call_parser(name), text)
    assert got.calls == []
    assert got.content == text


def test_arguments_stream_before_the_call_is_complete() -> None:
    """The name goes out as soon as it is known, and the arguments as they are read."""
    parser = get_tool_call_parser("hermes")
    s = parser.streamer()
    content, deltas = s.feed('Sure.\n<tool_call>\n{"name": "write_file", "arguments": {"path": "a.py", "body": "imp')
    assert content == "Sure."
    assert deltas[0].index == 0 and deltas[0].name == "write_file"
    assert "".join(d.arguments for d in deltas) == '{"path": "a.py", "body": "imp'
    content, deltas = s.feed("ort os\\n")
    assert content == "" and [(d.name, d.arguments) for d in deltas] == [(None, "ort os\\n")]
    content, deltas = s.feed('"}}\n</tool_call>')
    assert content == "" and "".join(d.arguments for d in deltas) == '"}'
    assert s.finish() == ("", [])


def test_markers_are_held_back_only_while_they_may_be_markers() -> None:
    s = get_tool_call_parser("hermes").streamer()
    assert s.feed("Hello <tool") == ("Hello", [])  # the space is held too: it would go if a call follows
    assert s.feed("box> world") == (" <toolbox> world", [])
    assert s.finish() == ("", [])


def test_truncated_call_is_closed() -> None:
    """Output cut off inside a committed call (max_tokens): the arguments sent are closed into JSON."""
    for name, text, args in [
        ("hermes", '<tool_call>\n{"name": "f", "arguments": {"city": "Par', '{"city": "Par"}'),
        ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": [1, {"b": 2', '{"a": [1, {}]}'),
        ("llama3", '{"name": "f", "parameters": {"a": 1, "b"', '{"a": 1}'),
        ("mistral", '[TOOL_CALLS]f[ARGS]{"q": "x', '{"q": "x"}'),
    ]:
        parser = get_tool_call_parser(name)
        got = assert_streams_like_parse(parser, text)
        assert got.calls == [ToolCall("f", args)], (name, text)
        assert got.content == ""


def test_cut_before_commit_is_content() -> None:
    for name, text in [("hermes", '<tool_call>\n{"name": "f"'), ("mistral", '[TOOL_CALLS] [{"name": "f", "argu'),
                       ("mistral", '[TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}'),
                       ("llama3", '{"parameters": {"a": 1}')]:
        got = get_tool_call_parser(name).parse(text)
        if name == "mistral" and text.endswith("1}"):
            assert got.calls == [ToolCall("f", '{"a": 1}')]  # name and arguments known: committed, closed
            continue
        assert got == type(got)(text, []), (name, text)


@pytest.mark.parametrize(
    ("name", "text", "bad"),
    [
        ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1, oops}}\n</tool_call>', "oops"),
        ("hermes", '<tool_call>{"name": "f", "arguments": {"a": tru}}</tool_call>', "}}<"),
        ("llama3", '{"name": "f", "parameters": {"a": }}', "}}"),
        ("mistral", '[TOOL_CALLS]f[ARGS]{"a": [1, 2}', "}"),
    ],
)
def test_broken_after_commit(name: str, text: str, bad: str) -> None:
    """The documented exception to streamed == parse: JSON that breaks after the call went out.
    Whole, it is content; streamed in pieces that commit the call first, the call is closed with
    what was sent of its arguments and the rest is content."""
    parser = get_tool_call_parser(name)
    assert parser.parse(text) == type(parser.parse(""))(text, [])
    assert stream_tool_calls(parser, [text]) == parser.parse(text)
    cut = text.index(bad)
    got = stream_tool_calls(parser, [text[:cut], text[cut:]])
    assert [c.name for c in got.calls] == ["f"]
    assert text.endswith(got.content) and got.content


def test_registry() -> None:
    assert set(TOOL_CALL_PARSERS) >= {"llama3", "hermes", "qwen", "qwen25", "mistral", "pythonic"}
    for name in TOOL_CALL_PARSERS:
        p = get_tool_call_parser(name)
        assert isinstance(p, ToolCallParser)
        assert p.parse("hello") == type(p.parse(""))("hello", [])
    assert TOOL_CALL_PARSERS["qwen"] is TOOL_CALL_PARSERS["qwen25"] is TOOL_CALL_PARSERS["hermes"]
    assert get_tool_call_parser("QWEN25").name == "hermes"
    assert get_tool_call_parser("mistral").needs_special_tokens
    assert not get_tool_call_parser("hermes").needs_special_tokens
    with pytest.raises(ValueError, match="hermes") as e:
        get_tool_call_parser("nope")
    assert "pythonic" in str(e.value) and "nope" in str(e.value)


def test_streamer_rejects_feed_after_finish() -> None:
    s = get_tool_call_parser("hermes").streamer()
    s.finish()
    with pytest.raises(RuntimeError):
        s.feed("x")


# Snippets of real chat templates (Hugging Face tokenizer_config.json / vLLM examples).
QWEN25 = (
    '{%- if tools %}\n    {{- \'<|im_start|>system\\n\' }}\n    {{- "\\n\\n# Tools\\n\\nYou may call one or more '
    'functions to assist with the user query.\\n\\nYou are provided with function signatures within '
    '<tools></tools> XML tags:\\n<tools>" }}\n    {%- for tool in tools %}\n        {{- "\\n" }}\n        {{- tool '
    '| tojson }}\n    {%- endfor %}\n    {{- "\\n</tools>\\n\\nFor each function call, return a json object with '
    'function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": '
    '<function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}'
)
QWEN3_CODER = (
    "{{- '\\n\\n<tool_call>\\n<function=' + tool_call.name + '>\\n' }}\n"
    "{{- '<parameter=' + args_name + '>\\n' }}"
)
MISTRAL = (
    '{%- if message["role"] == "user" %}{%- if tools is not none and (message == user_messages[-1]) %}'
    '{{- "[AVAILABLE_TOOLS] [" }}...{{- "[/AVAILABLE_TOOLS]" }}{%- endif %}{{- "[INST] " + message["content"] + '
    '"[/INST]" }}{%- elif message.tool_calls is defined and message.tool_calls is not none %}'
    '{{- "[TOOL_CALLS] [" }}{%- for tool_call in message.tool_calls %}'
)
LLAMA31 = (
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n{%- if builtin_tools is defined or tools is not '
    'none %}\n    {{- "Environment: ipython\\n" }}\n{%- endif %}\n...{{- "<|python_tag|>" + tool_call.name + ".call(" }}'
)
LLAMA32 = (
    '{{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
    'value}.\' }}\n{{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}'
)
LLAMA32_PYTHONIC = (
    '{{- "Environment: ipython\\n" }}\n{{- \'Respond in the format [func_name1(params_name1=params_value1, '
    "params_name2=params_value2...), func_name2(params)] ' }}"
)
LLAMA4_PYTHONIC = (
    "- Use exact format: [func_name1(param1=value1, param2=value2), func_name2(...)]\\n"
    "{{- \"<|header_start|>ipython<|header_end|>\\n\\n\" }}"
)
GLM45 = "{{- '<tool_call>' + tc.name }}{% for k, v in _args.items() %}<arg_key>{{ k }}</arg_key><arg_value>"
CHATML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']}}{% endfor %}"
DEEPSEEK_V3 = "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>'}}"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (QWEN25, "hermes"),
        ("{{- '<tool_call>\\n{\"name\": \"' + tool_call.name + '\"' }}", "hermes"),  # Hermes 2 Pro
        (QWEN3_CODER, None),
        (GLM45, None),
        (MISTRAL, "mistral"),
        (LLAMA31, "llama3"),
        (LLAMA32, "llama3"),
        (LLAMA32_PYTHONIC, "pythonic"),
        (LLAMA4_PYTHONIC, "pythonic"),
        (CHATML, None),
        (DEEPSEEK_V3, None),
        ("", None),
        (None, None),
    ],
)
def test_detect_tool_call_parser(template: str | None, expected: str | None) -> None:
    assert detect_tool_call_parser(template) == expected
    if expected is not None:
        assert expected in TOOL_CALL_PARSERS


def test_reasoning_then_tool_calls_pipeline() -> None:
    """A Qwen3 output through the reasoning parser and then the tool-call parser, as the server
    chains them: streamed at every split point == whole."""
    from radixserve.parsers.reasoning import get_reasoning_parser

    text = ("<think>\nThe user wants the weather in Paris; I should call get_weather.\n</think>\n\n"
            'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    rp, tp = get_reasoning_parser("qwen3"), get_tool_call_parser("qwen")
    split = rp.split(text)
    whole = tp.parse(split.content)
    assert split.reasoning == "The user wants the weather in Paris; I should call get_weather."
    assert whole.content == "Let me check." and whole.calls == [call("get_weather", {"city": "Paris"})]
    for i in range(len(text) + 1):
        rs, ts = rp.streamer(), tp.streamer()
        events = []
        reasoning = ""
        for piece in (text[:i], text[i:]):
            r, c = rs.feed(piece)
            reasoning += r
            events.append(ts.feed(c))
        r, c = rs.finish()
        reasoning += r
        events += [ts.feed(c), ts.finish()]
        assert reasoning == split.reasoning
        joined: ToolCallParse = collect(events)
        assert joined == whole
