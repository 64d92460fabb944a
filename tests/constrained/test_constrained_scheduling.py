"""Grammar state through the scheduler's other paths (retraction, chunked prefill, the overlap
schedule, TP-style agreement), the sampler's mask and bias, the params' wire format, and the
embedded model producing a schema-valid object."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from radixserve import Engine
from radixserve.constrained.base import GrammarMatcher
from radixserve.constrained.manager import GrammarManager
from radixserve.errors import InvalidRequestError
from radixserve.managers.io_struct import TokenizedGenerateReqInput
from radixserve.managers.ipc import ENCODER, SCHEDULER_INPUT_DECODER
from radixserve.sampling.sampler import SamplingBatchInfo, sample
from radixserve.sampling.sampling_params import SamplingParams, SamplingParamsError

DIGITS = r"[0-9]{24}"


def test_retraction_keeps_the_matcher_state(tiny_llama: Path) -> None:
    """A tiny KV pool forces retractions; re-prefill of a retracted request does not feed its
    output to the matcher again, so every output still matches."""
    prompts = [[200 + (i * 13 + j) % 700 for j in range(12 + i % 5)] for i in range(12)]
    params: list[dict[str, Any]] = [{"regex": r"[0-9]{30}" if i % 2 else r"[0-9]{26}(ab|cd)", "max_new_tokens": 32,
               **({"temperature": 0} if i % 3 else {"temperature": 1.0, "seed": i})} for i in range(12)]
    with Engine(model_path=str(tiny_llama), max_total_tokens=200, max_running_requests=12,
                log_level="warning") as e:
        outs = e.generate(input_ids=prompts, sampling_params=params)
        assert e.scheduler.stats.num_retractions > 0
        e.scheduler.check_memory()
    for p, o in zip(params, outs, strict=True):
        assert o["meta_info"]["finish_reason"]["type"] == "stop" and re.fullmatch(p["regex"], o["text"]), o


def test_chunked_prefill_masks_only_the_sampled_row(tiny_llama: Path) -> None:
    prompts = [[100 + (i * 7 + j) % 900 for j in range(n)] for i, n in enumerate([3, 17, 30, 9])]
    params = [{"regex": r"(red|green|blue)( and (red|green|blue)){0,3}", "max_new_tokens": 30, "temperature": 0}
              if i % 2 else {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True} for i in range(4)]
    results = []
    for chunk in (-1, 7):
        with Engine(model_path=str(tiny_llama), max_total_tokens=4096, chunked_prefill_size=chunk,
                    log_level="warning") as e:
            results.append([o["output_ids"] for o in e.generate(input_ids=prompts, sampling_params=params)])
            e.scheduler.check_memory()
    assert results[0] == results[1]


def test_overlap_schedule_feeds_grammars_before_sampling(tiny_llama: Path) -> None:
    """Under the overlap schedule a constrained batch overlaps too: the next step's forward is
    launched first, the grammars take the previous tokens, then the step samples. Same tokens as
    the plain loop, finishes at every step included."""
    prompts = [[100 + (i * 7 + j) % 900 for j in range(5 + i)] for i in range(6)]
    params: list[dict[str, Any]] = [
        {"regex": DIGITS, "max_new_tokens": 30, "temperature": 0},
        {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True},
        {"regex": r"[a-z]{3,8}@[a-z]{2,5}\.(com|org)", "max_new_tokens": 30, "temperature": 1.0, "seed": 5},
        {"json_schema": {"type": "object", "properties": {"a": {"enum": ["x", "yy"]}}, "required": ["a"]},
         "max_new_tokens": 40, "temperature": 0},
        {"regex": "(yes|no)", "max_new_tokens": 10, "temperature": 0},
        {"regex": DIGITS, "max_new_tokens": 12, "temperature": 0},  # ends by length, mid-grammar
    ]
    outs, stats = {}, {}
    for mode in ("off", "on"):
        with Engine(model_path=str(tiny_llama), max_total_tokens=4096, overlap_schedule=mode,
                    log_level="warning") as e:
            got = e.generate(input_ids=prompts, sampling_params=params)
            outs[mode] = [(o["output_ids"], o["meta_info"]["finish_reason"]["type"]) for o in got]
            stats[mode] = e.scheduler.stats.num_overlap_steps
            e.scheduler.check_memory()
    assert outs["on"] == outs["off"]
    assert stats["off"] == 0 and stats["on"] > 10
    assert [r for _, r in outs["on"]] == ["stop", "length", "stop", "stop", "stop", "length"]


def test_grammar_backend_none_refuses(tiny_llama: Path) -> None:
    with Engine(model_path=str(tiny_llama), max_total_tokens=1024, grammar_backend="none", log_level="warning") as e:
        for field, value in [("regex", "a+"), ("json_schema", "{}"), ("ebnf", 'root ::= "a"')]:
            with pytest.raises(InvalidRequestError) as info:
                e.generate("hi", {field: value})
            assert info.value.param == field and "grammar-backend" in str(info.value)
        # Past the edge, the scheduler refuses it too.
        sched = e.scheduler
        sched.handle(TokenizedGenerateReqInput(rid="r", input_ids=[5], sampling_params=SamplingParams(regex="a")))
        out = sched.step()
        assert out is not None and out.finished_reasons[0] is not None
        assert out.finished_reasons[0].error == "invalid_request"
        assert e.generate("hi", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2


def test_ranks_admit_the_agreed_number(smol_tokenizer_light: Any) -> None:
    """pop_ready admits only as many as the all-reduce (min over ranks) allows, in order."""
    mgr: GrammarManager[str] = GrammarManager("xgrammar", smol_tokenizer_light, 49152, [2])
    for i, rx in enumerate(["a+", "b+", "c+"]):
        mgr.submit(f"r{i}", "regex", rx)
    mgr.compiled("regex", "c+").result()
    for kind, src in [("regex", "a+"), ("regex", "b+")]:
        mgr.compiled(kind, src).result()
    got = mgr.pop_ready(agree=lambda n: min(n, 1))
    assert [r.item for r in got] == ["r0"] and got[0].matcher is not None
    assert [r.item for r in mgr.pop_ready()] == ["r1", "r2"]
    mgr.submit("bad", "regex", r"(a)\1")
    ready = mgr.pop_ready(wait_s=5.0)
    assert ready[0].matcher is None and "ackreference" in (ready[0].error or "")
    mgr.shutdown()


@pytest.fixture(scope="module")
def smol_tokenizer_light() -> Any:
    from radixserve.model_loader.tokenizer import load_tokenizer
    from tests.conftest import tokenizer_source

    return load_tokenizer(tokenizer_source())


class _Req:
    def __init__(self, params: SamplingParams, grammar: Any = None) -> None:
        self.sampling_params = params
        self.origin_input_ids = [1, 2, 3]
        self.output_ids: list[int] = []
        self.generator: torch.Generator | None = None
        self.return_logprob = False
        self.top_logprobs_num = 0
        self.grammar: Any = grammar
        self.stop_ids_for_min_tokens = [0]


class _OnlyToken(GrammarMatcher):
    """A matcher allowing one token (to test the mask without a backend)."""

    def __init__(self, token: int, vocab_size: int) -> None:
        self.token, self.vocab_size = token, vocab_size

    def accept_token(self, token: int) -> bool:
        return token == self.token

    def is_terminated(self) -> bool:
        return False

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        bitmask[row] = 0
        word, bit = divmod(self.token, 32)
        bitmask[row, word] = torch.tensor(1 << bit, dtype=torch.int64).to(torch.int32)


def test_sampler_mask_and_bias() -> None:
    torch.manual_seed(0)
    vocab = 100  # the logits are wider than the grammar's vocabulary (70): ids 70..99 are padding
    logits = torch.randn(3, vocab)
    logits[1, 95] = 50.0  # a padding id the model likes: never allowed for a constrained row
    greedy = SamplingParams(temperature=0)
    reqs = [_Req(greedy), _Req(greedy, _OnlyToken(31, 70)),
            _Req(SamplingParams(temperature=0, logit_bias={7: 100.0}, min_new_tokens=5))]
    out = sample(logits, SamplingBatchInfo.from_reqs(reqs, torch.device("cpu")))
    ids = out.next_token_ids.tolist()
    assert ids[0] == int(logits[0].argmax()) and ids[1] == 31 and ids[2] == 7
    # The grammar wins over min_new_tokens: a constrained row may take a stop id if its grammar says so.
    reqs = [_Req(SamplingParams(temperature=0.7, seed=1, min_new_tokens=5), _OnlyToken(0, 70))]
    reqs[0].generator = torch.Generator().manual_seed(1)
    assert sample(logits[:1], SamplingBatchInfo.from_reqs(reqs, torch.device("cpu"))).next_token_ids.tolist() == [0]
    # Nothing constrained, nothing biased: no mask, no bias built.
    info = SamplingBatchInfo.from_reqs([_Req(greedy)], torch.device("cpu"))
    assert info.vocab_mask is None and info.logit_bias is None


def test_params_survive_the_wire() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    p = SamplingParams.from_dict({"json_schema": schema, "logit_bias": {"5": -100, "17": 2.5}})
    assert json.loads(p.json_schema or "") == schema and p.logit_bias == {5: -100, 17: 2.5}
    msg = TokenizedGenerateReqInput(rid="x", input_ids=[1], sampling_params=p)
    back = SCHEDULER_INPUT_DECODER.decode(ENCODER.encode(msg))
    assert isinstance(back, TokenizedGenerateReqInput) and back.sampling_params == p
    assert back.sampling_params.grammar == ("json_schema", p.json_schema)
    bad_params: list[tuple[dict[str, Any], str]] = [({"regex": "a", "ebnf": "b"}, "ebnf"), ({"json_schema": "[1]"}, "json_schema"),
                       ({"regex": 5}, "regex"), ({"logit_bias": [1, 2]}, "logit_bias"),
                       ({"logit_bias": {"-3": 1}}, "logit_bias")]
    for bad, field in bad_params:
        with pytest.raises(SamplingParamsError) as info:
            SamplingParams.from_dict(bad)
        assert info.value.param == field, bad


@pytest.mark.slow
def test_embedded_model_writes_a_schema_valid_object(smol_engine: Any) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "population": {"type": "integer", "minimum": 0, "maximum": 99999999}},
              "required": ["city", "population"], "additionalProperties": False}
    out = smol_engine.chat([{"role": "user", "content": "Give the capital of France and its population as JSON."}],
                           sampling_params={"json_schema": schema, "max_new_tokens": 64, "temperature": 0})
    assert out["meta_info"]["finish_reason"]["type"] == "stop", out
    jsonschema.validate(json.loads(out["text"]), schema)


def _backend_built(grammar: GrammarManager[Any]) -> bool:
    return grammar._backend is not None


def test_server_warm_up_builds_the_grammar_backend(tiny_llama: Path) -> None:
    """The scheduler process's warm-up builds the grammar backend (it reads the whole vocabulary),
    so the first constrained request does not pay for it; the Engine builds it lazily."""
    from radixserve.managers.scheduler_process import warm_up

    with Engine(model_path=str(tiny_llama), max_total_tokens=1024, log_level="warning") as e:
        grammar = e.scheduler.grammar
        assert grammar is not None and not _backend_built(grammar)
        warm_up(e.scheduler)
        assert _backend_built(grammar)
        out = e.generate(input_ids=[5, 6, 7], sampling_params={"regex": "[ab]{4}", "max_new_tokens": 8})
        assert re.fullmatch("[ab]{4}", out["text"]), out
