"""The lab's object stores: the cluster state the lab shows (``trace``,
``status``) is assembled by the source's own rules, with the incumbency the
stored allocation records, so it is what the controller and agents enforce."""
from __future__ import annotations

import json

import pytest

from sdn_egress.allocation import FileAllocationStore
from sdn_egress.controller import Controller
from sdn_egress.lab import Lab
from sdn_egress.lab.objects import ManifestObjects, node_object, pod_object
from sdn_egress.lab.topology import LabNode, LabPod
from sdn_egress.source import ManifestDirSource
from tests.support.objects import gateway, node, policy, set_path, write

RIVAL = set_path(set_path(gateway("aaa", "198.18.0.1-198.18.0.9"), "spec.clusterDefault", True),
                 "spec.nodeSelector", {})


@pytest.fixture
def lab(tmp_path):
    """A lab's state file and manifest directory alone (no namespaces, no processes)."""
    lab = Lab(str(tmp_path))
    lab._state = {"prefix": "x", "topology": {"nodes": [{"name": "alpha"}], "pods": [], "externals": []},
                  "pids": {}, "namespaces": [], "kube": False, "pods": [], "next_pod_index": 0}
    (tmp_path / "lab.json").write_text(json.dumps(lab._state))
    return lab


def test_the_labs_state_keeps_the_incumbent_default_gateway_as_the_controller_does(lab):
    write(lab.manifests, "user/edge.yaml", [node("alpha", 0), set_path(gateway(), "spec.clusterDefault", True),
                                            policy("cart")])
    controller = Controller(ManifestDirSource(lab.manifests), FileAllocationStore(lab.status_dir))
    controller.reconcile()
    # A second default gateway that sorts first: the incumbent stays the default.
    write(lab.manifests, "user/aaa.yaml", [RIVAL])
    controller.reconcile()
    enforced = controller.source.snapshot()
    shown = lab.cluster_state()
    assert shown.gateways == enforced.gateways and shown.gateways["edge"].cluster_default
    assert not shown.gateways["aaa"].cluster_default
    assert [(e.ref.name, e.field) for e in shown.errors] == [("aaa", "spec.clusterDefault")]
    # Read without the stored incumbency (as the lab used to), the rival would win.
    fresh = ManifestDirSource(lab.manifests).snapshot()
    assert fresh.gateways["aaa"].cluster_default and not fresh.gateways["edge"].cluster_default


def test_the_manifest_store_writes_reads_and_deletes_pods_and_namespaces(tmp_path):
    store = ManifestObjects(str(tmp_path / "m"))
    pod = LabPod("shop", "cart-0", "alpha", 0, "203.0.113.2", {"app": "cart"})
    store.write_cluster([node_object(LabNode("alpha", 0, {"egress": "true"}))], {"shop"})
    store.write_pod(pod_object(pod, {"app": "cart"}))
    assert store.pod_labels("shop", "cart-0") == {"app": "cart"}
    store.ensure_namespace("shop")
    store.ensure_namespace("other")
    state = store.cluster_state({})
    assert sorted(state.namespaces) == ["other", "shop"] and list(state.pods) == ["shop/cart-0"]
    store.delete_pod("shop", "cart-0")
    store.delete_pod("shop", "cart-0")  # gone already: nothing
    assert not store.cluster_state({}).pods


def test_a_standalone_clusters_state_keeps_the_incumbent_default_gateway_too(tmp_path):
    from sdn_egress.debug.env import ClusterEnv

    manifests, status = tmp_path / "m", tmp_path / "s"
    write(manifests, "edge.yaml", [node("alpha", 0), set_path(gateway(), "spec.clusterDefault", True),
                                   policy("cart")])
    controller = Controller(ManifestDirSource(str(manifests)), FileAllocationStore(str(status)))
    controller.reconcile()
    write(manifests, "aaa.yaml", [RIVAL])
    controller.reconcile()
    shown = ClusterEnv(status_dir=str(status), manifests=str(manifests)).cluster_state()
    assert shown.gateways == controller.source.snapshot().gateways
    assert shown.gateways["edge"].cluster_default and not shown.gateways["aaa"].cluster_default
