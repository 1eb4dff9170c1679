"""KubeSource and its informers: the real kubernetes client against the emulated API server."""
from __future__ import annotations

import netaddr
import pytest

from sdn_egress.source.kube import KubeSource

from tests.support.kubeemu import api, emu  # noqa: F401 - fixtures
from tests.support.objects import gateway, namespace, node, pod, policy


@pytest.fixture
def source(api):
    src = KubeSource(api, extra_cluster_cidrs=["10.96.0.0/12"])
    try:
        yield src
    finally:
        src.stop()


def seed(emu):
    for obj in (node("alpha", 0), node("beta", 1, egress=False), namespace("shop", env="prod"),
                pod("shop", "cart-0", "beta", "203.0.113.34", app="cart"), gateway(), policy("cart")):
        emu.apply(obj)


def wait_state(source, emu, predicate, what):
    """Snapshot until ``predicate(state)`` holds (each change of the source wakes us)."""
    last = []

    def check():
        source.wait_for_change(0.05)
        last[:] = [source.snapshot()]
        return predicate(last[0])
    check.__doc__ = what
    emu.wait_for(check)
    return last[0]


def test_snapshot_reads_every_kind_like_the_manifest_source(emu, source):
    seed(emu)
    bad = policy("web", destSubnet=["10.0.0.0/33"])
    emu.apply(bad)
    source.start()
    assert source.wait_synced(timeout=20)
    state = source.snapshot()
    assert sorted(state.nodes) == ["alpha", "beta"] and list(state.namespaces) == ["shop"]
    assert list(state.pods) == ["shop/cart-0"] and list(state.gateways) == ["edge"]
    assert list(state.policies) == ["shop/cart"]
    assert state.nodes["alpha"].addresses == (netaddr.IPAddress("192.0.2.11"),)
    assert netaddr.IPNetwork("10.96.0.0/12") in state.cluster_cidrs(4)
    assert [str(e) for e in state.errors] == [
        'EgressPolicy shop/web: spec.destSubnet[0]: "10.0.0.0/33" is not a CIDR '
        "(/apis/sdn-egress.io/v1alpha1/namespaces/shop/egresspolicies/web)"]
    # List, then one watch per kind from the list's resourceVersion (the
    # watch request follows the list: synced says only that the list is in).
    lists = emu.wait_for(lambda: (lambda rs: rs if len(rs) >= 2 else None)(emu.requests_to("GET", r"/egresspolicies$")))
    assert [r.query.get("watch") for r in lists][:2] == [None, "true"]
    assert lists[1].query["resourceVersion"] == str(int(lists[1].query["resourceVersion"]))


def test_watch_events_change_the_state(emu, source):
    seed(emu)
    source.start()
    source.wait_synced(timeout=20)
    source.snapshot()
    assert not source.wait_for_change(0.2)
    relabelled = pod("shop", "cart-0", "beta", "203.0.113.34", app="web")
    emu.apply(relabelled)
    state = wait_state(source, emu, lambda s: dict(s.pods["shop/cart-0"].labels) == {"app": "web"}, "the relabel")
    emu.delete("EgressPolicy", "cart", "shop")
    wait_state(source, emu, lambda s: not s.policies, "the deletion")
    assert state.pods["shop/cart-0"].ips == (netaddr.IPAddress("203.0.113.34"),)


def test_status_writes_alone_wake_nobody(emu, source, api):
    seed(emu)
    source.start()
    source.wait_synced(timeout=20)
    source.snapshot()
    obj = emu.get("EgressPolicy", "cart", "shop")
    obj["status"] = {"eip": {"ipv4": "192.0.2.200"}}
    from kubernetes import client
    client.CustomObjectsApi(api).replace_namespaced_custom_object_status(
        "sdn-egress.io", "v1alpha1", "shop", "egresspolicies", "cart", obj)
    inf = source.informers["EgressPolicy"]
    emu.wait_for(lambda: (inf.get("cart", "shop") or {}).get("status"))
    assert not source.wait_for_change(0.2)


def test_410_gone_means_a_fresh_list_and_nothing_is_missed(emu, source):
    seed(emu)
    source.start()
    source.wait_synced(timeout=20)
    source.snapshot()
    nodes = source.informers["Node"]
    assert nodes.lists == 1
    # Synced is listed, not yet watching: wait for the node watch to be open, or
    # it would start after the compaction below and see the 410 at once.
    emu.wait_for(lambda: any(w.res[2] == "nodes" and not w.closed for w in emu.watches))
    # Other objects move the server's resourceVersion past the node watch's; the
    # server forgets its history and drops the watches; meanwhile a node joins and one goes.
    emu.apply(policy("other"))
    emu.compact()
    emu.drop_watches()
    emu.apply(node("gamma", 2))
    emu.delete("Node", "beta")
    state = wait_state(source, emu, lambda s: sorted(s.nodes) == ["alpha", "gamma"], "the relisted nodes")
    assert nodes.lists == 2
    # The relisted state is out before the informer opens its next watch.
    emu.wait_for(lambda: len(emu.requests_to("GET", r"/api/v1/nodes$")) >= 5)
    watches = [r.query for r in emu.requests_to("GET", r"/api/v1/nodes$")]
    # list, watch, watch from the old version (410), list again, watch from the new list's version.
    assert [q.get("watch") for q in watches[:5]] == [None, "true", "true", None, "true"]
    assert int(watches[4]["resourceVersion"]) > int(watches[2]["resourceVersion"])
    assert state.nodes["gamma"].ready


def test_server_errors_are_retried_with_backoff_from_the_same_version(emu, source):
    seed(emu)
    source.start()
    source.wait_synced(timeout=20)
    nodes = source.informers["Node"]
    emu.fail("GET", r"/api/v1/nodes$", 500, times=2, reason="InternalError")
    emu.drop_watches()
    emu.apply(node("gamma", 2))
    wait_state(source, emu, lambda s: "gamma" in s.nodes, "the node after the errors")
    assert nodes.lists == 1  # the watch resumed from its version: no relist needed
    failed = [r for r in emu.requests_to("GET", r"/api/v1/nodes$") if r.query.get("watch")]
    assert len(failed) >= 4 and len({r.query["resourceVersion"] for r in failed[1:4]}) == 1


def test_an_immutable_field_change_keeps_the_last_valid_version(emu, source):
    seed(emu)
    emu.apply(policy("cart", egressIP={"ipv4": "192.0.2.205"}))
    source.start()
    source.wait_synced(timeout=20)
    assert source.snapshot().policies["shop/cart"].eip_v4 == netaddr.IPAddress("192.0.2.205")
    emu.apply(policy("cart", egressIP={"ipv4": "192.0.2.206"}))
    state = wait_state(source, emu, lambda s: s.errors, "the refusal")
    assert state.policies["shop/cart"].eip_v4 == netaddr.IPAddress("192.0.2.205")
    assert str(state.errors[0]).startswith(
        'EgressPolicy shop/cart: spec.egressIP.ipv4: is immutable once set (it is "192.0.2.205")')


def service_cidr(*cidrs: str, name: str = "kubernetes") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": name},
            "spec": {"cidrs": list(cidrs)}}


def test_the_service_cidr_is_detected_where_the_cluster_serves_it(emu, source):
    seed(emu)
    emu.apply(service_cidr("172.20.0.0/16", "fd00:10:96::/112"))
    source.start()
    assert source.wait_synced(timeout=20)
    state = source.snapshot()
    assert netaddr.IPNetwork("172.20.0.0/16") in state.cluster_cidrs(4)  # detected
    assert netaddr.IPNetwork("10.96.0.0/12") in state.cluster_cidrs(4)  # configured, still there
    assert netaddr.IPNetwork("fd00:10:96::/112") in state.cluster_cidrs(6)
    # A second range added to the cluster (kubectl create servicecidr) is picked up.
    emu.apply(service_cidr("172.24.0.0/16", name="extra"))
    wait_state(source, emu, lambda s: netaddr.IPNetwork("172.24.0.0/16") in s.cluster_cidrs(4),
               "the new service range")


def test_an_api_server_without_servicecidrs_leaves_the_configured_ranges(emu, source):
    seed(emu)
    emu.fail("GET", r"/apis/networking.k8s.io/v1/servicecidrs$", 404, times=1000, reason="NotFound")
    source.start()
    assert source.wait_synced(timeout=20)  # a resource not served is no reason to wait
    state = source.snapshot()
    assert source.service_cidr_informer.served is False
    assert [str(c) for c in state.extra_cluster_cidrs] == ["10.96.0.0/12"]
    assert list(state.policies) == ["shop/cart"]


def test_the_labs_state_from_its_api_server_is_the_sources_own(source, emu, tmp_path):
    """The lab (``lab trace``, ``lab status``) assembles the API's objects as
    the KubeSource does, with the stored allocation's incumbency: a second
    default gateway that sorts first stays refused in both."""
    from sdn_egress.lab.objects import ApiObjects

    seed(emu)
    emu.apply({**gateway(), "spec": {**gateway()["spec"], "clusterDefault": True}})
    source.start()
    first = wait_state(source, emu, lambda s: s.gateways.get("edge") and s.gateways["edge"].cluster_default,
                       "edge the default")
    rival = gateway("aaa", "198.18.0.1-198.18.0.9")
    rival["spec"]["clusterDefault"] = True
    emu.apply(rival)
    enforced = wait_state(source, emu, lambda s: "aaa" in s.gateways, "the rival seen")
    assert enforced.gateways["edge"].cluster_default and not enforced.gateways["aaa"].cluster_default
    (tmp_path / "kube").mkdir()
    emu.start_unix(str(tmp_path / "kube" / "api.sock"))
    objects = ApiObjects(str(tmp_path / "kube"))
    shown = objects.cluster_state(first.accepted)
    assert shown.gateways == enforced.gateways and shown.policies == enforced.policies
    assert shown.nodes == enforced.nodes and shown.pods == enforced.pods
    assert sorted(map(str, shown.errors)) == sorted(map(str, enforced.errors))
    assert objects.cluster_state({}).gateways["aaa"].cluster_default  # without the incumbency: not what is enforced


# -- what each process watches and keeps (issue 15) ------------------------------------------------

def test_an_agent_lists_and_watches_only_its_own_nodes_pods(emu, api):
    seed(emu)
    emu.apply(pod("shop", "web-0", "alpha", "203.0.113.2", app="cart"))
    src = KubeSource(api, node="alpha").start()
    try:
        assert src.wait_synced(timeout=20)
        assert list(src.snapshot().pods) == ["shop/web-0"]  # beta's cart-0 is not sent to alpha
        assert sorted(src.snapshot().nodes) == ["alpha", "beta"]  # every node: the cluster CIDRs
        pod_requests = emu.requests_to("GET", r"/api/v1/pods$")
        assert pod_requests and {r.query.get("fieldSelector") for r in pod_requests} == {"spec.nodeName=alpha"}
        # A relabel on another node does not even wake it; one of its own pods does.
        src.snapshot()
        emu.apply(pod("shop", "cart-0", "beta", "203.0.113.34", app="web"))
        emu.apply(pod("shop", "web-1", "alpha", "203.0.113.3", app="web"))
        state = wait_state(src, emu, lambda s: "shop/web-1" in s.pods, "alpha's new pod")
        assert sorted(state.pods) == ["shop/web-0", "shop/web-1"]
    finally:
        src.stop()


def test_the_controllers_source_watches_no_pod(emu, api):
    from sdn_egress.kube.resources import CONTROLLER_WATCHED

    seed(emu)
    src = KubeSource(api, resources=CONTROLLER_WATCHED).start()
    try:
        assert src.wait_synced(timeout=20)
        state = src.snapshot()
        assert not state.pods and list(state.policies) == ["shop/cart"] and sorted(state.nodes) == ["alpha", "beta"]
        assert not emu.requests_to("GET", r"/pods$")
    finally:
        src.stop()


def test_the_caches_keep_only_what_the_model_reads(emu, source):
    seed(emu)
    big = pod("shop", "cart-1", "beta", "203.0.113.35", app="cart")
    big["metadata"]["managedFields"] = [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]
    big["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "team": "a"}
    big["status"]["containerStatuses"] = [{"name": "c", "ready": True}]
    emu.apply(big)
    n = node("gamma", 2)
    n["status"]["images"] = [{"names": ["registry.example/x"], "sizeBytes": 1}]
    n["status"]["conditions"][0].update(reason="KubeletReady", lastHeartbeatTime="2026-11-30T10:00:00Z")
    emu.apply(n)
    source.start()
    assert source.wait_synced(timeout=20)
    kept = source.informers["Pod"].get("cart-1", "shop")
    assert kept["metadata"]["annotations"] == {"team": "a"} and "managedFields" not in kept["metadata"]
    assert kept["spec"] == {"nodeName": "beta"} and kept["status"] == {"phase": "Running", "podIP": "203.0.113.35"}
    kept = source.informers["Node"].get("gamma")
    assert kept["status"] == {"addresses": [{"type": "InternalIP", "address": "192.0.2.13"}],
                              "conditions": [{"type": "Ready", "status": "True"}]}
    assert kept["metadata"]["uid"] and kept["metadata"]["resourceVersion"]  # the heartbeat's, the writers'
    # A watch event is trimmed too, and the state is what the full objects give.
    emu.apply(dict(big, metadata=dict(big["metadata"], labels={"app": "web"})))
    state = wait_state(source, emu, lambda s: dict(s.pods["shop/cart-1"].labels) == {"app": "web"}, "the relabel")
    assert "containerStatuses" not in source.informers["Pod"].get("cart-1", "shop")["status"]
    assert state.nodes["gamma"].ready and dict(state.pods["shop/cart-1"].annotations) == {"team": "a"}
