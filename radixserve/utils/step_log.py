"""A per-step timing log of the scheduler, for finding what makes inter-token latency spike.

    RADIXSERVE_STEP_LOG=/tmp/steps.jsonl     each scheduler rank appends to <path>.rank<r>, the
                                             detokenizer to <path>.detokenizer, the HTTP process
                                             (TokenizerManager) to <path>.http

One JSON line per step that ran a batch: wall time since the previous one (with overlap
scheduling that is the step's GPU time plus whatever the host did in between), the batch's
kind and size, and the queue lengths; one line per Triton kernel compiled (utils/kernel_compiles.py);
plus one line per garbage collection pause over 1 ms
(Python's cyclic collector stops the scheduler, which a step-time histogram alone would not
explain). The detokenizer and the HTTP process log each output batch they handle (size, time
spent, wall clock), so a stream's gap can be placed: in a step, or on the way to the client.
Every line carries `wall` (time.time()) to line the processes up. Off by default: each loop
then pays one attribute check.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radixserve.managers.schedule_batch import ScheduleBatch
    from radixserve.utils.kernel_compiles import KernelCompile

ENV = "RADIXSERVE_STEP_LOG"


def batch_shape(batch: ScheduleBatch) -> tuple[str, int, int, int]:
    """(kind, requests, new prompt tokens, decode rows riding in a prefill batch) of a batch."""
    if not batch.forward_mode.is_extend():
        return "decode", len(batch.reqs), 0, 0
    new = len(batch.reqs) - batch.num_mixed_decode
    return ("mixed" if batch.num_mixed_decode else "extend", len(batch.reqs), sum(batch.extend_lens_cpu[:new]),
            batch.num_mixed_decode)


class StepLog:
    def __init__(self, path: str) -> None:
        # Line-buffered: a scheduler process may be killed without a chance to flush, and a
        # write per step (microseconds) is nothing next to a step (milliseconds).
        self._file: IO[str] = open(path, "a", buffering=1)  # noqa: SIM115  (open for the process's lifetime)
        self._last = time.perf_counter()
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)

    @classmethod
    def from_env(cls, tag: str) -> StepLog | None:
        """The log of one process (tag: "rank0", "detokenizer", "http"), or None when off."""
        path = os.environ.get(ENV)
        return cls(f"{path}.{tag}") if path else None

    def record(self, mode: str, reqs: int, extend_tokens: int, mixed_decode: int, running: int,
               waiting: int, retractions: int, started: float | None = None) -> None:
        """One step; `started` (perf_counter at the step's start) gives its busy time, apart from
        the idle wait before it that `dt_ms` (since the previous step ended) includes."""
        now = time.perf_counter()
        busy = {} if started is None else {"busy_ms": round((now - started) * 1e3, 3)}
        self._write({"t": round(now, 4), "wall": round(time.time(), 4),
                     "dt_ms": round((now - self._last) * 1e3, 3), **busy, "mode": mode,
                     "reqs": reqs, "extend_tokens": extend_tokens, "mixed_decode": mixed_decode,
                     "running": running, "waiting": waiting, "retractions": retractions})
        self._last = now

    def output_batch(self, size: int, handle_ms: float) -> None:
        """One batch of outputs handled by the detokenizer or the HTTP process."""
        now = time.perf_counter()
        self._write({"t": round(now, 4), "wall": round(time.time(), 4), "since_last_ms":
                     round((now - self._last) * 1e3, 3), "outputs": size, "handle_ms": round(handle_ms, 3)})
        self._last = now

    def kernel_compile(self, event: KernelCompile) -> None:
        """A Triton compile (utils/kernel_compiles.py): the step it fell in took that much longer."""
        self._write({"t": round(time.perf_counter(), 4), "wall": event.wall, "kernel_compile": event.kernel,
                     "compile_ms": event.ms, "after_warmup": event.after_warmup})

    async def probe_event_loop(self, period_s: float = 0.01, report_ms: float = 20.0) -> None:
        """Log each time the event loop wakes this task over `report_ms` late: time the loop spent
        on other work (streams, requests) while a response chunk could not go out."""
        while True:
            before = time.perf_counter()
            await asyncio.sleep(period_s)
            late_ms = (time.perf_counter() - before - period_s) * 1e3
            if late_ms > report_ms:
                self._write({"t": round(time.perf_counter(), 4), "wall": round(time.time(), 4),
                             "loop_late_ms": round(late_ms, 3)})

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
            return
        ms = (time.perf_counter() - self._gc_start) * 1e3
        if ms > 1.0:
            self._write({"t": round(time.perf_counter(), 4), "wall": round(time.time(), 4),
                         "gc_generation": info.get("generation"),
                         "gc_ms": round(ms, 3), "collected": info.get("collected")})

    def _write(self, event: dict[str, Any]) -> None:
        self._file.write(json.dumps(event) + "\n")

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._file.close()
