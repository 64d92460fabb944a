"""`.status` of an InferenceServer, computed from what was observed (pure).

Conditions:
- Ready: every desired server replica passes its readiness probe and, with the
  router enabled, at least one router pod does. Rolling updates surge before they
  retire, so a healthy rollout keeps Ready=True.
- Progressing: a rollout or scale is under way (the Deployments have not yet
  reached the spec).
- Degraded: something needs a human: the spec is invalid, the API server refused an object
  built from it (ApiRejected), a Deployment gave up (progress deadline exceeded, replica
  creation failing), or a model download fails. While False, its message keeps the last
  drift repair ("last drift repair <time>: Deployment x re-created (it was deleted)").
- ModelReady: whether the weights are where the server reads them. Sources that need no
  download are True at once (Embedded, InImage, VolumeMounted, ImageVolume); hf:// and
  s3:// URIs go Pending -> Downloading (with bytes and files done, from the downloader's
  JSON progress lines) -> Downloaded, or DownloadFailed (or the downloader's own reason:
  Unauthorized, Forbidden, NotFound, ChecksumMismatch, DiskFull) while Kubernetes retries
  with back-off. It does not gate Ready, which counts ready replicas only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from radixserve.operator import names
from radixserve.operator.builders.model import DOWNLOAD_JOB_BACKOFF_LIMIT
from radixserve.operator.checks import FeatureCondition, SpecProblem
from radixserve.operator.spec import InferenceServerSpec

Condition = dict[str, Any]


@dataclass(frozen=True)
class Observed:
    """Everything the status is computed from."""

    generation: int
    spec: InferenceServerSpec | None  # None when the spec does not parse
    url: str
    server: Mapping[str, Any] | None  # the live server Deployment, if any
    router: Mapping[str, Any] | None  # the live router Deployment, if any
    problems: Sequence[SpecProblem] = field(default_factory=tuple)
    name: str = ""
    # Model download (hf://, s3://): the pods running the `model-download` container (server
    # pods, or the download Job's pods in cache mode "pvc"), the Job, and the last lines of
    # the log of a pod that is downloading (None: not read or not readable).
    model_pods: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    model_job: Mapping[str, Any] | None = None
    model_log: str | None = None
    # Owned objects this pass re-created or restored (drift), described for the message.
    repaired: Sequence[str] = field(default_factory=tuple)
    # Conditions of the optional features (PodSecurity, Autoscaling, Monitoring), from checks.py.
    features: Sequence[FeatureCondition] = field(default_factory=tuple)


@dataclass(frozen=True)
class Rollout:
    """A Deployment's progress towards `desired` replicas."""

    desired: int
    total: int  # pods of any revision
    updated: int  # pods of the current revision
    ready: int
    caught_up: bool  # the controller has seen the latest Deployment spec
    failure: str | None  # why the controller gave up, if it did

    @property
    def complete(self) -> bool:
        return self.caught_up and self.updated >= self.desired and self.ready >= self.desired \
            and self.total == self.desired


def rollout_of(deployment: Mapping[str, Any] | None, desired: int) -> Rollout:
    if deployment is None:
        return Rollout(desired, 0, 0, 0, caught_up=False, failure=None)
    status: Mapping[str, Any] = deployment.get("status") or {}
    generation = deployment.get("metadata", {}).get("generation", 0)
    failure = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("status") == "False" \
                and cond.get("reason") == "ProgressDeadlineExceeded":
            failure = f"ProgressDeadlineExceeded: {cond.get('message', '')}".rstrip(": ")
        elif cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            failure = f"ReplicaFailure: {cond.get('message', '')}".rstrip(": ")
    return Rollout(
        desired=desired,
        total=int(status.get("replicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        caught_up=int(status.get("observedGeneration") or 0) >= int(generation or 0) and bool(status),
        failure=failure,
    )


def condition(kind: str, ok: bool, reason: str, message: str) -> Condition:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def _problem_conditions(problem: SpecProblem) -> list[Condition]:
    message = problem.describe()
    return [
        condition("Ready", False, problem.reason, message),
        condition("Progressing", False, problem.reason, "waiting for the spec to be fixed"),
        condition("Degraded", True, problem.reason, message),
    ]


def _workload_conditions(spec: InferenceServerSpec, server: Rollout, router: Rollout | None) -> list[Condition]:
    if spec.replicas == 0:
        ready = condition("Ready", False, "ScaledToZero", "spec.replicas is 0")
    elif server.ready < spec.replicas:
        ready = condition("Ready", False, "ReplicasNotReady",
                          f"{server.ready}/{spec.replicas} server replicas ready")
    elif router is not None and router.ready < 1:
        ready = condition("Ready", False, "RouterNotReady",
                          f"{server.ready}/{spec.replicas} server replicas ready, no router pod ready")
    else:
        ready = condition("Ready", True, "AllReplicasReady",
                          f"{server.ready}/{spec.replicas} server replicas ready"
                          + (f", {router.ready} router pod(s) ready" if router is not None else ""))

    pending = [f"server {server.updated}/{server.desired} updated, {server.ready} ready"] \
        if not server.complete else []
    if router is not None and not router.complete:
        pending.append(f"router {router.updated}/{router.desired} updated, {router.ready} ready")
    progressing = condition("Progressing", True, "RollingOut", "; ".join(pending)) if pending \
        else condition("Progressing", False, "RolloutComplete", "the workload matches the spec")

    failures = [f"server: {server.failure}"] if server.failure else []
    if router is not None and router.failure:
        failures.append(f"router: {router.failure}")
    degraded = condition("Degraded", True, "DeploymentFailed", "; ".join(failures)) if failures \
        else condition("Degraded", False, "AsExpected", "no failures observed")
    return [ready, progressing, degraded]


# Reasons the downloader writes to its termination log ("<Reason>: <message>").
# Every SourceError subclass's `reason` (a test walks them), so a new one reaches the condition.
DOWNLOAD_REASONS = frozenset({"Unauthorized", "Forbidden", "NotFound", "ChecksumMismatch", "DiskFull",
                              "NoLoadableWeights", "LockTimeout", "BadDestination", "NotWritable",
                              "DownloadFailed"})
DOWNLOAD_CONTAINER = names.MODEL_DOWNLOAD_CONTAINER


def last_progress(log: str | None) -> dict[str, int] | None:
    """bytesDone/bytesTotal/filesDone/filesTotal from the last JSON progress line of a log."""
    for line in reversed((log or "").splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "progress":
            try:
                return {"bytesDone": int(event.get("bytes_done", 0)), "bytesTotal": int(event.get("bytes_total", 0)),
                        "filesDone": int(event.get("files_done", 0)), "filesTotal": int(event.get("files_total", 0))}
            except (TypeError, ValueError):
                return None
    return None


def human_bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def describe_progress(progress: Mapping[str, int]) -> str:
    done, total = progress["bytesDone"], progress["bytesTotal"]
    text = f"{human_bytes(done)} of {human_bytes(total)}"
    if total > 0:
        text += f" ({100 * done // total}%)"
    if progress["filesTotal"]:
        text += f", {progress['filesDone']} of {progress['filesTotal']} files"
    return text


def failure_reason(message: str) -> tuple[str, str]:
    """(reason, message) from a termination message "<Reason>: <message>"."""
    match = re.match(r"^\s*([A-Z][A-Za-z]+):\s*(.*)$", message, flags=re.DOTALL)
    if match and match.group(1) in DOWNLOAD_REASONS:
        return match.group(1), match.group(2).strip()
    return "DownloadFailed", message.strip() or "the download exited with an error"


def _download_status(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            if cs.get("name") == DOWNLOAD_CONTAINER:
                return dict(cs)
    return None


def downloaded_uri(pod: Mapping[str, Any]) -> str | None:
    """The URI a server pod's model-download init container fetches (None: it has none)."""
    for container in (pod.get("spec") or {}).get("initContainers") or []:
        command = container.get("command") or []
        if container.get("name") == names.MODEL_DOWNLOAD_CONTAINER and len(command) > 2:
            return str(command[2])
    return None


@dataclass(frozen=True)
class DownloadState:
    """What one pod's `model-download` container is doing."""

    state: str  # "done", "failed", "running", "waiting"
    message: str = ""
    restarts: int = 0


def download_state(pod: Mapping[str, Any]) -> DownloadState:
    cs = _download_status(pod)
    if cs is None:
        return DownloadState("waiting")
    restarts = int(cs.get("restartCount") or 0)
    state = cs.get("state") or {}
    last = (cs.get("lastState") or {}).get("terminated") or {}
    terminated = state.get("terminated")
    if terminated is not None:
        code = int(terminated.get("exitCode") or 0)
        if code == 0:
            return DownloadState("done", restarts=restarts)
        return DownloadState("failed", str(terminated.get("message") or terminated.get("reason") or ""), restarts)
    if "running" in state:
        return DownloadState("running", str(last.get("message") or ""), restarts)
    if last and int(last.get("exitCode") or 0) != 0:
        # Waiting in CrashLoopBackOff after a failure: the kubelet retries with back-off.
        return DownloadState("failed", str(last.get("message") or last.get("reason") or ""), restarts)
    return DownloadState("waiting", restarts=restarts)


def job_succeeded(job: Mapping[str, Any] | None) -> bool:
    if job is None:
        return False
    status = job.get("status") or {}
    if int(status.get("succeeded") or 0) > 0:
        return True
    return any(c.get("type") == "Complete" and c.get("status") == "True" for c in status.get("conditions") or [])


def _job_failed(job: Mapping[str, Any] | None) -> str | None:
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".rstrip(": ")
    return None


STATIC_MODEL_REASONS = {
    "embedded": ("Embedded", "the model is built into the server image"),
    "image": ("InImage", "the model is a path inside the server image"),
    "pvc": ("VolumeMounted", "the model is on a mounted PersistentVolumeClaim"),
    "hostPath": ("VolumeMounted", "the model is in a directory of the node"),
}


def model_condition(obs: Observed, spec: InferenceServerSpec) -> tuple[Condition, dict[str, int] | None]:
    """The ModelReady condition and, while downloading, the progress numbers."""
    model = spec.model
    uri = model.parsed_uri
    if uri is None:
        reason, message = STATIC_MODEL_REASONS[model.source]
        return condition("ModelReady", True, reason, message), None
    if not model.downloads:
        scheme = str(uri).split("://", 1)[0] if "://" in str(uri) else "path"
        reason, message = {
            "pvc": ("VolumeMounted", f"{uri} is mounted read-only"),
            "oci": ("ImageVolume", f"{uri} is mounted as an image volume"),
        }.get(scheme, ("InImage", f"{uri} is a path inside the server image"))
        return condition("ModelReady", True, reason, message), None

    job = obs.model_job
    states = [download_state(pod) for pod in obs.model_pods]
    progress = last_progress(obs.model_log)
    pvc_mode = model.cache_mode == "pvc"
    if pvc_mode and job_succeeded(job):
        return condition("ModelReady", True, "Downloaded", f"{uri} is in the cache claim"), None
    job_failure = _job_failed(job) if pvc_mode else None
    failed = [s for s in states if s.state == "failed"]
    if job_failure is not None:
        detail = failure_reason(failed[-1].message) if failed else ("DownloadFailed", "")
        return condition("ModelReady", False, detail[0],
                         f"the download Job gave up ({job_failure})" + (f": {detail[1]}" if detail[1] else "")
                         + "; delete the Job to try again"), None
    if failed:
        reason, message = failure_reason(failed[0].message)
        if pvc_mode:
            attempts = int(((job or {}).get("status") or {}).get("failed") or len(failed))
            retry = f"retrying with back-off (attempt {attempts + 1} of {1 + DOWNLOAD_JOB_BACKOFF_LIMIT})"
        else:
            retry = f"retrying with back-off (restart {failed[0].restarts})"
        return condition("ModelReady", False, reason, f"{message}; {retry}"), None
    done = [s for s in states if s.state == "done"]
    running = [s for s in states if s.state == "running"]
    if done and not pvc_mode:
        message = f"{uri} downloaded ({len(done)} pod(s) ready to load it)"
        if running:
            message += f"; {len(running)} pod(s) still downloading"
            if progress is not None:
                message += f": {describe_progress(progress)}"
        return condition("ModelReady", True, "Downloaded", message), progress if running else None
    if running:
        message = f"downloading {uri}" + (f": {describe_progress(progress)}" if progress is not None else "")
        if running[0].message:
            message += f" (after a failed attempt: {running[0].message.strip()})"
        return condition("ModelReady", False, "Downloading", message), progress
    waiting_on = "the download Job's pod" if pvc_mode else "a server pod"
    return condition("ModelReady", False, "Pending", f"waiting for {waiting_on} to start downloading {uri}"), None


DRIFT_NOTE = "; last drift repair "


def _note_drift(degraded: Condition, previous: Sequence[Mapping[str, Any]], repaired: Sequence[str],
                now: str) -> None:
    """A healthy Degraded=False keeps saying what was last repaired, until something fails."""
    if degraded["status"] != "False":
        return
    if repaired:
        degraded["message"] += f"{DRIFT_NOTE}{now}: " + ", ".join(repaired)
        return
    for cond in previous:
        message = str(cond.get("message") or "")
        if cond.get("type") == "Degraded" and cond.get("status") == "False" and DRIFT_NOTE in message:
            degraded["message"] += DRIFT_NOTE + message.split(DRIFT_NOTE, 1)[1]


def _stamp(conditions: list[Condition], previous: Sequence[Mapping[str, Any]], now: str,
           generation: int) -> list[Condition]:
    """lastTransitionTime moves only when a condition's status flips."""
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in conditions:
        old = before.get(cond["type"])
        changed = old is None or old.get("status") != cond["status"]
        stamped = dict(cond)
        stamped["lastTransitionTime"] = now if changed or not old else old.get("lastTransitionTime", now)
        stamped["observedGeneration"] = generation
        out.append(stamped)
    return out


def compute_status(obs: Observed, previous: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """The full `.status`; `previous` is the current one (for transition times), `now` RFC 3339."""
    previous_conditions = list((previous or {}).get("conditions") or [])
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "url": obs.url,
        "selector": names.selector_string(names.server_selector(obs.name)),
    }
    if obs.problems or obs.spec is None:
        conditions = _problem_conditions(obs.problems[0]) if obs.problems else []
        if obs.problems and obs.problems[0].field.startswith("spec.model"):
            conditions.append(condition("ModelReady", False, obs.problems[0].reason, obs.problems[0].describe()))
        server_rollout = rollout_of(obs.server, 0)
        status.update(replicas=server_rollout.total, readyReplicas=server_rollout.ready)
    else:
        spec = obs.spec
        server_rollout = rollout_of(obs.server, spec.replicas)
        router_rollout = rollout_of(obs.router, spec.router.replicas) if spec.router.enabled else None
        conditions = _workload_conditions(spec, server_rollout, router_rollout)
        model_ready, progress = model_condition(obs, spec)
        conditions.append(model_ready)
        conditions += [condition(f.type, f.ok, f.reason, f.message) for f in obs.features]
        if model_ready["status"] == "False" and model_ready["reason"] not in ("Pending", "Downloading"):
            degraded = conditions[2]
            failure = f"model download: {model_ready['reason']}: {model_ready['message']}"
            if degraded["status"] == "True":
                degraded["message"] += f"; {failure}"
            else:
                conditions[2] = condition("Degraded", True, "ModelDownloadFailed", failure)
        # null removes it (a merge patch) once the download is over.
        status["modelDownload"] = progress
        status.update(
            model=spec.display_model,
            replicas=server_rollout.total,
            readyReplicas=server_rollout.ready,
            updatedReplicas=server_rollout.updated,
        )
        if router_rollout is not None:
            status["routerReadyReplicas"] = router_rollout.ready
        _note_drift(conditions[2], previous_conditions, obs.repaired, now)
    status["conditions"] = _stamp(conditions, previous_conditions, now, obs.generation)
    return status


def status_changed(current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change anything we own (transition times included)."""
    current = current or {}
    return any(current.get(key) != value for key, value in new.items())
