"""Objects and fixtures for tests against the lab's API server
(:mod:`sdn_egress.lab.kubeapi`), driven by the real ``kubernetes`` client."""
from __future__ import annotations

import pytest

from sdn_egress.lab.kubeapi import KubeEmulator

# -- objects ------------------------------------------------------------------

GROUP_VERSION = "sdn-egress.io/v1alpha1"


def node(name: str, i: int, egress: bool = True, ready: str = "True") -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"egress": "true"} if egress else {}},
            "spec": {"podCIDR": f"203.0.113.{32 * i}/27"},
            "status": {"addresses": [{"type": "InternalIP", "address": f"192.0.2.{11 + i}"}],
                       "conditions": [{"type": "Ready", "status": ready}]}}


def namespace(name: str, **labels) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(ns: str, name: str, node_name: str, ip: str, **labels) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip}}


def gateway(name: str = "edge", pool: str = "192.0.2.200-192.0.2.210", **spec) -> dict:
    return {"apiVersion": GROUP_VERSION, "kind": "EgressGateway", "metadata": {"name": name},
            "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}}, "ippools": {"ipv4": [pool]}, **spec}}


def policy(name: str, ns: str = "shop", gw: str | None = "edge", **spec) -> dict:
    body = {"appliedTo": {"podSelector": {"matchLabels": {"app": name}}}, **spec}
    if gw:
        body["egressGatewayName"] = gw
    return {"apiVersion": GROUP_VERSION, "kind": "EgressPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": body}


@pytest.fixture
def emu():
    server = KubeEmulator().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(emu):
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = emu.url
    with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture
def kubeconfig(emu, tmp_path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emu\n"
        f"clusters: [{{name: emu, cluster: {{server: '{emu.url}'}}}}]\n"
        "users: [{name: tester, user: {token: not-checked}}]\n"
        "contexts: [{name: emu, context: {cluster: emu, user: tester}}]\n")
    return str(path)
