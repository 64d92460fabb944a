"""Kubernetes operator for `InferenceServer` resources (group radixserve.io).

Layout, one job per module:
- `names`: API coordinates, labels, names of the objects an InferenceServer owns.
- `spec`: the typed view of `.spec` (pydantic), mirroring the CRD in `crds/`.
- `checks`: what the schema cannot catch (missing PVC or Secret, GPUs below TP x PP).
- `builders`: pure functions, spec in, manifests (dicts) out (`builders.model`: model
  delivery for `spec.model.uri`: volumes, the download init container, Job and cache claim).
- `status`: pure function from observed objects to `.status`.
- `kube`, `apply`: a small REST client and the idempotent apply on top of it.
- `nodes`: node labels recording which nodes' caches hold which models, and their sweep.
- `reconcile`: one pass, check then build then apply then observe.
- `handlers`: thin kopf handlers; `cli`: `radixserve operator`.

Nothing here imports kopf at package import time, so the builders stay usable
(and testable) without the operator framework.
"""
