"""The CRD: valid for Kubernetes, self-describing, in agreement with the operator's
spec model, accepting the examples and refusing bad resources."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from pydantic import BaseModel, TypeAdapter

from radixserve.operator import names
from radixserve.operator.spec import InferenceServerSpec, parse_spec
from tests.operator.operator_testkit import (
    CHART_DIR,
    CRD_PATH,
    EXAMPLES_DIR,
    apply_defaults,
    cr,
    crd,
    crd_schema,
    load_yaml_documents,
    schema_errors,
)

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))


def spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd_schema()["properties"]["spec"]
    return schema


def test_crd_is_valid_for_kubernetes_in_strict_mode() -> None:
    assert kubernetes_validate.validate(crd(), "1.37", strict=True)
    broken = {**crd(), "spec": {**crd()["spec"], "versionz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):  # strict mode does catch unknown fields
        kubernetes_validate.validate(broken, "1.37", strict=True)


def test_names_scope_and_version() -> None:
    spec = crd()["spec"]
    assert crd()["metadata"]["name"] == f"{names.PLURAL}.{names.GROUP}"
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (names.GROUP, "Namespaced", names.KIND)
    assert spec["names"]["shortNames"] == list(names.SHORT_NAMES)
    assert "isvc" not in spec["names"]["shortNames"]  # KServe's
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (names.VERSION, True, True)


def test_status_and_scale_subresources_point_at_real_fields() -> None:
    version = crd()["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    scale = version["subresources"]["scale"]
    props = crd_schema()["properties"]
    for path in (scale["specReplicasPath"], scale["statusReplicasPath"], scale["labelSelectorPath"]):
        section, field = path.lstrip(".").split(".")
        assert field in props[section]["properties"], path
    assert scale["specReplicasPath"] == ".spec.replicas"


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Model", "Replicas", "Ready", "TP", "Age"} <= set(columns)
    assert columns["TP"]["jsonPath"] == ".spec.tensorParallelSize"
    assert columns["Ready"]["jsonPath"] == ".status.readyReplicas"
    assert columns["Age"]["type"] == "date"


def _walk(schema: dict[str, Any], path: str) -> typing.Iterator[tuple[str, dict[str, Any]]]:
    for key, sub in schema.get("properties", {}).items():
        yield f"{path}.{key}", sub
        yield from _walk(sub, f"{path}.{key}")
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _walk(items, f"{path}[]")


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    schema = crd_schema()
    missing = [path for path, sub in _walk(schema, "") if path != ".metadata" and not sub.get("description")]
    assert missing == []


def test_chart_ships_the_same_crd_file() -> None:
    assert (CHART_DIR / "crds" / CRD_PATH.name).read_bytes() == CRD_PATH.read_bytes()


# --- the CRD and the operator's spec model describe the same thing -----------------------

def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside Optional[...] / list[...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (typing.Union, list):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def model_tree(model: type[BaseModel]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        sub = _model_of(info.annotation)
        tree[info.alias or name] = model_tree(sub) if sub is not None else None
    return tree


def schema_tree(schema: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, sub in schema.get("properties", {}).items():
        items = sub.get("items") if isinstance(sub.get("items"), dict) else None
        target = items if items is not None and items.get("type") == "object" else sub
        is_object = target.get("type") == "object" and not target.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in target
        tree[key] = schema_tree(target) if is_object else None
    return tree


def test_spec_model_and_crd_have_the_same_fields() -> None:
    assert model_tree(InferenceServerSpec) == schema_tree(spec_schema())


def _crd_defaults(schema: dict[str, Any], model: type[BaseModel], path: str = "spec"
                  ) -> typing.Iterator[tuple[str, Any, Any]]:
    """(path, CRD default, the model field's own default) for every defaulted field."""
    by_alias = {info.alias or name: info for name, info in model.model_fields.items()}
    for key, sub in schema.get("properties", {}).items():
        info = by_alias[key]
        if "default" in sub:
            assert info.annotation is not None, f"{path}.{key} has no annotation"
            adapter: TypeAdapter[Any] = TypeAdapter(info.annotation)
            yield f"{path}.{key}", adapter.validate_python(sub["default"]), \
                info.get_default(call_default_factory=True)
        nested = _model_of(info.annotation)
        if nested is not None and sub.get("type") == "object":
            yield from _crd_defaults(sub, nested, f"{path}.{key}")


def test_crd_defaults_equal_the_models_defaults() -> None:
    found = list(_crd_defaults(spec_schema(), InferenceServerSpec))
    assert len(found) > 20
    mismatched = [(path, crd_default, model_default) for path, crd_default, model_default in found
                  if crd_default != model_default]
    assert mismatched == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_crd_and_parse(example: Path) -> None:
    doc, *others = load_yaml_documents(example)
    assert doc["apiVersion"] == names.API_VERSION and doc["kind"] == names.KIND
    for other in others:  # the Secrets an example needs: plain Kubernetes objects
        assert other["kind"] == "Secret"
        assert kubernetes_validate.validate(other, "1.37", strict=True)
    assert schema_errors(doc) == []
    # The API server's defaults change nothing in how the operator reads it.
    defaulted = apply_defaults(crd_schema(), doc)
    assert parse_spec(defaulted["spec"]) == parse_spec(doc["spec"])


def test_examples_cover_every_model_uri_kind() -> None:
    uris = {p.name: parse_spec(load_yaml_documents(p)[0]["spec"]).model.uri for p in EXAMPLES}
    assert {name: (uri or "").split("://")[0] for name, uri in uris.items() if uri} == {
        "inferenceserver-hf.yaml": "hf", "inferenceserver-s3.yaml": "s3", "inferenceserver-pvc-uri.yaml": "pvc",
        "inferenceserver-oci.yaml": "oci", "inferenceserver-autoscaling.yaml": "hf"}
    modes = {p.name: parse_spec(load_yaml_documents(p)[0]["spec"]).model.cache_mode for p in EXAMPLES}
    assert (modes["inferenceserver-hf.yaml"], modes["inferenceserver-s3.yaml"]) == ("node", "pvc")


def test_examples_cover_gpu_and_cpu() -> None:
    specs = {p.name: parse_spec(load_yaml_documents(p)[0]["spec"]) for p in EXAMPLES}
    assert any(s.gpus > 0 and s.tensor_parallel_size > 1 for s in specs.values())
    assert any(s.gpus == 0 and s.model.source == "embedded" for s in specs.values())


def test_an_empty_spec_defaults_to_the_embedded_model() -> None:
    defaulted = apply_defaults(crd_schema(), cr({}))
    assert defaulted["spec"]["model"] == {"embedded": {}}
    assert defaulted["spec"]["router"]["policy"] == "cache_aware"
    assert schema_errors(cr({})) == []


BAD_SPECS = [
    ({"replicas": -1}, "spec.replicas"),
    ({"tensorParallelSize": 3}, "spec.tensorParallelSize"),
    ({"pipelineParallelSize": 0}, "spec.pipelineParallelSize"),
    ({"model": {"embedded": {}, "image": {"path": "/m"}}}, "spec.model"),
    ({"model": {"dtype": "bfloat16"}}, "spec.model"),  # no source at all
    ({"model": {"image": {"path": "relative/dir"}}}, "spec.model.image.path"),
    ({"model": {"pvc": {"claimName": "m", "subPath": "../etc"}}}, "subPath"),
    ({"tensorParallelSize": 4, "resources": {"gpus": 2}}, "spec.resources.gpus"),
    ({"resources": {"limits": {"nvidia.com/gpu": 1}}}, "spec.resources.gpus"),
    ({"resources": {"requests": {"memory": "lots"}}}, "spec.resources.requests"),
    ({"server": {"memFractionStatic": 1.0}}, "spec.server.memFractionStatic"),
    ({"server": {"chunkedPrefillSize": 0}}, "chunkedPrefillSize"),
    ({"server": {"schedulePolicy": "random"}}, "spec.server.schedulePolicy"),
    ({"server": {"extraArgs": ["--tp", "2"]}}, "extraArgs"),
    ({"server": {"extraArgs": ["--api-key=hunter2"]}}, "extraArgs"),
    ({"router": {"policy": "least_loaded"}}, "spec.router.policy"),
    ({"router": {"cacheThreshold": 1.5}}, "spec.router.cacheThreshold"),
    ({"service": {"type": "ExternalName"}}, "spec.service.type"),
    ({"env": [{"name": "RADIXSERVE_API_KEY", "value": "x"}]}, "apiKeySecretRef"),
    ({"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}, "not both"),
    ({"rollout": {"maxSurge": 0, "maxUnavailable": 0}}, "both be zero"),
    ({"replicas": 1, "replica": 2}, "replica"),  # a typo: kubectl's default strict field validation refuses it
]


@pytest.mark.parametrize(("spec", "mentions"), BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_bad_resources_are_rejected_by_the_crd(spec: dict[str, Any], mentions: str) -> None:
    errors = schema_errors(cr(spec))
    assert errors and any(mentions in e for e in errors), errors


def test_names_that_make_invalid_service_names_are_rejected() -> None:
    assert schema_errors(cr({}, name="x" * 56)) == []
    assert any("DNS-1035" in e for e in schema_errors(cr({}, name="x" * 57)))
    assert any("DNS-1035" in e for e in schema_errors(cr({}, name="9lives")))
