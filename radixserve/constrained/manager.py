"""GrammarManager: compiles grammars off the scheduler's critical path and holds the requests
waiting for theirs.

Compiled grammars are cached by (kind, source) in a bounded LRU of futures (a repeated grammar,
or the n copies of one request, compile once). Compilation runs on a worker thread; a request
whose grammar is not ready waits here, not in the waiting queue, so batches never wait for it.
`pop_ready` hands over the longest ready prefix of the queue (arrival order kept). Under tensor
or pipeline parallelism every scheduler rank holds the same queue and must admit the same
requests in the same step: the ranks agree on the prefix length with an all-reduce (min).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from radixserve.constrained.base import GrammarBackend, GrammarError, GrammarMatcher, make_backend

logger = logging.getLogger(__name__)

T = TypeVar("T")
CACHE_SIZE = 256


@dataclass
class Ready(Generic[T]):
    item: T
    matcher: GrammarMatcher | None
    error: str | None  # why its grammar did not compile


class GrammarManager(Generic[T]):
    def __init__(self, backend: str, tokenizer: Any, vocab_size: int, stop_token_ids: list[int],
                 cache_size: int = CACHE_SIZE) -> None:
        self.backend_name = backend
        self.tokenizer = tokenizer
        # The bitmask covers the logits' width and the tokenizer's vocabulary, whichever is larger;
        # ids past the tokenizer's vocabulary (padding rows of the LM head) are never allowed.
        self.vocab_size = max(vocab_size, len(tokenizer))
        self.stop_token_ids = sorted(stop_token_ids)
        self.cache_size = cache_size
        self._backend: GrammarBackend | None = None
        self._backend_lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], Future[Any]] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar")
        self.queue: list[tuple[T, Future[Any]]] = []

    @property
    def backend(self) -> GrammarBackend:
        """Built at the server's warm-up (scheduler_process.warm_up) or, in an Engine, at the first
        constrained request, on the caller's (the scheduler's) thread: it reads
        the tokenizer's vocabulary, and a Hugging Face fast tokenizer must not be used from two
        threads at once. Compiling afterwards uses the backend's own copy of the vocabulary."""
        with self._backend_lock:
            if self._backend is None:
                try:
                    self._backend = make_backend(self.backend_name, self.tokenizer, self.vocab_size,
                                                 self.stop_token_ids)
                except Exception as e:
                    raise GrammarError(f"the {self.backend_name} grammar backend cannot use this tokenizer: "
                                       f"{type(e).__name__}: {e}") from e
            return self._backend

    def _compile(self, kind: str, source: str) -> Any:
        return self.backend.compile(kind, source)

    def compiled(self, kind: str, source: str) -> Future[Any]:
        key = (kind, source)
        fut = self._cache.get(key)
        if fut is not None:
            self._cache.move_to_end(key)
            return fut
        fut = self._executor.submit(self._compile, kind, source)
        self._cache[key] = fut
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return fut

    def submit(self, item: T, kind: str, source: str) -> None:
        """Queue `item` until its grammar is compiled; GrammarError if the backend cannot start."""
        _ = self.backend
        self.queue.append((item, self.compiled(kind, source)))

    def remove(self, item: T) -> bool:
        for i, (it, _) in enumerate(self.queue):
            if it is item:
                del self.queue[i]
                return True
        return False

    def __len__(self) -> int:
        return len(self.queue)

    def _ready_prefix(self) -> int:
        n = 0
        for _, fut in self.queue:
            if not fut.done():
                break
            n += 1
        return n

    def pop_ready(self, agree: Callable[[int], int] = lambda n: n, wait_s: float = 0.0) -> list[Ready[T]]:
        """The requests at the front of the queue whose grammars are compiled (or failed), each
        with its own matcher. `agree`: the ranks' minimum of the count; `wait_s`: how long to wait
        for the first one when nothing else is to be done (so an idle loop does not spin)."""
        if not self.queue:
            return []
        n = self._ready_prefix()
        if n == 0 and wait_s > 0:
            wait([self.queue[0][1]], timeout=wait_s)
            n = self._ready_prefix()
        n = agree(n)
        if n <= 0:
            return []
        taken, self.queue = self.queue[:n], self.queue[n:]
        out: list[Ready[T]] = []
        for item, fut in taken:
            try:
                out.append(Ready(item, self.backend.matcher(fut.result()), None))
            except GrammarError as e:
                out.append(Ready(item, None, str(e)))
            except Exception as e:  # a backend failure fails the request, never the scheduler
                logger.exception("grammar compilation failed")
                out.append(Ready(item, None, f"{type(e).__name__}: {e}"))
        return out

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
