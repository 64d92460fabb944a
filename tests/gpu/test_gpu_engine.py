"""On a GPU: greedy output equals transformers' on the same GPU (tiny random Llama and Qwen2 made here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from radixserve import Engine

pytestmark = pytest.mark.gpu

PROMPTS = [[1, 500, 600, 700, 800, 900], [2, 42], [1000 + i for i in range(300)], [7] * 33]


def _hf(model_dir: Path, ids: list[int], steps: int, dtype: torch.dtype) -> tuple[list[int], list[torch.Tensor]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    # transformers decorates PreTrainedModel.cuda with functools.wraps, whose _Wrapped type mypy does not
    # bind to an instance; seen as an nn.Module the same method (PreTrainedModel.cuda) runs, moving it in place.
    as_module: torch.nn.Module = model
    as_module.cuda()
    model.eval()
    out = model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=steps, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    return out.sequences[0, len(ids):].tolist(), [lg[0].float() for lg in out.logits]


@pytest.mark.parametrize("name", ["llama_gqa_tied", "qwen2"])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_float32_greedy_identical_to_transformers(tiny_models: dict[str, Path], name: str, backend: str) -> None:
    steps = 16
    with Engine(model_path=str(tiny_models[name]), device="cuda", dtype="float32", attention_backend=backend,
                max_total_tokens=8192, log_level="warning") as engine:
        outs = engine.generate(input_ids=PROMPTS, sampling_params={"max_new_tokens": steps, "temperature": 0,
                                                                   "ignore_eos": True})
    for ids, out in zip(PROMPTS, outs, strict=True):
        expected, _ = _hf(tiny_models[name], ids, steps, torch.float32)
        assert out["output_ids"] == expected


def test_bfloat16_divergence_is_a_near_tie(tiny_models: dict[str, Path]) -> None:
    """bf16 rounding may flip a greedy choice only where the top two logits are nearly equal."""
    steps = 16
    model_dir = tiny_models["llama_gqa_tied"]
    with Engine(model_path=str(model_dir), device="cuda", dtype="bfloat16", max_total_tokens=8192,
                log_level="warning") as engine:
        outs = engine.generate(input_ids=PROMPTS, sampling_params={"max_new_tokens": steps, "temperature": 0,
                                                                   "ignore_eos": True})
    for ids, out in zip(PROMPTS, outs, strict=True):
        ours = out["output_ids"]
        theirs, logits = _hf(model_dir, ids, steps, torch.bfloat16)
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)
        if first is None:
            continue
        top2 = logits[first].topk(2).values
        gap = float(top2[0] - top2[1])
        print(f"prompt len {len(ids)}: first divergence at step {first}, HF top-2 logit gap {gap:.4f}")
        assert gap < 0.05 * float(top2[0].abs()) + 0.1, f"divergence at step {first} is not a near-tie ({gap})"


def test_cuda_graph_decode_matches_eager(tiny_models: dict[str, Path]) -> None:
    """Graph replay (padded batches: 3 -> 4, 5 -> 8) gives the same tokens as eager decode."""
    prompts = [[100 + i * 13 + j for j in range(5 + i * 7)] for i in range(5)]
    params = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}
    results = []
    for disable in (False, True):
        with Engine(model_path=str(tiny_models["llama_gqa_tied"]), device="cuda", dtype="bfloat16",
                    disable_cuda_graph=disable, cuda_graph_max_bs=8, max_total_tokens=8192,
                    log_level="warning") as engine:
            assert (engine.model_runner.graph_runner is None) == disable
            results.append([o["output_ids"] for o in engine.generate(input_ids=prompts[:3], sampling_params=params)]
                           + [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)])
            engine.scheduler.check_memory()
    assert results[0] == results[1]


def test_eager_decode_above_graph_sizes_leaves_graph_memory_alone(tiny_models: dict[str, Path]) -> None:
    """Batches above cuda_graph_max_bs run eagerly and grow the split-KV scratch; graphs replayed
    afterwards must still write only to the scratch they were captured with (a freed one was reused
    by the KV free list and corrupted slot indices under load)."""
    small = [[300 + i, 301 + i, 302 + i] for i in range(2)]
    big = [[1000 + i * 7 + j for j in range(4 + i)] for i in range(12)]
    params = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
    results = []
    for disable in (False, True):
        with Engine(model_path=str(tiny_models["llama_gqa_tied"]), device="cuda", dtype="bfloat16",
                    disable_cuda_graph=disable, cuda_graph_max_bs=2, max_total_tokens=4096,
                    log_level="warning") as engine:
            outs = []
            for _ in range(3):
                for batch in (big, small, big[:5], small):
                    outs.append([o["output_ids"] for o in engine.generate(input_ids=batch, sampling_params=params)])
                    engine.scheduler.check_memory()
            results.append(outs)
    assert results[0] == results[1]


def test_engine_after_engine_in_one_process(tiny_models: dict[str, Path]) -> None:
    """shutdown() gives the KV pool, the weights and the CUDA graphs back: a second Engine sized
    by free memory starts, and the allocator holds what it held before the first."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    params = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
    outs = []
    for _ in range(2):
        # Sized from free memory (no max_total_tokens): a leak would leave the second one no room.
        engine = Engine(model_path=str(tiny_models["llama_gqa_tied"]), device="cuda", dtype="bfloat16",
                        mem_fraction_static=0.5, cuda_graph_max_bs=8, log_level="warning")
        outs.append(engine.generate(input_ids=[[1, 2, 3, 4]], sampling_params=params)[0]["output_ids"])
        engine.shutdown()
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() - before < 64 << 20
    assert outs[0] == outs[1]


def test_a_decode_launch_does_not_wait_for_the_gpu(tiny_models: dict[str, Path]) -> None:
    """The overlap schedule builds and launches step N+1 while the GPU runs step N, so nothing in
    that may synchronize with the device. (Reading the step's KV slots, which come from the free list
    on the device, into a host tensor did: each batch-1 step waited, 4-10 % slower.)"""
    from radixserve.managers.io_struct import TokenizedGenerateReqInput
    from radixserve.sampling.sampling_params import SamplingParams

    with Engine(model_path=str(tiny_models["llama_gqa_tied"]), device="cuda", dtype="bfloat16",
                max_total_tokens=4096, log_level="warning") as engine:
        s = engine.scheduler
        assert engine.model_runner.graph_runner is not None
        for rid in ("a", "b"):  # the second one's slots come from a free list the first returned to
            s.add_request(TokenizedGenerateReqInput(rid=rid, input_ids=[5 + i for i in range(40)],
                                                    sampling_params=SamplingParams(max_new_tokens=8, temperature=0,
                                                                                   ignore_eos=True)))
            while s.waiting_queue or not s.running_batch.reqs:
                s.step()
            s._drain_inflight()
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                launched = s._launch(s.decode.next_batch())
            finally:
                torch.cuda.set_sync_debug_mode("default")
            s._process(launched)
            while s.has_work():
                s.step()
        s.check_memory()


_AFTER_WARM_UP = """
import json, sys
from radixserve import Engine
from radixserve.managers.scheduler_process import warm_up
from radixserve.utils.kernel_compiles import WATCH

with Engine(model_path=sys.argv[1], device="cuda", dtype="bfloat16", max_total_tokens=16384, cuda_graph_max_bs=8,
            log_level="warning") as engine:
    warm_up(engine.scheduler)  # what `radixserve serve` runs before it reports ready
    warmed = len(WATCH.compiles)
    params = {"max_new_tokens": 40, "temperature": 0, "ignore_eos": True}
    long = [1000 + i for i in range(500)]
    engine.generate(input_ids=[long], sampling_params=params)  # batch 1, after a 500-token prompt
    engine.generate(input_ids=[[300 + 7 * i + j for j in range(3 + 41 * i)] for i in range(5)], sampling_params=params)
    engine.generate(input_ids=[long + [5, 6, 7]], sampling_params=params)  # a cached prefix
    print(json.dumps({"warm_up": [c.kernel for c in WATCH.compiles[:warmed]],
                      "after": [[c.kernel, c.ms] for c in WATCH.compiles[warmed:]]}))
"""


def test_the_warm_up_leaves_no_kernel_to_compile(tiny_models: dict[str, Path]) -> None:
    """A Triton kernel first compiled after the warm-up stalls every running request for its
    compile (0.1-1.5 s; utils/kernel_compiles.py). A fresh process, so that no earlier test's
    kernels are in memory; the JIT hooks fire on that cache's misses, whatever is on disk."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _AFTER_WARM_UP, str(tiny_models["llama_gqa_tied"])],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["warm_up"], "the watch saw no compile at all: are Triton's hooks in place?"
    assert report["after"] == [], f"compiled after the warm-up: {report['after']}"
