"""The chart and the command line for leader election and the operator's metrics endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from radixserve.operator import permissions
from radixserve.operator.cli import parse_args, run_settings
from tests.operator.operator_testkit import CHART_DIR
from tests.operator.test_operator_chart import NAMESPACE, RELEASE, by_kind, objects, render

FULLNAME = f"{RELEASE}-radixserve"


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


def _operator(rendered: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    (deployment,) = by_kind(rendered, "Deployment")
    return deployment, deployment["spec"]["template"]["spec"]["containers"][0]


def test_default_chart_runs_two_replicas_that_elect_a_leader(chart: helm_python.Chart) -> None:
    rendered = render(chart)
    deployment, container = _operator(rendered)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    options = parse_args(container["args"][1:])
    assert options.leader_election and options.leader_election_namespace == NAMESPACE
    assert options.leader_election_id == FULLNAME
    assert (options.lease_duration_seconds, options.renew_deadline_seconds, options.retry_period_seconds) == (15, 10, 2)
    assert options.metrics_port == 8080 and options.liveness is None
    settings = run_settings(options)
    assert settings.election is not None and settings.election.namespace == NAMESPACE
    assert settings.metrics_port == 8080
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]} == {
        "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}

    # The Lease's Role: exactly permissions.LEADER_ELECTION_RULES, in the release namespace, bound
    # to the operator's ServiceAccount.
    (role,) = [r for r in by_kind(rendered, "Role") if r["metadata"]["name"] == f"{FULLNAME}-leader-election"]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == permissions.as_leader_election_policy_rules()
    (binding,) = by_kind(rendered, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def test_without_leader_election_one_replica_is_replaced(chart: helm_python.Chart) -> None:
    rendered = render(chart, {"leaderElection": {"enabled": False}, "replicaCount": 3, "metrics": {"port": 9090}})
    deployment, container = _operator(rendered)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    options = parse_args(container["args"][1:])
    assert not options.leader_election and options.metrics_port == 9090
    assert run_settings(options).election is None
    assert by_kind(rendered, "Role") == [] and by_kind(rendered, "RoleBinding") == []
    assert container["ports"][0]["containerPort"] == 9090


@pytest.mark.parametrize("values", [
    {}, {"leaderElection": {"enabled": False}},
    {"replicaCount": 3, "watchNamespaces": ["a"], "leaderElection": {"leaseDurationSeconds": 30,
                                                                      "renewDeadlineSeconds": 20,
                                                                      "retryPeriodSeconds": 4}},
], ids=["default", "no-election", "namespaced-3"])
def test_valid_in_strict_mode_and_lint_clean(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    for obj in objects(render(chart, values)):
        if obj["kind"] != "InferenceServer":
            assert kubernetes_validate.validate(obj, "1.37", strict=True)
    result = helm_python.lint(CHART_DIR, values, strict=True, kube_version="1.31.0")
    assert result["errors"] == [] and [m for m in result["messages"] if m["severity"] > 1] == []


def test_lease_timing_that_would_overlap_two_leaders_is_refused(chart: helm_python.Chart) -> None:
    with pytest.raises(Exception, match="retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds"):
        render(chart, {"leaderElection": {"leaseDurationSeconds": 10, "renewDeadlineSeconds": 10}})


@pytest.mark.parametrize("argv", [
    ["--metrics-port", "70000"],
    ["--leader-election", "--lease-duration-seconds", "5", "--renew-deadline-seconds", "10"],
    ["--leader-election", "--retry-period-seconds", "0"],
], ids=str)
def test_bad_election_or_metrics_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert "usage: radixserve operator" in capsys.readouterr().err


def test_election_and_metrics_are_off_by_default_on_the_command_line() -> None:
    options = parse_args([])
    assert not options.leader_election and options.metrics_port == 0
    settings = run_settings(options)
    assert settings.election is None and settings.metrics_port is None
    assert settings.config.resync_seconds == 300


def test_operator_image_installs_what_the_metrics_endpoint_imports() -> None:
    """The operator image installs the package with --no-deps plus a short list: the metrics
    endpoint needs prometheus-client (aiohttp comes with kopf)."""
    stage = (CHART_DIR.parents[1] / "Dockerfile").read_text().split("AS operator", 1)[1].split("\nFROM ", 1)[0]
    assert '"prometheus-client' in stage and '"kopf' in stage
