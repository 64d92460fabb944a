"""Request priority (--enable-priority-scheduling): the API field, the waiting-queue order, the scheduler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
import torch

from radixserve import Engine
from radixserve.managers.io_struct import TokenizedGenerateReqInput
from radixserve.managers.schedule_batch import Req
from radixserve.managers.schedule_policy import order_waiting_queue
from radixserve.sampling.sampling_params import SamplingParams
from radixserve.server.protocol import ChatCompletionRequest, CompletionRequest, GenerateRequestBody


class PrefixStub:
    """A prefix cache whose match length is the number of leading 7s in the prompt."""

    shares_prefixes = True

    def match_prefix(self, ids: list[int]) -> tuple[torch.Tensor, None]:
        n = next((i for i, t in enumerate(ids) if t != 7), len(ids))
        return torch.arange(n, dtype=torch.int64), None


def _req(rid: str, priority: int, cached: int = 0) -> Req:
    return Req(rid, [7] * cached + [1, 2, 3], SamplingParams(max_new_tokens=1), priority=priority)


def test_waiting_queue_orders_by_priority_then_policy() -> None:
    cache: Any = PrefixStub()
    reqs = [_req("low-long", 0, cached=9), _req("high-short", 5, cached=1), _req("mid", 2, cached=4),
            _req("high-long", 5, cached=6), _req("low-short", 0)]
    queue = list(reqs)
    order_waiting_queue(queue, "lpm", cache)
    assert [r.rid for r in queue] == ["low-long", "high-long", "mid", "high-short", "low-short"]  # prefix only
    order_waiting_queue(queue, "lpm", cache, by_priority=True)
    assert [r.rid for r in queue] == ["high-long", "high-short", "mid", "low-long", "low-short"]
    queue = list(reqs)
    order_waiting_queue(queue, "fcfs", cache, by_priority=True)  # arrival order within a priority
    assert [r.rid for r in queue] == ["high-short", "high-long", "mid", "low-long", "low-short"]
    order_waiting_queue(queue, "fcfs", cache, by_priority=True)  # stable when run again
    assert [r.rid for r in queue] == ["high-short", "high-long", "mid", "low-long", "low-short"]


def test_api_bodies_accept_an_integer_priority() -> None:
    chat = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "priority": -3})
    assert chat.priority == -3
    assert CompletionRequest.model_validate({"prompt": "x"}).priority is None
    assert GenerateRequestBody.model_validate({"text": "x", "priority": 2**31 - 1}).priority == 2**31 - 1
    for bad in ("high", 1.5, True, 2**31):
        with pytest.raises(pydantic.ValidationError, match="priority"):
            CompletionRequest.model_validate({"prompt": "x", "priority": bad})


def test_scheduler_admits_higher_priority_first(tiny_models: dict[str, Path]) -> None:
    """One running slot: the order requests finish in is the order they were admitted in."""
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=2048, max_running_requests=1,
                enable_priority_scheduling=True, log_level="warning") as engine:
        sched = engine.scheduler
        gr = engine.builder.build([5, 6, 7], SamplingParams(max_new_tokens=2, temperature=0), priority=9)
        assert [r.priority for r in gr.reqs] == [9]  # the builder carries it to the scheduler's message

        def finish_order(priorities: dict[str, int]) -> list[str]:
            for i, (rid, priority) in enumerate(priorities.items()):
                params = SamplingParams.from_dict({"max_new_tokens": 2, "temperature": 0, "ignore_eos": True})
                sched.add_request(TokenizedGenerateReqInput(rid=rid, input_ids=[100 + i, 200, 300],
                                                            sampling_params=params, priority=priority))
            done = []
            while sched.has_work():
                out = sched.step()
                for rid, reason in zip(out.rids if out else [], out.finished_reasons if out else [], strict=True):
                    if reason is not None:
                        done.append(rid)
            return done

        priorities = {"low": -1, "none": 0, "high": 7, "mid": 3}
        assert finish_order(priorities) == ["high", "mid", "none", "low"]
        sched.server_args.enable_priority_scheduling = False  # accepted and ignored: arrival order
        assert finish_order({f"{rid}2": p for rid, p in priorities.items()}) == ["low2", "none2", "high2", "mid2"]
