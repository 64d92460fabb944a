"""Keep Python's cyclic garbage collector off the start-up heap of long-running processes.

Everything a process builds before it serves (imported modules, the model and its pools,
CUDA graphs, the tokenizer) lives as long as the process. A full (generation 2) collection
still walks all of it: 100-300 ms measured in a process with torch and transformers loaded
(tests/managers/test_step_log.py logs such pauses). In the scheduler that is one stall of
every running request's next token; in the detokenizer and the HTTP process it holds the
streams. `gc.freeze()` moves the objects alive at that moment to a permanent generation the
collector skips, so later collections walk only what serving allocates. Objects frozen this
way are never collected, which is what start-up objects need anyway.

RADIXSERVE_GC_FREEZE=0 turns it off (to measure its effect).
"""

from __future__ import annotations

import gc
import logging
import os

logger = logging.getLogger(__name__)

ENV = "RADIXSERVE_GC_FREEZE"


def freeze_startup_heap(process: str) -> bool:
    """Collect once, then freeze what is left; call when start-up is done. True if it froze."""
    if os.environ.get(ENV, "1") == "0":
        return False
    gc.collect()
    gc.freeze()
    logger.debug("%s: %d start-up objects frozen out of garbage collection", process, gc.get_freeze_count())
    return True
