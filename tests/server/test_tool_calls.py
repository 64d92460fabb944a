"""Structured output, tool calls and reasoning at the server's edge, without a model: the request
checks, the forced-call schema, the scanner that streams forced calls, and the assembly of
messages and stream deltas, over the real FastAPI app with a stand-in TokenizerManager that
replays recorded model outputs (`<think>` text, tool-call markup)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import pytest
from fastapi.testclient import TestClient

from radixserve.errors import InvalidRequestError
from radixserve.managers.io_struct import FinishReason, TokenizedGenerateReqInput
from radixserve.managers.request_builder import GenerateRequest
from radixserve.managers.tokenizer_manager import ChoiceChunk
from radixserve.sampling.sampling_params import SamplingParams
from radixserve.server.http_server import build_app
from radixserve.server.protocol import ChatTool
from radixserve.server.structured_output import remap_grammar_error, schema_problem
from radixserve.server.tool_calls import (
    ForcedCallStreamer,
    forced_calls_schema,
    parse_forced_calls,
    scan_forced_calls,
)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"},
                                                "unit": {"type": "string", "enum": ["c", "f"]}},
                                                "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}


# ---- a stand-in TokenizerManager that replays recorded outputs -------------------------------
class FakeTM:
    """What the OpenAI routes use of a TokenizerManager; `generate` replays `outputs` (one list of
    text pieces per choice), and `template_calls` records what reached the chat template."""

    model_name = "fake"
    context_len = 4096
    vocab_size = 1000

    def __init__(self, outputs: list[list[str]], reasoning_parser: str | None = None,
                 tool_call_parser: str | None = None, chat_template: str = "{{ messages }}") -> None:
        self.outputs = outputs
        self.server_args = SimpleNamespace(reasoning_parser=reasoning_parser, tool_call_parser=tool_call_parser)
        self.tokenizer = SimpleNamespace(chat_template=chat_template, decode=lambda ids: "t")
        self.metrics = MagicMock()
        self.info: dict[str, Any] = {}
        self.draining = False
        self.template_calls: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
        self.params: list[SamplingParams] = []
        self.builder = SimpleNamespace(apply_chat_template=self._template, sampling_params=SamplingParams.from_dict,
                                       build=self._build, tokenize=lambda text, **kw: [1, 2, 3])

    def _template(self, messages: list[dict[str, Any]], **kwargs: Any) -> tuple[str, list[int]]:
        self.template_calls.append((messages, kwargs))
        return "prompt", [1, 2, 3]

    def _build(self, ids: list[int], params: SamplingParams, **kwargs: Any) -> GenerateRequest:
        self.params.append(params)
        n = params.n
        return GenerateRequest("r", [TokenizedGenerateReqInput(rid=f"r-{i}", input_ids=ids, sampling_params=params)
                                     for i in range(n)])

    async def run_blocking(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def check_prompt_chars(self, chars: int, param: str) -> None:
        pass

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def generate(self, gr: GenerateRequest) -> AsyncGenerator[ChoiceChunk, None]:
        for i in range(len(gr.reqs)):
            pieces = self.outputs[i % len(self.outputs)]
            for k, piece in enumerate(pieces):
                last = k == len(pieces) - 1
                yield ChoiceChunk(index=i, text=piece, token_ids=[5], prompt_tokens=3, completion_tokens=k + 1,
                                  cached_tokens=0, finish_reason=FinishReason("stop", matched=0) if last else None)


def post(tm: FakeTM, body: dict[str, Any]) -> Any:
    client = TestClient(build_app(tm, None))  # type: ignore[arg-type]
    return client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], **body})


def stream_events(tm: FakeTM, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = post(tm, {**body, "stream": True})
    assert r.status_code == 200, r.text
    lines = [ln[len("data: "):] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def joined(events: list[dict[str, Any]], key: str) -> str:
    return "".join(e["choices"][0]["delta"].get(key) or "" for e in events if e["choices"])


def streamed_calls(events: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """The openai SDK's accumulation of streamed tool-call deltas."""
    calls: dict[int, dict[str, str]] = {}
    for e in events:
        for tc in (e["choices"][0]["delta"].get("tool_calls") or []) if e["choices"] else []:
            c = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
            if tc.get("id"):
                assert not c["id"], "a call's id comes once, in its first delta"
                c["id"] = tc["id"]
                assert tc["type"] == "function" and tc["function"]["arguments"] == ""
            c["name"] += tc["function"].get("name") or ""
            c["arguments"] += tc["function"].get("arguments") or ""
    return calls


def finish_reasons(events: list[dict[str, Any]]) -> list[str]:
    return [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]


# ---- reasoning -------------------------------------------------------------------------------
THINKING = ["Let me ", "think: 2+2", " is 4.\n</th", "ink>\n\nThe answer", " is 4."]


def test_reasoning_split_non_streaming() -> None:
    tm = FakeTM([THINKING], reasoning_parser="deepseek-r1")
    msg = post(tm, {}).json()["choices"][0]["message"]
    assert msg["reasoning_content"] == "Let me think: 2+2 is 4."
    assert msg["content"] == "The answer is 4."
    # qwen3: without <think> at the start there is no reasoning part
    tm = FakeTM([["<think>", "hmm</think>", "done"], ["just ", "content"]], reasoning_parser="qwen3")
    choices = post(tm, {"n": 2}).json()["choices"]
    assert (choices[0]["message"]["reasoning_content"], choices[0]["message"]["content"]) == ("hmm", "done")
    assert (choices[1]["message"]["reasoning_content"], choices[1]["message"]["content"]) == (None, "just content")


def test_reasoning_split_streaming_matches() -> None:
    tm = FakeTM([THINKING], reasoning_parser="deepseek-r1")
    events = stream_events(tm, {})
    assert joined(events, "reasoning_content") == "Let me think: 2+2 is 4."
    assert joined(events, "content") == "The answer is 4."
    # no delta carries both, and no `</think>` leaks
    assert not any("</" in json.dumps(e) for e in events)
    assert finish_reasons(events) == ["stop"]


def test_no_reasoning_parser_leaves_text_alone() -> None:
    tm = FakeTM([THINKING])
    msg = post(tm, {}).json()["choices"][0]["message"]
    assert msg["content"] == "".join(THINKING) and msg["reasoning_content"] is None


def test_constrained_output_is_not_split() -> None:
    # The constraint starts at the first token, so a JSON answer is all content.
    tm = FakeTM([['{"a": ', '1}']], reasoning_parser="deepseek-r1")
    msg = post(tm, {"response_format": {"type": "json_object"}}).json()["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": '{"a": 1}', "reasoning_content": None, "tool_calls": None}
    assert json.loads(tm.params[0].json_schema or "") == {"type": "object"}


# ---- forced tool calls (required / named) ------------------------------------------------------
FORCED = '[{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}, ' \
         '{"name": "get_time", "parameters": {"zone": "Europe/Paris"}}]'


def test_forced_calls_schema() -> None:
    tools = [ChatTool.model_validate(WEATHER), ChatTool.model_validate(TIME)]
    schema = forced_calls_schema(tools, one=False)
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    items = schema["items"]["anyOf"]
    assert [i["properties"]["name"] for i in items] == [{"type": "string", "enum": ["get_weather"]},
                                                         {"type": "string", "enum": ["get_time"]}]
    assert items[0]["properties"]["parameters"] == WEATHER["function"]["parameters"]  # type: ignore[index]
    one = forced_calls_schema(tools[:1], one=True)
    assert one["maxItems"] == 1 and one["items"]["properties"]["name"]["enum"] == ["get_weather"]


def test_scanner_streams_forced_calls_in_any_fragments() -> None:
    assert parse_forced_calls(FORCED) == [("get_weather", '{"city": "Paris", "unit": "c"}'),
                                          ("get_time", '{"zone": "Europe/Paris"}')]
    tricky = '[ {"parameters" : {"s": "}]\\"{", "n": [1, {"x": 2}]}, "name":"f\\"g"} ]'
    calls = scan_forced_calls(tricky)
    assert [(c.name, tricky[c.args_start:c.args_end]) for c in calls] == [
        ('f"g', '{"s": "}]\\"{", "n": [1, {"x": 2}]}')]
    for text in (FORCED, tricky):
        for size in (1, 2, 5, 1000):
            s = ForcedCallStreamer()
            deltas = []
            for i in range(0, len(text), size):
                content, d = s.feed(text[i:i + size])
                assert content == ""
                deltas += d
            content, d = s.finish()
            deltas += d
            got: dict[int, list[str]] = {}
            for d0 in deltas:
                if d0.name is not None:
                    assert d0.index not in got
                    got[d0.index] = [d0.name, ""]
                got[d0.index][1] += d0.arguments
            want = [(c.name, text[c.args_start:c.args_end]) for c in scan_forced_calls(text)]
            assert [tuple(got[i]) for i in sorted(got)] == want
            assert all(json.loads(a) is not None for _, a in want)


def test_cut_short_forced_output_is_content() -> None:
    s = ForcedCallStreamer()
    s.feed('[{"na')
    assert s.finish() == ('[{"na', [])
    assert parse_forced_calls('[{"name": "f", "param') is None


def test_required_tool_call_non_streaming() -> None:
    tm = FakeTM([[FORCED[:30], FORCED[30:]]])
    r = post(tm, {"tools": [WEATHER, TIME], "tool_choice": "required"})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("function", "get_weather", {"city": "Paris", "unit": "c"}), ("function", "get_time", {"zone": "Europe/Paris"})]
    assert all(c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]
    schema = json.loads(tm.params[0].json_schema or "")
    assert schema == forced_calls_schema([ChatTool.model_validate(WEATHER), ChatTool.model_validate(TIME)], False)
    # the tools reach the template as `tools`; a template that does not render them gets a system note
    messages, kwargs = tm.template_calls[0]
    assert kwargs["tools"] == [WEATHER, TIME]
    assert messages[0]["role"] == "system" and "get_weather" in messages[0]["content"]


def test_named_and_no_parallel_calls_allow_one() -> None:
    tm = FakeTM([['[{"name": "get_time", "parameters": {"zone": "UTC"}}]']],
                chat_template="{% for t in tools %}{{ t }}{% endfor %}{{ messages }}")
    r = post(tm, {"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}}})
    assert r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    schema = json.loads(tm.params[0].json_schema or "")
    assert schema["maxItems"] == 1 and schema["items"]["properties"]["name"]["enum"] == ["get_time"]
    assert tm.template_calls[0][0][0]["role"] == "user"  # the template renders `tools` itself: no note
    post(tm, {"tools": [WEATHER, TIME], "tool_choice": "required", "parallel_tool_calls": False})
    assert json.loads(tm.params[1].json_schema or "")["maxItems"] == 1


def test_required_tool_call_streaming() -> None:
    pieces = [FORCED[i:i + 7] for i in range(0, len(FORCED), 7)]
    events = stream_events(FakeTM([pieces]), {"tools": [WEATHER, TIME], "tool_choice": "required"})
    calls = streamed_calls(events)
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {"zone": "Europe/Paris"})]
    assert all(c["id"].startswith("call_") for c in calls.values())
    assert joined(events, "content") == ""
    assert finish_reasons(events) == ["tool_calls"]


def test_tool_choice_none_hides_tools() -> None:
    tm = FakeTM([["plain"]])
    msg = post(tm, {"tools": [WEATHER], "tool_choice": "none"}).json()["choices"][0]["message"]
    assert msg["content"] == "plain" and msg["tool_calls"] is None
    assert "tools" not in tm.template_calls[0][1] and tm.params[0].json_schema is None


def test_auto_without_a_parser_is_plain_content() -> None:
    tm = FakeTM([['<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>']])
    r = post(tm, {"tools": [WEATHER]})
    assert r.json()["choices"][0]["message"]["tool_calls"] is None
    assert tm.template_calls[0][1]["tools"] == [WEATHER] and tm.params[0].json_schema is None


HERMES = ['Sure. <tool_', 'call>\n{"name": "get_weather", "argu', 'ments": {"city": "Oslo"}}\n</tool_call>']


@pytest.mark.parametrize("stream", [False, True])
def test_auto_with_a_parser(stream: bool) -> None:
    pytest.importorskip("radixserve.parsers.tool_calls")
    tm = FakeTM([HERMES], tool_call_parser="hermes")
    body = {"tools": [WEATHER], "tool_choice": "auto"}
    if stream:
        events = stream_events(tm, body)
        calls = list(streamed_calls(events).values())
        content, reason = joined(events, "content"), finish_reasons(events)[-1]
    else:
        choice = post(tm, body).json()["choices"][0]
        calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                 for c in choice["message"]["tool_calls"]]
        content, reason = choice["message"]["content"], choice["finish_reason"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", {"city": "Oslo"})]
    assert content == "Sure." and reason == "tool_calls"


def test_history_with_tool_calls_reaches_the_template() -> None:
    tm = FakeTM([["It is sunny."]])
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    r = TestClient(build_app(tm, None)).post(  # type: ignore[arg-type]
        "/v1/chat/completions", json={"messages": history, "tools": [WEATHER]})
    assert r.status_code == 200, r.text
    messages = tm.template_calls[0][0]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # an object, for `tojson`
    # this template does not render tool_calls: the call is the assistant's content
    assert json.loads(messages[1]["content"]) == [{"name": "get_weather", "parameters": {"city": "Paris"}}]
    assert messages[2] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"}


# ---- request checks --------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "strnig"}}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "minLength": "3"}}}}}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
    ({"tool_choice": "sometimes", "tools": [WEATHER]}, "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": []}}}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_object"}, "regex": "a+"}, "regex"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"5000": 1}}, "logit_bias"),  # past the vocabulary
    ({"regex": ""}, "regex"),
])
def test_bad_requests_name_their_field(body: dict[str, Any], param: str) -> None:
    r = post(FakeTM([["x"]]), body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert str(err["param"]).startswith(param), err


def test_accepted_extensions_reach_the_engine() -> None:
    tm = FakeTM([["x"]])
    r = post(tm, {"logit_bias": {"5": -100, "7": 2.5}, "min_tokens": 3, "stop_token_ids": [9], "user": "u-1",
                  "regex": "[a-z]+"})
    assert r.status_code == 200, r.text
    p = tm.params[0]
    assert (p.logit_bias, p.min_new_tokens, p.stop_token_ids, p.regex) == ({5: -100.0, 7: 2.5}, 3, [9], "[a-z]+")
    client = TestClient(build_app(tm, None))  # type: ignore[arg-type]
    r = client.post("/v1/completions", json={"prompt": "a", "response_format": {
        "type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object", "properties": {
            "a": {"type": "integer"}}}}}, "ebnf": None})
    assert r.status_code == 200, r.text
    assert json.loads(tm.params[1].json_schema or "") == {"type": "object", "properties": {"a": {"type": "integer"}}}


def test_engine_grammar_errors_are_renamed() -> None:
    e = remap_grammar_error(InvalidRequestError("bad schema", param="json_schema"), "response_format")
    assert e.param == "response_format"
    e = remap_grammar_error(InvalidRequestError("bad schema", param="json_schema"), "tool_choice")
    assert e.param == "tools"
    e = remap_grammar_error(InvalidRequestError("bad regex", param="regex"), "regex")
    assert e.param == "regex"
    e = remap_grammar_error(InvalidRequestError("too long", param="max_tokens"), "response_format")
    assert e.param == "max_tokens"


def test_schema_problem() -> None:
    assert schema_problem({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                                                            "b": {"type": ["integer", "null"], "minimum": 0}},
                           "$defs": {"X": {"type": "array", "items": {"$ref": "#/$defs/X"}}}}) is None
    assert schema_problem(True) is None
    assert "type" in (schema_problem({"type": "obj"}) or "")
    assert "properties" in (schema_problem({"properties": [1]}) or "")
    assert "items" in (schema_problem({"items": {"type": 3}}) or "")
    assert "required" in (schema_problem({"required": "a"}) or "")
    assert "maximum" in (schema_problem({"maximum": "3"}) or "")
    assert schema_problem([]) is not None


def test_parser_flags_are_checked() -> None:
    from radixserve.server_args import ServerArgs, ServerArgsError

    assert ServerArgs(tool_call_parser="hermes", reasoning_parser="deepseek-r1").tool_call_parser == "hermes"
    with pytest.raises(ServerArgsError, match="tool_call_parser"):
        ServerArgs(tool_call_parser="nope")
    with pytest.raises(ServerArgsError, match="reasoning_parser"):
        ServerArgs(reasoning_parser="nope")


def test_openapi_documents_the_new_fields() -> None:
    schemas = build_app(MagicMock(), None).openapi()["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    formats = chat["response_format"]["anyOf"][0]
    assert sorted(formats["discriminator"]["mapping"]) == ["json_object", "json_schema", "text"]
    assert {"tools", "tool_choice", "parallel_tool_calls", "regex", "ebnf", "logit_bias"} <= set(chat)
    assert {"response_format", "regex", "ebnf", "logit_bias"} <= set(schemas["CompletionRequest"]["properties"])
    assert "schema" in schemas["JsonSchemaSpec"]["properties"]
    assert {"tool_calls", "tool_call_id"} <= set(schemas["ChatMessage"]["properties"])
    assert {"tool_calls", "reasoning_content"} <= set(schemas["ChatMessageOut"]["properties"])
    assert {"tool_calls", "reasoning_content"} <= set(schemas["DeltaMessage"]["properties"])
    assert schemas["FunctionDefinition"]["required"] == ["name"]
