"""What the informers' caches keep of a Node (:func:`trim_node`): the
parser's result is the trimmed object's as it is the whole object's, errors
(and the paths they cite) included; what it does not read moves nothing."""
from __future__ import annotations

import copy

import pytest

from sdn_egress.kube.informer import Informer
from sdn_egress.kube.resources import NODES, SKIPPED_ENTRY, trim_node
from sdn_egress.source.assemble import parse_guarded

CONDITIONS = [{"type": t, "status": "False", "reason": f"Kubelet{t}", "lastHeartbeatTime": "2026-11-30T10:00:00Z"}
              for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]


def full_node(addresses=None, conditions=None) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "uid": "u1", "resourceVersion": "7", "labels": {"egress": "true"},
                         "annotations": {"a": "b"}, "managedFields": [{"manager": "kubelet"}]},
            "spec": {"podCIDR": "203.0.113.0/27", "podCIDRs": ["203.0.113.0/27"], "providerID": "x"},
            "status": {"addresses": addresses if addresses is not None else [
                {"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "192.0.2.11"},
                {"type": "ExternalIP", "address": "198.51.100.11"}, {"type": "InternalDNS", "address": "n1.lan"}],
                "conditions": conditions if conditions is not None else [
                    *CONDITIONS, {"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "images": [{"names": ["registry.example/x"], "sizeBytes": 1}],
                "nodeInfo": {"kubeletVersion": "v1.33.1"}}}


def parsed(doc):
    obj, error = parse_guarded(doc, "/api/v1/nodes/n1")
    return obj, str(error) if error else None


CASES = {
    "a real node": full_node(),
    "not ready": full_node(conditions=[*CONDITIONS, {"type": "Ready", "status": "False"}]),
    "no Ready condition": full_node(conditions=CONDITIONS),
    "a bad Ready status, after others": full_node(conditions=[*CONDITIONS, {"type": "Ready", "status": 5}]),
    "a bad address, after a Hostname": full_node(addresses=[{"type": "Hostname", "address": "n1"},
                                                            {"type": "InternalIP", "address": "192.0.2.300"}]),
    "an address without a type": full_node(addresses=[{"type": "Hostname", "address": "n1"}, {"address": "x"}]),
    "an address that is no mapping": full_node(addresses=[{"type": "Hostname", "address": "n1"}, "192.0.2.11"]),
    "a condition that is no mapping": full_node(conditions=[*CONDITIONS, "Ready"]),
    "a Hostname with no address": full_node(addresses=[{"type": "Hostname"},
                                                       {"type": "InternalIP", "address": "192.0.2.11"}]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_trimmed_node_parses_as_the_whole_one(name):
    doc = CASES[name]
    whole = parsed(copy.deepcopy(doc))
    assert parsed(trim_node(copy.deepcopy(doc))) == whole


def test_a_trimmed_node_keeps_only_the_routed_addresses_and_its_readiness():
    kept = trim_node(full_node())
    assert kept["status"] == {
        "addresses": [SKIPPED_ENTRY, {"type": "InternalIP", "address": "192.0.2.11"},
                      {"type": "ExternalIP", "address": "198.51.100.11"}, SKIPPED_ENTRY],
        "conditions": [SKIPPED_ENTRY] * 3 + [{"type": "Ready", "status": "True"}]}
    assert kept["spec"] == {"podCIDR": "203.0.113.0/27", "podCIDRs": ["203.0.113.0/27"]}
    assert kept["metadata"] == {"name": "n1", "uid": "u1", "resourceVersion": "7", "labels": {"egress": "true"}}
    assert parsed(kept)[0].ready and parsed(kept)[1] is None


def test_a_change_the_model_does_not_read_is_no_change():
    inf = Informer(None, NODES, trim=trim_node)
    inf.load([full_node()], "1")
    generation = inf.generation
    pressure = full_node(conditions=[{"type": "MemoryPressure", "status": "True"}, *CONDITIONS[1:],
                                     {"type": "Ready", "status": "True"}])
    pressure["metadata"]["resourceVersion"] = "8"
    inf._apply("MODIFIED", pressure)
    assert inf.generation == generation
    inf.load([full_node(), dict(full_node(), metadata={**full_node()["metadata"], "resourceVersion": "9"})], "9")
    assert inf.generation == generation  # a relist of the same objects: nothing to snapshot again
    not_ready = full_node(conditions=[{"type": "Ready", "status": "False"}])
    inf._apply("MODIFIED", not_ready)
    assert inf.generation == generation + 1


def test_our_kinds_are_kept_whole_but_for_managed_fields_and_share_their_strings():
    from sdn_egress.kube.resources import trim_custom

    def policy(name):
        return {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressPolicy",
                "metadata": {"name": name, "namespace": "shop", "labels": {"team": "a"},
                             "managedFields": [{"manager": "kubectl"}]},
                "spec": {"egressGatewayName": "edge", "destSubnet": ["198.51.100.0/27"],
                         "appliedTo": {"podSelector": {"matchExpressions": [
                             {"key": "app", "operator": "In", "values": ["web", "db"]}]}}},
                "status": {"eip": {"ipv4": "192.0.2.200"}}}
    a, b = (trim_custom(json_copy(policy(n))) for n in ("a", "b"))
    whole = policy("a")
    del whole["metadata"]["managedFields"]
    assert a == whole
    assert a["spec"]["appliedTo"]["podSelector"]["matchExpressions"][0]["values"][0] is \
        b["spec"]["appliedTo"]["podSelector"]["matchExpressions"][0]["values"][0]
    deep: dict = {}
    cur = deep
    for _ in range(5000):  # deeper than the interpreter's recursion: kept as it is
        cur["x"] = {}
        cur = cur["x"]
    assert trim_custom({"kind": "EgressPolicy", "metadata": {"name": "d"}, "spec": deep})["spec"] == deep


def json_copy(doc):
    """As a list response's parse gives it: every string a new object."""
    import json

    return json.loads(json.dumps(doc))
