"""Triton kernels compiled while the process runs, and how long each took.

Triton compiles a kernel the first time a process launches it with a new specialization (block
sizes, dtypes, 16-byte alignment of each pointer, integers equal to 1 or divisible by 16). A
compile takes 0.1-1.5 s on the host, and every running request waits it out: the warm-up exists to
pay them before the server reports ready. A compile after the warm-up is a shape the warm-up did
not cover; this module makes each one visible (a warning naming the kernel, the step log's line,
a counter in the scheduler's load and /metrics) instead of an unexplained latency spike. vLLM's
JIT monitor warns the same way.

Triton's hooks are process-wide, so there is one watch per process (`WATCH`). The time measured
runs from the in-memory cache miss to the compiled kernel: a true compile, or a load from
Triton's on-disk cache (milliseconds) when an earlier process compiled the same kernel.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelCompile:
    kernel: str
    ms: float
    after_warmup: bool
    wall: float  # time.time() when it finished, to place it in a step log


@dataclass
class CompileWatch:
    warmed_up: bool = False
    compiles: list[KernelCompile] = field(default_factory=list)
    _started: dict[tuple[int, str], float] = field(default_factory=dict)
    _installed: bool = False

    @property
    def after_warmup(self) -> int:
        return sum(c.after_warmup for c in self.compiles)

    def install(self) -> bool:
        """Chain onto Triton's JIT hooks (once); False where Triton or its knobs are missing."""
        if self._installed:
            return True
        try:
            from triton import knobs
        except ImportError:  # no Triton (a CPU install), or one older than its knobs (3.4)
            return False
        runtime = knobs.runtime
        if not hasattr(runtime, "jit_cache_hook") or not hasattr(runtime, "jit_post_compile_hook"):
            return False
        before_cache, before_post = runtime.jit_cache_hook, runtime.jit_post_compile_hook

        def on_cache_miss(**kwargs: Any) -> Any:
            self.started(kwargs["fn"], str(kwargs["key"]))
            # True from an earlier hook skips the compile: keep its answer.
            return before_cache(**kwargs) if before_cache is not None else False

        def on_compiled(**kwargs: Any) -> Any:
            self.finished(kwargs["fn"], str(kwargs["key"]))
            return before_post(**kwargs) if before_post is not None else None

        runtime.jit_cache_hook, runtime.jit_post_compile_hook = on_cache_miss, on_compiled
        self._installed = True
        return True

    def started(self, fn: Any, key: str) -> None:
        self._started[(id(fn.jit_function), key)] = time.perf_counter()

    def finished(self, fn: Any, key: str) -> None:
        began = self._started.pop((id(fn.jit_function), key), None)
        ms = (time.perf_counter() - began) * 1e3 if began is not None else 0.0
        event = KernelCompile(fn.name, round(ms, 1), self.warmed_up, round(time.time(), 4))
        self.compiles.append(event)
        if event.after_warmup:
            logger.warning("Triton compiled %s after the warm-up in %.0f ms: the requests running then "
                           "waited (a kernel shape the warm-up did not cover)", event.kernel, event.ms)
        else:
            logger.debug("Triton compiled %s in %.0f ms", event.kernel, event.ms)

    def mark_warmed_up(self) -> None:
        """From here on a compile is a stall of live requests, and is warned about."""
        self.warmed_up = True


WATCH = CompileWatch()
