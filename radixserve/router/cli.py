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

from radixserve.router.app import start_router, stop_router
from radixserve.router.config import KubeDiscoveryConfig, RouterConfig
from radixserve.router.policies import POLICIES, CacheAwareConfig
from radixserve.router.workers import normalize_url

_DEFAULTS = RouterConfig()
_CACHE = CacheAwareConfig()
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
                             balance_rel_threshold=args.balance_rel_threshold, max_tree_size=args.max_tree_size)
    return RouterConfig(
        host=args.host, port=args.port, worker_urls=[normalize_url(u) for u in args.worker_urls], kube=kube, policy=args.policy,
        cache=cache, api_key=args.api_key or None, health_check_interval_s=args.health_check_interval,
        health_check_timeout_s=args.health_check_timeout, health_failure_threshold=args.health_failure_threshold,
        health_success_threshold=args.health_success_threshold, eviction_interval_s=args.eviction_interval,
        request_timeout_s=args.request_timeout, max_attempts=args.max_attempts,
        max_payload_bytes=args.max_payload_size,
    )


async def _serve(config: RouterConfig) -> None:
    running = await start_router(config)
    # Tests and scripts started with --port 0 read the chosen port from this line.
    print(f"router listening on {running.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
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
