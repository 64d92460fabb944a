"""Triton compiles after the warm-up are warned about, counted in the load and /metrics, and logged.

No GPU here, so nothing compiles: the tests call the hooks the way Triton's JIT does on an
in-memory cache miss (`jit_cache_hook`, then `jit_post_compile_hook` once the kernel is built).
tests/gpu/test_gpu_engine.py checks on CUDA that a server's warm-up leaves nothing to compile.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from radixserve.utils.kernel_compiles import CompileWatch

knobs = pytest.importorskip("triton").knobs


@dataclass(frozen=True)
class _FnInfo:  # the shape of Triton's JitFunctionInfo: what the hooks read
    module: str
    name: str
    jit_function: object


@pytest.fixture
def restore_hooks() -> Iterator[None]:
    """Only this test's watch on Triton's hooks (an Engine earlier in the process installed the
    process's own), and the hooks as they were afterwards."""
    saved = knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook
    knobs.runtime.jit_cache_hook = knobs.runtime.jit_post_compile_hook = None
    yield
    knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = saved


def _compile(name: str, key: str, seconds: float, kernel: object | None = None) -> Any:
    fn = _FnInfo("radixserve.kernels.x", name, kernel if kernel is not None else object())
    skip = knobs.runtime.jit_cache_hook(key=key, repr=name, fn=fn, compile={}, is_manual_warmup=False,
                                        already_compiled=False)
    time.sleep(seconds)
    knobs.runtime.jit_post_compile_hook(key=key, repr=name, fn=fn, compile={}, is_manual_warmup=False,
                                        already_compiled=False)
    return skip


def test_compiles_are_timed_and_warned_about_after_the_warm_up(
        restore_hooks: None, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def earlier_hook(**kwargs: Any) -> bool:  # someone's hook, set before ours
        seen.append(kwargs["fn"].name)
        return False

    knobs.runtime.jit_cache_hook = earlier_hook
    watch = CompileWatch()
    assert watch.install() and watch.install()  # twice: chained once
    with caplog.at_level(logging.DEBUG, logger="radixserve.utils.kernel_compiles"):
        assert _compile("_fwd_extend", "k1", 0.02) is False  # the earlier hook's answer: compile
        watch.mark_warmed_up()
        _compile("_decode_stage1_grouped", "k2", 0.03)
    assert seen == ["_fwd_extend", "_decode_stage1_grouped"]
    first, second = watch.compiles
    assert (first.kernel, first.after_warmup, second.kernel, second.after_warmup) == (
        "_fwd_extend", False, "_decode_stage1_grouped", True)
    assert 20 <= first.ms < 1000 and 30 <= second.ms < 1000
    assert watch.after_warmup == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "_decode_stage1_grouped after the warm-up" in warnings[0].getMessage()


def test_an_earlier_hook_that_skips_the_compile_keeps_its_answer(restore_hooks: None) -> None:
    knobs.runtime.jit_cache_hook = lambda **kw: True
    watch = CompileWatch()
    watch.install()
    assert _compile("_k", "k", 0.0) is True


def test_the_scheduler_reports_compiles_in_its_load_metrics_and_step_log(
        restore_hooks: None, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry

    from radixserve import Engine
    from radixserve.metrics import SchedulerMetrics
    from radixserve.utils import kernel_compiles

    watch = CompileWatch()
    monkeypatch.setattr(kernel_compiles, "WATCH", watch)
    monkeypatch.setattr("radixserve.managers.scheduler.compile_watch", watch)
    monkeypatch.setenv("RADIXSERVE_STEP_LOG", str(tmp_path / "steps.jsonl"))
    with Engine(model_path=str(tiny_models["llama"]), log_level="warning") as engine:
        params = {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True}
        engine.generate(input_ids=[5, 6, 7], sampling_params=params)
        watch.mark_warmed_up()
        _compile("_decode_stage1_grouped", "k", 0.01)  # as if the next step's launch compiled it
        engine.generate(input_ids=[8, 9], sampling_params=params)
        load = engine.scheduler.get_load()
    assert load["num_kernel_compiles_after_warmup"] == 1.0
    metrics = SchedulerMetrics("m", CollectorRegistry())
    metrics.update(load)
    metrics.update(load)  # the same total again: no double count
    assert metrics.registry.get_sample_value("radixserve:num_kernel_compiles_after_warmup_total",
                                             {"model_name": "m"}) == 1.0
    events = [json.loads(line) for line in (tmp_path / "steps.jsonl.rank0").read_text().splitlines()]
    compiles = [e for e in events if "kernel_compile" in e]
    assert [(e["kernel_compile"], e["after_warmup"]) for e in compiles] == [("_decode_stage1_grouped", True)]
    # Logged right after the step it fell in: the first step of the second request.
    steps_before = [e for e in events if "mode" in e and e["t"] <= compiles[0]["t"]]
    assert len(steps_before) == 4 and compiles[0]["compile_ms"] >= 10
