"""kopf handlers: thin adapters from kopf's callbacks to the `Controller`.

`register` puts them on a given registry (not kopf's global one) so that the CLI
and each test get their own set.

No handler here needs kopf's finalizer, and none makes kopf add it: there are no
`@kopf.timer` / `@kopf.daemon` handlers (they always require it; the periodic work is
`periodic.py`) and no `@kopf.on.delete` handler (cleanup is the garbage collector's,
through owner references). So deleting an InferenceServer never waits for the operator.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from radixserve.operator import events, names, nodes
from radixserve.operator.config import OperatorConfig
from radixserve.operator.controller import Controller
from radixserve.operator.kube import KubeClient
from radixserve.operator.metrics import TRIGGER_OWNED, TRIGGER_SPEC
from radixserve.operator.owned import OWNED_KINDS
from radixserve.operator.periodic import PeriodicWork
from radixserve.operator.reconcile import Outcome
from radixserve.operator.spec import SpecError, parse_spec

CR = (names.GROUP, names.VERSION, names.PLURAL)
PODS = ("", "v1", "pods")
# Every object the operator creates carries these labels: the watches on owned kinds select
# them server-side (a labelSelector on the watch request) and again in kopf's filter.
_OWNED_LABELS: Mapping[str, Any] = {names.LABEL_MANAGED_BY: names.OPERATOR_NAME, names.LABEL_INSTANCE: kopf.PRESENT}
OWNED_SELECTOR = f"{names.LABEL_MANAGED_BY}={names.OPERATOR_NAME},{names.LABEL_INSTANCE}"


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


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> Controller:
    controller = Controller(config, _LazyClient(config.client_factory))
    sweeper = nodes.LabelSweeper(config.node_sweep_seconds, config.namespaces)
    _register_settings(registry)
    _register_periodic(registry, PeriodicWork(controller, sweeper))
    _register_reconcile(registry, controller)
    _register_owned_objects(registry, controller)
    _register_model_delivery(registry, controller)
    _register_tracking(registry, controller, sweeper)
    return controller


def _register_settings(registry: kopf.OperatorRegistry) -> None:
    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Progress and diff-base in annotations under our own prefix: the CRD's status
        # schema has no room for kopf's fields, and the API server would prune them.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=names.GROUP, key="last-handled-configuration")
        # Never put on an object (no handler requires a finalizer, see above); named so that
        # one left by an older operator version is recognised and removed by kopf.
        settings.persistence.finalizer = f"{names.GROUP}/operator"
        # No CRD or namespace scanning: it needs cluster-wide list/watch on both, which
        # the least-privilege RBAC does not grant; the served resources exist at start.
        settings.scanning.disabled = True
        settings.posting.level = logging.INFO
        # Server-side filtering: the watches of owned kinds (and pods) see only our objects,
        # not every Deployment of the cluster.
        for kind in OWNED_KINDS:
            settings.watching.label_selectors[kind.group, kind.version, kind.plural] = OWNED_SELECTOR
        settings.watching.label_selectors[PODS] = OWNED_SELECTOR


def _register_periodic(registry: kopf.OperatorRegistry, work: PeriodicWork) -> None:
    if not work.enabled:
        return

    @kopf.on.startup(registry=registry)
    async def start_periodic_work(**_: Any) -> None:
        # This handler runs in kopf's startup/cleanup task, which lives as long as the
        # operator: the periodic task is cancelled when it ends (stop or cancellation).
        task = asyncio.create_task(work.run(), name="radixserve periodic work")
        owner = asyncio.current_task()
        if owner is not None:
            owner.add_done_callback(lambda _: task.cancel())


def _register_reconcile(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    retry = controller.config.retry_seconds

    @kopf.on.resume(*CR, registry=registry, backoff=retry)
    @kopf.on.create(*CR, registry=registry, backoff=retry)
    @kopf.on.update(*CR, registry=registry, backoff=retry)
    def reconcile_server(body: kopf.Body, **_: Any) -> None:
        outcome = controller.reconcile(body, TRIGGER_SPEC, fresh=True)
        if outcome is not None:
            # An ApiRejected refusal is permanent: kopf does not retry until the spec changes.
            _raise_for_problems(outcome, retry)


def _owner_of(body: Mapping[str, Any], namespace: str | None) -> dict[str, Any] | None:
    labels = body.get("metadata", {}).get("labels") or {}
    name = labels.get(names.LABEL_INSTANCE)
    if not namespace or not name:
        return None
    return {"metadata": {"namespace": namespace, "name": name}}


def _register_owned_objects(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Every event of an owned object (a deletion included) reconciles its InferenceServer,
    which repairs drift and refreshes the status. Kinds whose CRD is absent are skipped by
    kopf at start-up (logged), never waited for."""
    for kind in OWNED_KINDS:
        def owned_object_changed(type: str | None, body: kopf.Body, namespace: str | None, **_: Any) -> None:
            # type None: kopf's initial listing; the resume handler reconciles every owner then.
            owner = _owner_of(body, namespace)
            if type is not None and owner is not None:
                controller.reconcile(owner, TRIGGER_OWNED)

        kopf.on.event(kind.group, kind.version, kind.plural, registry=registry, labels=_OWNED_LABELS,
                      id=f"owned-{kind.plural}.{kind.group or 'core'}")(owned_object_changed)


def _label_node_for(api: KubeClient, pod: Mapping[str, Any], body: dict[str, Any]) -> None:
    try:
        spec = parse_spec(body.get("spec") or {})
    except SpecError:
        return
    found = nodes.downloaded_label(pod, spec)
    if found is not None and nodes.label_node(api, *found):
        node, key = found
        events.post_event(api, body, "NodeLabelled",
                          f"node {node} holds {spec.model.uri} in its model cache: labelled {key}=true")


def _register_model_delivery(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    @kopf.on.event(*PODS, registry=registry, labels=_OWNED_LABELS)
    def owned_pod_changed(body: kopf.Body, namespace: str | None, **_: Any) -> None:
        """Server pods (their `model-download` init container) and download Job pods:
        ModelReady follows them; a finished download labels the node (cache mode node)."""
        labels = body["metadata"]["labels"]
        if not namespace or labels.get(names.LABEL_COMPONENT) not in (names.COMPONENT_SERVER,
                                                                      names.COMPONENT_MODEL_DOWNLOAD):
            return  # router pods: their Deployment's status is what counts
        cr = controller.live_body(namespace, labels[names.LABEL_INSTANCE])
        if cr is None or not ((cr.get("spec") or {}).get("model") or {}).get("uri"):
            return  # no download to follow
        if controller.config.defaults.label_nodes and labels.get(names.LABEL_COMPONENT) == names.COMPONENT_SERVER:
            _label_node_for(controller.client(), body, cr)
        controller.refresh_status(namespace, labels[names.LABEL_INSTANCE], cr)


def _register_tracking(registry: kopf.OperatorRegistry, controller: Controller,
                       sweeper: nodes.LabelSweeper) -> None:
    label_nodes = controller.config.defaults.label_nodes

    @kopf.on.event(*CR, registry=registry)
    def inference_server_seen(type: str | None, name: str | None, namespace: str | None, **_: Any) -> None:
        """Counts the served InferenceServers (a gauge); on deletion, labels of a model no
        remaining InferenceServer uses go with the last one that did."""
        if not name or not namespace:
            return
        if type == "DELETED":
            controller.forget(namespace, name)
            if label_nodes:
                sweeper.maybe_sweep(controller.client(), force=True)
        else:
            controller.metrics.track(namespace, name, present=True)
