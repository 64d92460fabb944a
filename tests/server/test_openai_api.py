"""The HTTP API of a real `radixserve serve` (three processes, embedded SmolLM2), through the
unmodified `openai` client and raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from typing import TypedDict

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.server.server_harness import ServerProcess

pytestmark = pytest.mark.slow


class SamplingArgs(TypedDict):
    """Keyword arguments splatted into the openai client's `create(...)` calls."""

    temperature: float


GREEDY: SamplingArgs = {"temperature": 0.0}


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key or "none", max_retries=0)


def model_name(server: ServerProcess) -> str:
    return client(server).models.list().data[0].id


def test_models_and_health(smol_server: ServerProcess) -> None:
    models = client(smol_server).models.list().data
    assert [m.id for m in models] == ["SmolLM2-135M-Instruct"]
    assert httpx.get(f"{smol_server.url}/health").json() == {"status": "ok"}
    r = httpx.get(f"{smol_server.url}/health_generate", headers=smol_server.headers, timeout=60)
    assert r.status_code == 200


def test_sglang_model_info(smol_server: ServerProcess) -> None:
    """SGLang's /get_model_info, and `served_model_name` in /get_server_info, where sglang-router learns
    the model's name (without it, it lists and sends `model: unknown`, which this server refuses with
    404 as OpenAI does)."""
    served = httpx.get(f"{smol_server.url}/v1/models", headers=smol_server.headers).json()["data"][0]["id"]
    for path in ("/get_model_info", "/model_info"):
        info = httpx.get(f"{smol_server.url}{path}", headers=smol_server.headers).json()
        assert info["served_model_name"] == served and info["is_generation"] is True
        assert info["model_path"] and info["tokenizer_path"] and info["max_context_length"] > 0
        assert info["vocab_size"] == 49152 and info["architectures"] == ["LlamaForCausalLM"]
    for path in ("/get_server_info", "/server_info"):  # where sglang-router 0.3 looks first
        assert httpx.get(f"{smol_server.url}{path}", headers=smol_server.headers).json()["served_model_name"] == served


def test_chat_plain(smol_server: ServerProcess) -> None:
    r = client(smol_server).chat.completions.create(
        model=model_name(smol_server), messages=[{"role": "system", "content": "You are terse."},
                                                 {"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, **GREEDY)
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_matches_plain_and_reports_usage(smol_server: ServerProcess) -> None:
    c = client(smol_server)
    msgs: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colours."}]
    plain = c.chat.completions.create(model=model_name(smol_server), messages=msgs, max_tokens=20, **GREEDY)
    chunks = list(c.chat.completions.create(model=model_name(smol_server), messages=msgs, max_tokens=20,
                                            stream=True, stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert plain.usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    # The same prompt again: its prefix comes from the radix cache.
    details = chunks[-1].usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None and details.cached_tokens > 0


def test_stream_ends_with_done(smol_server: ServerProcess) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{smol_server.url}/v1/chat/completions", json=body, headers=smol_server.headers,
                      timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_continuous_usage_stats(smol_server: ServerProcess, route: str) -> None:
    """vLLM's stream_options.continuous_usage_stats: every chunk with text carries the usage so far,
    so a client can tell how many tokens a chunk holds (bench_serving's per-token ITL)."""
    body: dict[str, object] = {"max_tokens": 12, "temperature": 0, "stream": True, "ignore_eos": True,
                               "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    if route == "/v1/completions":
        body["prompt"] = "The capital of France is"
    else:
        body["messages"] = [{"role": "user", "content": "Name three colours."}]
    with httpx.stream("POST", f"{smol_server.url}{route}", json=body, headers=smol_server.headers, timeout=60) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    text_chunks = [c for c in chunks if c["choices"] and (c["choices"][0].get("text")
                                                          or (c["choices"][0].get("delta") or {}).get("content"))]
    assert text_chunks and all(c["usage"] is not None for c in text_chunks)
    counts = [c["usage"]["completion_tokens"] for c in text_chunks]
    assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] <= 12
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12
    prompt_tokens = {c["usage"]["prompt_tokens"] for c in chunks if c.get("usage")}
    assert len(prompt_tokens) == 1
    # Without the option (include_usage alone) only the last chunk has usage.
    body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", f"{smol_server.url}{route}", json=body, headers=smol_server.headers, timeout=60) as r:
        plain = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert [c.get("usage") is not None for c in plain] == [False] * (len(plain) - 1) + [True]


def test_completions_n_and_logprobs(smol_server: ServerProcess) -> None:
    c = client(smol_server)
    r = c.completions.create(model=model_name(smol_server), prompt="The capital of France is", max_tokens=5,
                             logprobs=3, **GREEDY)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
    assert r.usage is not None
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == r.usage.completion_tokens
    for tok, val, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert val <= 0 and len(top) == 3 and max(top.values()) == pytest.approx(val, abs=1e-4)  # greedy: best
        assert tok in top
    r = c.completions.create(model=model_name(smol_server), prompt="Once upon a time", max_tokens=8, n=3,
                             temperature=1.0, seed=7)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert r.usage is not None and 3 <= r.usage.completion_tokens <= 24  # summed over the 3 choices
    again = c.completions.create(model=model_name(smol_server), prompt="Once upon a time", max_tokens=8, n=3,
                                 temperature=1.0, seed=7)
    assert [ch.text for ch in again.choices] == [ch.text for ch in r.choices]  # seeded: reproducible
    assert len({ch.text for ch in r.choices}) > 1  # the n samples differ


def test_chat_n_and_logprobs(smol_server: ServerProcess) -> None:
    r = client(smol_server).chat.completions.create(
        model=model_name(smol_server), messages=[{"role": "user", "content": "Say something."}], max_tokens=6, n=2,
        logprobs=True, top_logprobs=2, temperature=0.9, seed=1)
    assert len(r.choices) == 2
    logprob_tokens = 0
    for ch in r.choices:
        assert ch.logprobs is not None and ch.logprobs.content
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in ch.logprobs.content)
        assert "".join(t.token for t in ch.logprobs.content) == ch.message.content
        logprob_tokens += len(ch.logprobs.content)
    assert r.usage is not None
    assert r.usage.completion_tokens == logprob_tokens


def test_stop_string_is_not_returned(smol_server: ServerProcess) -> None:
    c = client(smol_server)
    base = c.completions.create(model=model_name(smol_server), prompt="1, 2, 3, 4,", max_tokens=12, **GREEDY)
    text = base.choices[0].text
    assert "6" in text, text
    stopped = c.completions.create(model=model_name(smol_server), prompt="1, 2, 3, 4,", max_tokens=12, stop=["6"],
                                   **GREEDY)
    assert stopped.choices[0].text == text[: text.index("6")]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=model_name(smol_server), prompt="1, 2, 3, 4,", max_tokens=12, stop=["6"], stream=True, **GREEDY))
    assert streamed == stopped.choices[0].text


def test_native_generate(smol_server: ServerProcess) -> None:
    body = {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 4, "temperature": 0},
            "return_logprob": True}
    r = httpx.post(f"{smol_server.url}/generate", json=body, headers=smol_server.headers, timeout=60).json()
    assert r["meta_info"]["completion_tokens"] == len(r["output_ids"]) == 4
    assert len(r["meta_info"]["output_token_logprobs"]) == 4
    c = client(smol_server).completions.create(model=model_name(smol_server), prompt="The capital of France is",
                                               max_tokens=4, **GREEDY)
    assert r["text"] == c.choices[0].text
    batch = httpx.post(f"{smol_server.url}/generate", headers=smol_server.headers, timeout=60, json={
        "input_ids": [[1, 2, 3], [4, 5, 6]], "sampling_params": {"max_new_tokens": 2}}).json()
    assert isinstance(batch, list) and len(batch) == 2


def test_openapi_describes_every_route(smol_server: ServerProcess) -> None:
    doc = httpx.get(f"{smol_server.url}/openapi.json").json()
    paths = doc["paths"]
    for route in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/generate", "/health",
                  "/health_generate", "/metrics", "/flush_cache", "/get_server_info", "/abort_request"):
        assert route in paths, route
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionRequest")
    ok = chat["responses"]["200"]["content"]
    assert ok["application/json"]["schema"]["$ref"].endswith("ChatCompletionResponse")
    event_data = ok["text/event-stream"]["itemSchema"]["properties"]["data"]["anyOf"][0]
    assert event_data["contentSchema"]["anyOf"][0]["$ref"].endswith("ChatCompletionChunk")
    assert chat["responses"]["429"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    schemas = doc["components"]["schemas"]
    assert "max_completion_tokens" in schemas["ChatCompletionRequest"]["properties"]
    assert "prompt_tokens_details" in schemas["UsageInfo"]["properties"]


def _error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return dict(err)


def test_errors_are_openai_shaped_and_the_server_keeps_serving(smol_server: ServerProcess) -> None:
    url, h = f"{smol_server.url}/v1/chat/completions", {**smol_server.headers, "content-type": "application/json"}
    msgs: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x"}]
    assert _error(httpx.post(url, content=b"{bad json", headers=h), 400)["code"] == "invalid_json"
    assert _error(httpx.post(url, json={"model": "gpt-9", "messages": msgs}, headers=h), 404)["param"] == "model"
    assert _error(httpx.post(url, json={"messages": msgs, "temperature": 7}, headers=h), 400)["param"] == "temperature"
    assert _error(httpx.post(url, json={"messages": msgs, "top_p": 0}, headers=h), 400)["param"] == "top_p"
    assert _error(httpx.post(url, json={"messages": []}, headers=h), 400)["param"] == "messages"
    assert _error(httpx.post(url, json={"messages": msgs, "max_tokens": 10**6}, headers=h), 400)["code"] == \
        "context_length_exceeded"
    long_prompt = "hello " * 9000
    err = _error(httpx.post(f"{smol_server.url}/v1/completions", json={"prompt": long_prompt}, headers=h), 400)
    assert err["code"] == "context_length_exceeded"
    err = _error(httpx.post(url, json={"messages": msgs}, headers={"Authorization": "Bearer wrong"}), 401)
    assert err["type"] == "authentication_error"
    _error(httpx.post(url, json={"messages": msgs}), 401)
    _error(httpx.get(f"{smol_server.url}/v1/nothing-here", headers=h), 404)
    _error(httpx.post(url, content=b"x" * (33 << 20), headers=h), 413)
    _error(httpx.post(f"{smol_server.url}/generate", json={"text": "x", "sampling_params": {"top_k": 0}},
                      headers=h), 400)
    with pytest.raises(openai.BadRequestError):
        client(smol_server).chat.completions.create(model=model_name(smol_server), messages=msgs,
                                                    max_tokens=4, presence_penalty=3)
    # Still serving.
    r = client(smol_server).chat.completions.create(model=model_name(smol_server), messages=msgs,
                                                    max_tokens=2)
    assert r.usage is not None and r.usage.completion_tokens >= 1


def test_metrics(smol_server: ServerProcess) -> None:
    client(smol_server).completions.create(model=model_name(smol_server), prompt="Hello", max_tokens=3)
    text = httpx.get(f"{smol_server.url}/metrics").text
    for name in ("radixserve:prompt_tokens_total", "radixserve:generation_tokens_total",
                 "radixserve:num_running_reqs", "radixserve:num_queue_reqs", "radixserve:token_usage",
                 "radixserve:cache_hit_rate", "radixserve:time_to_first_token_seconds_bucket",
                 "radixserve:inter_token_latency_seconds_bucket", "radixserve:e2e_request_latency_seconds_bucket",
                 "radixserve:num_retractions_total"):
        assert f'{name}{{' in text or f"{name} " in text, name
    gen = [line for line in text.splitlines() if line.startswith("radixserve:generation_tokens_total{")]
    assert 'model_name="SmolLM2-135M-Instruct"' in gen[0] and float(gen[0].split()[-1]) >= 3


def _stream_text(server: ServerProcess, prompt: str, max_tokens: int) -> str:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=server.headers, timeout=300) as r:
        assert r.status_code == 200
        parts = [json.loads(line[6:])["choices"][0]["text"] for line in r.iter_lines()
                 if line.startswith("data: {")]
    return "".join(parts)


def test_64_concurrent_streams_equal_sequential(smol_server: ServerProcess) -> None:
    prompts = [f"Item {i}: the number {i * 7} is" for i in range(64)]

    async def all_at_once() -> list[str]:
        async with httpx.AsyncClient(timeout=600, headers=smol_server.headers) as http:
            async def one(p: str) -> str:
                body = {"prompt": p, "max_tokens": 6, "temperature": 0, "stream": True}
                async with http.stream("POST", f"{smol_server.url}/v1/completions", json=body) as r:
                    assert r.status_code == 200
                    return "".join([json.loads(line[6:])["choices"][0]["text"] async for line in r.aiter_lines()
                                    if line.startswith("data: {")])
            return list(await asyncio.gather(*(one(p) for p in prompts)))

    concurrent = asyncio.run(all_at_once())
    sequential = [_stream_text(smol_server, p, 6) for p in prompts]
    assert concurrent == sequential
    assert len(set(concurrent)) > 1


def test_client_disconnect_frees_kv(smol_server: ServerProcess) -> None:
    def idle() -> bool:
        load = smol_server.load()
        return load["num_running_reqs"] == 0 and load["kv_used_tokens"] == 0

    deadline = time.monotonic() + 30
    while not idle() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert idle()
    body = {"prompt": "Tell me a long story about a dragon.", "max_tokens": 4000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{smol_server.url}/v1/completions", json=body, headers=smol_server.headers,
                      timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        busy = smol_server.load()
        assert busy["num_running_reqs"] == 1 and busy["kv_used_tokens"] > 0
    # Closed mid-stream: the request is aborted and its KV slots return (its prefix stays cached).
    deadline = time.monotonic() + 10
    while not idle() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert idle(), smol_server.load()


def test_non_streaming_disconnect_aborts(smol_server: ServerProcess) -> None:
    body = {"prompt": "Write forever.", "max_tokens": 4000, "ignore_eos": True}
    done = threading.Event()

    def send() -> None:
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(f"{smol_server.url}/v1/completions", json=body, headers=smol_server.headers, timeout=1.5)
        done.set()

    threading.Thread(target=send).start()
    assert done.wait(30)
    deadline = time.monotonic() + 10
    while smol_server.load()["num_running_reqs"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert smol_server.load()["num_running_reqs"] == 0


def test_abort_request_and_flush_cache(smol_server: ServerProcess) -> None:
    h = smol_server.headers
    assert httpx.post(f"{smol_server.url}/abort_request", json={"rid": "nope"}, headers=h).status_code == 404
    result: dict[str, object] = {}

    def send() -> None:
        r = httpx.post(f"{smol_server.url}/v1/completions", headers=h, timeout=120, json={
            "prompt": "Count:", "max_tokens": 4000, "ignore_eos": True, "rid": "abort-me"})
        result.update(r.json())

    t = threading.Thread(target=send)
    t.start()
    deadline = time.monotonic() + 30
    while smol_server.load()["num_running_reqs"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.post(f"{smol_server.url}/flush_cache", headers=h).status_code == 409  # a request runs
    assert httpx.post(f"{smol_server.url}/abort_request", json={"rid": "abort-me"}, headers=h).json()["success"]
    t.join(30)
    assert result["choices"][0]["finish_reason"] == "abort"  # type: ignore[index]
    r = httpx.post(f"{smol_server.url}/flush_cache", headers=h)
    assert r.status_code == 200 and r.json()["success"]
    assert smol_server.load()["kv_cached_tokens"] == 0
