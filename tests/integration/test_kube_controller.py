"""The controller on the Kubernetes API: status through /status, finalizers, Events, the ConfigMap store."""
from __future__ import annotations

import json

import pytest

from sdn_egress.allocation.store_kube import KubeAllocationStore
from sdn_egress.controller import Controller
from sdn_egress.kube.events import EventRecorder
from sdn_egress.source.kube import KubeSource
from sdn_egress.controller.publish import FINALIZER, StatusPublisher
from sdn_egress.kube.resources import CONTROLLER_WATCHED

from tests.support.kubeemu import api, emu  # noqa: F401 - fixtures
from tests.support.objects import gateway, node, policy

NS = "sdn-egress"


class Running:
    """A controller with its own source, store and publisher (one replica)."""

    def __init__(self, api_client, emu):
        self.emu = emu
        self.source = KubeSource(api_client, resources=CONTROLLER_WATCHED).start()  # as the controller runs
        assert self.source.wait_synced(timeout=20)
        self.store = KubeAllocationStore(api_client, NS)
        self.publisher = StatusPublisher(api_client, self.source, EventRecorder(api_client, instance="test"))
        self.controller = Controller(self.source, self.store, publisher=self.publisher)

    def settle(self):
        """Reconcile once the informers hold everything the server has."""
        server_rv = self.emu.rv
        for inf in self.source.informers.values():
            self.emu.wait_for(lambda: inf.resource_version and int(inf.resource_version) >= 0)
        self.emu.wait_for(lambda: all(_seen(inf, self.emu) for inf in self.source.informers.values()))
        assert self.emu.rv >= server_rv
        return self.controller.reconcile()

    def stop(self):
        self.source.stop()


def _seen(inf, emu) -> bool:
    """The informer's cache matches the server's objects of its kind."""
    want = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o["metadata"]["resourceVersion"]
            for o in emu.items(inf.res.kind)}
    have = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o["metadata"]["resourceVersion"]
            for o in inf.items()}
    return want == have


@pytest.fixture
def replica(api, emu):
    for obj in (node("alpha", 0), node("beta", 1), gateway(), policy("cart")):
        emu.apply(obj)
    r = Running(api, emu)
    try:
        yield r
    finally:
        r.stop()


def events(emu, reason=None):
    return [(e["involvedObject"]["kind"], e["involvedObject"]["name"], e["type"], e["reason"], e["message"])
            for e in emu.items("Event") if reason is None or e["reason"] == reason]


def conditions(obj):
    return {c["type"]: (c["status"], c["reason"]) for c in obj["status"]["conditions"]}


def test_status_finalizer_events_and_configmap(emu, replica):
    replica.settle()
    cart = emu.get("EgressPolicy", "cart", "shop")
    assert {k: v for k, v in cart["status"].items() if k != "conditions"} == {
        "eip": {"ipv4": "192.0.2.200"}, "gateway": "edge", "node": "alpha"}
    assert conditions(cart) == {"IPAllocated": ("True", "Allocated"), "Ready": ("True", "GatewayNodeSelected")}
    assert all(c["lastTransitionTime"] and c["observedGeneration"] == 1 for c in cart["status"]["conditions"])
    edge = emu.get("EgressGateway", "edge")
    assert edge["metadata"]["finalizers"] == [FINALIZER]
    assert edge["status"]["ipUsage"] == {"ipv4Total": 11, "ipv4Free": 10, "ipv6Total": 0, "ipv6Free": 0}
    assert edge["status"]["nodes"] == [{"name": "alpha", "ready": True, "eips": ["192.0.2.200"]},
                                       {"name": "beta", "ready": True, "eips": []}]
    # Through the status subresource, with the resourceVersion read.
    [put] = emu.requests_to("PUT", r"/namespaces/shop/egresspolicies/cart/status$")
    assert put.body["metadata"]["resourceVersion"] and put.body["status"]["eip"] == {"ipv4": "192.0.2.200"}
    assert not emu.requests_to("PUT", r"/egresspolicies/cart$")
    assert events(emu, "EIPAllocated") == [
        ("EgressPolicy", "cart", "Normal", "EIPAllocated", "EIP 192.0.2.200 from EgressGateway edge, active on node alpha")]
    # The allocation, one ConfigMap per EIP (the agents') and per object (the controller's).
    cm = emu.get("ConfigMap", "sdn-egress-eip-v4-192-0-2-200", NS)
    assert json.loads(cm["data"]["record.json"])["eip"]["policies"] == ["shop/cart"]
    cm = emu.get("ConfigMap", "sdn-egress-egresspolicy-shop.cart", NS)
    assert json.loads(cm["data"]["record.json"])["policy"]["eip_v4"] == "192.0.2.200"
    # A pass with nothing new writes nothing.
    before = len(emu.requests)
    replica.settle()
    assert [r.method for r in list(emu.requests)[before:] if r.method != "GET"] == []


def test_a_conflict_is_read_again_and_retried(emu, replica):
    emu.fail("PUT", r"/egresspolicies/cart/status$", 409, times=1, reason="Conflict")
    replica.settle()
    assert replica.publisher.conflicts == 1
    assert emu.get("EgressPolicy", "cart", "shop")["status"]["eip"] == {"ipv4": "192.0.2.200"}
    assert len(emu.requests_to("PUT", r"/egresspolicies/cart/status$")) == 2
    assert emu.requests_to("GET", r"/namespaces/shop/egresspolicies/cart$")  # read again before the retry


def test_a_gateway_in_use_is_not_deleted_and_says_why(emu, replica):
    replica.settle()
    emu.delete("EgressGateway", "edge")  # the finalizer holds it: deletionTimestamp set
    emu.apply(policy("late"))
    replica.settle()
    edge = emu.get("EgressGateway", "edge")
    assert edge is not None and edge["metadata"]["deletionTimestamp"]
    in_use = next(c for c in edge["status"]["conditions"] if c["type"] == "InUse")
    assert (in_use["reason"], in_use["message"]) == (
        "DeletionBlocked", "deletion waits for EgressPolicy shop/cart: delete them or point them at another gateway")
    assert events(emu, "DeletionBlocked") == [("EgressGateway", "edge", "Warning", "DeletionBlocked", in_use["message"])]
    # The old user keeps its EIP; a newcomer is refused.
    assert emu.get("EgressPolicy", "cart", "shop")["status"]["eip"] == {"ipv4": "192.0.2.200"}
    assert conditions(emu.get("EgressPolicy", "late", "shop"))["IPAllocated"] == ("False", "GatewayDeleting")
    emu.delete("EgressPolicy", "cart", "shop")
    replica.settle()
    assert emu.get("EgressGateway", "edge") is None  # finalizer removed: gone
    assert events(emu, "EIPReleased") == [
        ("EgressGateway", "edge", "Normal", "EIPReleased", "EIP 192.0.2.200 released (was shop/cart)")]


def test_refusals_and_exhaustion_show_in_status_and_events(emu, replica):
    emu.apply(policy("web", destSubnet=["10.0.0.0/33"]))
    emu.apply(gateway("tiny", pool="192.0.2.230"))
    emu.apply(policy("a", gw="tiny"))
    emu.apply(policy("b", gw="tiny"))
    replica.settle()
    web = emu.get("EgressPolicy", "web", "shop")
    assert conditions(web) == {"IPAllocated": ("False", "Invalid"), "Ready": ("False", "Invalid")}
    assert web["status"]["conditions"][0]["message"] == 'spec.destSubnet[0]: "10.0.0.0/33" is not a CIDR'
    b = emu.get("EgressPolicy", "b", "shop")
    assert conditions(b)["IPAllocated"] == ("False", "PoolExhausted") and "eip" not in b["status"]
    assert ("EgressPolicy", "web", "Warning", "Invalid", 'spec.destSubnet[0]: "10.0.0.0/33" is not a CIDR') \
        in events(emu)
    assert [e[1] for e in events(emu, "PoolExhausted")] == ["b"]
    # Events are for changes: another pass records none.
    count = len(emu.items("Event"))
    replica.settle()
    assert len(emu.items("Event")) == count


def test_gateway_moves_are_written_and_told(emu, replica):
    replica.settle()
    emu.apply(node("alpha", 0, ready="False"))
    replica.settle()
    cart = emu.get("EgressPolicy", "cart", "shop")
    assert cart["status"]["node"] == "beta"
    assert events(emu, "GatewayMoved") == [
        ("EgressPolicy", "cart", "Normal", "GatewayMoved", "EIP 192.0.2.200: active gateway node alpha -> beta")]


def test_a_new_replica_keeps_the_eips_from_the_configmap(emu, api, replica):
    emu.apply(policy("zeta"))
    replica.settle()
    emu.delete("EgressPolicy", "cart", "shop")
    replica.stop()
    fresh = Running(api, emu)
    try:
        alloc = fresh.settle()
        # Without the stored allocation zeta would get the lowest free address, .200.
        assert str(alloc.policies["shop/zeta"].eip_v4) == "192.0.2.201"
        assert emu.get("EgressPolicy", "zeta", "shop")["status"]["eip"] == {"ipv4": "192.0.2.201"}
    finally:
        fresh.stop()


def test_a_new_leader_keeps_the_incumbent_of_an_explicit_eip(api, emu):
    """Issue 11, item 1: the claimant that sorts first was refused by the old
    leader; a new leader (its own informers, the same ConfigMap) refuses it too."""
    for obj in (node("alpha", 0), gateway(), policy("billing", egressIP={"ipv4": "192.0.2.205"})):
        emu.apply(obj)
    old = Running(api, emu)
    try:
        old.settle()
        emu.apply(policy("x", ns="aaa", egressIP={"ipv4": "192.0.2.205"}))
        old.settle()
    finally:
        old.stop()
    assert conditions(emu.get("EgressPolicy", "x", "aaa"))["IPAllocated"] == ("False", "Invalid")
    new = Running(api, emu)
    try:
        new.controller.forget()  # what a new term does
        alloc = new.settle()
    finally:
        new.stop()
    assert str(alloc.policies["shop/billing"].eip_v4) == "192.0.2.205"
    assert emu.get("EgressPolicy", "billing", "shop")["status"]["eip"] == {"ipv4": "192.0.2.205"}
    x = emu.get("EgressPolicy", "x", "aaa")
    assert conditions(x)["IPAllocated"] == ("False", "Invalid") and "eip" not in x["status"]
    assert x["status"]["conditions"][0]["message"] == (
        'spec.egressIP.ipv4: "192.0.2.205" is already the egress IP of EgressPolicy shop/billing')
