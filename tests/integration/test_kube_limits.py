"""The lab's API server refuses what a real one refuses for its size, with the
real server's errors: ConfigMap and Secret data over 1 MiB (422 Invalid), a
request body over 3 MiB (413), a stored object over etcd's 1.5 MiB (500)."""
from __future__ import annotations

import base64
import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.kubeemu import api, emu  # noqa: F401 - fixtures
from tests.support.objects import policy

MIB = 1 << 20


def configmap(name: str, size: int) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "sdn-egress"},
            "data": {"a.json": "x" * (size - 10), "b.json": "y" * 10}}


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


def test_configmap_data_of_1_mib_fits_and_one_byte_more_is_invalid(api, emu):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("sdn-egress", configmap("fits", MIB))
    assert len(emu.get("ConfigMap", "fits", "sdn-egress")["data"]["a.json"]) == MIB - 10
    with pytest.raises(ApiException) as info:
        core.create_namespaced_config_map("sdn-egress", configmap("big", MIB + 1))
    assert info.value.status == 422
    body = status_of(info.value)
    assert body["reason"] == "Invalid"
    assert body["message"] == 'ConfigMap "big" is invalid: []: Too long: must have at most 1048576 bytes'
    assert emu.get("ConfigMap", "big", "sdn-egress") is None


def test_a_configmap_update_past_1_mib_is_refused_and_keeps_the_stored_version(api, emu):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("sdn-egress", configmap("alloc", 1000))
    before = emu.get("ConfigMap", "alloc", "sdn-egress")
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_config_map("alloc", "sdn-egress", {"data": {"c.json": "z" * MIB}})
    assert info.value.status == 422 and "Too long: must have at most 1048576 bytes" in status_of(info.value)["message"]
    assert emu.get("ConfigMap", "alloc", "sdn-egress") == before


def test_binary_data_counts_decoded():
    from sdn_egress.lab.kubestore import data_size

    cm = {"data": {"a": "é"}, "binaryData": {"b": base64.b64encode(b"\0" * 300).decode()}}
    assert data_size("ConfigMap", cm) == 2 + 300


def test_secret_data_over_1_mib_is_invalid(api, emu):
    core = client.CoreV1Api(api)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token", "namespace": "sdn-egress"},
              "data": {"t": base64.b64encode(b"\1" * (MIB + 1)).decode()}}
    with pytest.raises(ApiException) as info:
        core.create_namespaced_secret("sdn-egress", secret)
    assert info.value.status == 422
    assert status_of(info.value)["message"] == ('Secret "token" is invalid: data: Too long: must have at most '
                                                "1048576 bytes")
    secret["data"]["t"] = base64.b64encode(b"\1" * MIB).decode()  # 1.33 MiB encoded, 1 MiB of data: fits
    core.create_namespaced_secret("sdn-egress", secret)
    assert emu.get("Secret", "token", "sdn-egress") is not None


def test_a_request_body_over_3_mib_is_too_large(api, emu):
    doc = policy("huge")
    doc["metadata"]["annotations"] = {"note": "x" * (3 * MIB)}
    with pytest.raises(ApiException) as info:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "sdn-egress.io", "v1alpha1", "shop", "egresspolicies", doc)
    assert info.value.status == 413
    body = status_of(info.value)
    assert (body["reason"], body["message"]) == ("RequestEntityTooLarge", "Request entity too large: limit is 3145728")
    assert emu.get("EgressPolicy", "huge", "shop") is None


def test_an_object_over_etcds_1_5_mib_is_refused_by_etcd(api, emu):
    doc = policy("large")
    doc["metadata"]["annotations"] = {"note": "x" * (2 * MIB)}  # under the body limit, over etcd's
    with pytest.raises(ApiException) as info:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "sdn-egress.io", "v1alpha1", "shop", "egresspolicies", doc)
    assert info.value.status == 500
    assert status_of(info.value)["message"] == "etcdserver: request is too large"
    assert emu.get("EgressPolicy", "large", "shop") is None
    doc["metadata"]["annotations"] = {"note": "x" * (MIB + MIB // 4)}  # 1.25 MiB: fits
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "sdn-egress.io", "v1alpha1", "shop", "egresspolicies", doc)
    assert emu.get("EgressPolicy", "large", "shop") is not None


def test_the_labs_own_client_sees_the_same_refusal(emu, tmp_path):
    from sdn_egress.lab.kubeapi import ApiError
    from sdn_egress.lab.kubeclient import Client

    sock = str(tmp_path / "api.sock")
    emu.start_unix(sock)
    with pytest.raises(ApiError) as info:
        Client(sock).apply(configmap("big", MIB + 1))
    assert (info.value.code, info.value.reason) == (422, "Invalid")
