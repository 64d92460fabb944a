"""kopf handlers: thin adapters from kopf's callbacks to `reconcile`.

`register` puts them on a given registry (not kopf's global one) so that the CLI
and each test get their own set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf

from radixserve.operator import names, nodes
from radixserve.operator.config import OperatorConfig
from radixserve.operator.kube import KubeClient
from radixserve.operator.reconcile import (
    CR_TYPE,
    Outcome,
    Target,
    check,
    reconcile,
    utc_now,
    write_status,
)
from radixserve.operator.spec import SpecError, parse_spec

CR = (names.GROUP, names.VERSION, names.PLURAL)


def _ready(status: Mapping[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status"))
    return None


def _as_body(obj: Mapping[str, Any]) -> kopf.Body:
    """kopf's event functions take its Body view; a plain dict from the API works the same."""
    return obj if isinstance(obj, kopf.Body) else kopf.Body(cast(Any, obj))


def _post_events(body: kopf.Body, outcome: Outcome, ready_before: str | None) -> None:
    if outcome.created:
        kopf.info(body, reason="Created", message="created " + ", ".join(outcome.created))
    if outcome.updated:
        kopf.info(body, reason="Updated", message="rolling out changes to " + ", ".join(outcome.updated))
    if outcome.deleted:
        kopf.info(body, reason="Deleted", message="deleted " + ", ".join(outcome.deleted))
    # Only on a change of status, so a retried problem does not repeat its event.
    if outcome.problems and outcome.status_written:
        problem = outcome.problems[0]
        kopf.warn(body, reason=problem.reason, message=problem.describe())
    ready_after = _ready(outcome.status)
    if ready_after != ready_before and ready_after == "True":
        kopf.info(body, reason="Ready", message="all replicas are ready")


def _raise_for_problems(outcome: Outcome, retry_seconds: float) -> None:
    if not outcome.problems:
        return
    problem = outcome.problems[0]
    if problem.transient:
        raise kopf.TemporaryError(problem.describe(), delay=retry_seconds)
    raise kopf.PermanentError(problem.describe())


class _LazyClient:
    """The Kubernetes client, created on first use inside the running operator, so that
    building the registry (e.g. for `--help`) needs no cluster credentials."""

    def __init__(self, factory: Callable[[], KubeClient]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._client: KubeClient | None = None

    def __call__(self) -> KubeClient:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    client = _LazyClient(config.client_factory)
    _register_settings(registry)
    _register_reconcile(registry, config, client)
    sweeper = nodes.LabelSweeper(config.node_sweep_seconds, config.namespaces)
    _register_status_refresh(registry, config, client, sweeper)
    _register_model_delivery(registry, config, client)
    _register_node_labels(registry, config, client, sweeper)


def _register_settings(registry: kopf.OperatorRegistry) -> None:
    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Progress and diff-base in annotations under our own prefix: the CRD's status
        # schema has no room for kopf's fields, and the API server would prune them.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=names.GROUP, key="last-handled-configuration")
        settings.persistence.finalizer = f"{names.GROUP}/operator"
        # No CRD or namespace scanning: it needs cluster-wide list/watch on both, which
        # the least-privilege RBAC does not grant; the served resources exist at start.
        settings.scanning.disabled = True
        settings.posting.level = logging.INFO


def _register_reconcile(registry: kopf.OperatorRegistry, config: OperatorConfig,
                        client: Callable[[], KubeClient]) -> None:
    @kopf.on.resume(*CR, registry=registry, backoff=config.retry_seconds)
    @kopf.on.create(*CR, registry=registry, backoff=config.retry_seconds)
    @kopf.on.update(*CR, registry=registry, backoff=config.retry_seconds)
    def reconcile_server(body: kopf.Body, **_: Any) -> None:
        ready_before = _ready(body.get("status") or {})
        outcome = reconcile(client(), Target.from_body(body), config.defaults)
        _post_events(body, outcome, ready_before)
        _raise_for_problems(outcome, config.retry_seconds)


def _live_body(api: KubeClient, name: str, namespace: str) -> dict[str, Any] | None:
    body = api.get(CR_TYPE, namespace, name)
    if body is None or body.get("metadata", {}).get("deletionTimestamp"):
        return None  # gone or going: its children are being collected
    return body


def _refresh_status(api: KubeClient, config: OperatorConfig, name: str, namespace: str,
                    body: dict[str, Any] | None = None) -> None:
    """Rewrite one InferenceServer's status after a change of its children."""
    body = body or _live_body(api, name, namespace)
    if body is None:
        return
    target = Target.from_body(body)
    spec, problems = check(target, api)
    status, written = write_status(api, target, spec, problems, config.defaults, utc_now())
    if written and _ready(status) != _ready(target.status) and _ready(status) == "True":
        kopf.info(_as_body(body), reason="Ready", message="all replicas are ready")


def _register_status_refresh(registry: kopf.OperatorRegistry, config: OperatorConfig,
                             client: Callable[[], KubeClient], sweeper: nodes.LabelSweeper) -> None:
    @kopf.on.event("apps", "v1", "deployments", registry=registry,
                   labels={names.LABEL_MANAGED_BY: names.OPERATOR_NAME, names.LABEL_INSTANCE: kopf.PRESENT})
    def owned_deployment_changed(body: kopf.Body, namespace: str | None, **_: Any) -> None:
        if namespace:
            _refresh_status(client(), config, body["metadata"]["labels"][names.LABEL_INSTANCE], namespace)

    if config.resync_seconds > 0:
        @kopf.timer(*CR, registry=registry, interval=config.resync_seconds, initial_delay=config.resync_seconds)
        def resync_status(name: str | None, namespace: str | None, **_: Any) -> None:
            if name and namespace:
                _refresh_status(client(), config, name, namespace)
            if config.defaults.label_nodes:
                sweeper.maybe_sweep(client())


def _model_state(status: Mapping[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "ModelReady":
            return str(cond.get("reason"))
    return None


def _label_node_for(api: KubeClient, pod: Mapping[str, Any], body: dict[str, Any]) -> None:
    try:
        spec = parse_spec(body.get("spec") or {})
    except SpecError:
        return
    found = nodes.downloaded_label(pod, spec)
    if found is not None and nodes.label_node(api, *found):
        node, key = found
        kopf.info(_as_body(body), reason="NodeLabelled",
                  message=f"node {node} holds {spec.model.uri} in its model cache: labelled {key}=true")


_OWNED_LABELS: Mapping[str, Any] = {names.LABEL_MANAGED_BY: names.OPERATOR_NAME, names.LABEL_INSTANCE: kopf.PRESENT}


def _register_model_delivery(registry: kopf.OperatorRegistry, config: OperatorConfig,
                             client: Callable[[], KubeClient]) -> None:
    owned = _OWNED_LABELS

    @kopf.on.event("", "v1", "pods", registry=registry, labels=owned)
    def owned_pod_changed(body: kopf.Body, namespace: str | None, **_: Any) -> None:
        """Server pods (their `model-download` init container) and download Job pods:
        ModelReady follows them; a finished download labels the node (cache mode node)."""
        labels = body["metadata"]["labels"]
        if not namespace or labels.get(names.LABEL_COMPONENT) not in (names.COMPONENT_SERVER,
                                                                      names.COMPONENT_MODEL_DOWNLOAD):
            return  # router pods: their Deployment's status is what counts
        api = client()
        cr = _live_body(api, labels[names.LABEL_INSTANCE], namespace)
        if cr is None or not ((cr.get("spec") or {}).get("model") or {}).get("uri"):
            return  # no download to follow
        if config.defaults.label_nodes and labels.get(names.LABEL_COMPONENT) == names.COMPONENT_SERVER:
            _label_node_for(api, body, cr)
        _refresh_status(api, config, labels[names.LABEL_INSTANCE], namespace, cr)

    @kopf.on.event("batch", "v1", "jobs", registry=registry, labels=owned)
    def owned_job_changed(body: kopf.Body, namespace: str | None, **_: Any) -> None:
        """A download Job finished: reconcile, which releases the server replicas it held at 0."""
        if not namespace:
            return
        api = client()
        cr = _live_body(api, body["metadata"]["labels"][names.LABEL_INSTANCE], namespace)
        if cr is None:
            return
        ready_before = _ready(cr.get("status") or {})
        outcome = reconcile(api, Target.from_body(cr), config.defaults)
        _post_events(_as_body(cr), outcome, ready_before)

    if config.progress_seconds > 0:
        @kopf.timer(*CR, registry=registry, interval=config.progress_seconds,
                    initial_delay=config.progress_seconds)
        def download_progress(name: str | None, namespace: str | None, status: Mapping[str, Any],
                              **_: Any) -> None:
            """The downloader's progress is in its log, which no watch event announces."""
            if name and namespace and _model_state(status) in ("Pending", "Downloading"):
                _refresh_status(client(), config, name, namespace)


def _register_node_labels(registry: kopf.OperatorRegistry, config: OperatorConfig,
                          client: Callable[[], KubeClient], sweeper: nodes.LabelSweeper) -> None:
    if not config.defaults.label_nodes:
        return

    @kopf.on.event(*CR, registry=registry)
    def inference_server_deleted(type: str | None, **_: Any) -> None:
        """Labels of a model no remaining InferenceServer uses go with the last one that did."""
        if type == "DELETED":
            sweeper.maybe_sweep(client(), force=True)
