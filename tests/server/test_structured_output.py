"""Structured output and tool calls end to end: a real `radixserve serve` (embedded SmolLM2, the
shared `smol_server`) driven by the unmodified `openai` client, raw HTTP and LangChain's ChatOpenAI.
The 135M model writes poor answers, but grammar-constrained decoding makes every one of them valid."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Annotated, Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.server.server_harness import ServerProcess

pytestmark = pytest.mark.slow

GREEDY: dict[str, Any] = {"temperature": 0.0}


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key or "none", max_retries=0, timeout=120)


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=server.headers, timeout=120)


# ---- response_format with pydantic models, through client.chat.completions.parse -------------
Short = Field(min_length=1, max_length=16)


class Person(BaseModel):
    name: str = Short
    age: int = Field(ge=0, le=120)


class Address(BaseModel):
    city: str = Short
    zip_code: str = Field(pattern=r"^[0-9]{5}$")


class Customer(BaseModel):
    name: str = Short
    address: Address


class Tags(BaseModel):
    tags: list[Annotated[str, Field(max_length=16)]] = Field(min_length=1, max_length=3)


class Color(StrEnum):
    red = "red"
    green = "green"
    blue = "blue"


class Paint(BaseModel):
    color: Color
    glossy: bool


class Reading(BaseModel):
    celsius: float = Field(ge=-50, le=60)
    sensors: int = Field(ge=1, le=8)


class Profile(BaseModel):
    name: str = Short
    nickname: str | None = Field(None, max_length=12)


class Cell(BaseModel):
    value: Annotated[int, Field(ge=-999, le=999)] | Annotated[str, Field(max_length=12)]


class Status(BaseModel):
    status: Literal["ok", "error"]
    code: int = Field(ge=100, le=599)


class Item(BaseModel):
    name: str = Short
    qty: int = Field(ge=1, le=99)


class Order(BaseModel):
    items: list[Item] = Field(min_length=1, max_length=2)


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    pet: Cat | Dog


PARSE_CASES: list[tuple[type[BaseModel], str]] = [
    (Person, "Give a person's name and age."),
    (Customer, "Give a customer with a city address."),
    (Tags, "Give tags for a blog post about cooking."),
    (Paint, "Pick a paint colour."),
    (Reading, "Report a temperature reading."),
    (Profile, "Describe a user profile."),
    (Cell, "Give a spreadsheet cell value."),
    (Status, "Report an HTTP status."),
    (Order, "Order some fruit."),
    (Pet, "Describe a pet."),
]


def test_parse_with_pydantic_models(smol_server: ServerProcess) -> None:
    c = client(smol_server)

    def one(case: tuple[type[BaseModel], str]) -> BaseModel | None:
        model, prompt = case
        r = c.chat.completions.parse(model="", messages=[{"role": "user", "content": prompt + " Answer in JSON."}],
                                     response_format=model, max_tokens=100, **GREEDY)
        assert r.choices[0].finish_reason == "stop", (model.__name__, r.choices[0].message.content)
        return r.choices[0].message.parsed

    with ThreadPoolExecutor(len(PARSE_CASES)) as pool:  # one batch: the server decodes them together
        results = list(pool.map(one, PARSE_CASES))
    for (model, _), parsed in zip(PARSE_CASES, results, strict=True):
        assert isinstance(parsed, model), (model.__name__, parsed)


def test_json_object_and_json_schema_on_both_routes(smol_server: ServerProcess) -> None:
    prompts = ["Is the sky blue?", "Is fire cold?", "What colour is grass?", "Name a city in France."]
    system = {"role": "system", "content": 'Answer with a short JSON object such as {"answer": "yes"}.'}

    def chat(prompt: str) -> dict[str, Any]:
        r = post(smol_server, "/v1/chat/completions", {"messages": [system, {"role": "user", "content": prompt}],
                                                       "response_format": {"type": "json_object"}, "max_tokens": 60,
                                                       **GREEDY})
        assert r.status_code == 200, r.text
        return dict(r.json()["choices"][0])

    with ThreadPoolExecutor(len(prompts)) as pool:
        choices = list(pool.map(chat, prompts))
    for choice in choices:
        if choice["finish_reason"] == "stop":  # finished: a JSON object
            assert isinstance(json.loads(choice["message"]["content"]), dict), choice
        else:  # cut by max_tokens: the start of one
            assert choice["message"]["content"].lstrip().startswith("{"), choice
    assert any(c["finish_reason"] == "stop" for c in choices), choices
    schema = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["answer"], "additionalProperties": False}
    r = post(smol_server, "/v1/completions", {
        "prompt": 'Q: What is 2 + 2? Reply as JSON.\nA: {"answer": 4}\nQ: What is 3 + 3? Reply as JSON.\nA:',
        "max_tokens": 30, "stop": ["\n"], "response_format": {
            "type": "json_schema", "json_schema": {"name": "sum", "schema": schema, "strict": True}}, **GREEDY})
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), schema)


REGEXES = [r"[0-9]{3}-[0-9]{4}", r"(yes|no)", r"[A-Z][a-z]{2,8}", r"[a-z]{3,8}@[a-z]{3,8}\.com",
           r"(red|green|blue), (small|large)", r"-?[0-9]{1,3}\.[0-9]{2}"]


def test_regex_outputs_match(smol_server: ServerProcess) -> None:
    def chat(rx: str) -> tuple[str, str]:
        r = post(smol_server, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Answer briefly: what is your favourite thing?"}],
            "regex": rx, "max_tokens": 40, **GREEDY})
        assert r.status_code == 200, r.text
        return rx, r.json()["choices"][0]["message"]["content"]

    def completion(rx: str) -> tuple[str, str]:
        r = post(smol_server, "/v1/completions", {"prompt": "My answer:", "regex": rx, "max_tokens": 40,
                                                  "temperature": 1.0, "seed": 7})
        assert r.status_code == 200, r.text
        return rx, r.json()["choices"][0]["text"]

    with ThreadPoolExecutor(2 * len(REGEXES)) as pool:
        results = list(pool.map(chat, REGEXES)) + list(pool.map(completion, REGEXES))
    for rx, text in results:
        assert re.fullmatch(rx, text), (rx, text)


# ---- tool calls ----------------------------------------------------------------------------
WEATHER_PARAMS = {"type": "object", "properties": {
    "city": {"type": "string", "minLength": 1, "maxLength": 20},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}
TIME_PARAMS = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
               "required": ["zone"], "additionalProperties": False}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone",
                                      "parameters": TIME_PARAMS}},
]
PARAMS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris, and the time in UTC?"}]


def check_calls(calls: list[Any], names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


@pytest.mark.parametrize("choice", ["required", "named"])
def test_forced_tool_calls(smol_server: ServerProcess, choice: str) -> None:
    c = client(smol_server)
    tool_choice: Any = "required" if choice == "required" else {"type": "function", "function": {"name": "get_time"}}
    names = {"get_weather", "get_time"} if choice == "required" else {"get_time"}
    r = c.chat.completions.create(model="", messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=120,
                                  **GREEDY)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls", msg
    assert msg.content is None
    check_calls(msg.tool_calls or [], names)
    if choice == "named":
        assert len(msg.tool_calls or []) == 1
    # streaming: the same calls, assembled by the openai SDK's stream helper
    with c.chat.completions.stream(model="", messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=120,
                                   **GREEDY) as stream:
        final = stream.get_final_completion()
    check_calls(final.choices[0].message.tool_calls or [], names)
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(t.function.name, json.loads(t.function.arguments)) for t in final.choices[0].message.tool_calls or []] \
        == [(t.function.name, json.loads(t.function.arguments)) for t in msg.tool_calls or []]


def test_parallel_tool_calls_false_gives_one_call(smol_server: ServerProcess) -> None:
    r = client(smol_server).chat.completions.create(model="", messages=ASK, tools=TOOLS, tool_choice="required",
                                                    parallel_tool_calls=False, max_tokens=120, **GREEDY)
    assert len(r.choices[0].message.tool_calls or []) == 1


def test_tool_round_trip(smol_server: ServerProcess) -> None:
    c = client(smol_server)
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = c.chat.completions.create(model="", messages=messages, tools=TOOLS[:1], tool_choice="required",
                                      max_tokens=80, **GREEDY)
    call = (first.choices[0].message.tool_calls or [])[0]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))  # content null, tool_calls
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})})
    final = c.chat.completions.create(model="", messages=messages, tools=TOOLS[:1], max_tokens=40, **GREEDY)
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.content


def test_pydantic_tools_through_parse(smol_server: ServerProcess) -> None:
    class GetTime(BaseModel):
        zone: Literal["UTC", "CET", "PST"]

    r = client(smol_server).chat.completions.parse(
        model="", messages=[{"role": "user", "content": "What time is it in UTC?"}],
        tools=[openai.pydantic_function_tool(GetTime)], tool_choice="required", max_tokens=60, **GREEDY)
    call = (r.choices[0].message.tool_calls or [])[0]
    assert isinstance(call.function.parsed_arguments, GetTime)


# ---- bad input: 400 naming the field, and the server keeps serving ---------------------------
def test_bad_constraints_are_400_and_the_server_keeps_serving(smol_server: ServerProcess) -> None:
    chat: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "thing"}}}},
         "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}}, "response_format"),
        ({"regex": "(a)\\1"}, "regex"),  # a backreference: not a regular language
        ({"regex": "(?=a)b"}, "regex"),  # a lookahead
        ({"ebnf": "root ::= ("}, "ebnf"),
        ({"tools": [{"type": "function", "function": {"parameters": {"type": "object"}}}]}, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch_rocket"}}},
         "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logit_bias": {"999999": 5}}, "logit_bias"),
    ]
    for extra, param in cases:
        r = post(smol_server, "/v1/chat/completions", {**chat, **extra})
        assert r.status_code == 400, (extra, r.text)
        err = r.json()["error"]
        assert str(err["param"]).startswith(param), (extra, err)
        assert err["type"] == "invalid_request_error" and err["message"]
    r = post(smol_server, "/v1/completions", {"prompt": "a", "regex": "(a)\\1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "regex", r.text
    r = post(smol_server, "/v1/chat/completions", {**chat, "max_tokens": 8})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text


def test_logit_bias_min_tokens_and_user(smol_server: ServerProcess) -> None:
    prompt = "The capital of France is"
    r = post(smol_server, "/generate", {"text": prompt, "sampling_params": {"max_new_tokens": 1, "temperature": 0}})
    greedy_id, greedy_text = r.json()["output_ids"][0], r.json()["text"]
    c = client(smol_server)
    plain = c.completions.create(model="", prompt=prompt, max_tokens=1, **GREEDY)
    assert plain.choices[0].text == greedy_text
    banned = c.completions.create(model="", prompt=prompt, max_tokens=1, logit_bias={str(greedy_id): -100},
                                  user="test-user", **GREEDY)
    assert banned.choices[0].text != greedy_text
    # +100 on a token makes it the choice
    forced = c.completions.create(model="", prompt=prompt, max_tokens=3, logit_bias={str(greedy_id): 100}, **GREEDY)
    assert forced.choices[0].text == greedy_text * 3
    # min_tokens (vLLM's name): no EOS before it
    r2 = c.chat.completions.create(model="", messages=[{"role": "user", "content": "Say OK."}], max_tokens=12,
                                   extra_body={"min_tokens": 12}, **GREEDY)
    assert r2.usage is not None and r2.usage.completion_tokens == 12
