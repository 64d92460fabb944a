"""Grammar-constrained decoding: a request's output matches its `json_schema`, `regex` or `ebnf`.

Enforced in the engine, not after it: every step, each constrained request's matcher writes the
tokens its grammar allows next into a token bitmask, and the sampler sets every other logit of
that row to -inf, so no model (a tiny random one included) can produce what the grammar forbids.

- `base.py`: the backend interface (compile (kind, source) once per tokenizer and vocabulary, a
  matcher per request: `accept_token`, `fill_bitmask`, `is_terminated`) and the edge's syntax
  check `validate_grammar` (no tokenizer needed; RequestBuilder turns failures into
  InvalidRequestError naming the field, a 400 before admission).
- `xgrammar_backend.py` (default, `--grammar-backend xgrammar`) and `llguidance_backend.py`;
  `--grammar-backend none` refuses constrained requests.
- `manager.py` `GrammarManager`: compiled grammars in a bounded LRU keyed by (kind, source),
  compiled on a worker thread; a request waits in the manager's queue (not the waiting queue)
  until its grammar is ready, so batches never wait for a compilation. Ranks (TP / PP) agree on
  how many queued requests are ready with `all_reduce_min`, only while the queue is non-empty.

In the scheduler (`managers/scheduler.py`): `_admit_grammars` moves ready requests to the waiting
queue with a matcher each (every copy of an n > 1 request has its own over the shared compiled
grammar) or fails them (abort, error "invalid_request"); `_process` feeds each sampled token to
the matcher before appending it (a refused token, which the mask makes impossible, aborts the
request with error "internal_error" instead of being emitted); `_after_token` finishes a request
whose grammar is terminated with "stop". The grammar decides the end: `ignore_eos` does not keep
a complete grammar going, and `min_new_tokens` does not ban EOS for a constrained row (the
grammar allows EOS only where it may end). A retracted request keeps its output and its matcher;
its re-prefill feeds nothing to the matcher again. A chunked prefill samples (and masks) only the
rows that finish their prompt. Under the overlap schedule constrained requests overlap too: the
next decode step is launched with the previous step's ids still on the device, and only its
sampling needs the mask, so `ScheduleBatch.before_sample` (`Scheduler._accept_early`) waits for
the previous ids on the host, feeds them to the matchers and lets the mask be filled, while the
forward runs; `_process` then uses those results instead of accepting again. A request that
finished at the previous step rides along once more (a terminated matcher's row is left
unconstrained) and its surplus token is dropped, as for every overlapped request.

In the sampler (`sampling/sampler.py`): penalties, then logit_bias, then the min_new_tokens ban
(unconstrained rows), then the grammar mask (constrained rows only; no bitmask at all when no row
has a grammar), then temperature / top-k / top-p / min-p or argmax. Unconstrained rows are left
bit for bit as they were. Logits wider than the tokenizer's vocabulary (padded LM heads): the
padding ids are never allowed for a constrained row. CUDA graphs capture the model only; sampling,
and so the mask, runs after the graph's replay.
"""

from radixserve.constrained.base import (
    GRAMMAR_BACKENDS,
    GrammarBackend,
    GrammarError,
    GrammarMatcher,
    allocate_bitmask,
    bitmask_width,
    validate_grammar,
)

__all__ = ["GRAMMAR_BACKENDS", "GrammarBackend", "GrammarError", "GrammarMatcher", "allocate_bitmask",
           "bitmask_width", "validate_grammar"]
