"""`radixserve router`: parse flags into a RouterConfig and serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from radixserve.router.admission import AdmissionConfig, Limits, load_tenants
from radixserve.router.app import start_router, stop_router
from radixserve.router.config import KubeDiscoveryConfig, RouterConfig
from radixserve.router.drain import DrainConfig, drain
from radixserve.router.policies import POLICIES, CacheAwareConfig
from radixserve.router.scale import ScaleFromZeroConfig
from radixserve.router.workers import normalize_url

_DEFAULTS = RouterConfig()
_CACHE = CacheAwareConfig()
_DRAIN = DrainConfig()
_SCALE = ScaleFromZeroConfig(namespace="", name="")
# Not the server's 30000, so a router and a server started with defaults on one machine do not
# collide (30080 is also the kind cluster's host port of the router, see deploy/kind/cluster.yaml).
ROUTER_PORT = 30080
WORKER_PORT = 30000  # `radixserve serve`'s default


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default once: not when its help already says it, and not when it is unset
    (None, False, empty), where "(default: None)" would say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, [], "") or default is argparse.SUPPRESS
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="radixserve router",
        description=(
            "Cache-aware HTTP router in front of radixserve (or any OpenAI-compatible) replicas. "
            "Give workers as --worker-urls, or discover them from Kubernetes EndpointSlices "
            "with --kube-selector/--kube-namespace; both may be combined, and workers can be "
            "added or removed at run time through POST /add_worker and /remove_worker."
        ),
        formatter_class=_HelpFormatter,
    )
    net = p.add_argument_group("listening")
    net.add_argument("--host", default=_DEFAULTS.host, help="address to listen on (0.0.0.0 in a pod)")
    net.add_argument("--port", type=int, default=ROUTER_PORT, help="port to listen on (0 picks a free port)")

    workers = p.add_argument_group("workers")
    workers.add_argument("--worker-urls", nargs="+", default=[], metavar="URL",
                         help="worker base URLs, e.g. http://10.0.0.5:30000 (scheme optional)")
    workers.add_argument("--kube-selector", metavar="LABELS", default=None,
                         help="label selector of the replicas' EndpointSlices (k=v,k2=v2); enables discovery")
    workers.add_argument("--kube-namespace", metavar="NS", default=None,
                         help="namespace to watch (default: the pod's own namespace, else 'default')")
    workers.add_argument("--kube-port", type=int, default=WORKER_PORT,
                         help="port of the workers on each discovered endpoint address")
    workers.add_argument("--kube-api-server", metavar="URL", default=None,
                         help="Kubernetes API URL (default: in-cluster config, else ~/.kube/config)")
    workers.add_argument("--worker-protocol", choices=["http", "grpc"], default=_DEFAULTS.worker_protocol,
                         help="how POST /generate reaches the workers: http, or grpc to the Generate RPC of "
                              "radixserve workers started with --grpc-port (at each worker URL's host and "
                              "--grpc-port). Bodies gRPC cannot carry as they are (batches, logprob_start_len, "
                              "logit_bias), the OpenAI routes, health checks and cache events stay on HTTP")
    workers.add_argument("--grpc-port", type=int, metavar="N", default=None,
                         help="with --worker-protocol grpc (required then): the workers' gRPC port, the same "
                              "on every worker")

    pol = p.add_argument_group("routing policy")
    pol.add_argument("--policy", choices=POLICIES, default=_DEFAULTS.policy,
                     help="cache_aware: longest cached prefix unless load is imbalanced; round_robin; "
                          "random; power_of_two: fewer outstanding requests of two random workers")
    pol.add_argument("--cache-threshold", type=float, default=_CACHE.cache_threshold,
                     help="cache_aware: route to the longest-match worker only if matched/prompt chars "
                          "exceeds this; else to the least-loaded worker")
    pol.add_argument("--balance-abs-threshold", type=int, default=_CACHE.balance_abs_threshold,
                     help="cache_aware: load is imbalanced when max-min outstanding requests exceeds this "
                          "(and the relative threshold is exceeded too)")
    pol.add_argument("--balance-rel-threshold", type=float, default=_CACHE.balance_rel_threshold,
                     help="cache_aware: load is imbalanced when max > min * this (and the absolute "
                          "threshold is exceeded too); then the least-loaded worker wins")
    pol.add_argument("--max-tree-size", type=int, default=_CACHE.max_tree_size,
                     help="cache_aware: characters kept per worker's prefix tree; LRU leaves beyond it "
                          "are evicted every --eviction-interval seconds")
    pol.add_argument("--eviction-interval", type=float, default=_DEFAULTS.eviction_interval_s,
                     help="seconds between prefix tree evictions")

    ev = p.add_argument_group("cache events (exact cache_aware routing)")
    ev.add_argument("--cache-events", choices=["auto", "off"], default="auto" if _DEFAULTS.cache_events else "off",
                    help="auto: subscribe to each worker's GET /v1/cache/events and, while a worker's stream is "
                         "live, match prompts against the blocks its engine reports and balance on the engine's "
                         "load; workers without events (404, any OpenAI server) or with a broken stream use the "
                         "approximate tree. off: the tree for every worker (default: auto)")
    ev.add_argument("--tokenizer", metavar="PATH|HF_ID|auto|none", default=_DEFAULTS.tokenizer,
                    help="the served model's tokenizer (GGUF file, HF directory or Hugging Face id), so that text "
                         "and chat prompts are tokenized as the server does. auto (default): the tokenizer a "
                         "radixserve worker reports in /get_server_info, when that path exists on this machine "
                         "or is the embedded model. Without one (none, or auto finding nothing) only token-id "
                         "prompts (input_ids) are matched exactly and text prompts use the tree")
    ev.add_argument("--kv-balance-abs-threshold", type=float, default=_CACHE.kv_balance_abs_threshold,
                    help="exact routing: engine KV usage is imbalanced when max - min exceeds this (0..1) and "
                         "max > min * --balance-rel-threshold; then a weak cache hit (below twice "
                         "--cache-threshold, e.g. a shared preamble) goes to the emptiest cache")

    rel = p.add_argument_group("health and requests")
    rel.add_argument("--health-check-interval", type=float, default=_DEFAULTS.health_check_interval_s,
                     help="seconds between GET /health checks of every worker")
    rel.add_argument("--health-check-timeout", type=float, default=_DEFAULTS.health_check_timeout_s,
                     help="seconds before a health check counts as failed")
    rel.add_argument("--health-failure-threshold", type=int, default=_DEFAULTS.health_failure_threshold,
                     help="failed checks in a row that eject a worker (a refused connection ejects at once)")
    rel.add_argument("--health-success-threshold", type=int, default=_DEFAULTS.health_success_threshold,
                     help="passed checks in a row that re-admit an ejected worker")
    rel.add_argument("--request-timeout", type=float, default=_DEFAULTS.request_timeout_s,
                     help="seconds a proxied request may take end to end (504 after)")
    rel.add_argument("--max-attempts", type=int, default=_DEFAULTS.max_attempts,
                     help="workers tried per request when connections fail before any byte was sent")
    rel.add_argument("--max-payload-size", type=int, default=_DEFAULTS.max_payload_bytes,
                     help="largest request body in bytes (413 beyond)")
    rel.add_argument("--api-key", default=os.environ.get("RADIXSERVE_API_KEY"),
                     help="required from clients as `Authorization: Bearer KEY` and sent to workers "
                          "(default: $RADIXSERVE_API_KEY; unset means no key)")
    adm = p.add_argument_group(
        "rate limits and priority",
        "Per API key: the sha256 of the request's bearer token, or 'anonymous' without one. Over a limit the "
        "router answers 429 with Retry-After. See docs/router.md, 'Rate limits and priority'.")
    adm.add_argument("--rate-limit", type=float, metavar="RPS", default=None,
                     help="requests per second per key, as a token bucket (default: no limit)")
    adm.add_argument("--rate-limit-burst", type=int, metavar="N", default=None,
                     help="token bucket size: requests a key may send at once after being idle (default: ceil(RPS))")
    adm.add_argument("--max-concurrent-per-key", type=int, metavar="N", default=None,
                     help="requests a key may have in flight (default: no cap)")
    adm.add_argument("--tenants-file", metavar="YAML", default=None,
                     help="per-key settings: a mapping of key (plain), 'sha256:<hex of the key>' or 'anonymous' "
                          "to {name, rps, burst, max_concurrent, priority}; unset fields take the flags' values. "
                          "With --api-key, the file's keys are accepted too")
    adm.add_argument("--default-priority", type=int, metavar="N", default=None,
                     help="priority written into the requests of keys whose entry sets none (the engines rank "
                          "their queues by it with --enable-priority-scheduling, higher first; default: the "
                          "client's own `priority` field passes)")

    drn = p.add_argument_group("draining", "On SIGTERM: /health (readiness) answers 503 at once, /liveness stays 200.")
    drn.add_argument("--drain-grace-seconds", type=float, metavar="SECONDS", default=_DRAIN.grace_s,
                     help="after SIGTERM new requests are still served this long, while endpoints drop the pod")
    drn.add_argument("--drain-timeout-seconds", type=float, metavar="SECONDS", default=_DRAIN.timeout_s,
                     help="then the listener closes and in-flight requests and streams get up to this long to "
                          "finish; the process then exits 0")

    sfz = p.add_argument_group("scale from zero")
    sfz.add_argument("--scale-from-zero", metavar="NAMESPACE/NAME", default=None,
                     help="InferenceServer to scale from 0 to 1 replica (its scale subresource) when a request "
                          "finds no healthy worker; requests are held meanwhile and /health stays 200 with no "
                          "workers. Needs RBAC get and patch on inferenceservers/scale; uses --kube-api-server")
    sfz.add_argument("--scale-from-zero-timeout", type=float, metavar="SECONDS", default=_SCALE.timeout_s,
                     help="seconds a request is held before 503 with Retry-After")
    sfz.add_argument("--scale-from-zero-max-held", type=int, metavar="N", default=_SCALE.max_held,
                     help="requests held at once; more get 503 with Retry-After at once")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="logging level")
    return p


def _default_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    kube = None
    if args.kube_selector:
        kube = KubeDiscoveryConfig(selector=args.kube_selector,
                                   namespace=args.kube_namespace or _default_namespace(),
                                   port=args.kube_port, api_server=args.kube_api_server)
    cache = CacheAwareConfig(cache_threshold=args.cache_threshold, balance_abs_threshold=args.balance_abs_threshold,
                             balance_rel_threshold=args.balance_rel_threshold, max_tree_size=args.max_tree_size,
                             kv_balance_abs_threshold=args.kv_balance_abs_threshold)
    return RouterConfig(
        host=args.host, port=args.port, worker_urls=[normalize_url(u) for u in args.worker_urls], kube=kube, policy=args.policy,
        cache=cache, api_key=args.api_key or None, health_check_interval_s=args.health_check_interval,
        health_check_timeout_s=args.health_check_timeout, health_failure_threshold=args.health_failure_threshold,
        health_success_threshold=args.health_success_threshold, eviction_interval_s=args.eviction_interval,
        request_timeout_s=args.request_timeout, max_attempts=args.max_attempts,
        max_payload_bytes=args.max_payload_size,
        admission=_admission_config(args), drain=_drain_config(args), scale_from_zero=_scale_config(args),
        cache_events=args.cache_events == "auto",
        tokenizer=None if args.tokenizer in (None, "", "none") else args.tokenizer,
        worker_protocol=args.worker_protocol, grpc_port=_grpc_port(args),
    )


def _grpc_port(args: argparse.Namespace) -> int | None:
    if args.worker_protocol != "grpc":
        if args.grpc_port is not None:
            raise ValueError("--grpc-port is for --worker-protocol grpc")
        return None
    if args.grpc_port is None or not 0 < args.grpc_port < 65536:
        raise ValueError("--worker-protocol grpc needs --grpc-port N (1-65535), the workers' gRPC port")
    return int(args.grpc_port)


def _admission_config(args: argparse.Namespace) -> AdmissionConfig:
    if args.rate_limit is not None and args.rate_limit <= 0:
        raise ValueError("--rate-limit must be > 0")
    if args.rate_limit_burst is not None and args.rate_limit_burst < 1:
        raise ValueError("--rate-limit-burst must be >= 1")
    if args.max_concurrent_per_key is not None and args.max_concurrent_per_key < 1:
        raise ValueError("--max-concurrent-per-key must be >= 1")
    default = Limits(rps=args.rate_limit, burst=args.rate_limit_burst, max_concurrent=args.max_concurrent_per_key,
                     priority=args.default_priority)
    tenants = load_tenants(args.tenants_file, default) if args.tenants_file else {}
    return AdmissionConfig(default=default, tenants=tenants)


def _drain_config(args: argparse.Namespace) -> DrainConfig:
    if args.drain_grace_seconds < 0 or args.drain_timeout_seconds < 0:
        raise ValueError("--drain-grace-seconds and --drain-timeout-seconds must be >= 0")
    return DrainConfig(grace_s=args.drain_grace_seconds, timeout_s=args.drain_timeout_seconds)


def _scale_config(args: argparse.Namespace) -> ScaleFromZeroConfig | None:
    if not args.scale_from_zero:
        return None
    if args.scale_from_zero_timeout <= 0 or args.scale_from_zero_max_held < 1:
        raise ValueError("--scale-from-zero-timeout must be > 0 and --scale-from-zero-max-held >= 1")
    return ScaleFromZeroConfig.parse(args.scale_from_zero, timeout_s=args.scale_from_zero_timeout,
                                     max_held=args.scale_from_zero_max_held, api_server=args.kube_api_server)


async def _serve(config: RouterConfig) -> None:
    running = await start_router(config)
    # Tests and scripts started with --port 0 read the chosen port from this line.
    print(f"router listening on {running.url}", flush=True)
    received: list[signal.Signals] = []
    got_signal = asyncio.Event()
    cut_short = asyncio.Event()  # a second signal ends the drain's grace period early

    def on_signal(sig: signal.Signals) -> None:
        if received:
            cut_short.set()
        received.append(sig)
        got_signal.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await got_signal.wait()
        if received[0] is signal.SIGTERM:  # Kubernetes stopping the pod: drain (drain.py)
            await drain(running.router.drain, config.drain, cut_short)
    finally:
        # Closes the listener and lets in-flight requests finish for up to --drain-timeout-seconds.
        await stop_router(running)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.worker_urls and not args.kube_selector:
        logging.getLogger(__name__).warning(
            "no --worker-urls or --kube-selector: starting empty; add workers with POST /add_worker")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        run_event_loop(_serve(config))
    return 0


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed (an optional speed-up, see docs/router.md), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


if __name__ == "__main__":
    sys.exit(main())
