"""radixserve.lang against the running server (RuntimeEndpoint) gives the Engine's greedy results;
the native /generate's `logprob_start_len` and `max_new_tokens: 0` over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from radixserve import lang
from tests.server.server_harness import ServerProcess

pytestmark = pytest.mark.slow

SYSTEM = "You are a concise assistant for a museum. Visitors ask short questions; you answer briefly. " * 8
PROMPT = "Museums keep art, history and science for everyone. The oldest museum in the world is"


@lang.function
def visit(s: lang.ProgramState, question: str) -> lang.ForkGroup:
    s += lang.system(SYSTEM)
    s += lang.user(question)
    s += lang.assistant(lang.select("open", ["Yes", "No", "It depends"]))
    branches = s.fork(2)
    for i, b in enumerate(branches):
        b += lang.user(f"Give tip number {i + 1}.")
        b += lang.assistant(lang.gen("tip", max_tokens=5, temperature=0, stop="\n"))
    branches.join()
    return branches


@pytest.fixture(scope="module")
def endpoint(smol_server: ServerProcess) -> Any:
    # No tokenizer given: the chat template is loaded from the model path /get_server_info reports.
    ep = lang.RuntimeEndpoint(smol_server.url, api_key=smol_server.api_key)
    yield ep
    ep.close()


def test_same_program_same_greedy_results_on_engine_and_server(smol_engine: Any, endpoint: Any) -> None:
    on_server = visit.run(question="Is the Louvre open on Mondays?", backend=endpoint)
    on_engine = visit.run(question="Is the Louvre open on Mondays?", backend=lang.EngineBackend(smol_engine))
    assert on_server.text() == on_engine.text()
    assert on_server["open"] == on_engine["open"]
    assert on_server.get_meta_info("open")["logprob_sums"] == pytest.approx(
        on_engine.get_meta_info("open")["logprob_sums"], abs=1e-4)
    tips = [b["tip"] for b in on_server.ret_value]
    assert tips == [b["tip"] for b in on_engine.ret_value] and all(tips)
    assert [b.text() for b in on_server.ret_value] == [b.text() for b in on_engine.ret_value]


def test_input_token_logprobs_over_http_match_the_engine(smol_server: ServerProcess, smol_engine: Any) -> None:
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 0}, "logprob_start_len": 0}
    r = httpx.post(f"{smol_server.url}/generate", json=body, headers=smol_server.headers, timeout=60)
    assert r.status_code == 200, r.text
    meta = r.json()["meta_info"]
    assert r.json()["output_ids"] == [] and meta["completion_tokens"] == 0
    got = meta["input_token_logprobs"]
    want = smol_engine.generate(PROMPT, {"max_new_tokens": 0}, logprob_start_len=0)["meta_info"]["input_token_logprobs"]
    assert [t for _, t in got] == [t for _, t in want] and got[0][0] is None
    assert max(abs(a[0] - b[0]) for a, b in zip(got[1:], want[1:], strict=True)) < 1e-4
    # From a later position, on a prompt now cached: the same values for the positions asked.
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 1, "temperature": 0}, "logprob_start_len": 5}
    later = httpx.post(f"{smol_server.url}/generate", json=body, headers=smol_server.headers, timeout=60).json()
    assert later["meta_info"]["cached_tokens"] == 4
    assert [t for _, t in later["meta_info"]["input_token_logprobs"]] == [t for _, t in got[5:]]
    assert [lp for lp, _ in later["meta_info"]["input_token_logprobs"]] == pytest.approx(
        [lp for lp, _ in got[5:]], abs=1e-4)


@pytest.mark.parametrize("bad", [10_000, -2, "3"])
def test_bad_logprob_start_len_is_a_400_naming_the_field(smol_server: ServerProcess, bad: object) -> None:
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 1}, "logprob_start_len": bad}
    r = httpx.post(f"{smol_server.url}/generate", json=body, headers=smol_server.headers, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "logprob_start_len" and "logprob_start_len" in err["message"]
    with pytest.raises(lang.BackendError, match="logprob_start_len"):
        lang.RuntimeEndpoint(smol_server.url, api_key=smol_server.api_key).generate(
            [lang.GenerateCall(PROMPT, {"max_new_tokens": 1}, logprob_start_len=10_000)])
