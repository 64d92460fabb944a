"""Prometheus metrics of the router, in a registry of its own (not the global one).

Per-worker counts and gauges are plain integers on the `Worker` objects and the policy's
trees, read only when `/metrics` is scraped: the request path pays an integer increment,
not a labelled-metric lookup.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from radixserve.router.kv_index import EventsState, KvIndex
from radixserve.router.policies import CacheAwarePolicy, Decision, Policy
from radixserve.router.workers import WorkerRegistry, WorkerState

PREFIX = "radixserve_router"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROUTES = ("/generate", "/v1/completions", "/v1/chat/completions")


class RouterMetrics:
    def __init__(self, workers: WorkerRegistry, policy: Policy, index: KvIndex | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions: Counter[str] = Counter({d.value: 0 for d in Decision})
        self.retries = 0
        self.errors: Counter[str] = Counter()
        self._workers = workers
        self._policy = policy
        self._index = index
        # Whether text prompts are tokenized for exact matching; the app points it at its proxy.
        self.prompt_tokenizer_loaded: Callable[[], bool] = lambda: False
        self.registry.register(_StateCollector(self))
        hist = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from receiving a request to the end of its response (streams: last byte).",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        # Bound once: `.labels()` per request would cost a dict lookup and a lock.
        self.duration = {route: hist.labels(route) for route in ROUTES}
        if index is not None and isinstance(policy, CacheAwarePolicy):
            match = Histogram(
                f"{PREFIX}_cache_match_tokens",
                "Prompt tokens the chosen worker holds, for requests routed on cache events.",
                registry=self.registry,
                buckets=(0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
            )
            policy.on_exact_match = match.observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, metrics: RouterMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterable[Metric]:
        m = self._m
        workers = m._workers.all()
        requests = CounterMetricFamily(f"{PREFIX}_worker_requests", "Requests sent to each worker.", labels=["worker"])
        failures = CounterMetricFamily(f"{PREFIX}_worker_failures",
                                       "Failed health checks and connections per worker.", labels=["worker"])
        outstanding = GaugeMetricFamily(f"{PREFIX}_worker_outstanding_requests",
                                        "Requests in flight on each worker (the load policies see).",
                                        labels=["worker"])
        healthy = GaugeMetricFamily(f"{PREFIX}_worker_healthy", "1 if the worker receives traffic.", labels=["worker"])
        for w in workers:
            requests.add_metric([w.url], w.requests_total)
            failures.add_metric([w.url], w.failures_total)
            outstanding.add_metric([w.url], w.outstanding)
            healthy.add_metric([w.url], 1 if w.state is WorkerState.HEALTHY else 0)
        yield from (requests, failures, outstanding, healthy)
        tree = GaugeMetricFamily(f"{PREFIX}_tree_size_chars",
                                 "Characters in each worker's approximate prefix tree (cache_aware).",
                                 labels=["worker"])
        for url, size in m._policy.tree_sizes().items():
            tree.add_metric([url], size)
        yield tree
        decisions = CounterMetricFamily(f"{PREFIX}_routing_decisions",
                                        "Routing decisions: cache_hit, cache_miss, balance, or the policy name.",
                                        labels=["policy", "decision"])
        for decision, count in m.decisions.items():
            decisions.add_metric([m._policy.name, decision], count)
        yield decisions
        yield CounterMetricFamily(f"{PREFIX}_retries", "Requests retried on another worker after a connection failure.",
                                  value=m.retries)
        errors = CounterMetricFamily(f"{PREFIX}_errors", "Requests that failed in the router, by reason.",
                                     labels=["reason"])
        for reason, count in m.errors.items():
            errors.add_metric([reason], count)
        yield errors
        yield GaugeMetricFamily(f"{PREFIX}_healthy_workers", "Workers receiving traffic.",
                                value=len(m._workers.healthy))
        if m._index is not None:
            yield GaugeMetricFamily(f"{PREFIX}_prompt_tokenizer_loaded",
                                    "1 once the router tokenizes text prompts for exact cache matching "
                                    "(until then they are routed by the approximate tree).",
                                    value=1 if m.prompt_tokenizer_loaded() else 0)
            yield from _cache_event_metrics(m._index)


def _cache_event_metrics(index: KvIndex) -> Iterable[Metric]:
    applied = CounterMetricFamily(f"{PREFIX}_cache_events_applied", "Cache events applied to each worker's index.",
                                  labels=["worker"])
    resyncs = CounterMetricFamily(f"{PREFIX}_cache_events_resyncs",
                                  "Snapshots loaded after the first (gaps, new epochs, broken streams).",
                                  labels=["worker"])
    fallbacks = CounterMetricFamily(f"{PREFIX}_cache_events_fallbacks",
                                    "Times a worker left live events for the approximate tree.", labels=["worker"])
    state = GaugeMetricFamily(f"{PREFIX}_cache_events_state", "1 for each worker's current cache-events state.",
                              labels=["worker", "state"])
    blocks = GaugeMetricFamily(f"{PREFIX}_cache_blocks_indexed", "Blocks of each worker's cache in the index.",
                               labels=["worker"])
    queue = GaugeMetricFamily(f"{PREFIX}_engine_requests", "Engine-reported requests, waiting or running.",
                              labels=["worker", "phase"])
    kv = GaugeMetricFamily(f"{PREFIX}_engine_kv_usage", "Engine-reported fraction of KV slots in use.",
                           labels=["worker"])
    for w in index.all():
        applied.add_metric([w.url], w.events_applied)
        resyncs.add_metric([w.url], w.resyncs)
        fallbacks.add_metric([w.url], w.fallbacks)
        for s in EventsState:
            state.add_metric([w.url, s.value], 1 if w.state is s else 0)
        blocks.add_metric([w.url], len(w.blocks))
        if w.load is not None:
            queue.add_metric([w.url, "waiting"], w.load.waiting)
            queue.add_metric([w.url, "running"], w.load.running)
            kv.add_metric([w.url], w.load.kv_usage)
    yield from (applied, resyncs, fallbacks, state, blocks, queue, kv)
