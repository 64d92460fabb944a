"""Tensor parallelism on CPU (gloo): TP ranks in their own processes give TP=1's tokens and logprobs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from radixserve import Engine
from radixserve.entrypoints.engine import GenerateOutput
from tests.server.server_harness import ServerProcess

GREEDY: dict[str, Any] = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
PROMPTS = [[100 + (i * 7 + j) % 900 for j in range(n)] for i, n in enumerate([3, 17, 40, 1, 64, 9])]


def _outputs(engine: Engine, prompts: list[list[int]], batched: bool,
             params: dict[str, Any] = GREEDY) -> list[GenerateOutput]:
    if batched:
        return engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True, top_logprobs_num=5)
    return [engine.generate(input_ids=p, sampling_params=params, return_logprob=True, top_logprobs_num=5)
            for p in prompts]


def _assert_same(a: list[GenerateOutput], b: list[GenerateOutput], atol: float) -> None:
    for x, y in zip(a, b, strict=True):
        assert x["output_ids"] == y["output_ids"]
        for (lx, _), (ly, _) in zip(x["meta_info"]["output_token_logprobs"], y["meta_info"]["output_token_logprobs"],
                                    strict=True):
            assert abs(lx - ly) <= atol
        for rx, ry in zip(x["meta_info"]["output_top_logprobs"], y["meta_info"]["output_top_logprobs"], strict=True):
            assert max(abs(p - q) for (p, _), (q, _) in zip(rx, ry, strict=True)) <= atol


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_tp2_equals_tp1_single_and_batched(tiny_models: dict[str, Path], name: str) -> None:
    path = str(tiny_models[name])
    with Engine(model_path=path, max_total_tokens=2048, log_level="warning") as one:
        ref_single, ref_batch = _outputs(one, PROMPTS, False), _outputs(one, PROMPTS, True)
    with Engine(model_path=path, max_total_tokens=2048, log_level="warning", tp_size=2) as two:
        _assert_same(_outputs(two, PROMPTS, False), ref_single, 1e-4)
        _assert_same(_outputs(two, PROMPTS, True), ref_batch, 1e-4)


def test_tp4_and_tp8_equal_tp1(tmp_path: Path) -> None:
    """Issue 22 on CPU: 4 and 8 ranks over gloo (more processes than cores) give TP=1's greedy tokens
    and log-probs, on a tiny Llama with 16 query and 8 KV heads: at TP=8 each rank holds one KV head
    for two query heads, as the Llama-3-70B layout (64 and 8) does at TP=8."""
    from tests.conftest import _save_tiny, tokenizer_source

    path = str(_save_tiny(tmp_path, "llama", tokenizer_source(), hidden_size=128, num_attention_heads=16,
                          num_key_value_heads=8))
    with Engine(model_path=path, max_total_tokens=1024, log_level="warning") as one:
        ref = _outputs(one, PROMPTS, True)
    for tp in (4, 8):
        with Engine(model_path=path, max_total_tokens=1024, log_level="warning", tp_size=tp) as many:
            _assert_same(_outputs(many, PROMPTS, True), ref, 1e-4)


def test_seeded_sampling_agrees_across_ranks(tiny_models: dict[str, Path]) -> None:
    """Sampled tokens come out of every rank's own sampler: the ranks must draw the same ones."""
    params = {"max_new_tokens": 16, "temperature": 1.0, "top_p": 0.9, "seed": 3, "ignore_eos": True}
    path = str(tiny_models["llama"])
    with Engine(model_path=path, max_total_tokens=2048, log_level="warning") as one:
        ref = one.generate(input_ids=PROMPTS, sampling_params=params)
    with Engine(model_path=path, max_total_tokens=2048, log_level="warning", tp_size=2) as two:
        got = two.generate(input_ids=PROMPTS, sampling_params=params)
        unseeded = two.generate(input_ids=PROMPTS, sampling_params={**params, "seed": None})
    assert [o["output_ids"] for o in got] == [o["output_ids"] for o in ref]
    assert all(len(o["output_ids"]) == 16 for o in unseeded)  # lockstep, no hang


def test_tp3_equals_tp1_with_the_embedded_models_head_layout(tmp_path: Path) -> None:
    """SmolLM2-135M's layout: 9 query heads over 3 KV heads, which TP=3 divides and TP=2 cannot, and
    tied embeddings. The embedded model itself runs at TP=3 in tests/model_loader/test_gguf_packed.py."""
    from tests.conftest import _save_tiny, tokenizer_source

    path = str(_save_tiny(tmp_path, "llama", tokenizer_source(), hidden_size=72, intermediate_size=96,
                          num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True))
    with Engine(model_path=path, max_total_tokens=2048, log_level="warning") as one:
        ref_single, ref_batch = _outputs(one, PROMPTS, False), _outputs(one, PROMPTS, True)
    with Engine(model_path=path, max_total_tokens=2048, log_level="warning", tp_size=3) as three:
        _assert_same(_outputs(three, PROMPTS, False), ref_single, 1e-4)
        _assert_same(_outputs(three, PROMPTS, True), ref_batch, 1e-4)


def test_tp_size_that_does_not_divide_the_heads_is_a_start_up_error(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(RuntimeError, match="not divisible by the tensor-parallel size"):
        Engine(model_path=str(tiny_models["llama"]), tp_size=3, max_total_tokens=2048, log_level="warning")


@pytest.mark.slow
def test_http_server_with_tp2_and_a_dead_rank(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    path = str(tiny_models["llama"])
    body = {"prompt": "hello world", "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    one = ServerProcess(["--model-path", path], tmp_path / "tp1.log").wait_ready()
    try:
        ref = httpx.post(f"{one.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    finally:
        one.stop()
    two = ServerProcess(["--model-path", path, "--tp", "2"], tmp_path / "tp2.log").wait_ready()
    try:
        r = httpx.post(f"{two.url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == ref
        info = httpx.get(f"{two.url}/get_server_info", timeout=30).json()
        assert info["tensor_parallel_size"] == 2 and len(info["scheduler_pids"]) == 2
        start = time.monotonic()
        os.kill(info["scheduler_pids"][1], signal.SIGKILL)  # a non-zero rank: rank 0 notices in a collective
        code = two.proc.wait(10)
        assert code != 0 and time.monotonic() - start < 10
    finally:
        two.stop()


@pytest.mark.slow
def test_serve_tp4_answers_the_openai_clients_chat_like_tp1(tmp_path: Path) -> None:
    """Issue 22 on CPU: `radixserve serve --tp 4` (four gloo ranks) answers the openai client's chat
    requests, plain and streamed, through the check the device script runs against `--tp 8`, with
    TP=1's texts (float32 weights, so the texts must be equal)."""
    import json

    from benchmarks.openai_chat_check import main as chat_check
    from benchmarks.openai_chat_check import run_checks
    from tests.conftest import _save_tiny, tokenizer_source

    path = str(_save_tiny(tmp_path, "llama", tokenizer_source(), num_attention_heads=8, num_key_value_heads=8))
    one = ServerProcess(["--model-path", path], tmp_path / "tp1.log").wait_ready()
    try:
        ref = run_checks(one.url, requests=3, max_tokens=12)
    finally:
        one.stop()
    assert ref["problems"] == 0 and ref["stream_equals_plain"] == 3
    assert all(r["plain"]["text"] for r in ref["requests"])
    four = ServerProcess(["--model-path", path, "--tp", "4"], tmp_path / "tp4.log").wait_ready()
    try:
        out = tmp_path / "chat_tp4.json"
        code = chat_check(["--base-url", four.url, "--requests", "3", "--max-tokens", "12", "--require-equal",
                           "--output", str(out)])
        info = httpx.get(f"{four.url}/get_server_info", timeout=30).json()
    finally:
        four.stop()
    assert code == 0
    got = json.loads(out.read_text())
    assert info["tensor_parallel_size"] == 4 and len(info["scheduler_pids"]) == 4
    assert got["problems"] == 0 and got["stream_equals_plain"] == 3
    assert [r["plain"]["text"] for r in got["requests"]] == [r["plain"]["text"] for r in ref["requests"]]
    assert all(r["plain"]["usage"]["completion_tokens"] == 12 for r in got["requests"])
