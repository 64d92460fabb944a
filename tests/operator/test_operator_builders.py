"""The pure manifest builders: spec in, Kubernetes objects out, no API server."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixserve.operator import names
from radixserve.operator.builders import (
    BuildInput,
    Defaults,
    Owner,
    desired_objects,
    endpoint_url,
    unwanted_objects,
)
from radixserve.operator.builders.server import server_args
from radixserve.operator.spec import InferenceServerSpec, parse_spec
from tests.operator.operator_testkit import EXAMPLES_DIR, load_yaml_documents

OWNER = Owner(name="llm", namespace="team-a", uid="5b0f6a57-0000-4000-8000-000000000001")
DEFAULTS = Defaults(image="example.test/rs:cuda", cpu_image="example.test/rs:cpu")


def build(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    objects = desired_objects(BuildInput(OWNER, parse_spec(spec), DEFAULTS))
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def server_pod(spec: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = build(spec)[("Deployment", "llm-server")]["spec"]["template"]["spec"]
    return pod


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


SPECS: dict[str, dict[str, Any]] = {
    "empty": {},
    "cpu": {"resources": {"gpus": 0}},
    # 16 GPUs are more than a node holds: two pods of 8 (a LeaderWorkerSet).
    "tp8-pp2-pvc": {"model": {"pvc": {"claimName": "m", "subPath": "llama-70b"}}, "tensorParallelSize": 8,
                    "pipelineParallelSize": 2, "nodesPerReplica": 2, "resources": {"gpus": 8}},
    "hostpath-no-router": {"model": {"hostPath": {"path": "/data", "subPath": "q.gguf"}, "loadFormat": "gguf"},
                           "router": {"enabled": False}, "service": {"type": "LoadBalancer", "port": 8000}},
    "image-with-key": {"model": {"image": {"path": "/models/qwen"}},
                       "server": {"apiKeySecretRef": {"name": "key"}, "extraArgs": ["--disable-radix-cache"]},
                       "scheduling": {"nodeSelector": {"gpu": "h100"}, "runtimeClassName": "nvidia",
                                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
                       "env": [{"name": "HF_HUB_OFFLINE", "value": "1"},
                               {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                       "imagePullSecrets": [{"name": "regcred"}], "imagePullPolicy": "Always",
                       "rollout": {"maxSurge": 0, "maxUnavailable": "25%"}},
}
for example in sorted(EXAMPLES_DIR.glob("*.yaml")):
    SPECS[f"example-{example.stem}"] = load_yaml_documents(example)[0]["spec"]


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_every_manifest_is_valid_kubernetes_in_strict_mode(spec: dict[str, Any]) -> None:
    for obj in build(spec).values():
        if obj["kind"] == "LeaderWorkerSet":  # a custom resource: tests/operator/test_operator_multinode.py
            continue
        assert kubernetes_validate.validate(obj, "1.37", strict=True)


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_everything_is_owned_by_the_inference_server_and_namespaced(spec: dict[str, Any]) -> None:
    for obj in build(spec).values():
        meta = obj["metadata"]
        assert meta["namespace"] == OWNER.namespace
        assert meta["ownerReferences"] == [{
            "apiVersion": "radixserve.io/v1alpha1", "kind": "InferenceServer", "name": "llm", "uid": OWNER.uid,
            "controller": True, "blockOwnerDeletion": True,
        }]
        assert meta["labels"][names.LABEL_INSTANCE] == "llm"


def test_builders_are_pure_and_deterministic() -> None:
    spec = SPECS["image-with-key"]
    assert build(spec) == build(spec)


@pytest.mark.parametrize(("spec", "gpus"), [
    ({}, 1), ({"tensorParallelSize": 4}, 4), ({"tensorParallelSize": 2, "pipelineParallelSize": 2}, 4),
    ({"tensorParallelSize": 2, "resources": {"gpus": 3}}, 3),
])
def test_gpu_request_defaults_to_tp_times_pp(spec: dict[str, Any], gpus: int) -> None:
    container = server_pod(spec)["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert flag(container["args"], "--device") == "cuda"
    assert container["image"] == DEFAULTS.image


def test_zero_gpus_is_a_cpu_pod_on_the_cpu_image() -> None:
    container = server_pod({"resources": {"gpus": 0, "limits": {"memory": "2Gi"}}})["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert flag(container["args"], "--device") == "cpu"
    assert container["image"] == DEFAULTS.cpu_image


@pytest.mark.parametrize(("gpus", "size"), [(0, "1Gi"), (1, "4Gi"), (8, "16Gi")])
def test_dev_shm_is_memory_backed_and_sized_by_gpus(gpus: int, size: str) -> None:
    tp = min(gpus, 8) if gpus else 1
    pod = server_pod({"tensorParallelSize": tp, "resources": {"gpus": gpus}})
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": size}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    explicit = server_pod({"resources": {"shmSize": "32Gi"}})
    assert next(v for v in explicit["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"] == "32Gi"


@pytest.mark.parametrize(("model", "path", "volume"), [
    ({"embedded": {}}, None, None),
    ({"image": {"path": "/models/qwen"}}, "/models/qwen", None),
    ({"pvc": {"claimName": "weights", "subPath": "llama/8b"}}, "/mnt/models/llama/8b",
     {"persistentVolumeClaim": {"claimName": "weights", "readOnly": True}}),
    ({"pvc": {"claimName": "weights"}}, "/mnt/models", {"persistentVolumeClaim": {"claimName": "weights",
                                                                                 "readOnly": True}}),
    ({"hostPath": {"path": "/srv/models", "subPath": "m.gguf"}}, "/mnt/models/m.gguf",
     {"hostPath": {"path": "/srv/models", "type": "Directory"}}),
])
def test_model_sources(model: dict[str, Any], path: str | None, volume: dict[str, Any] | None) -> None:
    pod = server_pod({"model": model})
    container = pod["containers"][0]
    assert flag(container["args"], "--model-path") == path
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    if volume is None:
        assert "model" not in volumes and "model" not in mounts
    else:
        assert {k: v for k, v in volumes["model"].items() if k != "name"} == volume
        assert mounts["model"] == {"name": "model", "mountPath": "/mnt/models", "readOnly": True}


def test_probes_cover_model_load_readiness_and_liveness() -> None:
    container = server_pod({"server": {"startupTimeoutSeconds": 600}})["containers"][0]
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    deployment = build({"server": {"startupTimeoutSeconds": 600}})[("Deployment", "llm-server")]
    assert deployment["spec"]["progressDeadlineSeconds"] > 600


@pytest.mark.parametrize("drain", [0, 30, 300])
def test_termination_grace_covers_the_servers_drain(drain: int) -> None:
    pod = server_pod({"server": {"gracefulShutdownTimeoutSeconds": drain}})
    args = pod["containers"][0]["args"]
    assert flag(args, "--graceful-shutdown-timeout") == str(drain)
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop


def test_server_args_from_typed_fields_then_extra_args() -> None:
    spec = parse_spec({"servedModelName": "m", "tensorParallelSize": 2, "pipelineParallelSize": 2,
                       "model": {"image": {"path": "/m"}, "dtype": "bfloat16", "loadFormat": "safetensors"},
                       "server": {"contextLength": 4096, "memFractionStatic": 0.8, "maxRunningRequests": 64,
                                  "chunkedPrefillSize": 2048, "schedulePolicy": "fcfs", "extraArgs": ["--x", "1"]}})
    args = server_args(spec)
    assert args[:4] == ["--host", "0.0.0.0", "--port", "30000"]
    expected = {"--model-path": "/m", "--served-model-name": "m", "--tp": "2", "--pp": "2", "--dtype": "bfloat16",
                "--load-format": "safetensors", "--context-length": "4096", "--mem-fraction-static": "0.8",
                "--max-running-requests": "64", "--chunked-prefill-size": "2048", "--schedule-policy": "fcfs"}
    assert {k: flag(args, k) for k in expected} == expected
    assert args[-2:] == ["--x", "1"]
    assert "--pp" not in server_args(parse_spec({}))  # only when pipelining


def test_api_key_comes_from_the_secret_through_the_environment_only() -> None:
    objects = build({"server": {"apiKeySecretRef": {"name": "key", "key": "token"}}})
    expected = {"name": "RADIXSERVE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "key", "key": "token"}}}
    for kind_name in (("Deployment", "llm-server"), ("Deployment", "llm-router")):
        container = objects[kind_name]["spec"]["template"]["spec"]["containers"][0]
        assert expected in container["env"]
        assert not any("api-key" in a for a in container["args"])


def test_router_discovers_exactly_the_replicas_endpoint_slices() -> None:
    objects = build({})
    router = objects[("Deployment", "llm-router")]["spec"]["template"]["spec"]
    args = router["containers"][0]["args"]
    selector_arg = flag(args, "--kube-selector")
    assert selector_arg is not None
    selector = dict(pair.split("=", 1) for pair in selector_arg.split(","))
    assert flag(args, "--kube-namespace") == OWNER.namespace and flag(args, "--kube-port") == "30000"
    assert (flag(args, "--policy"), flag(args, "--cache-threshold")) == ("cache_aware", "0.5")
    # The EndpointSlice controller copies a Service's labels onto its slices: the
    # headless Service's labels must match the selector, the endpoint Service's must not.
    headless = objects[("Service", "llm-server")]
    assert headless["spec"]["clusterIP"] == "None"
    assert selector.items() <= headless["metadata"]["labels"].items()
    assert not selector.items() <= objects[("Service", "llm")]["metadata"]["labels"].items()
    # ...and it is the server pods' selector.
    server = objects[("Deployment", "llm-server")]
    assert server["spec"]["selector"]["matchLabels"] == selector
    assert selector.items() <= server["spec"]["template"]["metadata"]["labels"].items()


def test_router_identity_can_only_watch_endpoint_slices() -> None:
    objects = build({})
    role = objects[("Role", "llm-router")]
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]
    binding = objects[("RoleBinding", "llm-router")]
    assert binding["roleRef"]["name"] == "llm-router"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llm-router", "namespace": OWNER.namespace}]
    router_pod = objects[("Deployment", "llm-router")]["spec"]["template"]["spec"]
    assert router_pod["serviceAccountName"] == "llm-router"
    assert server_pod({})["automountServiceAccountToken"] is False


def test_endpoint_service_fronts_the_router_or_the_replicas() -> None:
    with_router = build({})[("Service", "llm")]
    assert with_router["spec"]["selector"] == names.router_selector("llm")
    without = build({"router": {"enabled": False}})
    assert without[("Service", "llm")]["spec"]["selector"] == names.server_selector("llm")
    assert ("Deployment", "llm-router") not in without
    assert {ref.kind for ref in unwanted_objects(BuildInput(OWNER, parse_spec({"router": {"enabled": False}})))} \
        >= {"Deployment", "ServiceAccount", "Role", "RoleBinding", "PodDisruptionBudget"}
    # By default only what optional features would add is unwanted: no router object.
    assert {ref.kind for ref in unwanted_objects(BuildInput(OWNER, parse_spec({})))} \
        == {"HorizontalPodAutoscaler", "NetworkPolicy"}


def test_endpoint_url() -> None:
    assert endpoint_url(BuildInput(OWNER, parse_spec({}))) == "http://llm.team-a.svc"
    assert endpoint_url(BuildInput(OWNER, parse_spec({"service": {"port": 8000}}))) == "http://llm.team-a.svc:8000"


def test_server_deployment_is_applied_first() -> None:
    """It carries every user-supplied pod field, so an API rejection happens before anything exists."""
    objects = desired_objects(BuildInput(OWNER, parse_spec(SPECS["image-with-key"])))
    assert (objects[0]["kind"], objects[0]["metadata"]["name"]) == ("Deployment", "llm-server")


def test_rollout_strategy_surges_by_default() -> None:
    strategy = build({})[("Deployment", "llm-server")]["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


# --- random valid specs -------------------------------------------------------------

quantities = st.sampled_from(["500m", "1", "2Gi", "64Gi", 4])
valid_specs = st.fixed_dictionaries({}, optional={
    "model": st.one_of(
        st.just({"embedded": {}}),
        st.builds(lambda p: {"image": {"path": "/" + p}}, st.from_regex(r"[a-z][a-z0-9/._-]{0,20}", fullmatch=True)),
        st.builds(lambda c, s: {"pvc": {"claimName": c, "subPath": s}},
                  st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
                  st.from_regex(r"([a-z0-9_-]{1,8}(/[a-z0-9_.-]{1,8}){0,2})?", fullmatch=True)),
    ),
    "replicas": st.integers(0, 50),
    "tensorParallelSize": st.sampled_from([1, 2, 4, 8]),
    "pipelineParallelSize": st.integers(1, 4),
    "servedModelName": st.from_regex(r"[A-Za-z0-9._/-]{1,30}", fullmatch=True),
    "resources": st.fixed_dictionaries({}, optional={
        "requests": st.dictionaries(st.sampled_from(["cpu", "memory"]), quantities, max_size=2),
        "limits": st.dictionaries(st.sampled_from(["cpu", "memory"]), quantities, max_size=2),
        "shmSize": quantities,
    }),
    "server": st.fixed_dictionaries({}, optional={
        "contextLength": st.integers(1, 1 << 20),
        "memFractionStatic": st.floats(0.01, 0.99),
        "maxRunningRequests": st.integers(1, 4096),
        "chunkedPrefillSize": st.one_of(st.just(-1), st.integers(1, 1 << 16)),
        "schedulePolicy": st.sampled_from(["lpm", "fcfs"]),
        "gracefulShutdownTimeoutSeconds": st.integers(0, 3600),
        "extraArgs": st.lists(st.from_regex(r"--[a-z][a-z-]{0,15}", fullmatch=True), max_size=3),
    }),
    "router": st.fixed_dictionaries({}, optional={
        "enabled": st.booleans(), "replicas": st.integers(0, 5),
        "policy": st.sampled_from(["cache_aware", "round_robin", "random", "power_of_two"]),
        "cacheThreshold": st.floats(0, 1), "balanceAbsThreshold": st.integers(0, 1000),
    }),
    "service": st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]), "port": st.integers(1, 65535)}),
}).filter(lambda raw: raw.get("tensorParallelSize", 1) * raw.get("pipelineParallelSize", 1) <= 8)  # one pod's GPUs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_specs)
def test_random_valid_specs_build_valid_manifests(raw: dict[str, Any]) -> None:
    spec: InferenceServerSpec = parse_spec(raw)
    objects = desired_objects(BuildInput(OWNER, spec, DEFAULTS))
    for obj in objects:
        assert kubernetes_validate.validate(obj, "1.37", strict=True)
    server = objects[0]
    container = server["spec"]["template"]["spec"]["containers"][0]
    assert server["spec"]["replicas"] == spec.replicas
    limits = container.get("resources", {}).get("limits", {})
    assert limits.get("nvidia.com/gpu", 0) == spec.tensor_parallel_size * spec.pipeline_parallel_size
    assert len({(o["kind"], o["metadata"]["name"]) for o in objects}) == len(objects)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_server_args_are_accepted_by_radixserve_serve(name: str) -> None:
    """The pod's command line parses with the real `radixserve serve` parser into valid ServerArgs."""
    from radixserve.server.launch import build_parser
    from radixserve.server_args import ServerArgs

    spec = parse_spec(SPECS[name])
    parsed = build_parser().parse_args(server_args(spec))
    args = ServerArgs.from_cli_args(parsed)
    assert args.tensor_parallel_size == spec.tensor_parallel_size
    assert args.pipeline_parallel_size == spec.pipeline_parallel_size
    assert args.host == "0.0.0.0" and args.port == names.HTTP_PORT
