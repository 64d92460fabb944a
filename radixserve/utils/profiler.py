"""Scheduler-step profiling with torch.profiler, switched on by environment variables.

    RADIXSERVE_PROFILE_DIR=/tmp/prof        where each rank writes its tables and trace
    RADIXSERVE_PROFILE_START=20             working steps to skip first (warm-up, prefill)
    RADIXSERVE_PROFILE_STEPS=20             working steps to record

The variables reach every scheduler process (TP and PP ranks inherit the environment), so one
run yields `rank<r>_ops.txt` (operators and kernels by device time), `rank<r>_steps.txt` (the
host and device time of each recorded step) and `rank<r>_trace.json` (Chrome trace) per rank.
Off by default: the step loop then pays one attribute check.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

DIR_ENV = "RADIXSERVE_PROFILE_DIR"
START_ENV = "RADIXSERVE_PROFILE_START"
STEPS_ENV = "RADIXSERVE_PROFILE_STEPS"


class StepProfiler:
    def __init__(self, out_dir: Path, rank: int, start: int, steps: int) -> None:
        self.out_dir, self.rank, self.start, self.steps = out_dir, rank, start, steps
        self.seen = 0
        self.prof: Any = None
        self.step_times: list[float] = []
        self.last = 0.0
        self.done = False

    @classmethod
    def from_env(cls, rank: int) -> StepProfiler | None:
        out = os.environ.get(DIR_ENV)
        if not out:
            return None
        return cls(Path(out), rank, int(os.environ.get(START_ENV, "20")), int(os.environ.get(STEPS_ENV, "20")))

    def tick(self) -> None:
        """Call after each step that ran a batch."""
        if self.done:
            return
        self.seen += 1
        now = time.perf_counter()
        if self.seen == self.start:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts, record_shapes=False)
            self.prof.__enter__()
        elif self.prof is not None:
            self.step_times.append(now - self.last)
            if len(self.step_times) == self.steps:
                self._write()
        self.last = now

    def _write(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.prof.__exit__(None, None, None)
        self.done = True
        self.out_dir.mkdir(parents=True, exist_ok=True)
        table = self.prof.key_averages().table(
            sort_by="self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total", row_limit=40)
        host = self.prof.key_averages().table(sort_by="cpu_time_total", row_limit=40)
        (self.out_dir / f"rank{self.rank}_ops.txt").write_text(table + "\n\nBy host time:\n" + host)
        ms = [round(t * 1e3, 3) for t in self.step_times]
        (self.out_dir / f"rank{self.rank}_steps.txt").write_text(
            f"steps {len(ms)}, mean wall ms per step {sum(ms) / len(ms):.3f}\n{ms}\n")
        self.prof.export_chrome_trace(str(self.out_dir / f"rank{self.rank}_trace.json"))
        logger.info("wrote the step profile of rank %d to %s", self.rank, self.out_dir)
