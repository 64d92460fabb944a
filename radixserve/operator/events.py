"""Kubernetes Events about an InferenceServer (`kubectl describe rsvc NAME`).

Posted with the operator's own client rather than kopf's `kopf.info`, which only works inside
kopf's per-object tasks: the periodic resync (see `periodic.py`) posts them too.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from radixserve.operator import names
from radixserve.operator.kube import KubeClient, resource_type

EVENT_TYPE = resource_type("v1", "Event")
MAX_MESSAGE = 1024  # what the API server accepts comfortably; longer messages are cut
logger = logging.getLogger(__name__)


def post_event(client: KubeClient, body: Mapping[str, Any], reason: str, message: str,
               warning: bool = False) -> None:
    """Best effort: an Event that cannot be posted is logged, never fails a reconcile."""
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'inferenceserver')}.", "namespace": namespace},
        "involvedObject": {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": meta.get("name"),
                           "namespace": namespace, "uid": meta.get("uid")},
        "reason": reason,
        "message": message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 3] + "...",
        "type": "Warning" if warning else "Normal",
        "source": {"component": names.OPERATOR_NAME},
        "reportingComponent": names.OPERATOR_NAME,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }
    (logger.warning if warning else logger.info)("%s/%s %s: %s", namespace, meta.get("name"), reason, message)
    try:
        client.create(EVENT_TYPE, namespace, event)
    except Exception as exc:  # an Event is a notice, not part of the desired state
        logger.warning("could not post event %s on %s/%s: %s", reason, namespace, meta.get("name"), exc)
