"""Run one function in N spawned rank processes that meet at a file store, for tests that build
process groups themselves (gloo on CPU, NCCL on GPUs)."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
from collections.abc import Callable
from typing import Any

# Once one rank has answered, how long the others may take: a rank that failed before a collective
# leaves its peers blocked in it, and NCCL would hold them far longer than a test should wait.
STRAGGLER_S = 120.0


def run_ranks(target: Callable[..., None], size: int, *args: Any, timeout: float = 600.0,
              straggler_s: float = STRAGGLER_S) -> dict[int, Any]:
    """Calls target(rank, size, store, *args, out) in `size` processes; each puts (rank, result) on
    `out`. Returns the results by rank; ranks that give none are stopped and named in an AssertionError."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    results: dict[int, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        store = os.path.join(d, "store")
        procs = [ctx.Process(target=target, args=(rank, size, store, *args, out)) for rank in range(size)]
        for p in procs:
            p.start()
        try:
            while len(results) < size:
                rank, result = out.get(timeout=straggler_s if results else timeout)
                results[rank] = result
        except queue.Empty:
            pass
        for p in procs:
            p.join(60 if len(results) == size else 1)
            if p.is_alive():
                p.kill()
                p.join(10)
    missing = sorted(set(range(size)) - set(results))
    assert not missing, f"ranks {missing} gave no result; the others gave {results}"
    return results
