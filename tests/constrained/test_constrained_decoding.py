"""Grammar-constrained decoding on a tiny random Llama, both backends: every output matches its
regex / JSON schema / EBNF, unconstrained neighbours are untouched, and the scheduler's paths
(n > 1, abort, retraction, chunked prefill, overlap) keep the grammar state right."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from radixserve import Engine
from radixserve.errors import InvalidRequestError
from radixserve.managers.io_struct import AbortReq, TokenizedGenerateReqInput
from radixserve.sampling.sampling_params import SamplingParams

BACKENDS = ["xgrammar", "llguidance"]
REGEXES = [r"(yes|no)", r"[a-z]{3,8}@[a-z]{2,5}\.(com|org)", r"-?[0-9]{1,4}(\.[0-9]{1,2})?",
           r"(red|green|blue)( and (red|green|blue)){0,3}", r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}"]
SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 4},
                                      "ok": {"type": "boolean"}},
     "required": ["tags", "ok"], "additionalProperties": False},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 999},
        "role": {"enum": ["admin", "guest"]}}, "required": ["id", "role"], "additionalProperties": False},
        "note": {"type": "string", "maxLength": 5}},
     "required": ["user"], "additionalProperties": False},  # nested, "note" optional
    {"type": "object", "properties": {"v": {"anyOf": [{"type": "integer", "minimum": -5, "maximum": 5},
                                                      {"type": "null"}, {"enum": ["x", "y"]}]}},
     "required": ["v"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 3},
]
EBNF = 'root ::= "ab" ("c" | "d")* "!"'
PROMPTS = ["Hello world", "The answer is", "Write JSON:", "q"]


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request: pytest.FixtureRequest, tiny_llama: Path) -> Iterator[Engine]:
    with Engine(model_path=str(tiny_llama), max_total_tokens=4096, log_level="warning",
                grammar_backend=request.param) as e:
        yield e


def _variants(n: int) -> list[dict[str, Any]]:
    """Greedy, then seeded samples (one with top_p / top_k)."""
    out: list[dict[str, Any]] = [{"temperature": 0}]
    out += [{"temperature": 1.0, "seed": 7 + i} for i in range(n - 2)]
    out.append({"temperature": 0.8, "top_p": 0.9, "top_k": 50, "seed": 3})
    return out


def _check_done(engine: Engine) -> None:
    sched = engine.scheduler
    assert not sched.has_work() and sched.grammar is not None and not sched.grammar.queue
    sched.check_memory()


def test_regex_outputs_match(engine: Engine) -> None:
    cases = [(p, rx, v) for rx in REGEXES for p, v in zip(PROMPTS, _variants(3), strict=False)]
    outs = engine.generate([p for p, _, _ in cases],
                           [{"regex": rx, "max_new_tokens": 40, **v} for _, rx, v in cases])
    for (_, rx, _), o in zip(cases, outs, strict=True):
        assert o["meta_info"]["finish_reason"]["type"] == "stop", (rx, o)
        assert re.fullmatch(rx, o["text"]), (rx, o["text"])
    _check_done(engine)


def test_json_schema_outputs_validate(engine: Engine) -> None:
    cases = [(p, s, v) for s in SCHEMAS for p, v in zip(PROMPTS, _variants(3), strict=False)]
    # A dict is accepted for json_schema and sent on as a string.
    outs = engine.generate([p for p, _, _ in cases],
                           [{"json_schema": s if i % 2 else json.dumps(s), "max_new_tokens": 256, **v}
                            for i, (_, s, v) in enumerate(cases)])
    for (_, schema, _), o in zip(cases, outs, strict=True):
        assert o["meta_info"]["finish_reason"]["type"] == "stop", (schema, o)
        jsonschema.validate(json.loads(o["text"]), schema)
    _check_done(engine)


def test_ebnf_outputs_match(engine: Engine) -> None:
    outs = engine.generate(PROMPTS, [{"ebnf": EBNF, "max_new_tokens": 60, **v} for v in _variants(4)])
    for o in outs:
        assert o["meta_info"]["finish_reason"]["type"] == "stop", o
        assert re.fullmatch(r"ab[cd]*!", o["text"]), o["text"]


def test_unconstrained_rows_are_untouched(engine: Engine) -> None:
    """32 requests, half constrained: the other half is what it is alone (greedy), whichever
    backend fills the constrained rows' masks."""
    prompts = [[100 + (i * 7 + j) % 900 for j in range(3 + i % 11)] for i in range(32)]
    plain = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
    grammars: list[dict[str, Any]] = [{"regex": REGEXES[i % len(REGEXES)]} if i % 4 else {"json_schema": SCHEMAS[i % len(SCHEMAS)]}
                for i in range(16)]
    mixed = [plain if i % 2 == 0 else {**grammars[i // 2], "max_new_tokens": 48, **_variants(3)[i % 3]}
             for i in range(32)]
    engine.scheduler.flush_cache()
    together = engine.generate(input_ids=prompts, sampling_params=mixed)
    engine.scheduler.flush_cache()
    alone = engine.generate(input_ids=prompts[::2], sampling_params=plain)
    assert [o["output_ids"] for o in together[::2]] == [o["output_ids"] for o in alone]
    for i in range(1, 32, 2):
        grammar, o = grammars[i // 2], together[i]
        if "regex" in grammar:
            assert re.fullmatch(grammar["regex"], o["text"]), o
        elif o["meta_info"]["finish_reason"]["type"] == "stop":  # a sampled object may run out of tokens
            jsonschema.validate(json.loads(o["text"]), grammar["json_schema"])
    _check_done(engine)


def test_n_copies_each_have_their_own_matcher(engine: Engine) -> None:
    rx = r"[a-z]{2,6}( [a-z]{2,6}){1,3}"
    outs = engine.generate(["Say:"], {"regex": rx, "n": 4, "temperature": 1.0, "seed": 11, "max_new_tokens": 40})
    assert len(outs) == 4
    assert all(re.fullmatch(rx, o["text"]) for o in outs), [o["text"] for o in outs]
    assert len({o["text"] for o in outs}) > 1


def test_grammar_decides_the_stop(engine: Engine) -> None:
    """ignore_eos and min_new_tokens do not keep a complete grammar going."""
    outs = engine.generate(["a", "b"], [{"regex": "(yes|no)", "ignore_eos": True, "max_new_tokens": 20, "temperature": 0},
                                        {"regex": "(yes|no)", "min_new_tokens": 10, "max_new_tokens": 20,
                                         "temperature": 0}])
    for o in outs:
        assert o["text"] in ("yes", "no") and o["meta_info"]["finish_reason"]["type"] == "stop"


def test_abort_midway_and_while_compiling(engine: Engine) -> None:
    sched = engine.scheduler
    params = SamplingParams.from_dict({"regex": "[0-9]{40}", "max_new_tokens": 60, "temperature": 0})
    sched.handle(TokenizedGenerateReqInput(rid="mid", input_ids=[5, 6, 7], sampling_params=params))
    req = None
    for _ in range(6):
        sched.step()
        req = req or next((r for r in sched.running_batch.reqs if r.rid == "mid"), None)
    assert req is not None and req.grammar is not None and 0 < len(req.output_ids) < 40
    sched.handle(AbortReq("mid"))
    # A grammar nobody compiled yet: aborted while it waits for its grammar.
    fresh = SamplingParams.from_dict({"regex": "[a-f]{7}z", "max_new_tokens": 8})
    sched.handle(TokenizedGenerateReqInput(rid="queued", input_ids=[5, 6], sampling_params=fresh))
    sched.handle(AbortReq("queued"))
    reasons = {}
    while sched.has_work():
        out = sched.step()
        for rid, reason in zip(out.rids if out else [], out.finished_reasons if out else [], strict=True):
            if reason is not None:
                reasons[rid] = reason
    assert reasons["mid"].type == "abort" and reasons["queued"].type == "abort"
    assert getattr(req, "grammar") is None  # noqa: B009 (freed; mypy narrowed it above)
    _check_done(engine)
    assert re.fullmatch("(yes|no)", engine.generate("x", {"regex": "(yes|no)", "max_new_tokens": 5})["text"])


def test_invalid_grammars_are_refused_at_the_edge(engine: Engine) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"json_schema": "{not json"}, "json_schema"),
        ({"json_schema": '"a string"'}, "json_schema"),
        ({"json_schema": {"type": "object", "properties": {"a": {"type": "wat"}}}}, "json_schema"),
        ({"regex": r"(a)\1"}, "regex"),  # a backreference
        ({"regex": r"(?=a)b"}, "regex"),  # a lookahead
        ({"regex": "["}, "regex"),
        ({"ebnf": 'root ::= "a" | '}, "ebnf") if engine.server_args.grammar_backend == "xgrammar"
        else ({"ebnf": "root ::= undefined_rule"}, "ebnf"),
        ({"regex": "a", "json_schema": "{}"}, "regex"),
        ({"regex": "a", "ebnf": 'root ::= "a"'}, "ebnf"),
        ({"logit_bias": {"999999": 1.0}}, "logit_bias"),
        ({"logit_bias": {"5": 101.0}}, "logit_bias"),
        ({"logit_bias": {"5": float("nan")}}, "logit_bias"),
        ({"logit_bias": {"x": 1.0}}, "logit_bias"),
        ({"regex": ""}, "regex"),
    ]
    for params, param in bad:
        with pytest.raises(InvalidRequestError) as info:
            engine.generate("hi", {**params, "max_new_tokens": 4})
        assert info.value.param == param, (params, info.value)
    assert engine.generate("hi", {"regex": "(yes|no)", "max_new_tokens": 4})["text"] in ("yes", "no")


def test_scheduler_refuses_a_grammar_that_does_not_compile(engine: Engine) -> None:
    """Past the edge (a request built elsewhere): the request fails alone, the engine serves on."""
    sched = engine.scheduler
    params = SamplingParams(max_new_tokens=4, regex=r"(a)\1")
    sched.handle(TokenizedGenerateReqInput(rid="bad-grammar", input_ids=[5, 6], sampling_params=params))
    reason = None
    while sched.has_work():
        out = sched.step()
        if out is not None and "bad-grammar" in out.rids:
            reason = out.finished_reasons[out.rids.index("bad-grammar")]
    assert reason is not None and reason.type == "abort" and reason.error == "invalid_request"
    assert "regex" in (reason.message or "")
    _check_done(engine)


def test_logit_bias_forces_and_bans(engine: Engine) -> None:
    base = engine.generate("The answer is", {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True})
    first = base["output_ids"][0]
    banned = engine.generate("The answer is", {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True,
                                               "logit_bias": {str(first): -100}})
    assert first not in banned["output_ids"]
    forced = engine.generate(["The answer is", "x"], [
        {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True, "logit_bias": {"1234": 100}},
        {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}])
    assert forced[0]["output_ids"] == [1234] * 4
    assert forced[1]["output_ids"] == engine.generate("x", {"max_new_tokens": 4, "temperature": 0,
                                                           "ignore_eos": True})["output_ids"]
