"""PodDisruptionBudgets: voluntary disruptions (node drains, cluster upgrades) evict server and
router pods a few at a time instead of all at once.

Server: `maxUnavailable` (spec.disruptionBudget.maxUnavailable, 1 by default) rather than
`minAvailable`, so a single replica can still be drained (a budget of minAvailable 1 over one
pod would block the drain forever). Router: minAvailable 1, only with two or more replicas,
for the same reason.
"""

from __future__ import annotations

from radixserve.operator import names
from radixserve.operator.builders.common import BuildInput, Manifest, metadata

POLICY_API_VERSION = "policy/v1"


def _budget(inp: BuildInput, name: str, component: str, selector: dict[str, str],
            rule: dict[str, int | str]) -> Manifest:
    return {
        "apiVersion": POLICY_API_VERSION,
        "kind": "PodDisruptionBudget",
        "metadata": metadata(inp.owner, name, component),
        "spec": {
            **rule,
            "selector": {"matchLabels": selector},
            # A pod that never became ready (stuck loading, crash looping) may be evicted even
            # when the budget is spent: it serves nothing, and keeping it would block the drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_server_budget(inp: BuildInput) -> Manifest | None:
    if not inp.spec.disruption_budget.enabled:
        return None
    name = inp.owner.name
    return _budget(inp, names.server_name(name), names.COMPONENT_SERVER, names.server_selector(name),
                   {"maxUnavailable": inp.spec.disruption_budget.max_unavailable})


def build_router_budget(inp: BuildInput) -> Manifest | None:
    spec = inp.spec
    if not (spec.disruption_budget.enabled and spec.router.enabled and spec.router.replicas >= 2):
        return None
    name = inp.owner.name
    return _budget(inp, names.router_name(name), names.COMPONENT_ROUTER, names.router_selector(name),
                   {"minAvailable": 1})
