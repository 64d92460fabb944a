"""One reconcile pass for one InferenceServer: check, build, apply, observe, write status.

The order matters: every check (schema, cluster references, ownership of the names
we are about to use) runs before the first write, so an invalid spec creates
nothing. Handlers call `reconcile` on spec changes, on every event of an owned object and
on every periodic resync, so deleted or edited objects are repaired (drift); `check` plus
`write_status` alone refresh the status while a model downloads.

An object the API server refuses as invalid (400/422, e.g. a pass-through affinity it does
not accept) becomes the problem `ApiRejected`, naming the object and the field from the
API's `Status.details.causes`; it is not sent again until the spec changes.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from radixserve.operator import names
from radixserve.operator.apply import (
    CREATE,
    UPDATE,
    ApplyRefused,
    Drift,
    describe,
    execute,
    fetch_live,
    plan_apply,
)
from radixserve.operator.builders import (
    BuildInput,
    Defaults,
    Owner,
    desired_objects,
    endpoint_url,
    multinode,
    unwanted_objects,
)
from radixserve.operator.builders import model as model_delivery
from radixserve.operator.checks import SpecProblem, capabilities, check_spec, feature_conditions
from radixserve.operator.kube import KubeClient, ResourceType, resource_type
from radixserve.operator.spec import InferenceServerSpec, SpecError, parse_spec
from radixserve.operator.status import (
    Observed,
    compute_status,
    download_state,
    downloaded_uri,
    job_succeeded,
    status_changed,
)

CR_TYPE = resource_type(names.API_VERSION, names.KIND)
DEPLOYMENT_TYPE = resource_type("apps/v1", "Deployment")
LWS_TYPE = resource_type(multinode.LWS_API_VERSION, multinode.LWS_KIND)
POD_TYPE = resource_type("v1", "Pod")
JOB_TYPE = resource_type("batch/v1", "Job")
API_REJECTED = "ApiRejected"
# How much of the downloader's log is read for its last progress line (one every >= 2 s).
LOG_TAIL_LINES = 20


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiLookups:
    """`checks.ClusterLookups` answered from the API server."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client

    def pvc_access_modes(self, namespace: str, name: str) -> list[str] | None:
        pvc = self._client.get(resource_type("v1", "PersistentVolumeClaim"), namespace, name)
        if pvc is None:
            return None
        return [str(m) for m in (pvc.get("spec") or {}).get("accessModes") or []]

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        # Only the key names are kept; the values are dropped here and never logged.
        secret = self._client.get(resource_type("v1", "Secret"), namespace, name)
        if secret is None:
            return None
        return set(secret.get("data") or {}) | set(secret.get("stringData") or {})

    def server_version(self) -> tuple[int, int] | None:
        return self._client.server_version()

    def api_resources(self, api_version: str) -> set[str] | None:
        return self._client.api_resources(api_version)


@dataclass(frozen=True)
class Target:
    """The InferenceServer as read from the API (or from kopf's body)."""

    name: str
    namespace: str
    uid: str
    generation: int
    raw_spec: Mapping[str, Any]
    status: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Target:
        meta = body.get("metadata", {})
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            raw_spec=body.get("spec") or {},
            status=body.get("status") or {},
        )

    def owner(self) -> Owner:
        return Owner(name=self.name, namespace=self.namespace, uid=self.uid)


@dataclass
class Outcome:
    problems: list[SpecProblem] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    status_written: bool = False
    # Owned objects someone deleted or edited, and that this pass put back.
    repaired: list[Drift] = field(default_factory=list)
    # The pass skipped applying because the API refused this generation of the spec before.
    skipped_refused: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted or self.repaired)


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def spec_applied(target: Target) -> bool:
    """Whether this generation of the spec was applied before: the status was written for it
    with workload conditions (which only a pass without problems writes)."""
    progressing = _condition(target.status, "Progressing")
    return target.generation > 0 and target.status.get("observedGeneration") == target.generation \
        and progressing.get("reason") in ("RollingOut", "RolloutComplete")


def refused_before(target: Target) -> bool:
    """Whether the API refused an object of this generation of the spec (a permanent error)."""
    degraded = _condition(target.status, "Degraded")
    return degraded.get("reason") == API_REJECTED and degraded.get("observedGeneration") == target.generation


def rejected_problem(refusal: ApplyRefused) -> SpecProblem:
    error = refusal.error
    detail = "; ".join(f"{c.get('field', '?')}: {c.get('message', '')}".rstrip(": ") for c in error.causes) \
        or error.message
    return SpecProblem(
        reason=API_REJECTED,
        field=refusal.field,
        message=f"the API server refused {describe(refusal.obj)} ({error.status} {error.reason}): {detail}; "
                "fix the spec field that sets it (not retried until the spec changes)",
    )


def check(target: Target, client: KubeClient) -> tuple[InferenceServerSpec | None, list[SpecProblem]]:
    try:
        spec = parse_spec(target.raw_spec)
    except SpecError as exc:
        return None, [SpecProblem("InvalidSpec", exc.field, exc.message)]
    return spec, check_spec(target.name, target.namespace, spec, ApiLookups(client))


def _delete_unwanted(client: KubeClient, inp: BuildInput) -> list[str]:
    """Remove what an earlier spec needed (the router, once disabled) if we own it."""
    deleted = []
    for ref in unwanted_objects(inp):
        rtype = resource_type(ref.api_version, ref.kind)
        live = client.get(rtype, inp.owner.namespace, ref.name)
        if live is None:
            continue
        owners = live.get("metadata", {}).get("ownerReferences") or []
        if any(o.get("uid") == inp.owner.uid and o.get("controller") for o in owners) \
                and client.delete(rtype, inp.owner.namespace, ref.name):
            deleted.append(f"{ref.kind} {ref.name}")
    return deleted + _delete_old_download_jobs(client, inp)


def _delete_old_download_jobs(client: KubeClient, inp: BuildInput) -> list[str]:
    """Download Jobs of an earlier model URI (or cache mode): a running one would keep
    fetching a model nobody serves. The claim they filled stays (see docs/operator.md)."""
    keep = model_delivery.job_name(inp) if model_delivery.uses_download_job(inp) else None
    selector = {names.LABEL_INSTANCE: inp.owner.name, names.LABEL_COMPONENT: names.COMPONENT_MODEL_DOWNLOAD}
    deleted = []
    for job in client.list_objects(JOB_TYPE, inp.owner.namespace, selector):
        name = job["metadata"]["name"]
        if name != keep and _is_owned(job, inp.owner.uid) and client.delete(JOB_TYPE, inp.owner.namespace, name):
            deleted.append(f"Job {name}")
    return deleted


@dataclass(frozen=True)
class ModelObservation:
    pods: list[dict[str, Any]] = field(default_factory=list)
    job: dict[str, Any] | None = None
    log: str | None = None


def _is_owned(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def download_job(client: KubeClient, target: Target, spec: InferenceServerSpec) -> dict[str, Any] | None:
    """The live download Job of cache mode "pvc", if it exists and is ours."""
    job = client.get(JOB_TYPE, target.namespace, model_delivery.job_name(BuildInput(target.owner(), spec)))
    return job if job is not None and _is_owned(job, target.uid) else None


def observe_model(client: KubeClient, target: Target, spec: InferenceServerSpec | None) -> ModelObservation:
    """The pods that download the model (and their Job), plus the log tail of one that is
    downloading, for the ModelReady condition. Nothing for sources without a download."""
    if spec is None or not spec.model.downloads:
        return ModelObservation()
    job = None
    if spec.model.cache_mode == "pvc":
        job = download_job(client, target, spec)
        if job is None:
            return ModelObservation()
        job_uid = str(job.get("metadata", {}).get("uid", ""))
        selector = {names.LABEL_INSTANCE: target.name, names.LABEL_COMPONENT: names.COMPONENT_MODEL_DOWNLOAD}
        pods = [p for p in client.list_objects(POD_TYPE, target.namespace, selector)
                if not job_uid or any(r.get("uid") == job_uid for r in p["metadata"].get("ownerReferences") or [])]
    else:
        # Pods of an earlier revision may have fetched another model (a rollout to a new uri).
        pods = [p for p in client.list_objects(POD_TYPE, target.namespace, names.server_selector(target.name))
                if downloaded_uri(p) == str(spec.model.parsed_uri)]
    pods = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    log = None
    downloading = [p for p in pods if download_state(p).state == "running"]
    if downloading:
        log = client.pod_log(target.namespace, downloading[0]["metadata"]["name"],
                             names.MODEL_DOWNLOAD_CONTAINER, LOG_TAIL_LINES)
    return ModelObservation(pods=pods, job=job, log=log)


def write_status(client: KubeClient, target: Target, spec: InferenceServerSpec | None,
                 problems: list[SpecProblem], defaults: Defaults, now: str,
                 repaired: list[Drift] | None = None) -> tuple[dict[str, Any], bool]:
    """Observe the owned Deployments (and the model download), compute `.status`, patch it when it differs."""
    url = ""
    router = None
    if spec is not None:
        url = endpoint_url(BuildInput(target.owner(), spec, defaults))
        if spec.router.enabled:
            router = client.get(DEPLOYMENT_TYPE, target.namespace, names.router_name(target.name))
    server = client.get(*_server_workload(target, spec))
    model = observe_model(client, target, spec) if not problems else ModelObservation()
    # PodSecurity, Autoscaling, Monitoring: what the optional features do (checks.feature_conditions).
    features = feature_conditions(BuildInput(target.owner(), spec, defaults, capabilities=capabilities(
        ApiLookups(client)))) if spec is not None and not problems else []
    observed = Observed(
        generation=target.generation, spec=spec, url=url, server=server, router=router,
        problems=problems, name=target.name, model_pods=model.pods, model_job=model.job, model_log=model.log,
        repaired=[d.describe() for d in repaired or []], features=features,
    )
    status = compute_status(observed, target.status, now)
    if not status_changed(target.status, status):
        return status, False
    client.patch_status(CR_TYPE, target.namespace, target.name, status)
    return status, True


def _server_workload(target: Target, spec: InferenceServerSpec | None) -> tuple[ResourceType, str, str]:
    """Where the replicas' readiness is read: the server Deployment, or with spec.nodesPerReplica > 1
    the LeaderWorkerSet (whose status has the same replicas / updatedReplicas / readyReplicas /
    observedGeneration fields, counting groups)."""
    if spec is not None and spec.nodes_per_replica > 1:
        return LWS_TYPE, target.namespace, multinode.group_set_name(target.name)
    return DEPLOYMENT_TYPE, target.namespace, names.server_name(target.name)


def _hold_running_server(client: KubeClient, target: Target, spec: InferenceServerSpec,
                         desired: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """While the download Job of a new model runs, a server Deployment (or LeaderWorkerSet) that
    already exists keeps its current template and replicas (it serves the previous model, or waits
    at 0); it is updated once the Job has succeeded. A new one is created with 0 replicas."""
    rtype, namespace, name = _server_workload(target, spec)
    live = client.get(rtype, namespace, name)
    if live is None or not _is_owned(live, target.uid):
        return desired
    return [obj for obj in desired if not (obj["kind"] in ("Deployment", multinode.LWS_KIND)
                                           and obj["metadata"]["name"] == name)]


def reconcile(client: KubeClient, target: Target, defaults: Defaults, now: str | None = None,
              retry_refused: bool = True) -> Outcome:
    """One pass. `retry_refused=False` (resyncs, owned-object events) leaves a spec whose
    objects the API refused alone until the spec changes, so a permanent error is not resent."""
    now = now or utc_now()
    if not retry_refused and refused_before(target):
        return Outcome(status=dict(target.status), skipped_refused=True)
    spec, problems = check(target, client)
    outcome = Outcome(problems=problems)
    if spec is not None and not problems:
        downloaded = True
        if model_delivery.uses_download_job(BuildInput(target.owner(), spec, defaults)):
            downloaded = job_succeeded(download_job(client, target, spec))
        inp = BuildInput(target.owner(), spec, defaults, model_downloaded=downloaded,
                         capabilities=capabilities(ApiLookups(client)))
        desired = desired_objects(inp)
        if not downloaded:
            desired = _hold_running_server(client, target, spec, desired)
        plan = plan_apply(desired, fetch_live(client, target.namespace, desired), target.uid,
                          settled=spec_applied(target))
        if plan.conflicts:
            outcome.problems = problems = [SpecProblem(
                reason="NameConflict",
                field="metadata.name",
                message="already in use by objects this InferenceServer does not control: "
                        + ", ".join(plan.conflicts),
            )]
        else:
            try:
                written = execute(client, target.namespace, plan)
            except ApplyRefused as refusal:
                written = refusal.written
                outcome.problems = problems = [rejected_problem(refusal)]
            done = {describe(obj) for obj in written}
            outcome.repaired = [d for d in plan.drift if f"{d.kind} {d.name}" in done]
            outcome.created = [describe(o) for o in plan.of(CREATE) if describe(o) in done and not plan.is_drift(o)]
            outcome.updated = [describe(o) for o in plan.of(UPDATE) if describe(o) in done and not plan.is_drift(o)]
            if not problems:
                outcome.deleted = _delete_unwanted(client, inp)
    outcome.status, outcome.status_written = write_status(client, target, spec, problems, defaults, now,
                                                          outcome.repaired)
    return outcome
