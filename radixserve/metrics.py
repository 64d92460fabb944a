"""Prometheus metrics, named as SGLang and vLLM users know them, with the `radixserve:` prefix.

The server runs prometheus-client in multiprocess mode: `launch` points PROMETHEUS_MULTIPROC_DIR
at a fresh directory before any process imports prometheus_client, the TokenizerManager (main
process) records request-level counters and latency histograms, the scheduler process records
its gauges, and `/metrics` merges both with a MultiProcessCollector. Metrics register on a
registry per instance, never the global one, so two servers or engines can share a process.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

from radixserve.cache_events.protocol import BLOCK_TOKENS
from radixserve.managers.processes import MULTIPROC_ENV

# Buckets as SGLang's (seconds), covering CPU-speed decoding too.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                15.0, 20.0, 25.0, 30.0, 60.0, 120.0)
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
               0.75, 1.0, 2.0, 5.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 90.0, 120.0, 180.0,
               300.0, 600.0)


@dataclass
class RequestRecord:
    """What one HTTP request produced, for its access-log line (server/access_log.py): the
    middleware sets it in `CURRENT_REQUEST`; the TokenizerManager fills it as outputs arrive
    (summed over the request's prompts and choices; a prompt counts once, not once per choice)."""

    request_id: str = ""
    started: float = 0.0  # time.monotonic() at arrival
    first_token_at: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


CURRENT_REQUEST: ContextVar[RequestRecord | None] = ContextVar("radixserve_current_request", default=None)


class TokenizerMetrics:
    """Request-level metrics of the main process."""

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels, reg = ["model_name"], self.registry
        self.prompt_tokens = Counter("radixserve:prompt_tokens", "Prompt tokens processed.", labels,
                                     registry=reg).labels(model_name)
        self.generation_tokens = Counter(
            "radixserve:generation_tokens", "Generated tokens.", labels, registry=reg).labels(model_name)
        self.cached_tokens = Counter(
            "radixserve:cached_tokens", "Prompt tokens served from the radix cache.", labels,
            registry=reg).labels(model_name)
        self.requests = Counter("radixserve:num_requests", "Finished requests by finish reason.",
                                ["model_name", "finished_reason"], registry=reg)
        self.model_name = model_name
        self.ttft = Histogram("radixserve:time_to_first_token_seconds", "Time to first token.", labels,
                              buckets=TTFT_BUCKETS, registry=reg).labels(model_name)
        self.itl = Histogram("radixserve:inter_token_latency_seconds", "Time between streamed tokens.", labels,
                             buckets=ITL_BUCKETS, registry=reg).labels(model_name)
        self.e2e = Histogram("radixserve:e2e_request_latency_seconds", "End-to-end request latency.", labels,
                             buckets=E2E_BUCKETS, registry=reg).labels(model_name)
        self.aborted = Counter(
            "radixserve:num_aborted_requests",
            "Requests (each of n choices) that ended before finishing, by reason: client_disconnected, "
            "abort_request, timeout, error, or the scheduler's refusal code (queue_full, ...).",
            ["model_name", "reason"], registry=reg)
        self.errors = Counter("radixserve:num_request_errors", "HTTP requests answered with an error, by status code.",
                              ["model_name", "code"], registry=reg)

    def abort(self, reason: str) -> None:
        self.aborted.labels(self.model_name, reason).inc()

    def error(self, status: int) -> None:
        self.errors.labels(self.model_name, str(status)).inc()

    def finished(self, reason: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int,
                 e2e_s: float) -> None:
        self.requests.labels(self.model_name, reason).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        self.cached_tokens.inc(cached_tokens)
        self.e2e.observe(e2e_s)


class SchedulerMetrics:
    """Gauges of the scheduler process (the latest value of the live process is reported)."""

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["model_name"], multiprocess_mode="livemostrecent",
                         registry=self.registry).labels(model_name)

        self.num_running_reqs = gauge("radixserve:num_running_reqs", "Requests being decoded or prefilled.")
        self.num_queue_reqs = gauge("radixserve:num_queue_reqs", "Requests waiting to be scheduled.")
        self.token_usage = gauge("radixserve:token_usage",
                                 "Fraction of KV pool slots held by running requests (cached prefixes excluded).")
        self.cached_token_usage = gauge("radixserve:cache_token_usage",
                                        "Fraction of KV pool slots holding cached prefixes.")
        self.cache_hit_rate = gauge("radixserve:cache_hit_rate",
                                    "Prompt tokens served from the radix cache / prompt tokens (since start).")
        self.max_total_num_tokens = gauge("radixserve:max_total_num_tokens", "KV pool size in tokens.")
        # The names the Gateway API Inference Extension's endpoint picker scrapes (its model server
        # protocol, docs/proposals/003-model-server-protocol: TotalQueuedRequests,
        # TotalRunningRequests, KVCacheUtilization, BlockSize/NumGPUBlocks), from the same values.
        self.gie_waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled (queue).")
        self.gie_running = gauge("vllm:num_requests_running", "Requests being decoded or prefilled.")
        self.gie_kv_usage = gauge("vllm:kv_cache_usage_perc",
                                  "KV cache usage, 1 means 100 percent (as radixserve:token_usage).")
        self.gie_kv_usage_legacy = gauge("vllm:gpu_cache_usage_perc",
                                         "KV cache usage (the name older endpoint pickers read).")
        self.cache_config = Gauge("vllm:cache_config_info", "KV cache block size (the cache events' block, "
                                  "in tokens) and the pool's size in such blocks; the value is 1.",
                                  ["model_name", "block_size", "num_gpu_blocks"], multiprocess_mode="livemostrecent",
                                  registry=self.registry)
        self.retractions = Counter("radixserve:num_retractions",
                                   "Running requests sent back to the queue because the KV pool ran out "
                                   "(each is prefilled again: a stall of its stream).", ["model_name"],
                                   registry=self.registry).labels(model_name)
        self._retractions_seen = 0.0
        self.kernel_compiles = Counter("radixserve:num_kernel_compiles_after_warmup",
                                       "Triton kernels compiled after the warm-up; each stalled every running "
                                       "request while it compiled (0.1-1.5 s).", ["model_name"],
                                       registry=self.registry).labels(model_name)
        self._kernel_compiles_seen = 0.0
        self.model_name = model_name
        self._cache_config_set = False

    def update(self, load: dict[str, float]) -> None:
        total = max(1.0, load["kv_total_tokens"])
        self.gie_waiting.set(load["num_waiting_reqs"])
        self.gie_running.set(load["num_running_reqs"])
        self.gie_kv_usage.set(load["kv_used_tokens"] / total)
        self.gie_kv_usage_legacy.set(load["kv_used_tokens"] / total)
        if not self._cache_config_set:  # a constant: the pool never changes size
            blocks = int(load["kv_total_tokens"]) // BLOCK_TOKENS
            self.cache_config.labels(self.model_name, str(BLOCK_TOKENS), str(blocks)).set(1)
            self._cache_config_set = True
        retractions = load.get("num_retractions", 0.0)
        if retractions > self._retractions_seen:
            self.retractions.inc(retractions - self._retractions_seen)
            self._retractions_seen = retractions
        compiles = load.get("num_kernel_compiles_after_warmup", 0.0)
        if compiles > self._kernel_compiles_seen:
            self.kernel_compiles.inc(compiles - self._kernel_compiles_seen)
            self._kernel_compiles_seen = compiles
        self.num_running_reqs.set(load["num_running_reqs"])
        self.num_queue_reqs.set(load["num_waiting_reqs"])
        self.token_usage.set(load["kv_used_tokens"] / total)
        self.cached_token_usage.set(load["kv_cached_tokens"] / total)
        self.cache_hit_rate.set(load["cache_hit_rate"])
        self.max_total_num_tokens.set(load["kv_total_tokens"])


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The exposition text: every process's metrics in multiprocess mode, else `registry`'s."""
    if os.environ.get(MULTIPROC_ENV):
        merged = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)
    return generate_latest(registry)
