"""`radixserve operator` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from radixserve.operator import cli, names


def test_defaults_serve_all_namespaces() -> None:
    options = cli.parse_args([])
    assert options.clusterwide and options.namespaces == ()
    assert (options.log_level, options.standalone, options.liveness) == ("info", False, None)
    assert (options.image, options.cpu_image) == (names.DEFAULT_IMAGE, names.DEFAULT_CPU_IMAGE)


def test_namespaces_repeat_and_flags_parse() -> None:
    options = cli.parse_args(["--namespace", "a", "-n", "b", "--namespace=a", "--log-level", "debug",
                              "--standalone", "--liveness", "http://0.0.0.0:8080/healthz",
                              "--default-image", "r/i:1", "--default-cpu-image", "r/i:1-cpu",
                              "--resync-seconds", "0", "--retry-seconds", "5"])
    assert options.namespaces == ("a", "b") and not options.clusterwide
    assert (options.log_level, options.standalone, options.liveness) == ("debug", True, "http://0.0.0.0:8080/healthz")
    assert (options.image, options.cpu_image, options.resync_seconds, options.retry_seconds) == \
        ("r/i:1", "r/i:1-cpu", 0.0, 5.0)
    assert cli.parse_args(["-A"]).clusterwide


@pytest.mark.parametrize("argv", [["-A", "-n", "x"], ["--log-level", "chatty"], ["--bogus"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(argv)
    assert info.value.code == 2
    assert "usage: radixserve operator" in capsys.readouterr().err


def test_help_through_the_top_level_command() -> None:
    result = subprocess.run([sys.executable, "-m", "radixserve", "operator", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for option in ("--namespace", "--all-namespaces", "--log-level", "--standalone", "--liveness"):
        assert option in result.stdout
    # Help must not need the operator framework or a cluster.
    assert "Traceback" not in result.stderr


def test_model_delivery_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    options = cli.parse_args([])
    assert (options.model_cache_host_path, options.label_nodes) == ("/var/lib/radixserve/models", True)
    options = cli.parse_args(["--model-cache-host-path", "/mnt/nvme/models", "--no-label-nodes",
                              "--node-label-sweep-seconds", "0", "--progress-seconds", "5"])
    assert (options.model_cache_host_path, options.label_nodes) == ("/mnt/nvme/models", False)
    assert (options.node_label_sweep_seconds, options.progress_seconds) == (0.0, 5.0)
    monkeypatch.setenv("RADIXSERVE_MODEL_CACHE_HOST_PATH", "/data/models")
    monkeypatch.setenv("RADIXSERVE_LABEL_NODES", "false")
    options = cli.parse_args([])
    assert (options.model_cache_host_path, options.label_nodes) == ("/data/models", False)
    assert cli.parse_args(["--label-nodes"]).label_nodes
