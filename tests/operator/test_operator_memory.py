"""The operator's own per-InferenceServer state is bounded: what it keeps for one (a lock, the
coalescing ticket, the managed-set entry behind the gauge) goes when the InferenceServer is deleted,
so memory follows the live InferenceServers, not every one ever seen (issue 20, operator at scale)."""

from __future__ import annotations

import tracemalloc

from radixserve.operator.config import OperatorConfig
from radixserve.operator.controller import Controller
from radixserve.operator.kube import KubeClient
from radixserve.operator.metrics import OperatorMetrics


def _unused_client() -> KubeClient:
    raise AssertionError("no API call is expected here")


def test_per_inferenceserver_state_is_dropped_on_deletion() -> None:
    controller = Controller(OperatorConfig(client_factory=_unused_client), _unused_client, OperatorMetrics())
    tracemalloc.start()
    try:
        for round_ in range(3):  # churn: 2,000 InferenceServers come and go, three times
            names = [(f"ns-{i % 20}", f"llm-{round_}-{i}") for i in range(2000)]
            for ns, name in names:
                with controller._serialised(ns, name):  # what every reconcile pass takes
                    controller._pass_started[(ns, name)] = 1
                controller.metrics.track(ns, name, present=True)
            if round_ == 0:
                peak_live = tracemalloc.get_traced_memory()[0]
            assert len(controller._locks) == len(controller._pass_started) == 2000
            for ns, name in names:
                controller.forget(ns, name)  # the DELETED event (handlers.inference_server_seen)
            assert not controller._locks and not controller._pass_started
            assert controller.metrics.managed._value.get() == 0
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # Three rounds of 2,000 leave no more behind than one round held at its peak (allocator slack aside).
    assert after < peak_live, (after, peak_live)
