"""spec.gateway.inferencePool: the Gateway API Inference Extension's InferencePool in the version
the cluster serves (v1, else v1alpha2, else a condition), validated against the extension's own
CRD schemas; leaders only with multi-node replicas; RBAC; a reconcile against kmock as the CRDs
appear and the pool is turned off."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import kubernetes
import pytest

from radixserve.operator import names, permissions
from radixserve.operator.builders import (
    BuildInput,
    Capabilities,
    Owner,
    desired_objects,
    unwanted_objects,
)
from radixserve.operator.builders.gateway import (
    POOL_V1_API_VERSION,
    POOL_V1ALPHA2_API_VERSION,
    choose_pool,
)
from radixserve.operator.builders.multinode import LABEL_ROLE, ROLE_LEADER
from radixserve.operator.checks import capabilities, feature_conditions
from radixserve.operator.kube import KubeClient, resource_type
from radixserve.operator.owned import by_kind
from radixserve.operator.reconcile import Target, reconcile
from radixserve.operator.spec import SpecError, parse_spec
from tests.operator.operator_harness import TEST_AGENT, TEST_DEFAULTS, ApiServer
from tests.operator.operator_testkit import (
    EXAMPLES_DIR,
    apply_defaults,
    cr,
    crd_schema,
    load_yaml_documents,
    schema_errors,
)
from tests.operator.third_party_schemas import custom_resource_errors

OWNER = Owner(name="llm", namespace="team-a", uid="5b0f6a57-0000-4000-8000-00000000000c")
V1 = Capabilities(inference_pool_v1=True)
V1ALPHA2 = Capabilities(inference_pool_v1alpha2=True)
BOTH = Capabilities(inference_pool_v1=True, inference_pool_v1alpha2=True)
NONE = Capabilities()
PICKER = {"name": "llm-epp"}


def pool_spec(picker: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"gateway": {"inferencePool": {"enabled": True, "endpointPicker": picker or PICKER}}, **extra}


def pools(spec: dict[str, Any], caps: Capabilities) -> list[dict[str, Any]]:
    inp = BuildInput(OWNER, parse_spec(spec), TEST_DEFAULTS, capabilities=caps)
    return [o for o in desired_objects(inp) if o["kind"] == "InferencePool"]


def pool_conditions(spec: dict[str, Any], caps: Capabilities) -> list[tuple[bool, str, str]]:
    inp = BuildInput(OWNER, parse_spec(spec), TEST_DEFAULTS, capabilities=caps)
    return [(c.ok, c.reason, c.message) for c in feature_conditions(inp) if c.type == "InferencePool"]


def pool_condition(spec: dict[str, Any], caps: Capabilities) -> tuple[bool, str, str]:
    (found,) = pool_conditions(spec, caps)
    return found


def test_v1_pool_selects_the_server_pods_and_names_the_picker() -> None:
    (pool,) = pools(pool_spec({"name": "epp", "port": 9100, "failureMode": "FailOpen"}), V1)
    assert (pool["apiVersion"], pool["kind"], pool["metadata"]["name"]) == (POOL_V1_API_VERSION, "InferencePool", "llm")
    assert custom_resource_errors(pool) == []
    spec = pool["spec"]
    assert spec["selector"] == {"matchLabels": names.server_selector("llm")}
    assert spec["targetPorts"] == [{"number": names.HTTP_PORT}]
    assert spec["endpointPickerRef"] == {"group": "", "kind": "Service", "name": "epp", "port": {"number": 9100},
                                         "failureMode": "FailOpen"}
    assert pool["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert pool_condition(pool_spec(), V1)[:2] == (True, "InferencePoolV1")
    # The schema check is not vacuous: the extension's CRD refuses a Service ref without a port
    # (its CEL rule), duplicate ports and the alpha field names.
    no_port = {**pool, "spec": {**spec, "endpointPickerRef": {"kind": "Service", "name": "epp"}}}
    assert any("port is required" in e for e in custom_resource_errors(no_port))
    twice = {**pool, "spec": {**spec, "targetPorts": [{"number": 1}, {"number": 1}]}}
    assert any("unique" in e for e in custom_resource_errors(twice))
    assert custom_resource_errors({**pool, "spec": {**spec, "targetPortNumber": 30000}})


def test_v1alpha2_pool_where_only_the_alpha_crd_is_served() -> None:
    (pool,) = pools(pool_spec(), V1ALPHA2)
    assert pool["apiVersion"] == POOL_V1ALPHA2_API_VERSION
    assert custom_resource_errors(pool) == []
    spec = pool["spec"]
    assert spec["selector"] == names.server_selector("llm")
    assert spec["targetPortNumber"] == names.HTTP_PORT
    # The spec's defaults: the extension's EPP port and failure mode.
    assert spec["extensionRef"] == {"group": "", "kind": "Service", "name": "llm-epp", "portNumber": 9002,
                                    "failureMode": "FailClose"}
    ok, reason, message = pool_condition(pool_spec(), V1ALPHA2)
    assert (ok, reason) == (True, "InferencePoolV1alpha2") and POOL_V1ALPHA2_API_VERSION in message
    assert custom_resource_errors({**pool, "spec": {**spec, "targetPortNumber": 0}})


def test_v1_wins_when_both_are_served_and_the_alpha_pool_goes() -> None:
    (pool,) = pools(pool_spec(), BOTH)
    assert pool["apiVersion"] == POOL_V1_API_VERSION
    inp = BuildInput(OWNER, parse_spec(pool_spec()), capabilities=BOTH)
    unwanted = {(ref.api_version, ref.kind, ref.name) for ref in unwanted_objects(inp)}
    assert (POOL_V1ALPHA2_API_VERSION, "InferencePool", "llm") in unwanted
    assert (POOL_V1_API_VERSION, "InferencePool", "llm") not in unwanted
    # Turned off: both versions go (where served); not served at all: not even looked for.
    off = BuildInput(OWNER, parse_spec({}), capabilities=BOTH)
    assert {ref.api_version for ref in unwanted_objects(off) if ref.kind == "InferencePool"} == {
        POOL_V1_API_VERSION, POOL_V1ALPHA2_API_VERSION}
    assert not [ref for ref in unwanted_objects(BuildInput(OWNER, parse_spec({}))) if ref.kind == "InferencePool"]


def test_missing_crd_is_a_condition_and_builds_nothing() -> None:
    assert pools(pool_spec(), NONE) == []
    ok, reason, message = pool_condition(pool_spec(), NONE)
    assert (ok, reason) == (False, "InferencePoolCRDMissing")
    assert "install the Gateway API Inference Extension" in message
    # Everything else is still built: a missing CRD never holds up the servers.
    inp = BuildInput(OWNER, parse_spec(pool_spec()), capabilities=NONE)
    assert {"Deployment", "Service"} <= {o["kind"] for o in desired_objects(inp)}
    # Not asked for: neither a pool nor a condition, whatever the cluster serves.
    assert pools({}, BOTH) == [] and pool_conditions({}, BOTH) == []
    assert choose_pool(BuildInput(OWNER, parse_spec({}), capabilities=BOTH)).reason == "Disabled"


def test_multinode_pool_selects_leaders_only() -> None:
    spec = pool_spec(tensorParallelSize=4, nodesPerReplica=2, resources={"gpus": 2})
    caps = Capabilities(inference_pool_v1=True, leader_worker_set=True)
    inp = BuildInput(OWNER, parse_spec(spec), TEST_DEFAULTS, capabilities=caps)
    objects = {o["kind"]: o for o in desired_objects(inp)}
    pool = objects["InferencePool"]
    assert custom_resource_errors(pool) == []
    selector = pool["spec"]["selector"]["matchLabels"]
    assert selector == {**names.server_selector("llm"), LABEL_ROLE: ROLE_LEADER}
    template = objects["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    leader_labels = template["leaderTemplate"]["metadata"]["labels"]
    worker_labels = template["workerTemplate"]["metadata"]["labels"]
    assert selector.items() <= leader_labels.items()
    assert not selector.items() <= worker_labels.items()  # workers serve no HTTP
    assert "leader pods" in pool_condition(spec, caps)[2]
    (alpha,) = pools(spec, Capabilities(inference_pool_v1alpha2=True, leader_worker_set=True))
    assert alpha["spec"]["selector"][LABEL_ROLE] == ROLE_LEADER and custom_resource_errors(alpha) == []


@pytest.mark.parametrize(("gateway", "mentions"), [
    ({"inferencePool": {"enabled": True}}, "endpointPicker is required"),
    ({"inferencePool": {"enabled": True, "endpointPicker": {"name": "e", "failureMode": "Retry"}}}, "failureMode"),
    ({"inferencePool": {"enabled": True, "endpointPicker": {"name": "e", "port": 0}}}, "port"),
    ({"inferencePool": {"enabled": True, "endpointPicker": {"port": 9002}}}, "name"),
])
def test_bad_gateway_specs_are_refused_by_the_crd_and_the_model(gateway: dict[str, Any], mentions: str) -> None:
    errors = schema_errors(cr({"gateway": gateway}))
    assert errors and any(mentions in e for e in errors), errors
    with pytest.raises(SpecError):
        parse_spec({"gateway": gateway})


def test_crd_defaults_and_the_example() -> None:
    defaulted = apply_defaults(crd_schema(), cr({"gateway": {"inferencePool": {"endpointPicker": {"name": "e"}}}}))
    assert defaulted["spec"]["gateway"]["inferencePool"] == {
        "enabled": False, "endpointPicker": {"name": "e", "port": 9002, "failureMode": "FailClose"}}
    assert schema_errors(cr({"gateway": {}})) == []  # off by default: no picker needed
    (doc, *_) = load_yaml_documents(EXAMPLES_DIR / "inferenceserver-gateway.yaml")
    assert schema_errors(doc) == []
    spec = parse_spec(doc["spec"])
    assert spec.gateway.inference_pool.enabled and not spec.router.enabled
    (pool,) = pools(doc["spec"], V1)
    assert custom_resource_errors(pool) == []


class _Discovery:
    def __init__(self, served: dict[str, set[str]]) -> None:
        self.served = served

    def api_resources(self, api_version: str) -> set[str] | None:
        return self.served.get(api_version)


def test_capabilities_from_discovery() -> None:
    caps = capabilities(_Discovery({POOL_V1_API_VERSION: {"inferencepools"}}))
    assert (caps.inference_pool_v1, caps.inference_pool_v1alpha2) == (True, False)
    caps = capabilities(_Discovery({POOL_V1ALPHA2_API_VERSION: {"inferencepools", "inferencemodels"}}))
    assert (caps.inference_pool_v1, caps.inference_pool_v1alpha2) == (False, True)
    # The alpha group without pools (only InferencePoolImports, as extension v1.6 ships): no pool.
    assert capabilities(_Discovery({POOL_V1ALPHA2_API_VERSION: {"inferencepoolimports"}})) == Capabilities()


def test_both_pool_kinds_are_owned_and_granted() -> None:
    granted = {(r.api_group, r.resource, verb) for r in permissions.RULES for verb in r.verbs}
    for api_version in (POOL_V1_API_VERSION, POOL_V1ALPHA2_API_VERSION):
        owned = by_kind(api_version, "InferencePool")
        assert owned is not None and owned.optional and owned.plural == "inferencepools"
        assert {(owned.group, "inferencepools", v) for v in ("get", "list", "watch", "create", "patch", "delete")} \
            <= granted
        assert resource_type(api_version, "InferencePool").path("ns", "llm") == \
            f"/apis/{api_version}/namespaces/ns/inferencepools/llm"


POOLS_V1 = kmock.resource("inference.networking.k8s.io", "v1", "inferencepools")
POOLS_V1ALPHA2 = kmock.resource("inference.networking.x-k8s.io", "v1alpha2", "inferencepools")
VERBS = {"get", "list", "watch", "create", "patch", "delete"}


def _live(server: ApiServer, resource: kmock.resource, name: str) -> dict[str, Any] | None:
    for (res, _, obj_name), obj in list(server.objects.items()):
        if res == resource and obj_name == name and not obj.deleted:
            raw: dict[str, Any] = obj.raw
            return raw
    return None


def _verb(request: kmock.Request) -> str:
    verb = {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}.get(request.method.value)
    return verb or ("watch" if request.params.get("watch") == "true" else "get" if request.name else "list")


async def test_reconcile_follows_the_crds_and_the_toggle(api_server: ApiServer) -> None:
    """Against the API emulator (no kopf): no CRD -> the condition; the alpha CRD -> a v1alpha2
    pool; the v1 CRD -> a v1 pool replacing it; turned off -> gone. Every call is granted."""
    configuration = kubernetes.client.Configuration(host=str(api_server.url).rstrip("/"))
    client = KubeClient.from_configuration(configuration)  # the operator's
    user_api = kubernetes.client.ApiClient(configuration)
    user_api.user_agent = TEST_AGENT  # the user's calls, left out of the RBAC check below
    user = KubeClient(user_api)
    cr_type = resource_type(names.API_VERSION, names.KIND)
    body = cr({"resources": {"gpus": 0}, **pool_spec()}, namespace="default")
    body["metadata"].update(uid="5b0f6a57-0000-4000-8000-00000000000d", resourceVersion="1", generation=1)
    await asyncio.to_thread(user.create, cr_type, "default", body)

    async def pass_(spec: dict[str, Any]) -> dict[str, Any]:
        live = await asyncio.to_thread(user.get, cr_type, "default", "llm")
        assert live is not None
        outcome = await asyncio.to_thread(reconcile, client, Target.from_body({**live, "spec": spec}), TEST_DEFAULTS)
        assert outcome.problems == []
        return {c["type"]: c for c in outcome.status["conditions"]}

    async def serve(resource: kmock.resource) -> None:
        api_server.resources[resource] = kmock.ResourceInfo(kind="InferencePool", namespaced=True, verbs=VERBS)
        client._discovery.clear()  # what DISCOVERY_TTL_SECONDS does in time

    conditions = await pass_(body["spec"])
    assert (conditions["InferencePool"]["status"], conditions["InferencePool"]["reason"]) == (
        "False", "InferencePoolCRDMissing")
    assert conditions["Ready"]["reason"] != "InvalidSpec"
    assert _live(api_server, POOLS_V1, "llm") is None and _live(api_server, POOLS_V1ALPHA2, "llm") is None

    await serve(POOLS_V1ALPHA2)
    conditions = await pass_(body["spec"])
    assert conditions["InferencePool"]["reason"] == "InferencePoolV1alpha2"
    alpha = _live(api_server, POOLS_V1ALPHA2, "llm")
    assert alpha is not None and custom_resource_errors(alpha) == []

    await serve(POOLS_V1)
    conditions = await pass_(body["spec"])
    assert (conditions["InferencePool"]["status"], conditions["InferencePool"]["reason"]) == (
        "True", "InferencePoolV1")
    pool = _live(api_server, POOLS_V1, "llm")
    assert pool is not None and custom_resource_errors(pool) == []
    assert pool["spec"]["endpointPickerRef"]["name"] == "llm-epp"
    assert _live(api_server, POOLS_V1ALPHA2, "llm") is None

    conditions = await pass_({**body["spec"], "gateway": {"inferencePool": {"enabled": False}}})
    assert "InferencePool" not in conditions
    assert _live(api_server, POOLS_V1, "llm") is None and _live(api_server, POOLS_V1ALPHA2, "llm") is None

    granted = {(r.api_group, r.resource, verb) for r in permissions.RULES for verb in r.verbs}
    used = set()
    for request in list(api_server):
        if request.headers.get("User-Agent") == TEST_AGENT or request.resource is None \
                or request.resource.plural is None:
            continue  # the test's own calls; discovery (granted to every authenticated user)
        verb = _verb(request)
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        used.add((request.resource.group, resource, verb))
        if verb == "patch" and "apply-patch" in request.headers.get("Content-Type", ""):
            used.add((request.resource.group, resource, "create"))
    for group in ("inference.networking.k8s.io", "inference.networking.x-k8s.io"):
        assert {(group, "inferencepools", v) for v in ("patch", "delete")} <= used
    assert used - granted == set()
