"""Overlap schedule (forced on, on CPU): the same tokens and finish reasons as the plain loop,
through finishes at every step, stops, seeds, a tiny pool, aborts and requests it cannot overlap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from radixserve import Engine
from radixserve.managers.io_struct import AbortReq, TokenizedGenerateReqInput
from radixserve.sampling.sampling_params import SamplingParams

PROMPTS = [[100 + (i * 7 + j) % 900 for j in range(n)] for i, n in enumerate([3, 17, 40, 1, 64, 9, 33, 120])]


def _params(i: int) -> dict[str, Any]:
    """Different lengths so requests finish at different steps, and different finish causes."""
    p: dict[str, Any] = {"max_new_tokens": 3 + 5 * i, "temperature": 0, "ignore_eos": True}
    if i % 3 == 1:
        p.update(temperature=0.8, top_p=0.9, seed=i)
    if i % 4 == 2:
        p["stop"] = ["a"]  # a stop string: checked on the host, one step late under overlap
    return p


def _run(path: str, overlap: str, prompts: list[list[int]], params: list[dict[str, Any]],
         **kw: Any) -> tuple[list[tuple[list[int], str]], Any]:
    with Engine(model_path=path, log_level="warning", overlap_schedule=overlap, **kw) as e:
        outs = []
        for _ in range(2):  # the second round also runs on cached prefixes
            got = e.generate(input_ids=prompts, sampling_params=params)
            outs += [(o["output_ids"], o["meta_info"]["finish_reason"]["type"]) for o in got]
        e.scheduler.check_memory()
        return outs, e.scheduler.stats


@pytest.mark.parametrize("name", ["qwen2"])
def test_overlap_matches_the_plain_loop(tiny_models: dict[str, Path], name: str) -> None:
    params = [_params(i) for i in range(len(PROMPTS))]
    plain, off = _run(str(tiny_models[name]), "off", PROMPTS, params, max_total_tokens=4096)
    overlapped, on = _run(str(tiny_models[name]), "on", PROMPTS, params, max_total_tokens=4096)
    assert off.num_overlap_steps == 0 and on.num_overlap_steps > 20
    assert overlapped == plain


def test_overlap_under_a_tiny_pool_with_retractions(tiny_models: dict[str, Path]) -> None:
    prompts = [[200 + (i * 13 + j) % 700 for j in range(20 + i % 5)] for i in range(32)]
    params = [{"max_new_tokens": 24 + i % 7, "temperature": 0, "ignore_eos": True} for i in range(32)]
    kw = {"max_total_tokens": 400, "max_running_requests": 32}
    plain, off = _run(str(tiny_models["llama"]), "off", prompts, params, **kw)
    overlapped, on = _run(str(tiny_models["llama"]), "on", prompts, params, **kw)
    assert off.num_retractions > 0 and on.num_retractions > 0 and on.num_overlap_steps > 0
    assert overlapped == plain


def test_requests_that_cannot_overlap_run_the_plain_way(tiny_models: dict[str, Path]) -> None:
    """Penalties and min_new_tokens need every token on the host before the next step."""
    params: list[dict[str, Any]] = [{"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}] * 4
    params = [*params[:2], {**params[2], "repetition_penalty": 1.3}, {**params[3], "min_new_tokens": 8,
                                                                        "ignore_eos": False}]
    plain, _ = _run(str(tiny_models["llama"]), "off", PROMPTS[:4], params, max_total_tokens=4096)
    overlapped, _ = _run(str(tiny_models["llama"]), "on", PROMPTS[:4], params, max_total_tokens=4096)
    assert overlapped == plain


def test_abort_while_a_step_is_in_flight(tiny_models: dict[str, Path]) -> None:
    with Engine(model_path=str(tiny_models["llama"]), log_level="warning", max_total_tokens=4096,
                overlap_schedule="on") as e:
        ref = e.generate(input_ids=PROMPTS[:3], sampling_params={"max_new_tokens": 30, "temperature": 0,
                                                                 "ignore_eos": True})
        s = e.scheduler
        s.flush_cache()
        for i, p in enumerate(PROMPTS[:3]):
            s.add_request(TokenizedGenerateReqInput(rid=f"r{i}", input_ids=p, sampling_params=SamplingParams(
                max_new_tokens=30, temperature=0, ignore_eos=True)))
        outputs: dict[str, list[int]] = {}
        reasons: dict[str, str] = {}
        steps = 0
        while s.has_work():
            out = s.step()
            steps += 1
            if steps == 8:
                assert s._inflight is not None  # the abort lands while a step is in flight
                s.handle(AbortReq("r1"))
            if out is not None:
                for rid, new, reason in zip(out.rids, out.new_token_ids, out.finished_reasons, strict=True):
                    outputs.setdefault(rid, []).extend(new)
                    if reason is not None:
                        reasons[rid] = reason.type
        assert reasons == {"r0": "length", "r1": "abort", "r2": "length"}
        assert outputs["r0"] == ref[0]["output_ids"] and outputs["r2"] == ref[2]["output_ids"]
        assert outputs["r1"] == ref[1]["output_ids"][: len(outputs["r1"])]
        s.check_memory()


def test_no_surplus_step_when_the_step_in_flight_ends_every_request(tiny_models: dict[str, Path]) -> None:
    """When every request gets its last token (by length) from the step in flight, the next step
    is not launched: it would only make tokens that are dropped. A request of n tokens takes one
    prefill and n - 1 decode steps, as in the plain loop."""
    for lengths in ([8], [5, 9]):
        params = [{"max_new_tokens": n, "temperature": 0, "ignore_eos": True} for n in lengths]
        with Engine(model_path=str(tiny_models["llama"]), log_level="warning", max_total_tokens=4096,
                    overlap_schedule="on") as e:
            got = e.generate(input_ids=PROMPTS[:len(lengths)], sampling_params=params)
            stats = e.scheduler.stats
            assert [len(o["output_ids"]) for o in got] == lengths
            assert stats.num_overlap_steps > 0
            assert stats.num_decode_steps == max(lengths) - 1
