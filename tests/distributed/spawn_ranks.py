"""Run one function in N spawned rank processes that meet at a file store, for tests that build
process groups themselves (gloo on CPU, NCCL on GPUs)."""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from collections.abc import Callable
from typing import Any


def run_ranks(target: Callable[..., None], size: int, *args: Any, timeout: float = 600.0) -> dict[int, Any]:
    """Calls target(rank, size, store, *args, out) in `size` processes; each puts (rank, result) on
    `out`. Returns the results by rank."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        store = os.path.join(d, "store")
        procs = [ctx.Process(target=target, args=(rank, size, store, *args, out)) for rank in range(size)]
        for p in procs:
            p.start()
        results = dict(out.get(timeout=timeout) for _ in procs)
        for p in procs:
            p.join(60)
    return results
