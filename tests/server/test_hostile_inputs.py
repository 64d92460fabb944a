"""Hostile requests against one real server (the tiny random Llama): each answers a 4xx with an
OpenAI-shaped error (most with `param` naming the field) and the server keeps serving.

Integers at their type's limits and past them, wrong types, NaN/Infinity (raw JSON text), huge
lists, deep nesting, invalid UTF-8 and control characters, for the chat, completions and native
routes. Values the engine honours (a seed of 2**63 - 1, top_k -1, ...) are served instead."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.server_harness import ServerProcess

pytestmark = pytest.mark.slow

CHAT, COMPLETIONS, GENERATE = "/v1/chat/completions", "/v1/completions", "/generate"
MSGS = [{"role": "user", "content": "hi"}]
BASE: dict[str, dict[str, Any]] = {
    CHAT: {"messages": MSGS, "max_tokens": 2},
    COMPLETIONS: {"prompt": "hi", "max_tokens": 2},
    GENERATE: {"text": "hi", "sampling_params": {"max_new_tokens": 2}},
}
PROBES = [2**31, 2**63, 2**64, 2**70, -1, -(2**63) - 1]


@dataclass
class Case:
    id: str
    path: str
    body: dict[str, Any] | bytes  # bytes: sent as they are (raw JSON text, invalid UTF-8, ...)
    param: str | None = None  # the error's param starts with this
    ok: bool = False  # a value the engine honours: served (200)


def _with(path: str, field: str, value: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.dumps(BASE[path]))
    if path == GENERATE and field not in ("text", "input_ids", "top_logprobs_num", "rid"):
        body["sampling_params"][field] = value
    else:
        body[field] = value
    return body


def _raw(path: str, field: str, literal: str) -> bytes:
    """`field` set to a JSON literal Python's json module writes but strict JSON lacks (NaN, Infinity)."""
    body = _with(path, field, "@@")
    return json.dumps(body).replace('"@@"', literal).encode()


# Per route: the integer fields and which probe values each one accepts.
INT_FIELDS: dict[str, dict[str, set[int]]] = {
    CHAT: {"top_k": {-1}, "n": set(), "seed": {2**31}, "max_tokens": set(), "max_completion_tokens": set(),
           "min_tokens": set(), "top_logprobs": set()},
    COMPLETIONS: {"top_k": {-1}, "n": set(), "seed": {2**31}, "max_tokens": set(), "min_tokens": set(),
                  "logprobs": set(), "best_of": set()},
    GENERATE: {"top_k": {-1}, "n": set(), "seed": {2**31}, "max_new_tokens": set(), "min_new_tokens": set(),
               "top_logprobs_num": set()},
}
FLOAT_FIELDS: dict[str, dict[str, set[int]]] = {
    CHAT: {"temperature": set(), "top_p": set(), "min_p": set(), "frequency_penalty": {-1},
           "presence_penalty": {-1}, "repetition_penalty": set()},
    GENERATE: {"temperature": {2**31}, "top_p": set(), "min_p": set(), "frequency_penalty": {-1},
               "presence_penalty": {-1}, "repetition_penalty": set()},
}
FLOAT_FIELDS[COMPLETIONS] = FLOAT_FIELDS[CHAT]


def _cases() -> list[Case]:
    cases: list[Case] = []
    for path, fields in (*INT_FIELDS.items(), *FLOAT_FIELDS.items()):
        for field, accepted in fields.items():
            for v in PROBES:
                ok = v in accepted
                cases.append(Case(f"{path}:{field}={v}", path, _with(path, field, v), None if ok else field, ok))
            for wrong in ("5x", [1], {"a": 1}):
                cases.append(Case(f"{path}:{field}={wrong!r}", path, _with(path, field, wrong), field))
            for literal in ("NaN", "Infinity", "-Infinity", "1e400"):
                cases.append(Case(f"{path}:{field}={literal}", path, _raw(path, field, literal), field))
    # Booleans where the engine wants a bool or an int (the native route has no pydantic in front).
    cases += [Case("generate:top_k=true", GENERATE, _with(GENERATE, "top_k", True), "top_k"),
              Case("generate:ignore_eos='yes'", GENERATE, _with(GENERATE, "ignore_eos", "yes"), "ignore_eos")]
    many_stops = ["x"] * 100_000
    for path in (CHAT, COMPLETIONS, GENERATE):
        cases += [
            Case(f"{path}:100k stop strings", path, _with(path, "stop", many_stops), "stop"),
            Case(f"{path}:17 stop strings", path, _with(path, "stop", ["x"] * 17), "stop"),
            Case(f"{path}:10k-char stop", path, _with(path, "stop", "x" * 10_000), "stop"),
            Case(f"{path}:empty stop", path, _with(path, "stop", ""), "stop"),
            Case(f"{path}:stop of numbers", path, _with(path, "stop", [1, 2]), "stop"),
            Case(f"{path}:lone-surrogate stop", path, _raw(path, "stop", '"a\\ud800"'), "stop"),
            Case(f"{path}:100k stop_token_ids", path, _with(path, "stop_token_ids", list(range(100_000))),
                 "stop_token_ids"),
            Case(f"{path}:stop_token_id past the vocab", path, _with(path, "stop_token_ids", [10**6]),
                 "stop_token_ids"),
            Case(f"{path}:stop_token_id 2**64", path, _with(path, "stop_token_ids", [2**64]), "stop_token_ids"),
            Case(f"{path}:deep nesting", path, _raw(path, "stop", "[" * 10_000 + "]" * 10_000)),
            Case(f"{path}:nesting 500", path, _with(path, "stop", json.loads("[" * 500 + "]" * 500)), "stop"),
            Case(f"{path}:invalid UTF-8", path, json.dumps(BASE[path]).replace("hi", "\udcff").encode(
                "utf-8", "surrogateescape")),
            Case(f"{path}:raw control character", path, json.dumps(BASE[path]).replace("hi", "h\x01i").encode()),
            Case(f"{path}:raw NUL", path, json.dumps(BASE[path]).replace("hi", "h\x00i").encode()),
            Case(f"{path}:escaped NUL", path, json.dumps(BASE[path]).replace("hi", "h\\u0000i").encode(), ok=True),
            Case(f"{path}:not an object", path, b"[1, 2, 3]"),
            Case(f"{path}:null body", path, b"null"),
            Case(f"{path}:empty body", path, b""),
            Case(f"{path}:truncated", path, json.dumps(BASE[path])[:-3].encode()),
            Case(f"{path}:rid 10k chars", path, _with(path, "rid", "r" * 10_000), "rid"),
        ]
    cases += [
        # chat
        Case("chat:10k nested arrays in content", CHAT,
             b'{"messages": [{"role": "user", "content": ' + b"[" * 10_000 + b"]" * 10_000 + b"}]}"),
        Case("chat:content of lists", CHAT, {"messages": [{"role": "user", "content": [[[1]]]}]}, "messages.0.content"),
        Case("chat:lone surrogate", CHAT, b'{"messages": [{"role": "user", "content": "a\\ud800"}]}',
             "messages.0.content"),
        Case("chat:messages not a list", CHAT, {"messages": "hi"}, "messages"),
        Case("chat:no messages", CHAT, {"messages": []}, "messages"),
        Case("chat:role 5", CHAT, {"messages": [{"role": 5, "content": "hi"}]}, "messages.0.role"),
        Case("chat:logit_bias 100k", CHAT, {**BASE[CHAT], "logit_bias": {str(i): 1.0 for i in range(100_000)}},
             "logit_bias"),
        Case("chat:top_k=0", CHAT, {**BASE[CHAT], "top_k": 0}, "top_k"),
        # completions
        Case("completions:prompt [-5]", COMPLETIONS, {"prompt": [-5]}, "prompt"),
        Case("completions:prompt [2**64]", COMPLETIONS, {"prompt": [2**64]}, "prompt"),
        Case("completions:prompt [2**31]", COMPLETIONS, {"prompt": [2**31]}, "prompt"),
        Case("completions:prompt past the vocab", COMPLETIONS, {"prompt": [10**6]}, "prompt"),
        Case("completions:prompt ''", COMPLETIONS, {"prompt": ""}, "prompt"),
        Case("completions:prompt []", COMPLETIONS, {"prompt": []}, "prompt"),
        Case("completions:prompt [[]]", COMPLETIONS, {"prompt": [[]]}, "prompt"),
        Case("completions:prompt 5", COMPLETIONS, {"prompt": 5}, "prompt"),
        Case("completions:prompt [1.5]", COMPLETIONS, {"prompt": [1.5]}, "prompt"),
        Case("completions:prompt batch 100k", COMPLETIONS, {"prompt": ["a"] * 100_000}, "prompt"),
        Case("completions:prompt lone surrogate", COMPLETIONS, b'{"prompt": "a\\ud800"}', "prompt"),
        Case("completions:no prompt", COMPLETIONS, {}, "prompt"),
        # native
        Case("generate:{}", GENERATE, {}, "text"),
        Case("generate:text ''", GENERATE, {"text": ""}, "text"),
        Case("generate:text and input_ids", GENERATE, {"text": "a", "input_ids": [1]}, "text"),
        Case("generate:input_ids [-5]", GENERATE, {"input_ids": [-5]}, "input_ids"),
        Case("generate:input_ids [2**64-1]", GENERATE, {"input_ids": [2**64 - 1]}, "input_ids"),
        Case("generate:input_ids past the vocab", GENERATE, {"input_ids": [10**6]}, "input_ids"),
        Case("generate:input_ids []", GENERATE, {"input_ids": []}, "input_ids"),
        Case("generate:text lone surrogate", GENERATE, b'{"text": "a\\ud800"}', "text"),
        Case("generate:sampling_params a list", GENERATE, {"text": "a", "sampling_params": [1]}, "sampling_params"),
        Case("generate:unknown sampling param", GENERATE, {"text": "a", "sampling_params": {"tempreature": 1}},
             "tempreature"),
        # honoured at the boundaries
        Case("chat:seed 2**63-1", CHAT, {**BASE[CHAT], "seed": 2**63 - 1, "n": 2, "temperature": 1.0}, ok=True),
        Case("completions:top_k 2**31-1", COMPLETIONS, {**BASE[COMPLETIONS], "top_k": 2**31 - 1}, ok=True),
        Case("generate:seed 2**63-1", GENERATE, _with(GENERATE, "seed", 2**63 - 1), ok=True),
    ]
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    s = ServerProcess(["--model-path", str(tiny_models["llama"]), "--log-level", "warning"], log).wait_ready()
    yield s
    s.stop()


def _check(client: httpx.Client, case: Case) -> str | None:
    """None when the answer is right, else what is wrong."""
    if isinstance(case.body, bytes):
        r = client.post(case.path, content=case.body, headers={"content-type": "application/json"})
    else:
        r = client.post(case.path, json=case.body)
    if case.ok:
        return None if r.status_code == 200 else f"expected 200, got {r.status_code}: {r.text[:300]}"
    if not 400 <= r.status_code < 500:
        return f"expected a 4xx, got {r.status_code}: {r.text[:300]}"
    try:
        err = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"not an OpenAI-shaped error: {r.text[:300]}"
    if set(err) != {"message", "type", "param", "code"} or not (isinstance(err["message"], str) and err["message"]):
        return f"not an OpenAI-shaped error: {err}"
    if case.param is not None and not str(err["param"]).startswith(case.param):
        return f"param {err['param']!r}, expected {case.param!r}: {err['message'][:200]}"
    return None


def test_hostile_inputs_are_refused_and_the_server_keeps_serving(server: ServerProcess) -> None:
    failures = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for case in CASES:
            problem = _check(client, case)
            if problem is not None:
                failures.append(f"{case.id}: {problem}")
            if server.proc.poll() is not None:
                pytest.fail(f"the server died at {case.id}:\n{server.logs()[-3000:]}")
        # Still alive and still right.
        assert client.get("/health").status_code == 200
        r = client.post(CHAT, json={"messages": MSGS, "max_tokens": 4, "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["completion_tokens"] == 4 and body["choices"][0]["finish_reason"] == "length"
        r = client.post(GENERATE, json={"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 3,
                                                                                   "ignore_eos": True}})
        assert r.status_code == 200 and len(r.json()["output_ids"]) == 3, r.text
    assert not failures, f"{len(failures)} of {len(CASES)} cases answered wrongly:\n" + "\n".join(failures)
    assert server.proc.poll() is None and "Traceback" not in server.logs(), server.logs()[-3000:]


def test_405_names_the_allowed_methods(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}{CHAT}")
    assert r.status_code == 405 and r.headers["allow"] == "POST", (r.status_code, r.headers)
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.delete(f"{server.url}/health")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
