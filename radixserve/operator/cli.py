"""`radixserve operator`: run the kopf operator for InferenceServer resources."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from radixserve.operator import names

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class RunOptions:
    namespaces: tuple[str, ...]  # empty: all namespaces
    log_level: str
    standalone: bool
    liveness: str | None
    image: str
    cpu_image: str
    resync_seconds: float
    retry_seconds: float
    model_cache_host_path: str = names.DEFAULT_MODEL_CACHE_HOST_PATH
    label_nodes: bool = True
    node_label_sweep_seconds: float = 600.0
    progress_seconds: float = 15.0

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radixserve operator",
        description="Reconcile InferenceServer resources (radixserve.io/v1alpha1) into server replicas, "
                    "a cache-aware router and their Services.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="serve InferenceServers in this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="serve InferenceServers in every namespace (the default without --namespace)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="log verbosity (default: info)")
    parser.add_argument("--standalone", action="store_true",
                        help="do not coordinate with other operator instances (kopf peering); "
                             "run exactly one replica")
    parser.add_argument("--liveness", metavar="URL", default=None,
                        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--default-image", default=names.DEFAULT_IMAGE,
                        help="image for GPU server pods whose spec names none (default: %(default)s)")
    parser.add_argument("--default-cpu-image", default=names.DEFAULT_CPU_IMAGE,
                        help="image for CPU server pods and routers whose spec names none (default: %(default)s)")
    parser.add_argument("--resync-seconds", type=float, default=300.0,
                        help="recompute every status this often even without events; 0 disables (default: 300)")
    parser.add_argument("--retry-seconds", type=float, default=30.0,
                        help="re-check a spec that references a missing PVC or Secret this often (default: 30)")
    model = parser.add_argument_group("model delivery (spec.model.uri)")
    model.add_argument("--model-cache-host-path", metavar="DIR",
                       default=os.environ.get("RADIXSERVE_MODEL_CACHE_HOST_PATH", names.DEFAULT_MODEL_CACHE_HOST_PATH),
                       help="node directory of cache mode node (env RADIXSERVE_MODEL_CACHE_HOST_PATH; "
                            "default: %(default)s); must be writable by the server pods' UID")
    model.add_argument("--label-nodes", action=argparse.BooleanOptionalAction,
                       default=os.environ.get("RADIXSERVE_LABEL_NODES", "true").lower() not in ("0", "false", "no"),
                       help="label nodes whose cache holds a model and prefer them for replicas; needs get/list/patch "
                            "on nodes (env RADIXSERVE_LABEL_NODES; default: on)")
    model.add_argument("--node-label-sweep-seconds", type=float, default=600.0,
                       help="remove labels of models no InferenceServer uses at most this often, besides on "
                            "deletions; 0: only on deletions (default: 600)")
    model.add_argument("--progress-seconds", type=float, default=15.0,
                       help="refresh the status of downloading models this often; 0 disables (default: 15)")
    return parser


def parse_args(argv: Sequence[str]) -> RunOptions:
    args = build_parser().parse_args(list(argv))
    return RunOptions(
        namespaces=tuple(dict.fromkeys(args.namespace)),
        log_level=args.log_level,
        standalone=args.standalone,
        liveness=args.liveness,
        image=args.default_image,
        cpu_image=args.default_cpu_image,
        resync_seconds=args.resync_seconds,
        retry_seconds=args.retry_seconds,
        model_cache_host_path=args.model_cache_host_path,
        label_nodes=args.label_nodes,
        node_label_sweep_seconds=args.node_label_sweep_seconds,
        progress_seconds=args.progress_seconds,
    )


def run(options: RunOptions) -> None:
    # kopf is imported here, not at module level, so `--help` stays fast.
    import kopf

    from radixserve.operator.builders import Defaults
    from radixserve.operator.config import OperatorConfig
    from radixserve.operator.handlers import register

    kopf.configure(verbose=options.log_level == "debug")
    logging.getLogger().setLevel(options.log_level.upper())
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials the handlers' client loads: in-cluster, then kubeconfig.
        return kopf.login_via_client(**kwargs)

    register(registry, OperatorConfig(
        defaults=Defaults(image=options.image, cpu_image=options.cpu_image,
                          model_cache_host_path=options.model_cache_host_path, label_nodes=options.label_nodes),
        resync_seconds=options.resync_seconds,
        retry_seconds=options.retry_seconds,
        progress_seconds=options.progress_seconds,
        node_sweep_seconds=options.node_label_sweep_seconds,
        namespaces=options.namespaces,
    ))
    asyncio.run(kopf.operator(
        registry=registry,
        standalone=options.standalone,
        liveness_endpoint=options.liveness,
        clusterwide=options.clusterwide,
        namespaces=list(options.namespaces),
    ))


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args([] if argv is None else argv)
    run(options)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
