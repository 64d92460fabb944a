"""Decode steps through kernels/cpu/decode.c (model_executor/cpu_decode.py) against the torch layers.

Every native step of a generation is checked against the torch path on the same state: the wrapper
below runs the model's layers first (they write this step's k and v into the pool and give the
reference logits), then the native step (it writes the same slots again and gives its logits). Both
multiply by the same packed weights through the same integer product, so they differ only by float32
summation order in the small ops (norms, attention, rotary) and where that order moves an activation
across a rounding step of the product's 15-bit activations (qdot.c). Tiny models of every variant
decode.c takes (online int4 weights): Llama with and without GQA (llama3 rope scaling, tied head),
Qwen2's qkv bias, Qwen3's q/k norms; and the embedded 30-layer GGUF (Q4_1, Q8_0 tied head). Batches of
several requests of different lengths, whose slots are not consecutive.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from radixserve import Engine
from radixserve.kernels import cpu_native
from radixserve.model_executor import cpu_decode
from radixserve.model_executor.cpu_decode import MAX_BATCH, CpuDecodeStep, why_not

pytestmark = pytest.mark.skipif(cpu_native.load() is None,
                                reason=f"the CPU kernels are not built here: {cpu_native.unavailable_reason()}")


@pytest.fixture(scope="module", autouse=True)
def _c_product() -> Iterator[None]:
    """The C product also where the CPU lacks its VNNI path (there torch's int4 op is the default); module
    scope, so that the module's engines are built with it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cpu_native.ENV_SWITCH, "1")
        yield


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a land far away,"]
GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
# Seen (relative L2 per step): the tiny models' logits and KV rows up to 1e-4, the embedded model's logits
# up to 4.2e-4 and its KV rows up to 2e-4. A flipped rounding moves a product by 1/32639 of its group's
# largest activation; with llama.cpp's 8-bit activations the embedded model's KV rows drifted 1-4 % apart.
LOGITS_REL_TOL = 1e-3
KV_REL_TOL = 1e-3


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class CheckedStep:
    """Wraps an engine's native step: each call runs the torch layers first, then the native step, and
    records how far apart their logits and their k/v rows are."""

    def __init__(self, engine: Engine) -> None:
        self.runner: Any = engine.model_runner
        step = self.runner.cpu_decode
        assert isinstance(step, CpuDecodeStep)
        self.step: Any = step
        self.native = step.logits
        self.logits_err: list[float] = []
        self.kv_err: list[float] = []
        self.batch_sizes: list[int] = []

    def __call__(self, fb: Any) -> torch.Tensor:
        self.runner.attn_backend.init_forward_metadata(fb)
        ref = self.runner.model(fb.input_ids, fb.positions, fb).clone()
        pool = fb.token_to_kv_pool
        layers = range(len(pool.k_buffer))
        ref_kv = [torch.cat([pool.k_buffer[i][fb.out_cache_loc], pool.v_buffer[i][fb.out_cache_loc]]) for i in layers]
        got = self.native(fb)
        got_kv = [torch.cat([pool.k_buffer[i][fb.out_cache_loc], pool.v_buffer[i][fb.out_cache_loc]]) for i in layers]
        self.logits_err.append(_rel(got, ref))
        self.kv_err.append(max(_rel(g, r) for g, r in zip(got_kv, ref_kv, strict=True)))
        self.batch_sizes.append(fb.batch_size)
        return got


@pytest.fixture(scope="module", params=["llama", "llama_gqa_tied", "qwen2", "qwen3", "embedded"])
def packed_engine(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> Iterator[Engine]:
    # A tiny model with its linears quantized at load, or the embedded GGUF as it is stored.
    kw: dict[str, Any] = ({} if request.param == "embedded" else
                          {"model_path": str(tiny_models[request.param]), "quantization": "int4"})
    with Engine(device="cpu", max_total_tokens=2048, log_level="warning", **kw) as engine:
        yield engine


def test_native_steps_match_the_torch_layers(packed_engine: Engine) -> None:
    checked = CheckedStep(packed_engine)
    checked.step.logits = checked
    try:
        together = packed_engine.generate(PROMPTS, GREEDY)  # one batch of three
        alone = packed_engine.generate(PROMPTS[0], GREEDY)
    finally:
        checked.step.logits = checked.native
    assert isinstance(together, list) and isinstance(alone, dict)
    assert 3 in checked.batch_sizes and 1 in checked.batch_sizes
    assert max(checked.logits_err) < LOGITS_REL_TOL, checked.logits_err
    assert max(checked.kv_err) < KV_REL_TOL, checked.kv_err


def test_long_context_attention_runs_across_threads() -> None:
    # decode.c splits a layer's attention over the threads once bs * heads * context * head_dim passes
    # 2^18: on the embedded model (9 heads of 64) from ~455 tokens of context. Random token ids make a
    # 600-token prompt.
    ids = torch.randint(100, 40000, (600,), generator=torch.Generator().manual_seed(0)).tolist()
    with Engine(device="cpu", max_total_tokens=2048, log_level="warning") as engine:
        checked = CheckedStep(engine)
        checked.step.logits = checked
        out = engine.generate(input_ids=ids, sampling_params={**GREEDY, "max_new_tokens": 4})
    assert isinstance(out, dict) and len(out["output_ids"]) == 4
    assert len(checked.logits_err) == 3 and 9 * 601 * 64 > 1 << 18
    assert max(checked.logits_err) < LOGITS_REL_TOL, checked.logits_err
    assert max(checked.kv_err) < KV_REL_TOL, checked.kv_err


def test_the_engine_decodes_natively_and_the_switch_turns_it_off(
        tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tiny_models["qwen2"])
    calls: list[int] = []
    with Engine(model_path=path, device="cpu", quantization="int4", max_total_tokens=2048,
                log_level="warning") as engine:
        step: Any = engine.model_runner.cpu_decode
        assert isinstance(step, CpuDecodeStep)
        native = step.logits

        def counted(fb: Any) -> torch.Tensor:
            calls.append(fb.batch_size)
            return native(fb)

        step.logits = counted  # type: ignore[method-assign]
        out = engine.generate(PROMPTS[:2], GREEDY)
    assert isinstance(out, list) and all(len(o["output_ids"]) == GREEDY["max_new_tokens"] for o in out)
    assert len(calls) >= GREEDY["max_new_tokens"] - 1  # every decode step after the prefill's first token
    monkeypatch.setenv(cpu_decode.ENV_SWITCH, "0")
    with Engine(model_path=path, device="cpu", quantization="int4", max_total_tokens=2048,
                log_level="warning") as engine:
        assert engine.model_runner.cpu_decode is None
        assert why_not(engine.model_runner.model, engine.model_runner.token_to_kv_pool) == \
            f"{cpu_decode.ENV_SWITCH}=0"


def test_models_decode_c_does_not_cover_keep_the_torch_path(tiny_models: dict[str, Path]) -> None:
    path = str(tiny_models["llama"])
    with Engine(model_path=path, device="cpu", max_total_tokens=2048, log_level="warning") as engine:
        runner: Any = engine.model_runner
        assert runner.cpu_decode is None  # float weights: nothing for the C product
        assert "float, not for the C product" in str(why_not(runner.model, runner.token_to_kv_pool))
    with Engine(model_path=path, device="cpu", quantization="int4", kv_cache_dtype="fp8_e4m3",
                max_total_tokens=2048, log_level="warning") as engine:
        runner = engine.model_runner
        assert runner.cpu_decode is None
        assert "KV pool (decode.c reads float32)" in str(why_not(runner.model, runner.token_to_kv_pool))
        out = engine.generate(PROMPTS[0], GREEDY)
        assert isinstance(out, dict) and len(out["output_ids"]) == GREEDY["max_new_tokens"]


def test_large_batches_take_the_torch_path(packed_engine: Engine) -> None:
    step: Any = packed_engine.model_runner.cpu_decode
    fb = _DecodeShape(MAX_BATCH + 1, 10)
    assert not step.can_run(fb)
    assert step.can_run(_DecodeShape(MAX_BATCH, 10))
    assert not step.can_run(_DecodeShape(1, step._max_position + 1))  # past the rotary table


class _DecodeShape:
    """What `can_run` reads of a ForwardBatch."""

    def __init__(self, batch_size: int, seq_len: int) -> None:
        from radixserve.model_executor.forward_batch import ForwardMode

        self.forward_mode = ForwardMode.DECODE
        self.batch_size = batch_size
        self.seq_lens_cpu = [seq_len] * batch_size
