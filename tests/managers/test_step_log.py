"""RADIXSERVE_STEP_LOG: one JSON line per scheduler step, and the garbage collector's pauses."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from pathlib import Path

import pytest

from radixserve.utils.step_log import ENV, StepLog


def test_steps_and_gc_pauses_are_logged(tmp_path: Path) -> None:
    log = StepLog(str(tmp_path / "steps.jsonl"))
    try:
        log.record("extend", 3, 120, 0, 0, 5, 0)
        log.record("decode", 3, 0, 0, 3, 5, 0, started=time.perf_counter() - 0.01)
        log.output_batch(3, 0.25)

        async def block_the_loop() -> None:
            probe = asyncio.create_task(log.probe_event_loop(period_s=0.005, report_ms=20))
            await asyncio.sleep(0.02)
            time.sleep(0.1)  # a loop busy elsewhere: the probe wakes about 100 ms late
            await asyncio.sleep(0.02)
            probe.cancel()

        asyncio.run(block_the_loop())
        # Enough cyclic garbage that a full collection takes well over the 1 ms threshold.
        junk: list[list[object]] = [[] for _ in range(300_000)]
        for item in junk:
            item.append(item)
        del junk
        gc.collect()
    finally:
        log.close()
    events = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    steps = [e for e in events if "mode" in e]
    assert [(e["mode"], e["reqs"], e["extend_tokens"], e["waiting"]) for e in steps] == [
        ("extend", 3, 120, 5), ("decode", 3, 0, 5)]
    assert steps[1]["dt_ms"] >= 0 and steps[1]["t"] >= steps[0]["t"]
    assert "busy_ms" not in steps[0] and steps[1]["busy_ms"] >= 10
    late = [e["loop_late_ms"] for e in events if "loop_late_ms" in e]
    assert len(late) == 1 and 60 <= late[0] < 1000
    batches = [e for e in events if "outputs" in e]
    assert [(b["outputs"], b["handle_ms"]) for b in batches] == [(3, 0.25)] and batches[0]["wall"] > 0
    pauses = [e for e in events if "gc_ms" in e]
    assert pauses and pauses[-1]["gc_generation"] == 2 and pauses[-1]["collected"] >= 299_000


def test_the_engine_writes_one_line_per_step(tiny_models: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from radixserve import Engine

    monkeypatch.setenv(ENV, str(tmp_path / "steps.jsonl"))
    engine = Engine(model_path=str(tiny_models["llama"]), log_level="warning")
    try:
        engine.generate(input_ids=[[5, 6, 7, 8], [9, 10, 11]], sampling_params={"max_new_tokens": 4, "temperature": 0, "ignore_eos": True})
    finally:
        engine.shutdown()
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl.rank0").read_text().splitlines()]
    steps = [s for s in steps if "mode" in s]
    # Warm-up steps come first; the two prompts then take one prefill and three decode steps.
    assert steps[-4]["mode"] == "extend" and steps[-4]["extend_tokens"] == 7
    assert [s["mode"] for s in steps[-3:]] == ["decode"] * 3 and steps[-1]["reqs"] == 2


def test_start_up_heap_is_frozen_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from radixserve.utils.gc_freeze import ENV as FREEZE_ENV
    from radixserve.utils.gc_freeze import freeze_startup_heap

    try:
        monkeypatch.setenv(FREEZE_ENV, "0")
        assert not freeze_startup_heap("test") and gc.get_freeze_count() == 0
        monkeypatch.delenv(FREEZE_ENV)
        assert freeze_startup_heap("test") and gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()  # this pytest process goes on allocating and freeing


def test_the_summary_finds_the_long_steps_and_pauses(tmp_path: Path) -> None:
    from benchmarks.analyze_step_log import summarise

    events = [{"t": 0, "dt_ms": 900.0, "mode": "extend", "reqs": 1, "extend_tokens": 10, "mixed_decode": 0,
               "running": 0, "waiting": 0, "retractions": 0}]  # the first step: idle time, not counted
    events += [{"t": i, "dt_ms": 10.0 + i, "mode": "decode", "reqs": 8, "extend_tokens": 0, "mixed_decode": 0,
                "running": 8, "waiting": 0, "retractions": 0} for i in range(1, 11)]
    events += [{"t": 11, "dt_ms": 150.0, "mode": "mixed", "reqs": 9, "extend_tokens": 2048, "mixed_decode": 8,
                "running": 9, "waiting": 40, "retractions": 0}, {"t": 12, "gc_generation": 2, "gc_ms": 120.0,
                                                                 "collected": 5}]
    events += [{"t": 13 + i, "wall": 0.0, "since_last_ms": 5.0 * i, "outputs": 8, "handle_ms": 1.0 + i}
               for i in range(4)]  # the first batch's gap is idle time, not counted
    summary = summarise(events, top=2)
    assert summary["output_batches"]["batches"] == 3 and summary["output_batches"]["gap_max_ms"] == 15.0
    assert summary["output_batches"]["handle_max_ms"] == 4.0 and summary["output_batches"]["gaps_over_100ms"] == 0
    assert summary["steps"] == 11 and summary["steps_over_100ms"] == 1
    assert summary["by_mode"]["decode"]["max_ms"] == 20.0 and summary["by_mode"]["mixed"]["steps"] == 1
    assert [s["dt_ms"] for s in summary["longest"]] == [150.0, 20.0]
    assert summary["gc"] == {"pauses_over_1ms": 1, "total_ms": 120.0, "max_ms": 120.0, "over_50ms": 1}
