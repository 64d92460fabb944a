"""Offline stand-ins for what the API server does with the CRD: apply its defaults,
validate a custom resource against its OpenAPI schema (jsonschema) and its CEL
rules (cel-python), and load YAML files of the repo."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "inferenceservers.radixserve.io.yaml"
CHART_DIR = REPO / "charts" / "radixserve"
EXAMPLES_DIR = REPO / "examples"


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@functools.cache
def crd() -> dict[str, Any]:
    return load_yaml_documents(CRD_PATH)[0]


def crd_schema() -> dict[str, Any]:
    return copy.deepcopy(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3.0 (as Kubernetes uses it) to JSON Schema: boolean exclusive bounds
    become numeric ones; Kubernetes extensions are dropped."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if out.get(flag) is True:
            out[flag] = out.pop(bound)
        elif out.get(flag) is False:
            del out[flag]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if "properties" in node and node.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
        # Structural pruning would drop unknown fields; rejecting them catches typos in examples.
        out.setdefault("additionalProperties", False)
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: fill absent fields that have a default, recursing into
    present (or just defaulted) objects and array items."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out = dict(value)
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(sub, out[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in out:
                if key not in props:
                    out[key] = apply_defaults(extra, out[key])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


@functools.cache
def _cel_program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule where the value is present."""
    errors: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = bool(_cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)}))
        except celpy.CELEvalError as exc:  # the API server reports evaluation errors as invalid too
            ok, rule = False, {**rule, "message": f"{rule.get('message')} (evaluation error: {exc})"}
        if not ok:
            errors.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += cel_errors(sub, value[key], f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                errors += cel_errors(extra, item, f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def schema_errors(cr: dict[str, Any]) -> list[str]:
    """What the API server would say about `cr` (after defaulting): schema errors, then CEL."""
    schema = crd_schema()
    defaulted = apply_defaults(schema, cr)
    validator = jsonschema.Draft202012Validator(to_json_schema(schema))
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
              for e in validator.iter_errors(defaulted)]
    return errors + cel_errors(schema, defaulted)


def cr(spec: dict[str, Any] | None = None, name: str = "llm", namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "radixserve.io/v1alpha1",
        "kind": "InferenceServer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec if spec is not None else {},
    }
