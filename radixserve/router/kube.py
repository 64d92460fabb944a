"""The Kubernetes API client the router's watchers share: a given API server URL (tests, kmock), else
in-cluster credentials, else the local kubeconfig."""

from __future__ import annotations

from typing import Any


def api_client(api_server: str | None) -> Any:
    from kubernetes import client, config

    if api_server:
        configuration = client.Configuration()
        configuration.host = api_server
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        configuration = client.Configuration.get_default_copy()
    return client.ApiClient(configuration)
