"""Validation of KEDA, Prometheus-operator and Gateway API Inference Extension objects against
their CRDs' own schemas (vendored in schemas/, see schemas/README.md), as the API server would
with those CRDs installed."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

from tests.operator.operator_testkit import cel_errors, to_json_schema

SCHEMAS = Path(__file__).parent / "schemas"
FILES = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_podmonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
    ("inference.networking.k8s.io/v1", "InferencePool"): "inference.networking.k8s.io_v1_inferencepool.json",
    ("inference.networking.x-k8s.io/v1alpha2", "InferencePool"):
        "inference.networking.x-k8s.io_v1alpha2_inferencepool.json",
}


@functools.cache
def _schema(api_version: str, kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / FILES[(api_version, kind)]).read_text())
    return schema


def custom_resource_errors(obj: dict[str, Any]) -> list[str]:
    """Schema (unknown fields included) and CEL errors of `obj`; [] when the API would accept it."""
    schema = _schema(obj["apiVersion"], obj["kind"])
    validator = jsonschema.Draft202012Validator(to_json_schema(schema))
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
              for e in validator.iter_errors(obj)]
    return errors + cel_errors(schema, obj)
