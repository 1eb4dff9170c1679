"""KubeSource's incremental snapshot (issue 15): an object is parsed once per
version, and the snapshot is what a whole re-parse of every cache (the old
way, kept here as the reference) gives, errors and last valid versions
included, through any sequence of events."""
from __future__ import annotations

import pytest

from sdn_egress.source import kube as kube_source
from sdn_egress.source.kube import KubeSource
from sdn_egress.source import Assembler, Pass

V = "sdn-egress.io/v1alpha1"


def node(name, i, **labels):
    return {"kind": "Node", "metadata": {"name": name, "labels": {"egress": "true", **labels}, "uid": name},
            "spec": {"podCIDR": f"203.0.113.{32 * i}/27"},
            "status": {"addresses": [{"type": "InternalIP", "address": f"192.0.2.{11 + i}"}]}}


def pod(name, node_name, ip, **labels):
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"nodeName": node_name}, "status": {"phase": "Running", "podIP": ip}}


def policy(name, **spec):
    return {"apiVersion": V, "kind": "EgressPolicy", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"appliedTo": {"podSelector": {"matchLabels": {"app": name}}}, "egressGatewayName": "edge",
                     **spec}}


GATEWAY = {"apiVersion": V, "kind": "EgressGateway", "metadata": {"name": "edge"},
           "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}},
                    "ippools": {"ipv4": ["192.0.2.200-192.0.2.210"]}}}
NAMESPACE = {"kind": "Namespace", "metadata": {"name": "shop", "labels": {"env": "prod"}}}


class Reference:
    """The snapshot as it was before issue 15: every cache re-parsed."""

    def __init__(self, source):
        self.source, self.history = source, Assembler()

    def snapshot(self):
        run = Pass()
        for inf in self.source.informers.values():
            for obj in inf.items():
                meta = obj.get("metadata") or {}
                path = inf.res.path(meta.get("namespace") or "", str(meta.get("name") or ""))
                run.add(obj, path, path)
        by_kind = self.history.finish(run)
        return by_kind, tuple(run.errors)


def listed(src, objects):
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    for kind, inf in src.informers.items():
        inf.load(by_kind.get(kind, []), "1")


def same(state, ref):
    by_kind, errors = ref
    assert state.errors == errors
    for attr in ("nodes", "namespaces", "pods", "gateways", "policies", "accepted"):
        assert dict(getattr(state, attr)) == dict(by_kind[attr]), attr
        assert list(getattr(state, attr)) == list(by_kind[attr]), attr  # the same order


EVENTS = [
    ("MODIFIED", pod("cart-0", "alpha", "203.0.113.2", app="web")),  # relabel
    ("MODIFIED", pod("cart-0", "alpha", "not-an-ip", app="web")),  # refused: the last valid one stays
    ("MODIFIED", policy("cart", egressIP={"ipv4": "192.0.2.206"})),  # immutable field: refused, kept
    ("ADDED", node("gamma", 2)),
    ("MODIFIED", node("beta", 1, zone="b")),
    ("ADDED", {"kind": "Node", "metadata": {"name": "bad"}, "spec": {"podCIDR": "203.0.113.97/27"}}),
    ("MODIFIED", {**NAMESPACE, "metadata": {"name": "shop", "labels": {"env": "dev"}}}),
    ("MODIFIED", pod("cart-0", "alpha", "203.0.113.3", app="cart")),  # valid again
    ("DELETED", pod("cart-1", "beta", "203.0.113.34")),
    ("ADDED", policy("web", destSubnet=["10.0.0.0/33"])),
    ("DELETED", policy("cart")),
]


@pytest.mark.parametrize("upto", range(len(EVENTS) + 1))
def test_the_incremental_snapshot_is_the_whole_reparse(upto):
    src = KubeSource(None, detect_service_cidrs=False)
    ref = Reference(src)
    listed(src, [node("alpha", 0), node("beta", 1), NAMESPACE, GATEWAY,
                 policy("cart", egressIP={"ipv4": "192.0.2.205"}), policy("web"),
                 pod("cart-0", "alpha", "203.0.113.2", app="cart"), pod("cart-1", "beta", "203.0.113.34", app="web")])
    same(src.snapshot(), ref.snapshot())
    for type_, obj in EVENTS[:upto]:
        src.informers[obj["kind"]]._apply(type_, obj)
        same(src.snapshot(), ref.snapshot())


def test_a_pod_event_parses_that_pod_alone(monkeypatch):
    src = KubeSource(None, detect_service_cidrs=False)
    listed(src, [node(f"n{i}", i) for i in range(5)] + [NAMESPACE, GATEWAY, policy("cart")]
           + [pod(f"p{i}", "n0", f"203.0.113.{i + 2}", app="cart") for i in range(20)])
    src.snapshot()
    parsed = []
    from sdn_egress.source import assemble  # where every source parses an object (parse_guarded)
    real = assemble.parse_object
    monkeypatch.setattr(assemble, "parse_object", lambda doc, where: parsed.append(where) or real(doc, where))
    src.informers["Pod"]._apply("MODIFIED", pod("p3", "n0", "203.0.113.5", app="web"))
    state = src.snapshot()
    assert parsed == ["/api/v1/namespaces/shop/pods/p3"]
    assert dict(state.pods["shop/p3"].labels) == {"app": "web"} and len(state.pods) == 20
    assert src.snapshot() == state and parsed == ["/api/v1/namespaces/shop/pods/p3"]  # nothing moved: no parse


def test_an_agents_source_asks_for_its_nodes_pods_only():
    src = KubeSource(None, node="n0")
    assert src.informers["Pod"]._selectors == {"field_selector": "spec.nodeName=n0"}
    assert all(not inf._selectors for kind, inf in src.informers.items() if kind != "Pod")
