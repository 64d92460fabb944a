"""The gRPC API (`--grpc-port`, radixserve/grpc/) of a real `radixserve serve` with the embedded
SmolLM2, beside its HTTP API: the same greedy tokens as POST /generate, the same validation
messages as status codes, Abort and a killed client both freeing the KV cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from radixserve.grpc import stubs
from tests.server.server_harness import ServerProcess

pytestmark = pytest.mark.slow

pb2, pb2_grpc = stubs.load()
PROMPT = "The three largest cities of Italy are"
LONG = {"max_new_tokens": 1500, "ignore_eos": True, "temperature": 0.0}  # minutes of decoding on CPU


@pytest.fixture(scope="module")
def grpc_target(smol_server: ServerProcess) -> str:
    info = httpx.get(f"{smol_server.url}/get_server_info", headers=smol_server.headers, timeout=30).json()
    return f"127.0.0.1:{info['grpc_port']}"


@pytest.fixture(scope="module")
def stub(grpc_target: str) -> Iterator[Any]:
    with grpc.insecure_channel(grpc_target) as channel:
        yield pb2_grpc.RadixServeStub(channel)


def auth(server: ServerProcess) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {server.api_key}")]


def wait_kv_free(server: ServerProcess, timeout: float = 15.0) -> dict[str, float]:
    """No request running or waiting and no KV held by one (cached prefixes are not "used")."""
    deadline = time.monotonic() + timeout
    while True:
        load = server.load()
        if not load["num_running_reqs"] and not load["num_waiting_reqs"] and load["kv_used_tokens"] == 0:
            return load
        assert time.monotonic() < deadline, f"the request still holds KV after {timeout}s: {load}"
        time.sleep(0.1)


def assert_kv_consistent(server: ServerProcess) -> None:
    wait_kv_free(server)
    check = httpx.get(f"{server.url}/check_kv_integrity", headers=server.headers, timeout=30)
    assert check.status_code == 200 and check.json()["success"], check.text


def test_streaming_generate_is_token_identical_to_http_generate(smol_server: ServerProcess, stub: Any) -> None:
    http = httpx.post(f"{smol_server.url}/generate", headers=smol_server.headers, timeout=60, json={
        "text": PROMPT, "sampling_params": {"temperature": 0, "max_new_tokens": 16}}).json()
    request = pb2.GenerateRequest(text=PROMPT, return_text=True, return_logprob=True, top_logprobs_num=2,
                                  sampling_params=pb2.SamplingParams(temperature=0, max_new_tokens=16))
    messages = list(stub.Generate(request, metadata=auth(smol_server), timeout=60))
    assert len(messages) > 1  # streamed step by step, not in one piece
    ids = [t for m in messages for t in m.token_ids]
    assert ids == http["output_ids"] and len(ids) > 0
    assert "".join(m.text for m in messages) == http["text"]
    last = messages[-1]
    assert last.finish_reason.type == http["meta_info"]["finish_reason"]["type"]
    assert last.completion_tokens == len(ids) and last.prompt_tokens == http["meta_info"]["prompt_tokens"]
    assert last.cached_tokens > 0  # the same prompt again: its prefix came from the radix cache
    logprobs = [lp for m in messages for lp in m.logprobs]
    assert [lp.token_id for lp in logprobs] == ids
    assert all(lp.logprob <= 0 and len(lp.top_logprobs) == 2 for lp in logprobs)
    # Greedy: each token is its step's most likely one.
    assert all(lp.top_logprobs[0].token_id == lp.token_id for lp in logprobs)



def test_token_ids_in_give_the_same_tokens_as_http(smol_server: ServerProcess, stub: Any) -> None:
    prompt_ids = [504, 3458, 282, 4649, 314, 260, 1345, 282]
    greedy = {"temperature": 0, "max_new_tokens": 8}
    http = httpx.post(f"{smol_server.url}/generate", headers=smol_server.headers, timeout=60, json={
        "input_ids": prompt_ids, "sampling_params": greedy}).json()
    messages = list(stub.Generate(pb2.GenerateRequest(input_ids=pb2.TokenIds(ids=prompt_ids),
                                                      sampling_params=pb2.SamplingParams(**greedy)),
                                  metadata=auth(smol_server), timeout=60))
    assert [t for m in messages for t in m.token_ids] == http["output_ids"]
    assert all(m.text == "" for m in messages)  # token ids only unless return_text
    assert messages[-1].prompt_tokens == len(prompt_ids)


def status(info: pytest.ExceptionInfo[grpc.RpcError]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """A failed call's code, message and trailing metadata."""
    err: Any = info.value  # a grpc.Call too, which the RpcError type does not say
    return err.code(), err.details(), {k: v for k, v in err.trailing_metadata() or ()}


def http_error(server: ServerProcess, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{server.url}/generate", headers=server.headers, json=body, timeout=30)
    assert r.status_code == 400, r.text
    return dict(r.json()["error"])


@pytest.mark.parametrize(("sampling", "field"), [({"max_new_tokens": -1}, "max_new_tokens"),
                                                 ({"temperature": -1.0}, "temperature"),
                                                 ({"top_p": 0.0}, "top_p")])
def test_bad_input_is_invalid_argument_naming_the_field(smol_server: ServerProcess, stub: Any,
                                                        sampling: dict[str, Any], field: str) -> None:
    request = pb2.GenerateRequest(text=PROMPT, sampling_params=pb2.SamplingParams(**sampling))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(request, metadata=auth(smol_server), timeout=30))
    code, message, trailing = status(info)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in message and trailing["param"] == field
    assert message == http_error(smol_server, {"text": PROMPT, "sampling_params": sampling})["message"]


def test_other_refusals_map_to_status_codes(smol_server: ServerProcess, stub: Any) -> None:
    md = auth(smol_server)
    with pytest.raises(grpc.RpcError) as no_prompt:
        list(stub.Generate(pb2.GenerateRequest(), metadata=md, timeout=30))
    assert status(no_prompt)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, http_error(smol_server, {})["message"])
    with pytest.raises(grpc.RpcError) as bad_id:
        list(stub.Generate(pb2.GenerateRequest(input_ids=pb2.TokenIds(ids=[10**9])), metadata=md, timeout=30))
    assert status(bad_id)[:2] == (grpc.StatusCode.INVALID_ARGUMENT,
                                  http_error(smol_server, {"input_ids": [10**9]})["message"])
    with pytest.raises(grpc.RpcError) as no_key:
        list(stub.Generate(pb2.GenerateRequest(text=PROMPT), timeout=30))
    assert status(no_key)[0] == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as wrong_key:
        stub.GetModelInfo(pb2.GetModelInfoRequest(), metadata=[("authorization", "Bearer nope")], timeout=30)
    assert status(wrong_key)[0] == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Abort(pb2.AbortRequest(rid="no-such-request"), metadata=md, timeout=30)
    code, message, trailing = status(unknown)
    assert code == grpc.StatusCode.NOT_FOUND and trailing["param"] == "rid" and "no-such-request" in message


def test_info_and_health(smol_server: ServerProcess, stub: Any) -> None:
    md = auth(smol_server)
    model = stub.GetModelInfo(pb2.GetModelInfoRequest(), metadata=md, timeout=30)
    card = httpx.get(f"{smol_server.url}/v1/models", headers=smol_server.headers, timeout=30).json()["data"][0]
    assert (model.model_name, model.context_length) == (card["id"], card["max_model_len"])
    assert model.vocab_size > 0 and model.max_total_num_tokens > 0
    info = json.loads(stub.GetServerInfo(pb2.GetServerInfoRequest(), metadata=md, timeout=30).json)
    assert info["api_key"] == "<set>" and info["grpc_port"] > 0 and "num_running_reqs" in info["load"]
    serving = pb2.HealthCheckResponse.SERVING
    assert stub.HealthCheck(pb2.HealthCheckRequest(), timeout=30).status == serving  # no key needed
    assert stub.HealthCheck(pb2.HealthCheckRequest(generate=True), metadata=md, timeout=60).status == serving


def test_abort_by_rid_frees_the_kv(smol_server: ServerProcess, stub: Any) -> None:
    wait_kv_free(smol_server)
    md = auth(smol_server)
    stream = stub.Generate(pb2.GenerateRequest(text=PROMPT, rid="grpc-abort-me",
                                               sampling_params=pb2.SamplingParams(**LONG)), metadata=md, timeout=120)
    first = next(stream)
    assert first.rid == "grpc-abort-me" and not first.HasField("finish_reason")
    busy = smol_server.load()
    assert busy["num_running_reqs"] == 1 and busy["kv_used_tokens"] > 0
    assert stub.Abort(pb2.AbortRequest(rid="grpc-abort-me"), metadata=md, timeout=30).success
    rest = list(stream)  # the stream ends, with an abort, long before 1500 tokens
    assert rest and rest[-1].finish_reason.type == "abort"
    assert rest[-1].completion_tokens < LONG["max_new_tokens"]
    assert_kv_consistent(smol_server)


CLIENT = textwrap.dedent("""
    import sys
    import grpc
    from radixserve.grpc import stubs

    pb2, pb2_grpc = stubs.load()
    target, key = sys.argv[1], sys.argv[2]
    stub = pb2_grpc.RadixServeStub(grpc.insecure_channel(target))
    request = pb2.GenerateRequest(text="Tell me a long story about a dragon.", sampling_params=pb2.SamplingParams(
        max_new_tokens=1500, ignore_eos=True))
    for message in stub.Generate(request, metadata=[("authorization", "Bearer " + key)]):
        if message.token_ids:
            print("streaming", flush=True)
""")


def test_a_killed_client_aborts_its_request(smol_server: ServerProcess, grpc_target: str, stub: Any) -> None:
    wait_kv_free(smol_server)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, grpc_target, str(smol_server.api_key)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdout.readline() == "streaming\n"
        busy = smol_server.load()
        assert busy["num_running_reqs"] == 1 and busy["kv_used_tokens"] > 0
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(10)
    assert_kv_consistent(smol_server)  # aborted, not left to decode 1500 tokens
    # The server still serves, both ways.
    again = list(stub.Generate(pb2.GenerateRequest(text=PROMPT, sampling_params=pb2.SamplingParams(
        temperature=0, max_new_tokens=4)), metadata=auth(smol_server), timeout=60))
    assert sum(len(m.token_ids) for m in again) == 4
    assert httpx.get(f"{smol_server.url}/health", timeout=10).status_code == 200


def test_the_build_step_generates_the_modules_from_the_proto(tmp_path: Path) -> None:
    """What setup.py's build_py runs (into the build directory; in place for `pip install -e .`)."""
    from radixserve.grpc import codegen

    root = Path(stubs.__file__).resolve().parents[2]
    written = codegen.generate(root, tmp_path)
    package = tmp_path / "radixserve" / "grpc"
    assert sorted(p.name for p in written) == sorted(codegen.OUTPUTS)
    assert "from radixserve.grpc import radixserve_pb2" in (package / "radixserve_pb2_grpc.py").read_text()
    proto = package / codegen.PROTO
    proto.write_text((root / "radixserve" / "grpc" / codegen.PROTO).read_text())
    generated_at = (package / "radixserve_pb2.py").stat().st_mtime
    os.utime(proto, (generated_at - 10, generated_at - 10))
    assert not codegen.is_stale(package)
    os.utime(proto, (generated_at + 10, generated_at + 10))  # the .proto edited since: generate again
    assert codegen.is_stale(package)
