"""The chat check the multi-GPU device script runs against `radixserve serve --tp N` flags answers out of
shape: a client that returns them (built from the openai package's own types) must give problems.
Its passing side runs against real servers in tests/distributed/test_tensor_parallel.py."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from benchmarks.openai_chat_check import _plain, _streamed, messages


def _usage(completion: int, prompt: int = 10, total: int | None = None) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion,
                           total_tokens=prompt + completion if total is None else total)


def _completion(finish: str, usage: CompletionUsage | None, text: str = "hi") -> ChatCompletion:
    return ChatCompletion.model_validate({
        "id": "c", "object": "chat.completion", "created": 0, "model": "m", "usage": usage,
        "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}]})


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: CompletionUsage | None = None,
           choices: bool = True) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate({
        "id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "usage": usage,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []})


def _client(answer: Any) -> Any:
    def create(**kwargs: Any) -> Any:
        assert kwargs["extra_body"] == {"ignore_eos": True} and kwargs["temperature"] == 0
        return iter(answer) if kwargs.get("stream") else answer
    return SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))


def test_a_well_formed_plain_answer_has_no_problem() -> None:
    got = _plain(_client(_completion("length", _usage(8))), "m", messages(0), 8)
    assert got["problems"] == [] and got["text"] == "hi" and got["usage"]["completion_tokens"] == 8


def test_plain_answers_out_of_shape_are_problems() -> None:
    assert _plain(_client(_completion("stop", _usage(8))), "m", messages(0), 8)["problems"] == [
        "finish_reason 'stop'"]
    assert _plain(_client(_completion("length", _usage(5))), "m", messages(0), 8)["problems"][0].startswith("usage")
    assert _plain(_client(_completion("length", _usage(8, total=3))), "m", messages(0), 8)["problems"]
    assert _plain(_client(_completion("length", None)), "m", messages(0), 8)["problems"] == ["usage None"]


def _stream(role: bool = True, finish: str = "length", usage: CompletionUsage | None = None) -> Iterator[Any]:
    yield _chunk({"role": "assistant", "content": ""} if role else {"content": ""})
    yield _chunk({"content": "he"})
    yield _chunk({"content": "llo"}, finish=finish)
    yield _chunk({}, usage=usage, choices=False)


def test_a_well_formed_stream_has_no_problem() -> None:
    got = _streamed(_client(list(_stream(usage=_usage(8)))), "m", messages(0), 8)
    assert got["problems"] == [] and got["text"] == "hello" and got["chunks"] == 4
    assert got["first_content_s"] is not None


def test_streams_out_of_shape_are_problems() -> None:
    def problems(chunks: Iterator[Any]) -> list[str]:
        result: list[str] = _streamed(_client(list(chunks)), "m", messages(0), 8)["problems"]
        return result

    assert problems(_stream(role=False, usage=_usage(8))) == ["the first chunk does not carry the assistant role"]
    assert problems(_stream(finish="stop", usage=_usage(8))) == ["finish reasons ['stop']"]
    assert problems(_stream(usage=None)) == ["last chunk's usage None"]
    assert problems(_stream(usage=_usage(7)))[0].startswith("last chunk's usage")


def test_the_conversations_are_distinct() -> None:
    users = [messages(i)[-1]["content"] for i in range(32)]
    assert len(set(users)) == 32
