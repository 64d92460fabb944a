"""`radixserve operator`: run the kopf operator for InferenceServer resources."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from radixserve.operator import names

if TYPE_CHECKING:
    from radixserve.operator.runner import RunSettings as RunSettings

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
    prometheus_address: str = names.DEFAULT_PROMETHEUS_ADDRESS
    metrics_port: int = 0  # 0: no /metrics and /healthz endpoint
    metrics_bind_address: str = "0.0.0.0"
    leader_election: bool = False
    leader_election_namespace: str | None = None  # None: POD_NAMESPACE or the service account's
    leader_election_id: str = names.OPERATOR_NAME
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0

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
                        help="do not look for kopf peering objects (implied by --leader-election, which is how "
                             "several replicas coordinate); without election run exactly one replica")
    parser.add_argument("--liveness", metavar="URL", default=None,
                        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--default-image", default=names.DEFAULT_IMAGE,
                        help="image for GPU server pods whose spec names none (default: %(default)s)")
    parser.add_argument("--default-cpu-image", default=names.DEFAULT_CPU_IMAGE,
                        help="image for CPU server pods and routers whose spec names none (default: %(default)s)")
    parser.add_argument("--resync-seconds", type=float, default=300.0,
                        help="reconcile every InferenceServer this often even without events (repairs drift, "
                             "recomputes the status); 0 disables (default: 300)")
    parser.add_argument("--retry-seconds", type=float, default=30.0,
                        help="re-check a spec that references a missing PVC or Secret this often (default: 30)")
    parser.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                        help="serve the operator's Prometheus /metrics and a /healthz liveness endpoint on this "
                             "port; 0: off (default: 0; the chart sets 8080)")
    parser.add_argument("--metrics-bind-address", default="0.0.0.0", metavar="ADDR",
                        help="address of the metrics endpoint (default: %(default)s)")
    election = parser.add_argument_group("leader election (several replicas, one acts)")
    election.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=False,
                          help="act only while holding a coordination.k8s.io Lease; other replicas wait as "
                               "standbys (default: off)")
    election.add_argument("--leader-election-namespace", default=None, metavar="NS",
                          help="namespace of the Lease (default: env POD_NAMESPACE, else the service account's)")
    election.add_argument("--leader-election-id", default=names.OPERATOR_NAME, metavar="NAME",
                          help="name of the Lease (default: %(default)s)")
    election.add_argument("--lease-duration-seconds", type=float, default=15.0,
                          help="how long a silent leader keeps the Lease (default: 15)")
    election.add_argument("--renew-deadline-seconds", type=float, default=10.0,
                          help="a leader that cannot renew for this long stops acting and exits (default: 10)")
    election.add_argument("--retry-period-seconds", type=float, default=2.0,
                          help="how often the leader renews and standbys try to acquire (default: 2)")
    scaling = parser.add_argument_group("autoscaling (spec.autoscaling)")
    scaling.add_argument("--prometheus-address", metavar="URL",
                         default=os.environ.get("RADIXSERVE_PROMETHEUS_ADDRESS", names.DEFAULT_PROMETHEUS_ADDRESS),
                         help="Prometheus that KEDA ScaledObjects query when spec.autoscaling.prometheusAddress is "
                              "unset (env RADIXSERVE_PROMETHEUS_ADDRESS; default: %(default)s)")
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
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if not 0 <= args.metrics_port <= 65535:
        parser.error("--metrics-port must be between 0 and 65535")
    if args.leader_election and not (0 < args.retry_period_seconds < args.renew_deadline_seconds
                                     < args.lease_duration_seconds):
        parser.error("leader election needs 0 < --retry-period-seconds < --renew-deadline-seconds "
                     "< --lease-duration-seconds")
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
        prometheus_address=args.prometheus_address,
        metrics_port=args.metrics_port,
        metrics_bind_address=args.metrics_bind_address,
        leader_election=args.leader_election,
        leader_election_namespace=args.leader_election_namespace,
        leader_election_id=args.leader_election_id,
        lease_duration_seconds=args.lease_duration_seconds,
        renew_deadline_seconds=args.renew_deadline_seconds,
        retry_period_seconds=args.retry_period_seconds,
    )


def run_settings(options: RunOptions) -> RunSettings:
    from radixserve.operator.builders import Defaults
    from radixserve.operator.config import OperatorConfig
    from radixserve.operator.leader import ElectionConfig, default_namespace
    from radixserve.operator.runner import RunSettings

    election = None
    if options.leader_election:
        election = ElectionConfig(
            namespace=options.leader_election_namespace or default_namespace(),
            name=options.leader_election_id,
            lease_seconds=options.lease_duration_seconds,
            renew_deadline=options.renew_deadline_seconds,
            retry_period=options.retry_period_seconds,
        )
    return RunSettings(
        config=OperatorConfig(
            defaults=Defaults(image=options.image, cpu_image=options.cpu_image,
                              model_cache_host_path=options.model_cache_host_path, label_nodes=options.label_nodes,
                              prometheus_address=options.prometheus_address),
            resync_seconds=options.resync_seconds,
            retry_seconds=options.retry_seconds,
            progress_seconds=options.progress_seconds,
            node_sweep_seconds=options.node_label_sweep_seconds,
            namespaces=options.namespaces,
        ),
        namespaces=options.namespaces,
        standalone=options.standalone,
        liveness=options.liveness,
        metrics_host=options.metrics_bind_address,
        metrics_port=options.metrics_port or None,
        election=election,
    )


def run(options: RunOptions) -> int:
    # kopf is imported here, not at module level, so `--help` stays fast.
    import kopf

    from radixserve.operator.runner import run_operator

    kopf.configure(verbose=options.log_level == "debug")
    logging.getLogger().setLevel(options.log_level.upper())

    def prepare(registry: kopf.OperatorRegistry) -> None:
        @kopf.on.login(registry=registry)
        def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            # The same credentials the handlers' client loads: in-cluster, then kubeconfig.
            return kopf.login_via_client(**kwargs)

    return asyncio.run(run_operator(run_settings(options), prepare))


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args([] if argv is None else argv)
    return run(options)


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
