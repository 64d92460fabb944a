"""Model delivery with the real kopf operator against kmock's API server: the pod spec of
each URI kind, ModelReady following pods (the test plays kubelet and scheduler), node labels
and their cleanup, the download Job holding replicas, and the cluster checks."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from radixserve.model_store.uri import label_key_suffix, parse_model_uri
from radixserve.operator import names, permissions
from radixserve.operator.config import OperatorConfig
from tests.operator.operator_harness import (
    DEPLOYMENTS,
    JOBS,
    NAMESPACE,
    PODS,
    PVCS,
    SERVICES,
    TEST_AGENT,
    TEST_DEFAULTS,
    Harness,
)
from tests.operator.test_operator_kopf import _verb, create_and_wait, make_pvc, make_secret

HF = "hf://Qwen/Qwen3-8B@main"
S3 = "s3://models/llama/8b"
HF_LABEL = names.NODE_LABEL_PREFIX + label_key_suffix(parse_model_uri(HF))
HF_NODE_SPEC: dict[str, Any] = {"model": {"uri": HF, "credentialsSecretRef": {"name": "hf-token"},
                                          "cache": {"mode": "node"}},
                                "resources": {"gpus": 0}, "router": {"enabled": False},
                                "security": {"allowHostPath": True}}
SLOW_RETRY = OperatorConfig(defaults=TEST_DEFAULTS, resync_seconds=0, retry_seconds=60, progress_seconds=0)


def progress_line(done: int, total: int, files: int, of: int) -> str:
    return json.dumps({"event": "progress", "bytes_done": done, "bytes_total": total,
                       "files_done": files, "files_total": of})


def pod_from(harness: Harness, deployment: str, name: str, node: str | None,
             download: dict[str, Any] | None, restarts: int = 0) -> dict[str, Any]:
    """A server pod as the ReplicaSet controller, the scheduler and the kubelet would make it."""
    template = harness.existing(DEPLOYMENTS, deployment)["spec"]["template"]
    spec = copy.deepcopy(template["spec"])
    if node:
        spec["nodeName"] = node
    status: dict[str, Any] = {"phase": "Pending"}
    if download is not None:
        status["initContainerStatuses"] = [{"name": "model-download", "state": download, "restartCount": restarts,
                                            "ready": False, "image": "x", "imageID": ""}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": dict(template["metadata"]["labels"])},
            "spec": spec, "status": status}


def model_ready(harness: Harness, name: str = "llm") -> tuple[str, str, str] | None:
    cond = harness.condition(name, "ModelReady")
    return (cond["status"], cond["reason"], cond["message"]) if cond else None


async def test_hf_node_cache_pod_spec_model_ready_and_node_label(harness: Harness) -> None:
    await make_secret(harness, "hf-token", {"HF_TOKEN": "aGZfeA=="})
    await harness.put_node("gpu-1")
    await create_and_wait(harness, HF_NODE_SPEC)

    pod_spec = harness.existing(DEPLOYMENTS, "llm-server")["spec"]["template"]["spec"]
    (init,) = pod_spec["initContainers"]
    assert init["name"] == "model-download" and init["command"][:3] == ["radixserve", "download", HF]
    assert init["env"] == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token",
                                                                               "key": "HF_TOKEN"}}}]
    assert {"name": "model-cache", "hostPath": {"path": TEST_DEFAULTS.model_cache_host_path,
                                                "type": "DirectoryOrCreate"}} in pod_spec["volumes"]
    preferred = pod_spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred == [{"weight": 100, "preference": {"matchExpressions": [{"key": HF_LABEL, "operator": "Exists"}]}}]
    await harness.wait_for("ModelReady Pending", lambda: model_ready(harness)[:2] == ("False", "Pending"))  # type: ignore[index]

    # The kubelet starts the init container; the downloader prints progress.
    harness.server.pod_logs["llm-server-1"] = "\n".join([
        progress_line(1 << 30, 16 << 30, 1, 9), progress_line(4 << 30, 16 << 30, 3, 9)])
    await harness.put_pod(pod_from(harness, "llm-server", "llm-server-1", "gpu-1", {"running": {}}))
    await harness.wait_for("ModelReady Downloading", lambda: model_ready(harness)[1] == "Downloading")  # type: ignore[index]
    assert "4.0 GiB of 16.0 GiB (25%), 3 of 9 files" in model_ready(harness)[2]  # type: ignore[index]
    assert harness.existing_cr("llm")["status"]["modelDownload"] == {
        "bytesDone": 4 << 30, "bytesTotal": 16 << 30, "filesDone": 3, "filesTotal": 9}
    assert HF_LABEL not in (harness.node("gpu-1") or {})["metadata"].get("labels", {})

    # It finishes: ModelReady True, progress gone, the node labelled, an Event says so.
    await harness.put_pod(pod_from(harness, "llm-server", "llm-server-1", "gpu-1",
                                   {"terminated": {"exitCode": 0, "reason": "Completed"}}))
    await harness.wait_for("ModelReady Downloaded", lambda: model_ready(harness)[:2] == ("True", "Downloaded"))  # type: ignore[index]
    await harness.wait_for("the node label", lambda: harness.node("gpu-1")["metadata"]["labels"][HF_LABEL] == "true")  # type: ignore[index]
    assert not harness.existing_cr("llm")["status"].get("modelDownload")
    event = await harness.wait_for_event("llm", "NodeLabelled")
    assert "gpu-1" in event["message"] and HF_LABEL in event["message"]
    assert harness.existing_condition("llm", "Degraded")["status"] == "False"

    # Another InferenceServer of the same model prefers the same nodes.
    await create_and_wait(harness, HF_NODE_SPEC, name="llm2")
    pod2 = harness.existing(DEPLOYMENTS, "llm2-server")["spec"]["template"]["spec"]
    assert pod2["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == preferred
    assert harness.handler_errors == []


async def test_a_failed_download_is_a_condition_with_the_cause(harness: Harness) -> None:
    await make_secret(harness, "hf-token", {"HF_TOKEN": "aGZfeA=="})
    await create_and_wait(harness, HF_NODE_SPEC)
    pod = pod_from(harness, "llm-server", "llm-server-1", "gpu-1", {"waiting": {"reason": "CrashLoopBackOff"}},
                   restarts=3)
    pod["status"]["initContainerStatuses"][0]["lastState"] = {"terminated": {
        "exitCode": 1, "reason": "Error", "message": "NotFound: hf://Qwen/Qwen3-8B@main: no such revision"}}
    await harness.put_pod(pod)
    await harness.wait_for("ModelReady NotFound", lambda: model_ready(harness)[1] == "NotFound")  # type: ignore[index]
    status, _, message = model_ready(harness)  # type: ignore[misc]
    assert status == "False" and "no such revision" in message and "retrying with back-off (restart 3)" in message
    degraded = harness.existing_condition("llm", "Degraded")
    assert degraded["status"] == "True" and "NotFound" in degraded["message"]


@pytest.mark.parametrize("operator_config", [SLOW_RETRY])
async def test_pvc_uri_read_write_once_with_two_replicas_is_refused(harness: Harness,
                                                                    operator_config: OperatorConfig) -> None:
    await make_pvc(harness, "weights", ("ReadWriteOnce",))
    await harness.create("llm", {"model": {"uri": "pvc://weights/llama"}, "replicas": 2, "resources": {"gpus": 0}})
    ready = await harness.wait_for("Ready=False/PVCAccessMode", lambda: (
        c if (c := harness.condition("llm", "Ready")) and c["reason"] == "PVCAccessMode" else None))
    assert "spec.model.uri" in ready["message"] and "spec.replicas is 2" in ready["message"]
    assert model_ready(harness)[:2] == ("False", "PVCAccessMode")  # type: ignore[index]
    await harness.settle()
    assert harness.owned_objects() == {}


async def test_pvc_uri_and_a_path_in_the_image(harness: Harness) -> None:
    await make_pvc(harness, "weights", ("ReadOnlyMany",))
    await create_and_wait(harness, {"model": {"uri": "pvc://weights/llama"}, "replicas": 2, "resources": {"gpus": 0}})
    pod = harness.existing(DEPLOYMENTS, "llm-server")["spec"]["template"]["spec"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod["volumes"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--model-path") + 1] == "/mnt/models/llama"
    await harness.wait_for("ModelReady VolumeMounted", lambda: model_ready(harness)[:2] == ("True", "VolumeMounted"))  # type: ignore[index]


async def test_oci_image_volume_on_a_new_enough_cluster(harness: Harness) -> None:
    await create_and_wait(harness, {"model": {"uri": "oci://ghcr.io/acme/models/qwen3:8b"}, "resources": {"gpus": 0}})
    pod = harness.existing(DEPLOYMENTS, "llm-server")["spec"]["template"]["spec"]
    assert {"name": "model", "image": {"reference": "ghcr.io/acme/models/qwen3:8b",
                                       "pullPolicy": "IfNotPresent"}} in pod["volumes"]
    await harness.wait_for("ModelReady ImageVolume", lambda: model_ready(harness)[:2] == ("True", "ImageVolume"))  # type: ignore[index]


@pytest.mark.parametrize("operator_config", [SLOW_RETRY])
async def test_oci_on_kubernetes_1_32_is_refused(harness: Harness, operator_config: OperatorConfig) -> None:
    harness.server.version = "v1.32.4-gke.100"
    await harness.create("llm", {"model": {"uri": "oci://ghcr.io/acme/models/qwen3:8b"}, "resources": {"gpus": 0}})
    ready = await harness.wait_for("ImageVolumeUnsupported", lambda: (
        c if (c := harness.condition("llm", "Ready")) and c["reason"] == "ImageVolumeUnsupported" else None))
    assert "1.33" in ready["message"] and "ImageVolume" in ready["message"]
    await harness.settle()
    assert harness.owned_objects() == {}


async def test_oci_with_an_unknown_server_version_is_allowed(harness: Harness) -> None:
    harness.server.version = None
    await create_and_wait(harness, {"model": {"uri": "oci://ghcr.io/acme/models/qwen3:8b"}, "resources": {"gpus": 0}})
    assert harness.live(DEPLOYMENTS, "llm-server") is not None


async def test_pvc_cache_job_holds_replicas_until_it_succeeded(harness: Harness) -> None:
    await make_secret(harness, "s3", {"AWS_ACCESS_KEY_ID": "eA==", "AWS_SECRET_ACCESS_KEY": "eQ=="})
    await create_and_wait(harness, {
        "model": {"uri": S3, "endpoint": "http://minio:9000", "credentialsSecretRef": {"name": "s3"},
                  "cache": {"mode": "pvc", "size": "50Gi"}},
        "replicas": 3, "resources": {"gpus": 0}, "router": {"enabled": False}})
    job_name = names.model_job_name("llm", S3)
    job = await harness.wait_for("the download Job", lambda: harness.live(JOBS, job_name))
    claim = harness.existing(PVCS, "llm-model-cache")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["ownerReferences"][0]["name"] == "llm"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "--s3-endpoint" in container["command"] and container["name"] == "model-download"
    deployment = harness.existing(DEPLOYMENTS, "llm-server")
    assert deployment["spec"]["replicas"] == 0 and "initContainers" not in deployment["spec"]["template"]["spec"]
    await harness.wait_for("ModelReady Pending", lambda: model_ready(harness)[1] == "Pending")  # type: ignore[index]

    # The Job controller starts a pod; it downloads.
    harness.server.pod_logs["dl-1"] = progress_line(1 << 20, 4 << 20, 1, 4)
    await harness.put_pod({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "dl-1", "namespace": NAMESPACE, "labels": dict(job["spec"]["template"]["metadata"]["labels"]),
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                          "uid": job["metadata"]["uid"], "controller": True}]},
        "spec": job["spec"]["template"]["spec"],
        "status": {"phase": "Running", "containerStatuses": [{"name": "model-download", "state": {"running": {}},
                                                              "restartCount": 0, "ready": True, "image": "x",
                                                              "imageID": ""}]}})
    await harness.wait_for("ModelReady Downloading", lambda: model_ready(harness)[1] == "Downloading")  # type: ignore[index]
    assert "1.0 MiB of 4.0 MiB (25%), 1 of 4 files" in model_ready(harness)[2]  # type: ignore[index]

    await harness.set_job_status(job_name, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    await harness.wait_for("3 replicas once the Job succeeded",
                           lambda: harness.existing(DEPLOYMENTS, "llm-server")["spec"]["replicas"] == 3)
    await harness.wait_for("ModelReady Downloaded", lambda: model_ready(harness)[:2] == ("True", "Downloaded"))  # type: ignore[index]
    # The Job is created once and never rewritten (its pod template is immutable).
    await harness.settle()
    assert harness.versions(JOBS, job_name) == 2  # created, then the test's status write
    assert harness.handler_errors == []


@pytest.mark.parametrize("operator_config", [SLOW_RETRY])
async def test_missing_credentials_are_a_condition(harness: Harness, operator_config: OperatorConfig) -> None:
    await make_secret(harness, "s3", {"AWS_ACCESS_KEY_ID": "eA=="})
    await harness.create("llm", {"model": {"uri": S3, "credentialsSecretRef": {"name": "s3"}},
                                 "resources": {"gpus": 0}})
    ready = await harness.wait_for("SecretKeyNotFound", lambda: (
        c if (c := harness.condition("llm", "Ready")) and c["reason"] == "SecretKeyNotFound" else None))
    assert "AWS_SECRET_ACCESS_KEY" in ready["message"] and "spec.model.credentialsSecretRef" in ready["message"]
    await harness.settle()
    assert harness.owned_objects() == {}


async def test_deleting_the_last_user_of_a_model_removes_its_node_labels(harness: Harness) -> None:
    s3_node = {"model": {"uri": S3, "cache": {"mode": "node"}}, "resources": {"gpus": 0}, "router": {"enabled": False},
               "security": {"allowHostPath": True}}
    s3_label = names.NODE_LABEL_PREFIX + label_key_suffix(parse_model_uri(S3))
    stale = names.NODE_LABEL_PREFIX + "m-00000000000000000000"
    await harness.put_node("gpu-1", {HF_LABEL: "true", s3_label: "true", stale: "true", "kubernetes.io/os": "linux"})
    await make_secret(harness, "hf-token", {"HF_TOKEN": "aGZfeA=="})
    await create_and_wait(harness, HF_NODE_SPEC, name="keep")
    await create_and_wait(harness, s3_node, name="gone")
    await harness.delete(f"/apis/{names.API_VERSION}/namespaces/{NAMESPACE}/{names.PLURAL}/gone")
    await harness.wait_for("the unused labels to go", lambda: s3_label not in harness.node("gpu-1")["metadata"]["labels"])  # type: ignore[index]
    labels = harness.node("gpu-1")["metadata"]["labels"]  # type: ignore[index]
    assert stale not in labels and labels[HF_LABEL] == "true" and labels["kubernetes.io/os"] == "linux"


@pytest.mark.parametrize("operator_config", [OperatorConfig(
    defaults=TEST_DEFAULTS.__class__(**{**TEST_DEFAULTS.__dict__, "label_nodes": False}),
    resync_seconds=0, retry_seconds=0.5, progress_seconds=0)])
async def test_node_labelling_can_be_turned_off(harness: Harness, operator_config: OperatorConfig) -> None:
    await make_secret(harness, "hf-token", {"HF_TOKEN": "aGZfeA=="})
    await harness.put_node("gpu-1")
    await create_and_wait(harness, HF_NODE_SPEC)
    assert "affinity" not in harness.existing(DEPLOYMENTS, "llm-server")["spec"]["template"]["spec"]
    await harness.put_pod(pod_from(harness, "llm-server", "llm-server-1", "gpu-1",
                                   {"terminated": {"exitCode": 0, "reason": "Completed"}}))
    await harness.wait_for("ModelReady Downloaded", lambda: model_ready(harness)[:2] == ("True", "Downloaded"))  # type: ignore[index]
    await harness.settle()
    assert harness.node("gpu-1")["metadata"]["labels"] == {}  # type: ignore[index]
    assert not any(r.resource is not None and r.resource.plural == "nodes" and r.headers.get("User-Agent") != TEST_AGENT
                   for r in list(harness.server))


@pytest.mark.parametrize("operator_config", [OperatorConfig(defaults=TEST_DEFAULTS, resync_seconds=0,
                                                            retry_seconds=0.5, progress_seconds=0.2)])
async def test_progress_is_refreshed_from_the_log_while_downloading(harness: Harness,
                                                                    operator_config: OperatorConfig) -> None:
    await make_secret(harness, "hf-token", {"HF_TOKEN": "aGZfeA=="})
    await create_and_wait(harness, HF_NODE_SPEC)
    harness.server.pod_logs["llm-server-1"] = progress_line(1 << 30, 8 << 30, 1, 4)
    await harness.put_pod(pod_from(harness, "llm-server", "llm-server-1", "gpu-1", {"running": {}}))
    await harness.wait_for("1 GiB", lambda: harness.existing_cr("llm")["status"]["modelDownload"]["bytesDone"] == 1 << 30)
    # No pod event: only the log moved on. The progress timer picks it up.
    harness.server.pod_logs["llm-server-1"] += "\n" + progress_line(6 << 30, 8 << 30, 3, 4)
    await harness.wait_for("6 GiB", lambda: harness.existing_cr("llm")["status"]["modelDownload"]["bytesDone"] == 6 << 30)
    assert "75%" in model_ready(harness)[2]  # type: ignore[index]


async def test_model_delivery_api_calls_are_granted(harness: Harness) -> None:
    """Every request of the paths above is in permissions.RULES / NODE_RULES (the chart's RBAC)."""
    await make_secret(harness, "hf-token", {"HF_TOKEN": "aGZfeA=="})
    await make_secret(harness, "s3", {"AWS_ACCESS_KEY_ID": "eA==", "AWS_SECRET_ACCESS_KEY": "eQ=="})
    await harness.put_node("gpu-1", {names.NODE_LABEL_PREFIX + "m-00000000000000000000": "true"})
    await create_and_wait(harness, HF_NODE_SPEC)
    harness.server.pod_logs["llm-server-1"] = progress_line(1, 2, 1, 2)
    await harness.put_pod(pod_from(harness, "llm-server", "llm-server-1", "gpu-1", {"running": {}}))
    await harness.wait_for("Downloading", lambda: model_ready(harness)[1] == "Downloading")  # type: ignore[index]
    await harness.put_pod(pod_from(harness, "llm-server", "llm-server-1", "gpu-1",
                                   {"terminated": {"exitCode": 0, "reason": "Completed"}}))
    await harness.wait_for("the node label", lambda: HF_LABEL in harness.node("gpu-1")["metadata"]["labels"])  # type: ignore[index]
    await create_and_wait(harness, {"model": {"uri": S3, "credentialsSecretRef": {"name": "s3"},
                                              "cache": {"mode": "pvc", "size": "1Gi"}}, "resources": {"gpus": 0}},
                          name="s3")
    await harness.create("oci", {"model": {"uri": "oci://r.io/a/b:1"}, "resources": {"gpus": 0}})
    await harness.wait_for("the oci endpoint", lambda: harness.live(SERVICES, "oci"))
    await harness.delete(f"/apis/{names.API_VERSION}/namespaces/{NAMESPACE}/{names.PLURAL}/oci")
    await harness.wait_for("the stale label to go",
                           lambda: len(harness.node("gpu-1")["metadata"]["labels"]) == 1)  # type: ignore[index]
    await harness.settle()

    granted = {(r.api_group, r.resource, verb) for r in permissions.RULES + permissions.NODE_RULES for verb in r.verbs}
    used = set()
    for request in list(harness.server):
        if request.headers.get("User-Agent") == TEST_AGENT:
            continue
        if request.resource is None or request.resource.plural is None:
            assert request.url.path.startswith(("/api", "/apis", "/version")), request.url.path
            continue  # discovery and /version: granted to every authenticated user
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        verb = _verb(request)
        used.add((request.resource.group, resource, verb))
        if verb == "patch" and "apply-patch" in request.headers.get("Content-Type", ""):
            used.add((request.resource.group, resource, "create"))
    assert used - granted == set()
    assert {("", "pods", "watch"), ("", "pods", "list"), ("", "pods/log", "get"), ("", "nodes", "patch"),
            ("", "nodes", "list"), ("batch", "jobs", "create"), ("", "persistentvolumeclaims", "create")} <= used
    assert harness.live(PODS, "llm-server-1") is not None


async def test_a_new_uri_gets_a_new_job_and_the_old_one_goes(harness: Harness) -> None:
    spec = {"model": {"uri": S3, "cache": {"mode": "pvc", "size": "50Gi"}}, "resources": {"gpus": 0},
            "router": {"enabled": False}}
    await create_and_wait(harness, spec)
    old, new = names.model_job_name("llm", S3), names.model_job_name("llm", "s3://models/llama/70b")
    await harness.wait_for("the first Job", lambda: harness.live(JOBS, old))
    await harness.patch_spec("llm", {"model": {"uri": "s3://models/llama/70b"}})
    await harness.wait_for("the new Job", lambda: harness.live(JOBS, new))
    await harness.wait_for("the old Job to go", lambda: harness.live(JOBS, old) is None)
    await harness.wait_for_event("llm", "Deleted")
    # Back to cache mode node: no Job at all.
    await harness.patch_spec("llm", {"model": {"cache": {"mode": "node", "size": None}},
                                     "security": {"allowHostPath": True}})
    await harness.wait_for("no Job", lambda: harness.live(JOBS, new) is None)
    assert "initContainers" in harness.existing(DEPLOYMENTS, "llm-server")["spec"]["template"]["spec"]


async def test_pods_of_an_earlier_model_do_not_count(harness: Harness) -> None:
    await make_secret(harness, "hf-token", {"HF_TOKEN": "aGZfeA=="})
    await create_and_wait(harness, HF_NODE_SPEC)
    old_pod = pod_from(harness, "llm-server", "llm-server-old", "gpu-1",
                       {"terminated": {"exitCode": 0, "reason": "Completed"}})
    old_pod["spec"]["initContainers"][0]["command"][2] = "hf://Qwen/Qwen2-7B"
    await harness.put_node("gpu-1")
    await harness.put_pod(old_pod)
    await harness.settle()
    assert model_ready(harness)[:2] == ("False", "Pending")  # type: ignore[index]
    assert harness.node("gpu-1")["metadata"]["labels"] == {}  # type: ignore[index]
