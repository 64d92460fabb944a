"""LangChain's ChatOpenAI against a real `radixserve serve` (the shared `smol_server`): tools bound
with a forced tool_choice (plain and streamed), a tool round trip, and with_structured_output by
JSON schema and by function calling."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.server.server_harness import ServerProcess

pytestmark = pytest.mark.slow

langchain_openai = pytest.importorskip("langchain_openai")
messages_mod = pytest.importorskip("langchain_core.messages")


class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str = Field(min_length=1, max_length=20, description="The city")
    unit: Literal["celsius", "fahrenheit"]


class GetTime(BaseModel):
    """Current time in a time zone."""

    zone: Literal["UTC", "CET", "PST"]


class Answer(BaseModel):
    answer: Literal["yes", "no"]
    confidence: int = Field(ge=0, le=10)


def chat_model(server: ServerProcess, **kwargs: Any) -> Any:
    return langchain_openai.ChatOpenAI(base_url=f"{server.url}/v1", api_key=server.api_key or "none",
                                       model="SmolLM2-135M-Instruct", temperature=0, max_tokens=80, max_retries=0,
                                       timeout=120, **kwargs)


def check_call(call: dict[str, Any], model: type[BaseModel]) -> None:
    assert call["id"].startswith("call_")
    jsonschema.validate(call["args"], model.model_json_schema())
    model.model_validate(call["args"])


def test_bind_tools_with_tool_choice(smol_server: ServerProcess) -> None:
    llm = chat_model(smol_server)
    named = llm.bind_tools([GetWeather, GetTime], tool_choice="GetWeather")
    msg = named.invoke("What's the weather like in Paris?")
    assert [c["name"] for c in msg.tool_calls] == ["GetWeather"]
    check_call(msg.tool_calls[0], GetWeather)
    # "any" is LangChain's "required"; streamed chunks add up to the same calls
    forced = llm.bind_tools([GetWeather, GetTime], tool_choice="any")
    total = None
    for chunk in forced.stream("What time is it in UTC?"):
        total = chunk if total is None else total + chunk
    assert total is not None and total.tool_calls, total
    models: dict[str, type[BaseModel]] = {"GetWeather": GetWeather, "GetTime": GetTime}
    for call in total.tool_calls:
        check_call(call, models[call["name"]])
    assert total.response_metadata.get("finish_reason") == "tool_calls"


def test_tool_round_trip(smol_server: ServerProcess) -> None:
    llm = chat_model(smol_server)
    history: list[Any] = [messages_mod.HumanMessage("What's the weather like in Oslo?")]
    ai = llm.bind_tools([GetWeather], tool_choice="GetWeather").invoke(history)
    call = ai.tool_calls[0]
    history += [ai, messages_mod.ToolMessage(json.dumps({"celsius": 4, "sky": "snow"}), tool_call_id=call["id"])]
    final = llm.bind_tools([GetWeather], max_tokens=24).invoke(history)
    assert isinstance(final.content, str) and final.content and not final.tool_calls


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(smol_server: ServerProcess, method: str) -> None:
    structured = chat_model(smol_server).with_structured_output(Answer, method=method)
    out = structured.invoke("Is the sky blue? Say how sure you are from 0 to 10.")
    assert isinstance(out, Answer)
