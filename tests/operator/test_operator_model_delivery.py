"""Model delivery (spec.model.uri), without an API server: what each URI kind and cache mode
renders, the spec checks, ModelReady from synthetic pod and Job states, node label records,
and the CRD's validation of the new fields."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest

from radixserve.model_store.uri import cache_key, label_key_suffix, parse_model_uri
from radixserve.operator import names, nodes
from radixserve.operator.builders import BuildInput, Defaults, Owner, desired_objects
from radixserve.operator.builders.common import restricted_container_security
from radixserve.operator.checks import SpecProblem, check_spec
from radixserve.operator.spec import SpecError, parse_spec
from radixserve.operator.status import Observed, compute_status, last_progress
from tests.operator.operator_testkit import cr, crd, crd_schema, schema_errors
from tests.operator.test_operator_checks import FakeCluster

OWNER = Owner(name="llm", namespace="team-a", uid="5b0f6a57-0000-4000-8000-000000000002")
DEFAULTS = Defaults(image="example.test/rs:cuda", cpu_image="example.test/rs:cpu")
HF = "hf://Qwen/Qwen3-8B@main"
S3 = "s3://models/llama/8b"
HF_KEY = cache_key(parse_model_uri(HF))
LABEL = f"model-cache.radixserve.io/{label_key_suffix(parse_model_uri(HF))}"


def build(spec: dict[str, Any], defaults: Defaults = DEFAULTS, downloaded: bool = True
          ) -> dict[tuple[str, str], dict[str, Any]]:
    objects = desired_objects(BuildInput(OWNER, parse_spec(spec), defaults, model_downloaded=downloaded))
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def deployment(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return objects[("Deployment", "llm-server")]


def pod_of(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment(objects)["spec"]["template"]["spec"]
    return pod


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod["volumes"]}


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container["volumeMounts"]}


def validate_all(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    # 1.33: the first version with image volumes; 1.37: the newest schemas shipped.
    for obj in objects.values():
        for version in ("1.33", "1.37"):
            assert kubernetes_validate.validate(obj, version, strict=True)


# --- builders: each URI kind and cache mode ---------------------------------------------

def test_hf_with_cache_none_downloads_in_an_init_container_into_an_empty_dir() -> None:
    objects = build({"model": {"uri": HF, "credentialsSecretRef": {"name": "hf-token"},
                               "include": ["*.safetensors", "*.json"], "exclude": ["original/*"],
                               "endpoint": "https://hf-mirror.example", "cache": {"size": "40Gi"}}})
    validate_all(objects)
    pod = pod_of(objects)
    (init,) = pod["initContainers"]
    server = pod["containers"][0]
    assert init["name"] == "model-download" and init["image"] == server["image"] == DEFAULTS.image
    assert init["command"] == [
        "radixserve", "download", HF, f"/models-cache/{HF_KEY}", "--progress", "json",
        "--termination-log", "/dev/termination-log", "--include", "*.safetensors", "--include", "*.json",
        "--exclude", "original/*", "--hf-endpoint", "https://hf-mirror.example"]
    assert init["env"] == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}}]
    assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert init["securityContext"] == server["securityContext"] == restricted_container_security()
    assert init["resources"]["requests"] and "nvidia.com/gpu" not in init["resources"].get("limits", {})
    assert mounts(init)["model-cache"] == {"name": "model-cache", "mountPath": "/models-cache"}
    assert volumes(pod)["model-cache"] == {"name": "model-cache", "emptyDir": {"sizeLimit": "40Gi"}}
    # The server reads the cache read-only and never sees the token.
    assert mounts(server)["model-cache"] == {"name": "model-cache", "mountPath": "/models-cache", "readOnly": True}
    assert "HF_TOKEN" not in json.dumps(server)
    assert flag(server["args"], "--model-path") == f"/models-cache/{HF_KEY}"
    assert flag(server["args"], "--served-model-name") == "Qwen/Qwen3-8B"
    assert "affinity" not in pod  # cache none: nothing to prefer
    assert set(objects) == set(build({}))  # no Job, no claim


def test_hf_without_credentials_or_size() -> None:
    pod = pod_of(build({"model": {"uri": "hf://gpt2"}}))
    assert "env" not in pod["initContainers"][0]
    assert volumes(pod)["model-cache"]["emptyDir"] == {}


def test_node_cache_is_a_host_path_and_prefers_labelled_nodes() -> None:
    objects = build({"model": {"uri": HF, "cache": {"mode": "node"}}})
    validate_all(objects)
    pod = pod_of(objects)
    assert volumes(pod)["model-cache"]["hostPath"] == {"path": "/var/lib/radixserve/models", "type": "DirectoryOrCreate"}
    assert pod["initContainers"][0]["name"] == "model-download"
    assert pod["affinity"] == {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": {"matchExpressions": [{"key": LABEL, "operator": "Exists"}]}}]}}
    custom = pod_of(build({"model": {"uri": HF, "cache": {"mode": "node"}}},
                          replace(DEFAULTS, model_cache_host_path="/mnt/nvme/models")))
    assert volumes(custom)["model-cache"]["hostPath"]["path"] == "/mnt/nvme/models"
    # Node labelling off: no labels to prefer.
    assert "affinity" not in pod_of(build({"model": {"uri": HF, "cache": {"mode": "node"}}},
                                          replace(DEFAULTS, label_nodes=False)))


def test_cache_preference_is_appended_to_the_users_affinity() -> None:
    user: dict[str, Any] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}],
        },
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"a": "b"}}}}]},
    }
    spec = {"model": {"uri": HF, "cache": {"mode": "node"}}, "scheduling": {"affinity": copy.deepcopy(user)}}
    objects = build(spec)
    validate_all(objects)
    affinity = pod_of(objects)["affinity"]
    preferred = affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred[0] == user["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert preferred[1]["preference"]["matchExpressions"][0]["key"] == LABEL and len(preferred) == 2
    assert affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == \
        user["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert affinity["podAntiAffinity"] == user["podAntiAffinity"]
    assert parse_spec(spec).scheduling.affinity == user  # the spec itself is not modified


def test_pvc_cache_creates_a_claim_and_a_job_and_holds_replicas_until_it_succeeded() -> None:
    spec = {"replicas": 3, "imagePullSecrets": [{"name": "regcred"}],
            "model": {"uri": S3, "endpoint": "http://minio.storage:9000", "region": "eu-west-1",
                      "credentialsSecretRef": {"name": "s3"},
                      "cache": {"mode": "pvc", "size": "100Gi", "storageClassName": "nfs"}}}
    held = build(spec, downloaded=False)
    validate_all(held)
    claim = held[("PersistentVolumeClaim", "llm-model-cache")]
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "100Gi"}},
                             "storageClassName": "nfs"}
    job_name = names.model_job_name("llm", S3)
    assert len(job_name) <= 63 and job_name.startswith("llm-model-")
    job = held[("Job", job_name)]
    assert job["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert job["spec"]["backoffLimit"] == 6
    job_pod = job["spec"]["template"]["spec"]
    assert job_pod["restartPolicy"] == "Never" and job_pod["imagePullSecrets"] == [{"name": "regcred"}]
    (download,) = job_pod["containers"]
    key = cache_key(parse_model_uri(S3))
    assert download["command"][:4] == ["radixserve", "download", S3, f"/models-cache/{key}"]
    assert flag(download["command"], "--s3-endpoint") == "http://minio.storage:9000"
    assert flag(download["command"], "--s3-region") == "eu-west-1"
    assert download["env"] == [
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}}},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}}},
        {"name": "AWS_SESSION_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_SESSION_TOKEN",
                                                                      "optional": True}}},
    ]
    assert mounts(download)["model-cache"] == {"name": "model-cache", "mountPath": "/models-cache"}  # read-write
    assert job_pod["volumes"] == [{"name": "model-cache", "persistentVolumeClaim": {"claimName": "llm-model-cache"}}]
    # The server: no init container, the claim read-only, 0 replicas until the Job succeeded.
    server_pod = pod_of(held)
    assert "initContainers" not in server_pod
    assert volumes(server_pod)["model-cache"]["persistentVolumeClaim"] == {"claimName": "llm-model-cache",
                                                                          "readOnly": True}
    assert flag(server_pod["containers"][0]["args"], "--model-path") == f"/models-cache/{key}"
    assert flag(server_pod["containers"][0]["args"], "--served-model-name") == "8b"
    assert deployment(held)["spec"]["replicas"] == 0
    assert deployment(build(spec, downloaded=True))["spec"]["replicas"] == 3
    # The claim and the Job come after the server Deployment (it fails first if the API refuses a pod field).
    kinds = [o["kind"] for o in desired_objects(BuildInput(OWNER, parse_spec(spec), DEFAULTS))]
    assert kinds.index("Deployment") < kinds.index("PersistentVolumeClaim") < kinds.index("Job")


def test_adopted_cache_claim_is_used_and_not_created() -> None:
    objects = build({"model": {"uri": S3, "cache": {"mode": "pvc", "claimName": "shared-models"}}})
    validate_all(objects)
    assert not any(kind == "PersistentVolumeClaim" for kind, _ in objects)
    job = next(o for (kind, _), o in objects.items() if kind == "Job")
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shared-models"
    # Another claim to fill is another Job (Jobs are created once).
    other = build({"model": {"uri": S3, "cache": {"mode": "pvc", "claimName": "other-models"}}})
    assert {n for k, n in other if k == "Job"} != {job["metadata"]["name"]}
    assert volumes(pod_of(objects))["model-cache"]["persistentVolumeClaim"]["claimName"] == "shared-models"


@pytest.mark.parametrize(("uri", "claim", "path"), [
    ("pvc://weights/llama/8b", "weights", "/mnt/models/llama/8b"),
    ("pvc://weights", "weights", "/mnt/models"),
])
def test_pvc_uri_mounts_the_claim_read_only(uri: str, claim: str, path: str) -> None:
    objects = build({"model": {"uri": uri}})
    validate_all(objects)
    pod = pod_of(objects)
    assert volumes(pod)["model"] == {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    assert mounts(pod["containers"][0])["model"] == {"name": "model", "mountPath": "/mnt/models", "readOnly": True}
    assert flag(pod["containers"][0]["args"], "--model-path") == path
    assert "initContainers" not in pod


def test_oci_uri_is_an_image_volume() -> None:
    objects = build({"model": {"uri": "oci://ghcr.io/acme/models/qwen3:8b"}})
    validate_all(objects)
    pod = pod_of(objects)
    assert volumes(pod)["model"] == {"name": "model", "image": {"reference": "ghcr.io/acme/models/qwen3:8b",
                                                                "pullPolicy": "IfNotPresent"}}
    assert mounts(pod["containers"][0])["model"]["readOnly"] is True
    assert flag(pod["containers"][0]["args"], "--model-path") == "/mnt/models"
    assert flag(pod["containers"][0]["args"], "--served-model-name") == "qwen3:8b"
    assert "initContainers" not in pod
    with pytest.raises(kubernetes_validate.ValidationError):  # no image volumes (not even alpha) in 1.30
        kubernetes_validate.validate(deployment(objects), "1.30", strict=True)


@pytest.mark.parametrize("uri", ["/models/qwen", "file:///models/qwen"])
def test_a_path_in_the_image(uri: str) -> None:
    objects = build({"model": {"uri": uri}})
    validate_all(objects)
    pod = pod_of(objects)
    assert flag(pod["containers"][0]["args"], "--model-path") == "/models/qwen"
    assert {v["name"] for v in pod["volumes"]} == {"dshm"} and "initContainers" not in pod


def test_served_model_name_from_the_spec_wins() -> None:
    pod = pod_of(build({"model": {"uri": HF}, "servedModelName": "qwen"}))
    assert flag(pod["containers"][0]["args"], "--served-model-name") == "qwen"


@pytest.mark.parametrize("uri", [HF, S3, "pvc://w/x", "oci://r.io/a/b@sha256:" + "a" * 64, "/m"])
def test_server_args_with_a_uri_are_accepted_by_radixserve_serve(uri: str) -> None:
    from radixserve.operator.builders.server import server_args
    from radixserve.server.launch import build_parser
    from radixserve.server_args import ServerArgs

    args = ServerArgs.from_cli_args(build_parser().parse_args(server_args(parse_spec({"model": {"uri": uri}}))))
    assert args.model_path and args.model_path.startswith("/")


def test_status_model_shows_the_uri() -> None:
    assert parse_spec({"model": {"uri": HF}}).display_model == HF
    assert parse_spec({"model": {"uri": HF}, "servedModelName": "q"}).display_model == "q"


# --- spec and cluster checks --------------------------------------------------------------

def problems(raw: dict[str, Any], cluster: FakeCluster | None = None) -> list[tuple[str, str, bool]]:
    return [(p.reason, p.field, p.transient)
            for p in check_spec("llm", "ns", parse_spec(raw), cluster or FakeCluster())]


@pytest.mark.parametrize(("uri", "mentions"), [
    ("ftp://x/y", "unknown scheme"),
    ("hf://", "nothing after"),
    ("hf://a/b/c", "hf://org/name"),
    ("oci://ghcr.io/a/b", "name a tag or a digest"),
    ("s3://UPPER/x", "bucket name"),
    ("pvc://c/../x", "'..'"),
])
def test_an_unparsable_uri_is_a_spec_error_on_the_uri(uri: str, mentions: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"model": {"uri": uri}})
    assert info.value.field == "spec.model.uri" and mentions in info.value.message


def test_uri_is_exclusive_with_the_other_sources() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"model": {"uri": HF, "embedded": {}}})
    assert info.value.field == "spec.model" and "uri" in info.value.message


@pytest.mark.parametrize(("model", "field"), [
    ({"uri": "pvc://c", "credentialsSecretRef": {"name": "s"}}, "spec.model.credentialsSecretRef"),
    ({"uri": "oci://r.io/a/b:1", "cache": {"mode": "node"}}, "spec.model.cache"),
    ({"uri": "/m", "include": ["*.json"]}, "spec.model.include"),
    ({"uri": "pvc://c", "endpoint": "http://x"}, "spec.model.endpoint"),
    ({"embedded": {}, "exclude": ["x"]}, "spec.model.exclude"),
    ({"uri": HF, "region": "us-east-1"}, "spec.model.region"),
    ({"uri": S3, "cache": {"mode": "pvc"}}, "spec.model.cache.size"),
    ({"uri": S3, "cache": {"mode": "node", "claimName": "x"}}, "spec.model.cache.claimName"),
    ({"uri": S3, "cache": {"mode": "none", "storageClassName": "x"}}, "spec.model.cache.storageClassName"),
    ({"uri": S3, "cache": {"mode": "pvc", "claimName": "x", "size": "1Gi"}}, "spec.model.cache.size"),
])
def test_fields_that_do_not_apply_are_invalid_spec(model: dict[str, Any], field: str) -> None:
    cluster = FakeCluster()
    assert problems({"model": model}, cluster) == [("InvalidSpec", field, False)]
    assert cluster.asked == []  # local problems first


def test_credentials_secret_must_hold_the_schemes_keys() -> None:
    hf = {"model": {"uri": HF, "credentialsSecretRef": {"name": "tok"}}}
    assert problems(hf) == [("SecretNotFound", "spec.model.credentialsSecretRef.name", True)]
    assert problems(hf, FakeCluster(secrets={"tok": {"token"}})) == [
        ("SecretKeyNotFound", "spec.model.credentialsSecretRef.name", True)]
    assert problems(hf, FakeCluster(secrets={"tok": {"HF_TOKEN"}})) == []
    s3 = {"model": {"uri": S3, "credentialsSecretRef": {"name": "aws"}}}
    [problem] = check_spec("llm", "ns", parse_spec(s3), FakeCluster(secrets={"aws": {"AWS_ACCESS_KEY_ID"}}))
    assert problem.reason == "SecretKeyNotFound" and "AWS_SECRET_ACCESS_KEY" in problem.message
    # AWS_SESSION_TOKEN is optional.
    assert problems(s3, FakeCluster(secrets={"aws": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}})) == []
    assert problems({"model": {"uri": S3}}) == []  # public bucket, or credentials from the node


@pytest.mark.parametrize(("modes", "replicas", "expected"), [
    (["ReadWriteOnce"], 2, [("PVCAccessMode", "spec.model.uri", True)]),
    (["ReadWriteOnce"], 1, []),
    (["ReadOnlyMany"], 4, []),
])
def test_pvc_uri_goes_through_the_claim_checks(modes: list[str], replicas: int,
                                               expected: list[tuple[str, str, bool]]) -> None:
    cluster = FakeCluster(pvcs={"w"}, pvc_modes={"w": modes})
    assert problems({"model": {"uri": "pvc://w/llama"}, "replicas": replicas}, cluster) == expected
    assert problems({"model": {"uri": "pvc://absent"}}) == [("PVCNotFound", "spec.model.uri", True)]


def test_pvc_uri_access_mode_message() -> None:
    cluster = FakeCluster(pvcs={"w"}, pvc_modes={"w": ["ReadWriteOnce"]})
    [problem] = check_spec("llm", "ns", parse_spec({"model": {"uri": "pvc://w"}, "replicas": 2}), cluster)
    assert "spec.replicas is 2" in problem.message and "ReadWriteOnce" in problem.message


def test_an_adopted_cache_claim_must_be_read_write_many() -> None:
    spec = {"model": {"uri": S3, "cache": {"mode": "pvc", "claimName": "shared"}}}
    assert problems(spec) == [("PVCNotFound", "spec.model.cache.claimName", True)]
    rwo = FakeCluster(pvcs={"shared"}, pvc_modes={"shared": ["ReadWriteOnce"]})
    assert problems(spec, rwo) == [("PVCAccessMode", "spec.model.cache.claimName", True)]
    rox = FakeCluster(pvcs={"shared"}, pvc_modes={"shared": ["ReadOnlyMany"]})
    assert problems(spec, rox) == [("PVCAccessMode", "spec.model.cache.claimName", True)]
    assert problems(spec, FakeCluster(pvcs={"shared"}, pvc_modes={"shared": ["ReadWriteMany"]})) == []


@pytest.mark.parametrize(("version", "refused"), [((1, 32), True), ((1, 33), False), ((1, 35), False),
                                                  ((2, 0), False), (None, False)])
def test_oci_needs_kubernetes_1_33(version: tuple[int, int] | None, refused: bool) -> None:
    cluster = FakeCluster(version=version)
    got = check_spec("llm", "ns", parse_spec({"model": {"uri": "oci://r.io/a/b:1"}}), cluster)
    assert [(p.reason, p.field) for p in got] == ([("ImageVolumeUnsupported", "spec.model.uri")] if refused else [])
    if refused:
        assert "1.33" in got[0].message and "ImageVolume" in got[0].message and "1.35" in got[0].message
    assert "version" not in FakeCluster().asked  # asked only for oci://


# --- ModelReady ---------------------------------------------------------------------------

NOW = "2026-01-01T00:00:00Z"
PROGRESS_LOG = "\n".join([
    "starting",
    json.dumps({"event": "progress", "bytes_done": 1 << 30, "bytes_total": 16 << 30, "files_done": 1, "files_total": 9}),
    "{not json",
    json.dumps({"event": "progress", "bytes_done": int(3.2 * (1 << 30)), "bytes_total": int(16.1 * (1 << 30)),
                "files_done": 3, "files_total": 9}),
])


def server_pod(download: dict[str, Any] | None, restarts: int = 0, last: dict[str, Any] | None = None,
               name: str = "llm-server-abc") -> dict[str, Any]:
    """A pod as the kubelet reports it; `download` is the model-download container's state."""
    status: dict[str, Any] = {"phase": "Pending"}
    if download is not None:
        cs: dict[str, Any] = {"name": "model-download", "state": download, "restartCount": restarts,
                              "ready": False, "image": "x", "imageID": ""}
        if last is not None:
            cs["lastState"] = {"terminated": last}
        status["initContainerStatuses"] = [cs]
    return {"metadata": {"name": name, "labels": names.server_selector("llm")},
            "spec": {"nodeName": "node-1"}, "status": status}


RUNNING: dict[str, Any] = {"running": {"startedAt": NOW}}
DONE: dict[str, Any] = {"terminated": {"exitCode": 0, "reason": "Completed"}}


def failed(message: str) -> dict[str, Any]:
    return {"terminated": {"exitCode": 1, "reason": "Error", "message": message}}


def model_status(spec: dict[str, Any], pods: list[dict[str, Any]] = (), job: dict[str, Any] | None = None,  # type: ignore[assignment]
                 log: str | None = None, ready: int = 0, problems: tuple[SpecProblem, ...] = ()) -> dict[str, Any]:
    replicas = parse_spec(spec).replicas
    server = {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "replicas": replicas,
                                                          "readyReplicas": ready, "updatedReplicas": replicas}}
    obs = Observed(generation=1, spec=parse_spec(spec), url="u", server=server, router=None, problems=problems,
                   name="llm", model_pods=pods, model_job=job, model_log=log)
    return compute_status(obs, None, NOW)


def cond(status: dict[str, Any], kind: str = "ModelReady") -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == kind)
    return found


@pytest.mark.parametrize(("model", "reason"), [
    ({"embedded": {}}, "Embedded"), ({"image": {"path": "/m"}}, "InImage"),
    ({"pvc": {"claimName": "c"}}, "VolumeMounted"), ({"hostPath": {"path": "/d"}}, "VolumeMounted"),
    ({"uri": "pvc://c/x"}, "VolumeMounted"), ({"uri": "oci://r.io/a/b:1"}, "ImageVolume"), ({"uri": "/m"}, "InImage"),
])
def test_sources_without_a_download_are_model_ready(model: dict[str, Any], reason: str) -> None:
    status = model_status({"model": model, "router": {"enabled": False}})
    assert (cond(status)["status"], cond(status)["reason"]) == ("True", reason)
    assert status["modelDownload"] is None


def test_model_ready_moves_pending_downloading_failed_downloaded() -> None:
    spec = {"model": {"uri": HF, "cache": {"mode": "node"}}, "router": {"enabled": False}}
    pending = model_status(spec)
    assert (cond(pending)["status"], cond(pending)["reason"]) == ("False", "Pending")
    assert model_status(spec, [server_pod(None)]) == pending

    downloading = model_status(spec, [server_pod(RUNNING)], log=PROGRESS_LOG)
    assert (cond(downloading)["status"], cond(downloading)["reason"]) == ("False", "Downloading")
    assert "3.2 GiB of 16.1 GiB (19%), 3 of 9 files" in cond(downloading)["message"]
    assert downloading["modelDownload"] == {"bytesDone": int(3.2 * (1 << 30)), "bytesTotal": int(16.1 * (1 << 30)),
                                            "filesDone": 3, "filesTotal": 9}
    assert cond(downloading, "Degraded")["status"] == "False"
    # A log that cannot be read gives no numbers, not an error.
    unread = model_status(spec, [server_pod(RUNNING)], log=None)
    assert cond(unread)["reason"] == "Downloading" and unread["modelDownload"] is None

    failing = model_status(spec, [server_pod({"waiting": {"reason": "CrashLoopBackOff"}}, restarts=2,
                                             last=failed("Unauthorized: 401 from the Hub: check HF_TOKEN")["terminated"])])
    assert (cond(failing)["status"], cond(failing)["reason"]) == ("False", "Unauthorized")
    assert cond(failing)["message"] == "401 from the Hub: check HF_TOKEN; retrying with back-off (restart 2)"
    degraded = cond(failing, "Degraded")
    assert degraded["status"] == "True" and "Unauthorized" in degraded["message"]
    assert cond(failing, "Ready")["reason"] == "ReplicasNotReady"  # Ready counts replicas only

    other = model_status(spec, [server_pod(failed("killed by the OOM killer"), restarts=1)])
    assert cond(other)["reason"] == "DownloadFailed" and "killed by the OOM killer" in cond(other)["message"]
    for reason in ("NotFound", "ChecksumMismatch", "DiskFull", "Forbidden"):
        assert cond(model_status(spec, [server_pod(failed(f"{reason}: x"))]))["reason"] == reason

    done = model_status(spec, [server_pod(DONE)], ready=1)
    assert (cond(done)["status"], cond(done)["reason"]) == ("True", "Downloaded")
    assert done["modelDownload"] is None and cond(done, "Degraded")["status"] == "False"
    assert cond(done, "Ready")["status"] == "True"


def test_a_second_replica_downloading_keeps_the_model_ready() -> None:
    spec = {"model": {"uri": HF}, "replicas": 2, "router": {"enabled": False}}
    status = model_status(spec, [server_pod(DONE, name="a"), server_pod(RUNNING, name="b")], log=PROGRESS_LOG)
    assert cond(status)["status"] == "True" and "1 pod(s) still downloading" in cond(status)["message"]
    assert status["modelDownload"]["filesDone"] == 3


def test_model_ready_with_a_download_job() -> None:
    spec = {"model": {"uri": S3, "cache": {"mode": "pvc", "size": "10Gi"}}, "router": {"enabled": False}}
    job: dict[str, Any] = {"metadata": {"name": "j"}, "status": {}}
    assert cond(model_status(spec))["reason"] == "Pending"
    assert cond(model_status(spec, job=job))["reason"] == "Pending"
    running = model_status(spec, [server_pod(None) | {"status": {"containerStatuses": [
        {"name": "model-download", "state": RUNNING, "restartCount": 0}]}}], job=job, log=PROGRESS_LOG)
    assert cond(running)["reason"] == "Downloading" and running["modelDownload"]["filesTotal"] == 9
    failed_pod = server_pod(None) | {"status": {"phase": "Failed", "containerStatuses": [
        {"name": "model-download", "state": failed("NotFound: s3://models/llama/8b has no objects"),
         "restartCount": 0}]}}
    retrying = model_status(spec, [failed_pod], job={"status": {"failed": 1, "active": 1}})
    assert cond(retrying)["reason"] == "NotFound"
    assert "retrying with back-off (attempt 2 of 7)" in cond(retrying)["message"]
    gave_up = model_status(spec, [failed_pod], job={"status": {"failed": 7, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the limit"}]}})
    assert cond(gave_up)["reason"] == "NotFound" and "BackoffLimitExceeded" in cond(gave_up)["message"]
    assert cond(gave_up, "Degraded")["status"] == "True"
    done = model_status(spec, [], job={"status": {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True"}]}})
    assert (cond(done)["status"], cond(done)["reason"]) == ("True", "Downloaded")


def test_a_model_spec_problem_is_also_the_model_ready_condition() -> None:
    problem = SpecProblem("ImageVolumeUnsupported", "spec.model.uri", "needs 1.33")
    status = model_status({"model": {"uri": "oci://r.io/a/b:1"}}, problems=(problem,))
    assert (cond(status)["status"], cond(status)["reason"]) == ("False", "ImageVolumeUnsupported")
    other = model_status({}, problems=(SpecProblem("InsufficientGPUs", "spec.resources.gpus", "x"),))
    assert "ModelReady" not in {c["type"] for c in other["conditions"]}


def test_last_progress_reads_the_last_json_progress_line() -> None:
    assert last_progress(PROGRESS_LOG) == {"bytesDone": int(3.2 * (1 << 30)), "bytesTotal": int(16.1 * (1 << 30)),
                                           "filesDone": 3, "filesTotal": 9}
    assert last_progress(None) is None and last_progress("plain text\n{}") is None
    done_line = json.dumps({"event": "done", "revision": "abc", "cache_hit": True})
    assert last_progress(PROGRESS_LOG + "\n" + done_line)["filesDone"] == 3  # type: ignore[index]


# --- node label records -----------------------------------------------------------------

def test_a_finished_download_names_its_node_and_label() -> None:
    spec = parse_spec({"model": {"uri": HF, "cache": {"mode": "node"}}})
    pod_spec = pod_of(build({"model": {"uri": HF, "cache": {"mode": "node"}}}))
    pod = server_pod(DONE) | {"spec": {**pod_spec, "nodeName": "gpu-7"}}
    assert nodes.downloaded_label(pod, spec) == ("gpu-7", LABEL)
    assert nodes.downloaded_label(server_pod(RUNNING) | {"spec": {**pod_spec, "nodeName": "gpu-7"}}, spec) is None
    assert nodes.downloaded_label(server_pod(DONE) | {"spec": pod_spec}, spec) is None  # not scheduled
    # A pod of an earlier revision that fetched another model, or a cache that is not the node's.
    old = copy.deepcopy(pod)
    old["spec"]["initContainers"][0]["command"][2] = "hf://Qwen/Qwen2-7B"
    assert nodes.downloaded_label(old, spec) is None
    assert nodes.downloaded_label(pod, parse_spec({"model": {"uri": HF}})) is None


def test_stale_labels_are_those_no_inference_server_uses() -> None:
    other = f"model-cache.radixserve.io/{label_key_suffix(parse_model_uri(S3))}"
    resources = [cr({"model": {"uri": HF, "cache": {"mode": "node"}}}),
                 cr({"model": {"uri": S3}}),  # cache none: keeps no label alive
                 cr({"model": {"uri": "hf://gone/model", "cache": {"mode": "node"}}}, name="x")
                 | {"metadata": {"name": "x", "deletionTimestamp": NOW}}]
    used = nodes.used_label_keys(resources)
    assert used == {LABEL}
    node_list: list[dict[str, Any]] = [{"metadata": {"name": "a", "labels": {LABEL: "true", other: "true", "kubernetes.io/os": "linux"}}},
                 {"metadata": {"name": "b", "labels": {LABEL: "true"}}}, {"metadata": {"name": "c"}}]
    assert nodes.stale_labels(node_list, used) == {"a": [other]}
    # An unparsable spec that still names a URI keeps its label (no guessing).
    broken = cr({"model": {"uri": HF, "cache": {"mode": "node"}}, "replicas": -1})
    assert nodes.used_label_keys([broken]) == {LABEL}


# --- the CRD --------------------------------------------------------------------------------

GOOD_MODELS = [
    {"uri": HF, "credentialsSecretRef": {"name": "t"}, "cache": {"mode": "node"}, "include": ["*.json"]},
    {"uri": S3, "endpoint": "http://minio:9000", "region": "us-east-1", "cache": {"mode": "pvc", "size": "1Ti"}},
    {"uri": S3, "cache": {"mode": "pvc", "claimName": "shared"}},
    {"uri": S3, "cache": {"size": "20Gi"}},
    {"uri": "pvc://claim/sub/dir"}, {"uri": "oci://ghcr.io/a/b:1"}, {"uri": "/models/x"}, {"uri": "file:///m"},
]


@pytest.mark.parametrize("model", GOOD_MODELS, ids=lambda m: m["uri"][:12])
def test_the_crd_accepts_uri_models(model: dict[str, Any]) -> None:
    assert schema_errors(cr({"model": model})) == []
    parse_spec({"model": model})


BAD_MODELS = [
    ({"uri": "ftp://x"}, "uri must be"),
    ({"uri": "relative/path"}, "uri must be"),
    ({"uri": HF, "embedded": {}}, "model"),
    ({"uri": "pvc://c", "credentialsSecretRef": {"name": "s"}}, "apply only to downloaded models"),
    ({"uri": "oci://r.io/a/b:1", "cache": {"mode": "node"}}, "apply only to downloaded models"),
    ({"embedded": {}, "include": ["x"]}, "apply only to downloaded models"),
    ({"uri": HF, "region": "us-east-1"}, "region applies only to s3"),
    ({"uri": S3, "cache": {"mode": "pvc"}}, "cache.size is required"),
    ({"uri": S3, "cache": {"mode": "node", "claimName": "c"}}, "apply only to mode pvc"),
    ({"uri": S3, "cache": {"mode": "pvc", "claimName": "c", "size": "1Gi"}}, "adopted claim"),
    ({"uri": S3, "cache": {"mode": "disk"}}, "mode"),
    ({"uri": S3, "endpoint": "minio:9000"}, "endpoint"),
    ({"uri": S3, "cache": {"mode": "pvc", "size": "lots"}}, "size"),
]


@pytest.mark.parametrize(("model", "mentions"), BAD_MODELS, ids=[m for _, m in BAD_MODELS])
def test_the_crd_refuses_bad_uri_models(model: dict[str, Any], mentions: str) -> None:
    errors = schema_errors(cr({"model": model}))
    assert errors and any(mentions in e for e in errors), errors


def test_crd_status_and_columns_for_model_delivery() -> None:
    status = crd_schema()["properties"]["status"]["properties"]
    assert set(status["modelDownload"]["properties"]) == {"bytesDone", "bytesTotal", "filesDone", "filesTotal"}
    columns = {c["name"]: c for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["URI"]["jsonPath"] == ".spec.model.uri"
    assert "ModelReady" in columns["ModelReady"]["jsonPath"]
    # What the operator writes passes the status schema.
    written = model_status({"model": {"uri": HF}}, [server_pod(RUNNING)], log=PROGRESS_LOG)
    assert schema_errors(cr({}) | {"status": written}) == []


def test_every_downloader_failure_reason_becomes_the_condition_reason() -> None:
    """The operator reads "<Reason>: ..." from the downloader's termination message; a reason it does
    not know would be reported as plain DownloadFailed, so the two lists must not drift apart."""
    import radixserve.model_store.download_cli
    import radixserve.model_store.patterns
    import radixserve.model_store.store  # noqa: F401  (defines SourceError subclasses)
    from radixserve.model_store.base import SourceError
    from radixserve.operator.status import DOWNLOAD_REASONS

    def subclasses(cls: type[SourceError]) -> list[type[SourceError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in subclasses(sub))]

    reasons = {c.reason for c in subclasses(SourceError)}
    assert {"NotWritable", "LockTimeout", "NoLoadableWeights"} <= reasons
    assert reasons <= DOWNLOAD_REASONS
