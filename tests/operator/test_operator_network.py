"""spec.networkPolicy: server pods reachable only from the router (and the metrics scraper)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from radixserve.operator import names
from radixserve.operator.builders import BuildInput, Owner, desired_objects, unwanted_objects
from radixserve.operator.spec import SpecError, parse_spec
from tests.operator.operator_testkit import cr, schema_errors

OWNER = Owner(name="llm", namespace="team-a", uid="5b0f6a57-0000-4000-8000-00000000000e")
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
GATEWAY = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}
HTTP = [{"protocol": "TCP", "port": names.HTTP_PORT}]


def policies(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    objects = desired_objects(BuildInput(OWNER, parse_spec(spec)))
    found = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    for policy in found.values():
        assert kubernetes_validate.validate(policy, "1.37", strict=True)
    return found


def test_off_by_default() -> None:
    assert policies({}) == {}
    refs = {(r.kind, r.name) for r in unwanted_objects(BuildInput(OWNER, parse_spec({})))}
    assert {("NetworkPolicy", "llm-server"), ("NetworkPolicy", "llm-router")} <= refs


def test_servers_accept_only_the_router_and_the_scraper() -> None:
    found = policies({"networkPolicy": {"enabled": True, "metricsFrom": [PROMETHEUS]}})
    server = found["llm-server"]["spec"]
    assert server["podSelector"] == {"matchLabels": names.server_selector("llm")}
    assert server["policyTypes"] == ["Ingress"]
    (rule,) = server["ingress"]
    assert rule["ports"] == HTTP
    assert rule["from"] == [{"podSelector": {"matchLabels": names.router_selector("llm")}}, PROMETHEUS]
    # The router takes clients from anywhere (no `from`), on its port only.
    router = found["llm-router"]["spec"]
    assert router["podSelector"] == {"matchLabels": names.router_selector("llm")}
    assert router["ingress"] == [{"ports": HTTP}]


def test_clients_from_limits_the_router_and_without_a_router_the_servers() -> None:
    found = policies({"networkPolicy": {"enabled": True, "metricsFrom": [PROMETHEUS], "clientsFrom": [GATEWAY]}})
    assert found["llm-router"]["spec"]["ingress"][0]["from"] == [GATEWAY, PROMETHEUS]
    assert GATEWAY not in found["llm-server"]["spec"]["ingress"][0]["from"]  # clients go through the router
    direct = policies({"router": {"enabled": False},
                       "networkPolicy": {"enabled": True, "metricsFrom": [PROMETHEUS], "clientsFrom": [GATEWAY]}})
    assert set(direct) == {"llm-server"}
    assert direct["llm-server"]["spec"]["ingress"][0]["from"] == [GATEWAY, PROMETHEUS]
    # No router and no clientsFrom: the endpoint Service must stay reachable, so the servers accept all.
    open_ = policies({"router": {"enabled": False}, "networkPolicy": {"enabled": True}})
    assert open_["llm-server"]["spec"]["ingress"] == [{"ports": HTTP}]


def test_peer_lists_are_bounded() -> None:
    too_many = {"networkPolicy": {"enabled": True, "metricsFrom": [PROMETHEUS] * 17}}
    assert any("metricsFrom" in e for e in schema_errors(cr(too_many)))
    with pytest.raises(SpecError):
        parse_spec(too_many)
    assert schema_errors(cr({"networkPolicy": {"enabled": True, "clientsFrom": [GATEWAY]}})) == []
